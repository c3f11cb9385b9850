"""Two stochastic layers and the VampPrior: exact answers on a linear-Gaussian hierarchy, the
mixture's density by hand, and the package's tools (fit, evaluate, resume, the amortization
gap) on both with nothing special."""

from __future__ import annotations

import math

import pyro
import pytest
import torch
from helpers import generator
from pyro import poutine
from torch import nn

import pyro_vae as pv
from pyro_vae.models.priors import DiagonalNormalMixture

F, D1, D2, B = 5, 2, 2, 16
SIGMA, S1 = 0.3, 0.5


def gaussian(linear: nn.Linear, latent_dim: int) -> pv.GaussianEncoder:
    return pv.GaussianEncoder(linear, latent_dim)


def linear_hierarchy(dtype=torch.float64):
    """z2 ~ N(0, I), z1 | z2 ~ N(A z2 + a, S1² I), x | z1 ~ N(W z1 + b, σ² I), with A diagonal
    and W with orthogonal columns: every posterior factor is a diagonal Gaussian, linear in its
    input, so the guide q(z1|x) q(z2|z1) = p(z1|x) p(z2|z1) is exact."""
    g = generator(0)
    q, _ = torch.linalg.qr(torch.randn(F, F, generator=g, dtype=dtype))
    w = q[:, :D1] * torch.tensor([2.0, 0.7], dtype=dtype)
    b = torch.randn(F, generator=g, dtype=dtype)
    a_diag = torch.tensor([1.5, 0.4], dtype=dtype)
    a = torch.randn(D1, generator=g, dtype=dtype)
    cov_z1 = torch.diag(a_diag**2 + S1**2)  # Cov(z1) = A Aᵀ + S1² I
    # p(z1 | x): precision Cov(z1)⁻¹ + WᵀW/σ², mean Σ (Cov(z1)⁻¹ a + Wᵀ(x − b)/σ²)
    cov1 = torch.linalg.inv(torch.linalg.inv(cov_z1) + w.T @ w / SIGMA**2)
    gain1 = cov1 @ w.T / SIGMA**2
    shift1 = cov1 @ torch.linalg.inv(cov_z1) @ a - gain1 @ b
    # p(z2 | z1): precision I + AᵀA/S1², mean Σ Aᵀ (z1 − a) / S1²
    cov2 = torch.linalg.inv(torch.eye(D2, dtype=dtype) + torch.diag(a_diag**2) / S1**2)
    gain2 = cov2 @ torch.diag(a_diag) / S1**2
    layers = [nn.Linear(F, 2 * D1), nn.Linear(D1, 2 * D2), nn.Linear(D2, 2 * D1), nn.Linear(D1, F)]
    enc1, enc2, cond, dec = (m.to(dtype) for m in layers)
    with torch.no_grad():
        for m in (enc1, enc2, cond):
            m.weight.zero_()
        enc1.weight[:D1].copy_(gain1)
        enc1.bias[:D1].copy_(shift1)
        enc1.bias[D1:].copy_(0.5 * torch.diagonal(cov1).log())
        enc2.weight[:D2].copy_(gain2)
        enc2.bias[:D2].copy_(-gain2 @ a)
        enc2.bias[D2:].copy_(0.5 * torch.diagonal(cov2).log())
        cond.weight[:D1].copy_(torch.diag(a_diag))
        cond.bias[:D1].copy_(a)
        cond.bias[D1:].fill_(math.log(S1))
        dec.weight.copy_(w)
        dec.bias.copy_(b)
    assert torch.allclose(cov1, torch.diag(torch.diagonal(cov1)), atol=1e-12)
    vae = pv.HierarchicalVAE(
        pv.StandardNormalPrior(D2),
        [gaussian(cond, D1)],
        pv.GaussianLikelihood(dec, F, scale=SIGMA),
        [gaussian(enc1, D1), gaussian(enc2, D2)],
    ).to(dtype)
    vae.likelihood.log_scale.fill_(math.log(SIGMA))
    marginal = torch.distributions.MultivariateNormal(
        w @ a + b, w @ cov_z1 @ w.T + SIGMA**2 * torch.eye(F, dtype=dtype)
    )
    x = marginal.sample((B,))
    return vae, x, marginal.log_prob(x)


def test_sites_plate_and_shapes():
    vae, x, _ = linear_hierarchy()
    idx = torch.arange(B) + 10
    guide_tr = poutine.trace(vae.guide).get_trace(x, idx, num_data=4 * B)
    model_tr = poutine.trace(poutine.replay(vae.model, trace=guide_tr)).get_trace(
        x, idx, num_data=4 * B
    )

    def sites(trace):  # the sample sites, without the plate's subsample site
        return [n for n, s in trace.nodes.items() if s["type"] == "sample" and n != "data"]

    assert sites(guide_tr) == ["z1", "z2"] and sites(model_tr) == ["z2", "z1", "x"]
    for name in ("z1", "z2"):
        assert model_tr.nodes[name]["value"] is guide_tr.nodes[name]["value"]
        assert model_tr.nodes[name]["scale"] == 4
    assert vae.sample(3).shape == (3, F) and vae.reconstruct(x).shape == x.shape
    prefixes = {n.split("$$$")[0] for n, _ in pyro.get_param_store().items()}
    assert prefixes == {"vae.prior", "vae.conditionals", "vae.likelihood", "vae.guide"} - {
        "vae.prior"  # a standard normal prior has no parameters
    }


def test_exact_guide_gives_exact_log_likelihood():
    vae, x, log_px = linear_hierarchy()
    lw = pv.log_weights(vae.model, vae.guide, x, num_particles=10)
    torch.testing.assert_close(lw, log_px.expand(10, B), rtol=0, atol=1e-10)
    result = pv.evaluate(vae.model, vae.guide, x, num_particles=10)
    assert result.log_likelihood == pytest.approx(log_px.mean().item(), abs=1e-10)
    for k in (1, 4):  # the IWAE bound is exact at every K with the exact guide
        iwae = pv.ImportanceWeightedELBO(k, max_plate_nesting=1)
        assert -iwae.loss(vae.model, vae.guide, x) == pytest.approx(log_px.sum().item(), abs=1e-9)


def exact_gaps(vae: pv.HierarchicalVAE, mean_shift: float, scale_factor: float):
    """The gaps in closed form, per point, for the linear hierarchy's guide with q(z1|x)'s mean
    shifted by ``mean_shift`` and q(z2|z1)'s scale multiplied by ``scale_factor``.

    p(z1, z2 | x) is Gaussian with precision Λ; the best Gaussian that is diagonal per point
    and layer (q*) has its means and precisions diag(Λ), so the approximation gap is
    KL(q* || p) = ½ (Σ log Λ_ii − log det Λ). The perturbed guide's KL to p(z1|x) p(z2|z1) is
    ½ Σ shift² / Var(z1_i | x) + ½ D2 (s² − 1 − log s²): the amortized gap is the rest."""
    w = vae.likelihood.decoder.weight.detach()
    a = vae.conditionals[0].encoder.weight.detach()[:D1]
    eye1, eye2 = torch.eye(D1, dtype=w.dtype), torch.eye(D2, dtype=w.dtype)
    precision = torch.cat(
        [
            torch.cat([eye1 / S1**2 + w.T @ w / SIGMA**2, -a / S1**2], 1),
            torch.cat([-a.T / S1**2, eye2 + a.T @ a / S1**2], 1),
        ]
    )
    approximation = 0.5 * (precision.diagonal().log().sum() - torch.logdet(precision)).item()
    var1 = vae.variational[0].encoder.bias[D1:].detach().mul(2).exp()  # Var(z1 | x)
    s2 = scale_factor**2
    kl = 0.5 * (mean_shift**2 / var1).sum().item() + 0.5 * D2 * (s2 - 1 - math.log(s2))
    return approximation, kl - approximation, kl


def test_worse_guide_the_bounds_and_the_gap():
    vae, x, log_px = linear_hierarchy()
    approximation, amortization, kl = exact_gaps(vae, 0.3, 1.5)
    with torch.no_grad():
        vae.variational[0].encoder.bias[:D1] += 0.3
        vae.variational[1].encoder.bias[D2:] += math.log(1.5)
    estimate = pv.evaluate(vae.model, vae.guide, x, num_particles=20000, max_rows=2**18)
    assert estimate.elbo < log_px.mean().item() - 0.1
    assert estimate.log_likelihood == pytest.approx(log_px.mean().item(), abs=0.02)
    data = pv.Batches(x, batch_size=B, shuffle=False)
    gap = pv.amortization_gap(vae, data, epochs=1000, lr=3e-2, num_particles=2000)
    # q* is one Gaussian per point and layer, fitted from the encoders' outputs: the split
    # matches the closed form (0.13 and 2.68 nats; measured 0.134 and 2.669: q*'s optimization
    # and the importance-sampling estimates leave a few hundredths).
    assert gap.elbo_amortized == pytest.approx(log_px.mean().item() - kl, abs=0.03)
    assert gap.approximation_gap == pytest.approx(approximation, abs=0.03)
    assert gap.amortization_gap == pytest.approx(amortization, abs=0.04)
    assert gap.log_likelihood == pytest.approx(log_px.mean().item(), abs=0.05)


def test_infer_local_fits_one_per_datapoint_guide_per_layer():
    vae, x, _ = linear_hierarchy()
    data = pv.Batches(x, batch_size=8)
    local = pv.infer_local(vae, data, epochs=2, init=vae.guide_layers())
    layers = local.guide_layers()
    assert [type(g) for g in layers] == [pv.PerDatapointGaussian] * 2
    assert [tuple(g.loc.shape) for g in layers] == [(B, D1), (B, D2)]
    assert local.conditionals[0] is vae.conditionals[0]  # the model is shared, not copied
    with pytest.raises(ValueError, match="one guide per latent layer"):
        pv.infer_local(vae, data, epochs=1, init=vae.variational[0])


def small_two_layer(seed: int) -> pv.HierarchicalVAE:
    torch.manual_seed(seed)
    return pv.HierarchicalVAE(
        pv.StandardNormalPrior(2),
        [pv.GaussianEncoder(pv.MLP(2, 2 * 3, (8,)), 3)],
        pv.BernoulliLikelihood(pv.MLP(3, 6, (8,)), 6),
        [pv.GaussianEncoder(pv.MLP(6, 2 * 3, (8,)), 3), pv.GaussianEncoder(pv.MLP(3, 4, (8,)), 2)],
    )


def two_layer_run(save_dir, epochs, *, resume=False, seed=0):
    pyro.clear_param_store()
    vae = small_two_layer(seed)
    data = pv.Batches(torch.rand(40, 6, generator=generator(1)).round(), batch_size=10)
    pyro.set_rng_seed(0)
    loss = pv.ImportanceWeightedELBO(3, max_plate_nesting=1)
    history = pv.fit(
        vae.model,
        vae.guide,
        data,
        epochs=epochs,
        loss=loss,
        save=pv.Checkpoints(save_dir, resume=resume),
        log=False,
    )
    return vae, history


def test_fit_and_exact_resume_need_nothing_special(tmp_path):
    vae_a, hist_a = two_layer_run(tmp_path / "a", 3)
    two_layer_run(tmp_path / "b", 1)
    vae_b, hist_b = two_layer_run(tmp_path / "b", 3, resume=True, seed=5)
    assert hist_a.loss == hist_b.loss and hist_b.epoch == [1, 2, 3]
    a, b = vae_a.state_dict(), vae_b.state_dict()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=0, msg=name)


def test_layer_mismatches_are_refused():
    enc = [pv.GaussianEncoder(pv.MLP(6, 6, (8,)), 3), pv.GaussianEncoder(pv.MLP(3, 4, (8,)), 2)]
    lik = pv.BernoulliLikelihood(pv.MLP(3, 6, (8,)), 6)
    with pytest.raises(ValueError, match="need L guides and L - 1 conditionals"):
        pv.HierarchicalVAE(pv.StandardNormalPrior(2), [], lik, enc)
    wrong = [pv.GaussianEncoder(pv.MLP(2, 4, (8,)), 2)]  # gives z1 of dimension 2, not 3
    with pytest.raises(ValueError, match=r"latent dimensions are \[3, 2\]"):
        pv.HierarchicalVAE(pv.StandardNormalPrior(2), wrong, lik, enc)
    with pytest.raises(TypeError, match=r"the guide must be an nn\.Module"):
        pv.HierarchicalVAE(pv.StandardNormalPrior(2), wrong, lik, [enc[0], nn.Linear(3, 2)])


# ---------------------------------------------------------------- VampPrior


def test_vamp_density_is_the_mixture_of_the_encoder_at_the_pseudo_inputs():
    encoder = pv.GaussianEncoder(pv.MLP(F, 2 * 3, (8,)), 3).double()
    init = torch.rand(7, F, dtype=torch.float64) * 1.4 - 0.2  # some outside [0, 1]
    prior = pv.VampPrior(encoder, 7, (F,), init=init)
    z = torch.randn(4, 2, 3, dtype=torch.float64)
    q = encoder(init.clamp(0, 1))  # bounds (0, 1): hardtanh
    by_hand = q.log_prob(z.unsqueeze(-2)).logsumexp(-1) - math.log(7)
    torch.testing.assert_close(prior().log_prob(z), by_hand, rtol=0, atol=1e-12)
    assert prior().batch_shape == () and prior().event_shape == (3,)
    assert list(dict(prior.named_parameters())) == ["pseudo_inputs"]  # the encoder is read


def test_vamp_mixture_density_in_float32_is_the_float64_one():
    """The O(R K) log-density (matrix products, evaluated in float64) against a float64
    MixtureSameFamily, with tight components (σ ≥ 0.01) where float32 products would lose
    ~0.1 nats to cancellation."""
    torch.manual_seed(0)
    loc, scale = 2 * torch.randn(500, 50), 0.2 * torch.rand(500, 50) + 0.01
    z = loc[torch.randint(500, (300,))] + scale[torch.randint(500, (300,))] * torch.randn(300, 50)
    weights = pyro.distributions.Categorical(logits=torch.zeros(500))
    fast = DiagonalNormalMixture(weights, pyro.distributions.Normal(loc, scale).to_event(1))
    exact = pyro.distributions.MixtureSameFamily(
        pyro.distributions.Categorical(logits=torch.zeros(500, dtype=torch.float64)),
        pyro.distributions.Normal(loc.double(), scale.double()).to_event(1),
    ).log_prob(z.double())
    assert fast.log_prob(z).dtype == torch.float32
    torch.testing.assert_close(fast.log_prob(z).double(), exact, rtol=0, atol=1e-4)


def test_vamp_shares_weights_once_and_trains_everything():
    encoder = pv.GaussianEncoder(pv.MLP(6, 2 * 3, (8,)), 3)
    prior = pv.VampPrior(encoder, 5, (6,))
    vae = pv.VAE(prior, pv.BernoulliLikelihood(pv.MLP(3, 6, (8,)), 6), encoder)
    data = pv.Batches(torch.rand(40, 6).round(), batch_size=10)
    before = {n: p.detach().clone() for n, p in vae.named_parameters()}
    pv.fit(vae.model, vae.guide, data, epochs=2, log=False)
    tensors = [t for _, t in pyro.get_param_store().items()]
    assert len({id(t) for t in tensors}) == len(tensors) == len(before)  # each tensor once
    for name, p in vae.named_parameters():
        assert (p != before[name]).any(), name
    # Held-out inference keeps the mixture of the trained encoder as the model's prior.
    gap = pv.amortization_gap(vae, data, epochs=3, num_particles=20)
    assert math.isfinite(gap.amortization_gap)


def test_vamp_over_a_guide_chain_in_a_two_layer_vae():
    vae = small_two_layer(0)
    prior = pv.VampPrior(pv.GuideChain(vae.guide_layers()), 4, (6,))
    two = pv.HierarchicalVAE(prior, list(vae.conditionals), vae.likelihood, vae.guide_layers())
    x = torch.rand(8, 6).round()
    loss = pv.TensorTrace_ELBO().differentiable_loss(two.model, two.guide, x)
    loss.backward()
    for name, p in two.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_vamp_refuses_what_would_go_wrong_silently():
    encoder = pv.GaussianEncoder(pv.MLP(6, 2 * 3, (8,)), 3)
    lik = pv.BernoulliLikelihood(pv.MLP(3, 6, (8,)), 6)
    other = pv.GaussianEncoder(pv.MLP(6, 2 * 3, (8,)), 3)
    with pytest.raises(ValueError, match="reads a GaussianEncoder that is not part of this VAE"):
        pv.VAE(pv.VampPrior(other, 5, (6,)), lik, encoder)
    with pytest.raises(TypeError, match="per-datapoint guide has no encoder"):
        pv.VampPrior(pv.PerDatapointGaussian(10, 3), 5, (6,))
    with pytest.raises(ValueError, match=r"init must have shape \(5, 6\)"):
        pv.VampPrior(encoder, 5, (6,), init=torch.rand(4, 6))
