"""Exact answers: a linear-Gaussian VAE is probabilistic PCA (Tipping & Bishop 1999).

With p(z) = N(0, I), p(x|z) = N(Wz + b, σ²I):
    log p(x) = log N(x; b, WWᵀ + σ²I),
    p(z|x) = N(Σ Wᵀ(x − b) / σ², Σ),  Σ = (I + WᵀW / σ²)⁻¹.
W has orthogonal columns, so Σ is diagonal and the diagonal Gaussian guide can be exact.
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers import PPCA_B as B
from helpers import PPCA_D as D
from helpers import ppca

import pyro_vae as pv


def test_exact_posterior_gives_exact_log_likelihood():
    vae, x, log_px, _ = ppca()
    # With q = p(z|x) every importance weight equals p(x): the ELBO is tight.
    lw = pv.log_weights(vae.model, vae.guide, x, num_particles=10)
    torch.testing.assert_close(lw, log_px.expand(10, B), rtol=0, atol=1e-10)
    result = pv.evaluate(vae.model, vae.guide, x, num_particles=10)
    assert result.elbo == pytest.approx(log_px.mean().item(), abs=1e-10)
    assert result.log_likelihood == pytest.approx(log_px.mean().item(), abs=1e-10)


def test_elbo_bounds_and_importance_sampling_converges():
    vae, x, log_px, (a, b, cov) = ppca()
    shift, stretch = 0.1, 1.5
    with torch.no_grad():  # a worse guide: shifted mean, wider scale
        vae.variational.encoder.bias[:D] += shift
        vae.variational.encoder.bias[D:] += math.log(stretch)
    # Exact ELBO = log p(x) − KL(q ‖ p(z|x)), both Gaussians.
    post_loc, post_scale = x @ a.T - a @ b, torch.diagonal(cov).sqrt()
    q = torch.distributions.Normal(post_loc + shift, stretch * post_scale)
    post = torch.distributions.Normal(post_loc, post_scale)
    exact_elbo = log_px - torch.distributions.kl_divergence(q, post).sum(-1)
    assert (exact_elbo < log_px - 0.5).all()

    k = 20000
    lw = pv.log_weights(vae.model, vae.guide, x, num_particles=k)
    # The Monte-Carlo ELBO matches the closed form within 5 standard errors, per point.
    stderr = lw.std(0) / math.sqrt(k)
    assert ((lw.mean(0) - exact_elbo).abs() < 5 * stderr).all()
    assert (lw.mean(0) < log_px).all()
    # The importance-sampled estimate of log p(x) with K particles has, per point, bias
    # -ρ/(2K) and variance ρ/K to first order (delta method), ρ = Var(w)/E[w]² (finite: q is
    # wider than the posterior). Estimated from the 20000 weights above, these put the
    # estimate within 5 standard errors of the exact log p(x); at K = 5000 that is ±0.015,
    # against the ELBO's gap of ~0.7.
    rho = (2 * (lw - (lw.logsumexp(0) - math.log(k)))).exp().mean(0) - 1
    assert (rho < 1).all(), rho  # light-tailed weights: the first-order terms describe it
    for particles in (10, 5000):
        est = pv.evaluate(vae.model, vae.guide, x, num_particles=particles, max_rows=2**14)
        bias = -(rho / (2 * particles)).mean().item()
        se = (rho / particles).sum().sqrt().item() / B
        error = est.log_likelihood - log_px.mean().item() - bias
        assert abs(error) < 5 * se, (particles, est, se)
    assert 5 * se < 0.015  # at K = 5000 the check is tight
    # The K = 5000 ELBO is the closed form's mean within 5 standard errors.
    elbo_se = (lw.var(0) / 5000).sum().sqrt().item() / B
    assert est.elbo == pytest.approx(exact_elbo.mean().item(), abs=5 * elbo_se)
