"""CUDA: the same training and evaluation on the GPU (skipped without one)."""

from __future__ import annotations

import pytest
import torch

import pyro_vae as pv

pytestmark = pytest.mark.cuda


def test_fit_and_evaluate_on_cuda():
    vae = pv.VAE(
        pv.MAFPrior(4, transforms=2, hidden_features=(32, 32)),
        pv.BernoulliLikelihood(pv.MLP(4, 20, (32,)), 20),
        pv.GaussianEncoder(pv.MLP(20, 8, (32,)), 4),
    )
    data = pv.Batches(torch.rand(512, 20), batch_size=64, binarize="dynamic")
    history = pv.fit(
        vae.model, vae.guide, data, epochs=3, modules=vae, device="cuda", progress=False
    )
    assert all(p.is_cuda for p in vae.parameters())
    assert history.loss[-1] < history.loss[0]
    result = pv.evaluate(vae.model, vae.guide, data.to("cuda"), num_particles=500)
    assert result.log_likelihood >= result.elbo
    assert vae.sample(3).is_cuda
