"""fit's default step for a VAE: the derived estimator run eagerly, checked once against
TensorTrace_ELBO; Pyro's traced loss when asked for, for other pairs, and for a resumed run
whose saved run took it."""

from __future__ import annotations

import sys

import pyro
import pytest
import torch
from helpers import HandWritten, circle_data, circle_vae, fit_circle, grouped, here

import pyro_vae as pv

steps = sys.modules["pyro_vae.train.step"]


def train(loss, epochs=3, **options):
    pyro.clear_param_store()
    torch.manual_seed(0)
    vae = circle_vae()
    pyro.set_rng_seed(1)
    history = pv.fit(vae.model, vae.guide, circle_data(), epochs=epochs,
                     **grouped(device=here(), progress=False, loss=loss, **options))  # fmt: skip
    return vae, history


@pytest.mark.parametrize("options", [{}, {"e_steps": 2}, {"beta": 0.5}], ids=str)
def test_the_default_step_is_the_derived_one_and_follows_pyros_loss(pyro_steps, options):
    derived, history = train(None, **options)
    assert not pyro_steps  # no step through Pyro's tracing
    reference, expected = train(pv.TensorTrace_ELBO(), **options)
    assert pyro_steps  # asked for: Pyro's loss in every step
    assert history.loss == pytest.approx(expected.loss, rel=1e-5)
    for (name, a), b in zip(derived.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


def test_a_hand_written_pair_takes_pyros_loss(pyro_steps):
    pair = HandWritten(features=2, latent=1)
    pv.fit(
        pair.model,
        pair.guide,
        circle_data(),
        epochs=1,
        device=here(),
        log=False,
    )
    assert pyro_steps


def test_a_resumed_run_takes_the_estimator_its_saved_run_took(tmp_path, pyro_steps):
    """Saved with Pyro's loss, resumed with the default: Pyro's loss goes on (bit-exact);
    saved with the derived one, resumed where its check fails: said in a warning."""
    fit_circle(tmp_path / "a", 1, loss=pv.TensorTrace_ELBO())
    pyro_steps.clear()
    fit_circle(tmp_path / "a", 2, resume=True)
    assert pyro_steps
    fit_circle(tmp_path / "b", 1)
    pyro_steps.clear()
    with pytest.MonkeyPatch.context() as m:
        m.setattr(steps, "compiled_loss", lambda *a, **k: (None, "the gradient of w differs"))
        with pytest.warns(
            UserWarning, match=r"derived estimator.*\(the gradient of w differs\).*not bit-exact"
        ):
            fit_circle(tmp_path / "b", 2, resume=True)
    assert pyro_steps
