"""fit's validation set: the recorded ELBO is the one evaluate gives, at the promised epochs."""

from __future__ import annotations

import pyro
import pytest
import torch
from helpers import ppca

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
        device="cpu",
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
        device="cpu",
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
