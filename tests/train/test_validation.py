"""fit's validation set: the recorded ELBO is the one evaluate gives, at the promised epochs."""

from __future__ import annotations

import sys

import pyro
import pytest
import torch
from helpers import circle_data, circle_vae, here, ppca

import pyro_vae as pv
from pyro_vae.train.loop import train


def test_validation_elbo_is_recorded_at_the_promised_epochs_and_is_exact():
    """PPCA with its exact posterior as the guide and a zero step size: every validation ELBO
    equals the closed-form mean log p(x), whatever the samples."""
    vae, x, log_px, _ = ppca()
    train = pv.Batches(x, batch_size=4)
    history = pv.fit(
        vae.model,
        vae.guide,
        train,
        epochs=5,
        optim=pyro.optim.Adam({"lr": 0.0}),
        device=here(),
        log=False,
        validation=pv.Validation(x, every=2, num_particles=3),
    )
    assert history.val_epoch == [2, 4, 5]
    assert history.val_elbo == pytest.approx([log_px.mean().item()] * 3, abs=1e-10)
    assert vae.training  # eval mode during validation only


def test_validation_tracks_a_worse_guide_and_survives_save_and_load(tmp_path):
    vae, x, log_px, _ = ppca()
    with torch.no_grad():  # a shifted encoder: its ELBO is below log p(x), then improves
        vae.variational.encoder.bias[:2] += 1.0
    history = train(  # infer_local's loop (E-steps only), with validation
        vae.model,
        vae.guide,
        pv.Batches(x, batch_size=16),
        epochs=60,
        optim=pyro.optim.Adam({"lr": 0.02}),
        device=here(),
        progress=False,
        validation=x,
        validate_every=20,
        validation_particles=200,
        save_dir=tmp_path,
        freeze_model=True,  # the model (and so log p(x)) stays; the encoder learns
    )
    assert history.val_epoch == [20, 40, 60]
    assert history.val_elbo[0] < history.val_elbo[-1] <= log_px.mean().item() + 0.05
    assert pv.History.load(tmp_path / "history.json") == history


SCRIPT = {1: -3.0, 2: -2.0, 3: -2.5, 4: -2.4, 5: -2.6, 6: -1.0}  # validation ELBOs by epoch


@pytest.fixture
def scripted(monkeypatch):
    """Validation ELBOs from SCRIPT (recorded as fit records them), and each epoch's weights."""
    loop = sys.modules["pyro_vae.train.loop"]

    def validate(run, epoch, validation, particles):
        run.history.val_epoch.append(epoch)
        run.history.val_elbo.append(SCRIPT[epoch])
        return SCRIPT[epoch]

    monkeypatch.setattr(loop, "validate", validate)
    return {}


def _run(folder, epochs, weights, *, patience=3, resume=False):
    pyro.clear_param_store()
    torch.manual_seed(0)
    vae = circle_vae()
    pyro.set_rng_seed(0)

    def keep(epoch, history):
        weights[epoch] = [p.detach().clone() for p in vae.parameters()]

    history = pv.fit(vae.model, vae.guide, circle_data(), epochs=epochs, device=here(),
                     save=pv.Checkpoints(folder, resume=resume),
                     validation=pv.Validation(circle_data().data[:8], patience=patience),
                     log=pv.Logging(progress=False, callback=keep))  # fmt: skip
    return vae, history


def _same(vae, expected) -> bool:
    return all(torch.equal(a, b) for a, b in zip(vae.parameters(), expected, strict=True))


def test_early_stopping_stops_at_the_patience_and_keeps_the_best_weights(tmp_path, scripted):
    """Pyro's rule: three validations without a better ELBO (epochs 3-5) stop the run after
    epoch 5 with the weights of epoch 2; the checkpoint holds them, and resuming the stopped
    run trains no further (a warning says so) and gives them again."""
    vae, history = _run(tmp_path, 10, scripted)
    assert history.epoch == [1, 2, 3, 4, 5] and 6 not in scripted
    assert _same(vae, scripted[2]) and not _same(vae, scripted[5])
    with pytest.warns(UserWarning, match="stopped early at epoch 5.*trains no further"):
        again, history = _run(tmp_path, 10, {}, resume=True)
    assert history.epoch == [1, 2, 3, 4, 5] and _same(again, scripted[2])


def test_a_run_that_ends_before_its_patience_resumes_exactly(tmp_path, scripted):
    """Patience 4; four epochs (epochs 3 and 4 not better): saved with the last weights,
    returned with the best (epoch 2); resumed to 6 epochs it continues from the last, exactly
    as one run of 6 epochs, whose epoch 6 is the new best."""
    whole, _ = _run(tmp_path / "whole", 6, {}, patience=4)
    weights = {}
    short, _ = _run(tmp_path / "parts", 4, weights, patience=4)
    assert _same(short, weights[2])  # the best, in memory
    resumed, history = _run(tmp_path / "parts", 6, {}, patience=4, resume=True)
    assert history.epoch == [1, 2, 3, 4, 5, 6]
    assert _same(resumed, list(whole.parameters()))
