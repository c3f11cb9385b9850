"""Devices and dtypes: fit finds the networks itself, and a parameter, buffer or data set in the
wrong place gets an error that names it (not a kernel error from deep inside)."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from helpers import bernoulli_vae, here
from torch import nn

import pyro_vae as pv
from pyro_vae.train.loop import train

ON_META = r"'encoder\$\$\$weight' is on meta but the data are on "  # (the data's device: any)
FLOAT64 = r"of VAE is torch\.float64 but the data are torch\.float32"


def tiny_vae(encoder: nn.Module | None = None) -> pv.VAE:
    return bernoulli_vae(encoder=encoder)


class MetaEncoderPair:
    """A hand-written pair whose encoder was left on the ``meta`` device (not a bound method
    of a module, so fit cannot find and move it)."""

    def __init__(self) -> None:
        self.encoder = nn.Linear(6, 4, device="meta")

    def model(self, x, idx=None, num_data=None):
        with pyro.plate("data", num_data, subsample=idx):
            pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))

    def guide(self, x, idx=None, num_data=None):
        pyro.module("encoder", self.encoder)
        loc, log_scale = self.encoder(x).chunk(2, -1)
        with pyro.plate("data", num_data, subsample=idx):
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))


def test_fit_names_a_parameter_on_another_device():
    pair = MetaEncoderPair()
    data = pv.Batches(torch.rand(16, 6), batch_size=8)
    with pytest.raises(ValueError, match=ON_META):
        pv.fit(pair.model, pair.guide, data, epochs=1, device=here(), log=False)


def test_fit_names_a_parameter_of_another_dtype():
    vae = tiny_vae().double()  # float64 networks, float32 data
    data = pv.Batches(torch.rand(16, 6).round(), batch_size=8)
    with pytest.raises(ValueError, match=r"is torch\.float64 but the data are torch\.float32"):
        pv.fit(vae.model, vae.guide, data, epochs=1, device=here(), log=False)
    # A prior's buffers count too (they have no pyro.param site).
    vae = tiny_vae()
    vae.prior.double()
    with pytest.raises(ValueError, match=r"buffer 'prior\.loc' of VAE is torch\.float64"):
        pv.fit(vae.model, vae.guide, data, epochs=1, device=here(), log=False)


def test_evaluate_and_infer_local_check_the_model_against_the_data():
    vae = tiny_vae().double()
    x = torch.rand(10, 6).round()
    with pytest.raises(ValueError, match=FLOAT64):
        pv.evaluate(vae.model, vae.guide, x, num_particles=2)
    with pytest.raises(ValueError, match=FLOAT64):
        pv.infer_local(vae, pv.Batches(x, batch_size=5), epochs=1)
    pair = MetaEncoderPair()
    with pytest.raises(ValueError, match=ON_META):
        pv.evaluate(pair.model, pair.guide, torch.rand(4, 6), num_particles=2)


def test_fit_finds_the_vae_behind_its_methods_and_checkpoints_its_buffers(tmp_path):
    """No modules= argument: the VAE is found, trained in train mode (and left in the mode it
    was in), and its BatchNorm statistics are saved and restored."""

    def run(epochs, resume, seed, overwrite=False):
        pyro.clear_param_store()
        torch.manual_seed(seed)  # other initial weights on resume: the checkpoint restores all
        vae = tiny_vae(encoder=nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Linear(8, 4)))
        vae.eval()
        pyro.set_rng_seed(0)
        history = pv.fit(
            vae.model,
            vae.guide,
            pv.Batches(torch.rand(64, 6).round(), batch_size=16),
            epochs=epochs,
            device=here(),
            save=pv.Checkpoints(tmp_path, resume=resume, overwrite=overwrite),
            log=False,
        )
        return vae, history

    torch.manual_seed(0)
    full_vae, full = run(3, False, 0)
    assert not any(m.training for m in full_vae.modules())  # eval before fit, eval after
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=False)["modules"]
    assert "variational.encoder.1.running_mean" in saved
    assert saved["variational.encoder.1.num_batches_tracked"] == 3 * 4  # trained in train mode
    torch.save(torch.load(tmp_path / "checkpoint.pt", weights_only=False), tmp_path / "full.pt")
    run(1, False, 0, overwrite=True)
    resumed_vae, resumed = run(3, True, 5)
    assert resumed.loss == full.loss
    for (name, a), b in zip(
        full_vae.state_dict().items(), resumed_vae.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"epochs": 0}, "epochs must be a positive integer; got 0"),
        ({"epochs": 2.5}, "epochs must be a positive integer; got 2.5"),
        ({"epochs": 1, "log_every": 0}, "log_every must be a positive integer; got 0"),
        ({"epochs": 1, "e_steps": -1}, "e_steps must be a non-negative integer; got -1"),
        ({"epochs": 1, "validate_every": 0}, "validate_every must be a positive integer"),
        ({"epochs": 1, "e_steps": 2, "freeze_model": True}, "cannot be combined"),
        (
            {"epochs": 1, "e_steps": 2, "loss": pyro.infer.RenyiELBO()},
            "e_steps needs a loss with differentiable_loss; RenyiELBO has none",
        ),
        (
            {"epochs": 1, "freeze_model": True, "loss": pyro.infer.RenyiELBO()},
            "freeze_model=True needs a loss with differentiable_loss",
        ),
    ],
)
def test_fit_options_are_validated(options, message):
    """(Through the loop ``fit`` and ``infer_local`` share, which takes the options flat.)"""
    vae = tiny_vae()
    data = pv.Batches(torch.rand(8, 6).round(), batch_size=4)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        train(vae.model, vae.guide, data, device=here(), progress=False, **options)


def test_e_steps_and_freeze_model_messages_say_what_to_do():
    vae = tiny_vae()
    data = pv.Batches(torch.rand(8, 6).round(), batch_size=4)
    with pytest.raises(ValueError) as info:
        train(vae.model, vae.guide, data, epochs=1, e_steps=2, freeze_model=True)
    assert "freeze_model=True runs E-steps only" in str(info.value)
    assert "pass e_steps=k and leave freeze_model=False" in str(info.value)


@pytest.mark.parametrize("k", [0, -3, 1.5])
def test_evaluate_num_particles_and_max_rows_are_validated(k):
    vae = tiny_vae()
    x = torch.rand(4, 6).round()
    with pytest.raises(ValueError, match=f"num_particles must be a positive integer; got {k}"):
        pv.evaluate(vae.model, vae.guide, x, num_particles=k)
    with pytest.raises(ValueError, match=f"max_rows must be a positive integer; got {k}"):
        pv.evaluate(vae.model, vae.guide, x, num_particles=1, max_rows=k)


@pytest.mark.parametrize("scale", [0.0, -1.0, float("nan"), float("inf")])
def test_init_scale_is_validated(scale):
    with pytest.raises(ValueError, match="init_scale must be a positive number"):
        pv.PerDatapointGaussian(10, 2, init_scale=scale)
