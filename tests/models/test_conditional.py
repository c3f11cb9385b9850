"""ConditionalVAE: p(z | c) p(x | z, c) and q(z | x, c) with the condition a field of the
batches: the exact conditional log-likelihood of a linear-Gaussian one, the mask, training
through fit, and what it refuses."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import generator, here
from pyro import poutine
from torch import nn

import pyro_vae as pv

D, C, F = 2, 3, 4


def linear_cvae(dtype=torch.float64) -> tuple[pv.ConditionalVAE, dict]:
    """p(z | c) = N(A c, I), p(x | z, c) = N(W z + V c + b, σ² I): linear maps with fixed
    weights. The guide has the exact posterior's mean, Σ (A c + Wᵀ (x - V c - b) / σ²) with
    Σ = (I + Wᵀ W / σ²)⁻¹, and 1.5 times its marginal standard deviations: a good proposal,
    not the posterior (whose covariance is not diagonal)."""
    g = generator(0)
    A, W, V = (torch.randn(*s, generator=g, dtype=dtype) for s in ((D, C), (F, D), (F, C)))
    b, sigma = torch.randn(F, generator=g, dtype=dtype), 0.7
    prior_net, decoder, encoder = nn.Linear(C, 2 * D), nn.Linear(D + C, F), nn.Linear(F + C, 2 * D)
    cov = torch.linalg.inv(torch.eye(D, dtype=dtype) + W.T @ W / sigma**2)
    with torch.no_grad():
        prior_net.weight.copy_(torch.cat([A, torch.zeros(D, C, dtype=dtype)]))
        prior_net.bias.zero_()
        decoder.weight.copy_(torch.cat([W, V], 1))
        decoder.bias.copy_(b)
        loc_x, loc_c = cov @ W.T / sigma**2, cov @ (A - W.T @ V / sigma**2)
        encoder.weight.copy_(torch.cat([torch.cat([loc_x, loc_c], 1), torch.zeros(D, F + C)]))
        log_scale = (1.5 * cov.diagonal().sqrt()).log()
        encoder.bias.copy_(torch.cat([-cov @ W.T @ b / sigma**2, log_scale]))
    cvae = pv.ConditionalVAE(
        pv.GaussianEncoder(prior_net, D),
        pv.GaussianLikelihood(decoder, F, scale=sigma),
        pv.GaussianEncoder(encoder, D),
    ).to(dtype)
    return cvae, {"A": A, "W": W, "V": V, "b": b, "sigma": sigma}


def test_evaluate_gives_the_exact_conditional_log_likelihood():
    """x | c ~ N(W A c + V c + b, W Wᵀ + σ² I): evaluate's importance-sampled log p(x | c),
    with the condition passed as a field, is within 0.02 nats of it; shuffled conditions are
    far from it."""
    cvae, p = linear_cvae()
    g = generator(1)
    c = torch.randn(40, C, generator=g, dtype=torch.float64)
    mean = c @ (p["W"] @ p["A"] + p["V"]).T + p["b"]
    cov = p["W"] @ p["W"].T + p["sigma"] ** 2 * torch.eye(F, dtype=torch.float64)
    marginal = torch.distributions.MultivariateNormal(mean, cov)
    noise = torch.randn(40, F, generator=g, dtype=torch.float64)
    x = mean + noise @ torch.linalg.cholesky(cov).T
    exact = marginal.log_prob(x).mean().item()
    result = pv.evaluate(cvae.model, cvae.guide, pv.Batches(x, c=c, batch_size=40),
                         num_particles=20000)  # fmt: skip
    assert result.log_likelihood == pytest.approx(exact, abs=0.02)
    assert result.elbo < result.log_likelihood
    wrong = pv.evaluate(cvae.model, cvae.guide, pv.Batches(x, c=c.flip(0), batch_size=40),
                        num_particles=2000)  # fmt: skip
    assert wrong.log_likelihood < exact - 1.0


def test_the_mask_scores_the_masked_features_only():
    """With ``mask="observed"`` the likelihood's log-density is the sum of the per-feature
    log-densities over the observed features (by hand, at the same z); the guide still reads
    the whole point."""
    cvae, _ = linear_cvae(torch.float32)
    cvae.mask = "observed"
    x, c = torch.randn(8, F), torch.randn(8, C)
    observed = torch.tensor([True, False, True, False]).expand(8, F)
    fields = {"c": c, "observed": observed}
    guide_trace = poutine.trace(cvae.guide).get_trace(x, **fields)
    model_trace = poutine.trace(poutine.replay(cvae.model, trace=guide_trace)).get_trace(
        x, **fields
    )
    site, z = model_trace.nodes["x"], guide_trace.nodes["z"]["value"]
    per_feature = cvae.likelihood(torch.cat([z, c], -1)).base_dist.log_prob(x)  # (8, F)
    expected = (per_feature * observed).sum(-1)
    torch.testing.assert_close(site["fn"].log_prob(x), expected)
    assert not torch.allclose(expected, per_feature.sum(-1))


def test_a_conditional_vae_trains_through_fit_and_draws_from_its_conditions():
    g = generator(0)
    c = torch.randn(300, C, generator=g)
    x = (c @ torch.randn(C, F, generator=g) + 0.1 * torch.randn(300, F, generator=g)).sigmoid()
    cvae = pv.ConditionalVAE(
        pv.GaussianEncoder(pv.MLP(C, 2 * D, (16,)), D),
        pv.BernoulliLikelihood(pv.MLP(D + C, F, (16,)), F),
        pv.GaussianEncoder(pv.MLP(F + C, 2 * D, (16,)), D),
    )
    history = pv.fit(
        cvae.model,
        cvae.guide,
        pv.Batches(x, c=c, batch_size=50),
        epochs=15,
        device=here(),
        log=False,
        optim=pv.LazyAdam({"lr": 1e-2}),
    )
    assert history.loss[-1] < history.loss[0] and all(map(math.isfinite, history.loss))
    assert cvae.sample(c[:5]).shape == (5, F)
    assert cvae.reconstruct(x[:5], c=c[:5]).shape == (5, F)
    unconditional = pv.ConditionalVAE(
        pv.StandardNormalPrior(D), cvae.likelihood, cvae.variational, name="unconditional"
    )
    assert unconditional.sample(c[:5]).shape == (5, F)


def test_a_conditional_vae_names_the_fields_it_reads():
    cvae, _ = linear_cvae(torch.float32)
    x, c = torch.randn(16, F), torch.randn(16, C)
    with pytest.raises(TypeError, match=r"reads the field\(s\) \['c'\] of the batches; got \[\]"):
        pv.fit(cvae.model, cvae.guide, pv.Batches(x, batch_size=8), epochs=1, log=False)
    with pytest.raises(TypeError, match=r"reads the field\(s\) \['c'\].*got \['cond'\]"):
        pv.fit(cvae.model, cvae.guide, pv.Batches(x, cond=c, batch_size=8), epochs=1, log=False)


def test_local_inference_and_the_amortization_gap_read_the_condition():
    """infer_local started from the encoder, and amortization_gap, feed the guide's encoder
    [x, c]: the per-datapoint optimum is at least as good as the encoder (ELBO), and both
    bound the importance-sampled log p(x | c)."""
    cvae, _ = linear_cvae(torch.float32)
    g = generator(2)
    c, x = torch.randn(64, C, generator=g), torch.randn(64, F, generator=g)
    data = pv.Batches(x, c=c, batch_size=32)
    local = pv.infer_local(cvae, data, epochs=1, lr=1e-7, init=cvae.variational)  # (stays put)
    start = cvae.variational(cvae.guide_input(x, {"c": c})).mean
    torch.testing.assert_close(local.variational.loc, start, atol=1e-4, rtol=0)
    gap = pv.amortization_gap(cvae, data, epochs=50, lr=0.05, num_particles=500)
    assert gap.elbo_optimal >= gap.elbo_amortized - 0.05
    assert gap.log_likelihood >= gap.elbo_optimal - 0.05


def test_a_network_of_the_wrong_width_is_named_with_its_piece():
    """A likelihood decoder built for z alone in a CVAE that decodes [z, c]: the error says
    which piece, what it reads and how wide that is."""
    x, c = torch.rand(16, 6).round(), torch.randn(16, 3)
    cvae = pv.ConditionalVAE(pv.GaussianEncoder(pv.MLP(3, 4), 2),
                             pv.BernoulliLikelihood(pv.MLP(2, 6), 6),  # reads [z, c]: 5
                             pv.GaussianEncoder(pv.MLP(6 + 3, 4), 2))  # fmt: skip
    message = r"likelihood p\(x \| z, c\) reads \[z, c\]: 5 features \(2 \+ 3 of the field 'c'\)"
    with pytest.raises(ValueError, match=message):
        pv.fit(cvae.model, cvae.guide, pv.Batches(x, c=c, batch_size=8), epochs=1, device=here(),
               log=False)  # fmt: skip


def test_a_mask_field_of_the_wrong_shape_is_named():
    x, c = torch.rand(16, 6).round(), torch.randn(16, 3)
    cvae = pv.ConditionalVAE(pv.GaussianEncoder(pv.MLP(3, 4), 2),
                             pv.BernoulliLikelihood(pv.MLP(2 + 3, 6), 6),
                             pv.GaussianEncoder(pv.MLP(6 + 3, 4), 2), mask="m")  # fmt: skip
    data = pv.Batches(x, c=c, m=torch.ones(16, 3, dtype=torch.bool), batch_size=8)
    with pytest.raises(ValueError, match=r"mask field 'm' has rows of shape \(3,\).*\(6,\)"):
        pv.fit(cvae.model, cvae.guide, data, epochs=1, device=here(), log=False)
