"""A trained VAE outside the training script: pv.load_checkpoint restores it for inference."""

from __future__ import annotations

import pyro
import pytest
import torch
from helpers import here

import pyro_vae as pv
from pyro_vae.train.checkpoint import CheckpointError


def conv_vae() -> pv.VAE:  # BatchNorm: buffers must come back too
    return pv.models.zoo.conv_vae(latent_dim=4)


def test_a_trained_vae_is_restored_for_inference(tmp_path):
    x = torch.rand(32, 1, 28, 28).round()
    torch.manual_seed(0)
    trained = conv_vae()
    pv.fit(
        trained.model,
        trained.guide,
        pv.Batches(x, batch_size=16),
        epochs=2,
        save=tmp_path,
        log=False,
        device=here(),
    )
    pyro.clear_param_store()
    torch.manual_seed(1)
    vae = conv_vae()  # other initial weights, as in a new script
    history = pv.load_checkpoint(tmp_path / "checkpoint.pt", vae)
    assert history.epoch == [1, 2]
    for (name, a), b in zip(trained.state_dict().items(), vae.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=name)  # buffers included
    trained.eval(), vae.eval()
    torch.testing.assert_close(vae.reconstruct(x[:4]), trained.reconstruct(x[:4]))
    with torch.no_grad():
        torch.testing.assert_close(vae.variational(x[:4]).mean, trained.variational(x[:4]).mean)


def test_another_architecture_is_named(tmp_path):
    vae = pv.models.zoo.latent2d_vae(hidden=8)
    pv.fit(
        vae.model,
        vae.guide,
        pv.Batches(torch.rand(16, 784), batch_size=8),
        epochs=1,
        save=tmp_path,
        log=False,
        device=here(),
    )
    with pytest.raises(
        CheckpointError, match=r"'likelihood\.decoder\.0\.weight' has shape \(8, 2\)"
    ):
        pv.load_checkpoint(tmp_path / "checkpoint.pt", pv.models.zoo.latent2d_vae(hidden=16))
    with pytest.raises(CheckpointError, match=r"has no entry 'prior\.flow"):
        pv.load_checkpoint(
            tmp_path / "checkpoint.pt", pv.models.zoo.flow_prior_vae(latent_dim=2, hidden=8)
        )
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read as data"):
        pv.load_checkpoint(tmp_path / "bad.pt", vae)
