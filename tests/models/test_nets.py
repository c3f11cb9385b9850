"""Convolutional encoder and decoder: shapes, and BatchNorm under SVI."""

from __future__ import annotations

import pyro
import pytest
import torch
from helpers import here

import pyro_vae as pv


def conv_vae(latent: int = 8) -> pv.VAE:
    return pv.VAE(
        pv.StandardNormalPrior(latent),
        pv.BernoulliLikelihood(pv.ConvDecoder(latent, channels=(32, 16, 8)), (1, 28, 28)),
        pv.GaussianEncoder(pv.ConvEncoder(2 * latent, channels=(8, 16, 16)), latent),
    )


def test_shapes():
    assert pv.ConvEncoder(64)(torch.zeros(3, 1, 28, 28)).shape == (3, 64)
    assert pv.ConvEncoder(10)(torch.zeros(2, 3, 1, 28, 28)).shape == (2, 3, 10)
    assert pv.ConvDecoder(32)(torch.zeros(4, 32)).shape == (4, 1, 28, 28)
    assert pv.ConvDecoder(5, out_channels=3)(torch.zeros(2, 4, 5)).shape == (2, 4, 3, 28, 28)
    with pytest.raises(ValueError, match=r"\(\*batch, 1, 28, 28\)"):
        pv.ConvEncoder(4)(torch.zeros(2, 784))


def test_batchnorm_eval_mode_makes_evaluation_deterministic():
    vae = conv_vae()
    x = torch.rand(16, 1, 28, 28)
    data = pv.Batches(x, batch_size=8)
    pv.fit(
        vae.model,
        vae.guide,
        data,
        epochs=2,
        modules=vae,
        device=here(),
        log=False,
    )
    assert vae.training  # fit trains in train mode

    # In train mode BatchNorm normalizes with the batch's statistics: a point's reconstruction
    # depends on the other points of its batch. In eval mode it does not.
    vae.train()
    with torch.no_grad():
        q_train = vae.variational.encoder(x)[:4], vae.variational.encoder(x[:4])
    assert not torch.allclose(*q_train)
    vae.eval()
    with torch.no_grad():
        q_eval = vae.variational.encoder(x)[:4], vae.variational.encoder(x[:4])
    torch.testing.assert_close(*q_eval, rtol=1e-5, atol=1e-5)

    # Evaluation and pictures in eval mode are reproducible; running statistics stay put.
    stats = {k: v.clone() for k, v in vae.state_dict().items() if "running" in k}
    pyro.set_rng_seed(1)
    a = pv.evaluate(vae.model, vae.guide, x, num_particles=5)
    pyro.set_rng_seed(1)
    b = pv.evaluate(vae.model, vae.guide, x, num_particles=5)
    assert a == b
    torch.testing.assert_close(vae.reconstruct(x)[:4], vae.reconstruct(x[:4]))
    for k, v in vae.state_dict().items():
        if "running" in k:
            torch.testing.assert_close(v, stats[k], rtol=0, atol=0)


def test_sample_and_reconstruct_use_eval_mode_and_restore_it():
    vae = conv_vae()
    vae.train()
    before = {k: v.clone() for k, v in vae.state_dict().items() if "running_mean" in k}
    assert vae.sample(4).shape == (4, 1, 28, 28)
    assert vae.reconstruct(torch.rand(4, 1, 28, 28)).shape == (4, 1, 28, 28)
    assert vae.training
    for k, v in before.items():  # no BatchNorm statistics were updated by the pictures
        torch.testing.assert_close(vae.state_dict()[k], v, rtol=0, atol=0)
