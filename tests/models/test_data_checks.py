"""The VAE checks its data and pieces: data and index shapes, the likelihood's support, the
encoder's output size, an MLP's input, a Gaussian's scale; with validation off the data checks
are skipped."""

from __future__ import annotations

import pyro
import pytest
import torch
from helpers import bernoulli_vae
from pyro.infer import Trace_ELBO

import pyro_vae as pv


def tiny_vae(likelihood=None):
    return bernoulli_vae(likelihood=likelihood)


def loss(vae, x, idx=None, num_data=None):
    return Trace_ELBO().differentiable_loss(vae.model, vae.guide, x, idx, num_data=num_data)


def test_wrong_data_shape():
    vae = tiny_vae()
    with pytest.raises(ValueError, match=r"expected data of shape \(batch, 6\); got \(4, 5\)"):
        loss(vae, torch.zeros(4, 5))
    with pytest.raises(ValueError, match=r"expected data of shape \(batch, 6\); got \(6,\)"):
        loss(vae, torch.zeros(6))


def test_wrong_index_shape():
    with pytest.raises(ValueError, match=r"idx must have shape \(4,\)"):
        loss(tiny_vae(), torch.zeros(4, 6), torch.arange(3), num_data=10)


def test_bernoulli_data_outside_unit_interval():
    with pytest.raises(ValueError, match=r"Bernoulli likelihood expects data in \[0, 1\]"):
        loss(tiny_vae(), torch.full((4, 6), 2.0))
    # Grey values inside [0, 1] are accepted (the usual BCE likelihood of grey images).
    assert torch.isfinite(loss(tiny_vae(), torch.full((4, 6), 0.3)))


def test_validation_off_skips_the_check():
    pyro.enable_validation(False)
    try:
        assert torch.isfinite(loss(tiny_vae(), torch.full((4, 6), 2.0)))
    finally:
        pyro.enable_validation(True)


def test_encoder_output_size():
    vae = pv.VAE(
        pv.StandardNormalPrior(2),
        pv.BernoulliLikelihood(pv.MLP(2, 6, (8,)), 6),
        pv.GaussianEncoder(pv.MLP(6, 3, (8,)), 2),
    )
    with pytest.raises(ValueError, match="2 \\* latent_dim = 4 features"):
        loss(vae, torch.zeros(4, 6))


def test_mlp_input_shape():
    with pytest.raises(ValueError, match=r"MLP expects inputs of shape \(\*batch, 6\)"):
        pv.MLP(6, 2)(torch.zeros(3, 5))


def test_gaussian_scale_must_be_positive():
    with pytest.raises(ValueError, match="scale must be positive"):
        pv.GaussianLikelihood(pv.MLP(2, 6), 6, scale=0.0)
