"""Scores you can trust: ``evaluate`` against Pyro's ELBO classes and against exact answers.

- The scoring matrix: for every model of the contract matrix, the zoo, the examples' models
  and hand-written pairs (enumerated, masked, conditional, count, 8-bit), ``evaluate``'s ELBO
  equals Pyro's (``TraceEnum_ELBO`` with vectorized particles, scales set to 1) on the same
  random numbers: the same particles, drawn in the same order.
- Exact log-likelihoods: a finite mixture with missing labels, a tiny enumerated M2 (the
  latent integrated on a grid), a linear-Gaussian conditional VAE, PPCA: within 0.05 nats.
- Scoring is read-only (every buffer and parameter as before), units count the values scored,
  training-only terms are left out, and a model that does not broadcast over particles is
  scored particle by particle, with a warning that says how to vectorize it.
"""

from __future__ import annotations

import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from helpers import (
    COMBINATIONS,
    LATER_LIKELIHOODS,
    SHUFFLING_LOADER,
    ZOO,
    build,
    data_for,
    generator,
    here,
    ppca,
)
from pyro import poutine
from pyro.infer import TraceEnum_ELBO
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import pyro_vae as pv
from pyro_vae.infer._weights import Unscaled, training_only_hidden

# ---- Pyro's ELBO on the same random numbers ------------------------------------------------


def pyro_elbo(model, guide, x, *, particles: int, **fields) -> float:
    """``TraceEnum_ELBO``'s ELBO per point with ``particles`` vectorized particles (the
    particle plate where ``evaluate`` puts its own), scales 1, training-only sites hidden."""
    loss = TraceEnum_ELBO(max_plate_nesting=1, num_particles=particles, vectorize_particles=True)
    pair = (Unscaled()(training_only_hidden(f)) for f in (model, guide))
    idx = torch.arange(x.shape[0])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # (no site to enumerate: Trace_ELBO's)
        return -loss.loss(*pair, x, idx, num_data=x.shape[0], **fields) / x.shape[0]


def both(model, guide, x, *, particles: int = 16, seed: int = 1, **fields):
    """``evaluate``'s ELBO and Pyro's, each from the seed ``seed`` (evaluate's once-only checks
    restore the generator, so both draw the same particles)."""
    torch.manual_seed(seed)
    ours = pv.evaluate(model, guide, pv.Batches(x, batch_size=x.shape[0], shuffle=False, **fields),
                       num_particles=particles)  # fmt: skip
    torch.manual_seed(seed)
    return ours, pyro_elbo(model, guide, x, particles=particles, **fields)


def eval_mode(vae: nn.Module) -> nn.Module:
    return vae.eval()  # (evaluate scores in eval mode; Pyro's loss runs the modules as they are)


@pytest.mark.parametrize(("prior", "likelihood", "guide"), COMBINATIONS)
def test_the_contract_matrix_scores_as_pyro(prior, likelihood, guide):
    vae = eval_mode(build(prior, likelihood, guide))
    x = data_for(likelihood, 8, 6)
    if guide == "per-datapoint":
        x = data_for(likelihood, 100, 6)  # its N points
    ours, theirs = both(vae.model, vae.guide, x)
    assert ours.elbo == pytest.approx(theirs, rel=1e-4, abs=1e-4)
    assert ours.log_likelihood >= ours.elbo - 1e-4  # (Jensen, on the same weights)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_the_zoo_scores_as_pyro(name):
    vae = eval_mode(ZOO[name]())
    shape = vae.event_shape
    n = getattr(vae.guide_layers()[0], "num_data", 4)  # (a per-datapoint guide: its N points)
    x = torch.randn(n, *shape) if name.startswith("circle") else torch.rand(n, *shape).round()
    ours, theirs = both(vae.model, vae.guide, x, particles=4)
    assert ours.elbo == pytest.approx(theirs, rel=1e-4, abs=1e-3)


def small_m2(alpha: float = 0.0, *, latent: int = 2, features: int = 6) -> pv.SemiSupervisedVAE:
    return pv.SemiSupervisedVAE(
        pv.MLP(features, 3, (8,)),
        pv.GaussianLikelihood(pv.MLP(latent + 3, features, (8,)), features, scale=0.5),
        pv.GaussianEncoder(pv.MLP(features + 3, 2 * latent, (8,)), latent),
        num_classes=3,
        alpha=alpha,
    )


@pytest.mark.parametrize("known", [0.0, 0.3, 1.0])
def test_m2_sums_the_unknown_labels_out_as_trace_enum_elbo(known):
    m2 = small_m2()
    x, y = torch.randn(10, 6), torch.randint(0, 3, (10,))
    y_mask = torch.arange(10) < round(10 * known)
    ours, theirs = both(m2.model, m2.guide, x, y=y, y_mask=y_mask)
    assert ours.elbo == pytest.approx(theirs, rel=1e-4)
    assert ours.dims == pytest.approx(6 + y_mask.float().mean().item())  # a known label: one


def test_the_auxiliary_term_is_not_scored():
    m2, x, y = small_m2(), torch.randn(10, 6), torch.randint(0, 3, (10,))
    data = pv.Batches(x, y=y, y_mask=torch.arange(10) < 5, batch_size=10)
    scores = []
    for alpha in (0.0, 50.0):
        m2.alpha = alpha
        torch.manual_seed(0)
        scores.append(pv.evaluate(m2.model, m2.guide, data, num_particles=50))
    assert scores[0] == scores[1]
    # (the training loss does include it: α log q(y | x) on the known labels)
    loss = TraceEnum_ELBO(max_plate_nesting=1)
    torch.manual_seed(0)
    with_term = loss.loss(m2.model, m2.guide, x, y=y, y_mask=data.fields["y_mask"])
    m2.alpha = 0.0
    torch.manual_seed(0)
    assert with_term > loss.loss(m2.model, m2.guide, x, y=y, y_mask=data.fields["y_mask"]) + 1


# ---- exact log-likelihoods -------------------------------------------------------------------

WEIGHTS, LOCS = torch.tensor([0.2, 0.3, 0.5]), torch.tensor([-2.0, 0.0, 2.0])


def mixture_model(x, idx=None, num_data=None, *, y, y_mask):
    """The guide page's mixture with missing labels (docs/guide/fields.md)."""
    with pyro.plate("data", num_data, subsample=idx):
        with poutine.mask(mask=y_mask):
            pyro.sample("y", dist.Categorical(WEIGHTS), obs=y)
        with poutine.mask(mask=~y_mask):
            hidden = pyro.sample(
                "y_hidden", dist.Categorical(WEIGHTS), infer={"enumerate": "parallel"}
            )
        label = torch.where(y_mask, y, hidden)
        pyro.sample("x", dist.Normal(LOCS[label], 1.0), obs=x)


def mixture_guide(x, idx=None, num_data=None, *, y, y_mask):
    pass


def test_a_mixture_with_missing_labels_scores_its_exact_likelihood():
    x, y = torch.randn(40) * 2, torch.randint(0, 3, (40,))
    known = torch.rand(40) < 0.4
    both_terms = WEIGHTS.log() + dist.Normal(LOCS, 1.0).log_prob(x[:, None])  # (N, 3)
    exact = torch.where(known, both_terms.gather(1, y[:, None])[:, 0], both_terms.logsumexp(-1))
    ours = pv.evaluate(mixture_model, mixture_guide, pv.Batches(x, y=y, y_mask=known,
                       batch_size=40), num_particles=3)  # fmt: skip
    assert ours.log_likelihood == pytest.approx(exact.mean().item(), abs=1e-4)
    assert ours.elbo == pytest.approx(exact.mean().item(), abs=1e-4)  # no latent left
    loss = TraceEnum_ELBO(max_plate_nesting=1)
    theirs = -loss.loss(mixture_model, mixture_guide, x, torch.arange(40), num_data=40,
                        y=y, y_mask=known) / 40  # fmt: skip
    assert ours.elbo == pytest.approx(theirs, abs=1e-4)


def exact_m2(m2: pv.SemiSupervisedVAE, x, y, known) -> float:
    """log p(x) (and p(x, y) where known) of a 1-D-latent M2 by quadrature over z."""
    z = torch.linspace(-9, 9, 4001, dtype=torch.float64)[:, None]
    dz = float(z[1] - z[0])
    m2 = m2.double()
    terms = []
    for label in range(3):
        onehot = nn.functional.one_hot(torch.tensor(label), 3).double().expand(len(z), 3)
        lik = m2.likelihood(torch.cat([z, onehot], -1))  # (Z,) over the grid
        log_px = lik.log_prob(x.double()[:, None])  # (N, Z)
        log_pz = dist.Normal(0.0, 1.0).log_prob(z[:, 0])
        terms.append((log_px + log_pz).logsumexp(-1) + math.log(dz) + math.log(1 / 3))
    terms = torch.stack(terms, -1)  # (N, 3)
    out = torch.where(known, terms.gather(1, y[:, None])[:, 0], terms.logsumexp(-1))
    m2.float()
    return out.mean().item()


def test_a_tiny_m2_scores_its_exact_likelihood():
    m2 = small_m2(latent=1, features=2)
    x, y = torch.randn(12, 2), torch.randint(0, 3, (12,))
    known = torch.arange(12) < 4
    exact = exact_m2(m2, x, y, known)
    data = pv.Batches(x.double(), y=y, y_mask=known, batch_size=12)
    ours = pv.evaluate(m2.double().model, m2.guide, data, num_particles=20000, max_rows=2**18)
    assert ours.log_likelihood == pytest.approx(exact, abs=0.05)
    assert ours.elbo < exact


def linear_cvae(dtype=torch.float64):
    """A conditional PPCA: p(z | c) = N(A c, s²), p(x | z, c) = N(W z + V c + b, σ² I), and the
    exact posterior as the guide (its encoder reads [x, c]); the exact log p(x | c)."""
    D, C, F, SIGMA = 2, 3, 4, 0.4
    g = generator(3)
    A, W, V = (torch.randn(*s, generator=g, dtype=dtype) for s in ((D, C), (F, D), (F, C)))
    b, s = torch.randn(F, generator=g, dtype=dtype), 0.7
    prior_net, decoder, encoder = nn.Linear(C, 2 * D), nn.Linear(D + C, F), nn.Linear(F + C, 2 * D)
    prior_net, decoder, encoder = (m.to(dtype) for m in (prior_net, decoder, encoder))
    cov = torch.linalg.inv(torch.eye(D, dtype=dtype) / s**2 + W.T @ W / SIGMA**2)
    gain = cov @ W.T / SIGMA**2  # posterior mean: cov (A c / s² + W^T (x - V c - b) / σ²)
    with torch.no_grad():
        prior_net.weight.zero_()
        prior_net.weight[:D] = A
        prior_net.bias.zero_()
        prior_net.bias[D:] = math.log(s)
        decoder.weight.copy_(torch.cat([W, V], 1))
        decoder.bias.copy_(b)
        encoder.weight.zero_()
        encoder.weight[:D, :F] = gain
        encoder.weight[:D, F:] = cov @ A / s**2 - gain @ V
        encoder.bias.zero_()
        encoder.bias[:D] = -gain @ b
        encoder.bias[D:] = 0.5 * torch.diagonal(cov).log()
    cvae = pv.ConditionalVAE(
        pv.GaussianEncoder(prior_net, D),
        pv.GaussianLikelihood(decoder, F, scale=SIGMA),
        pv.GaussianEncoder(encoder, D),
    ).to(dtype)
    cvae.likelihood.log_scale.fill_(math.log(SIGMA))

    def exact(x, c):
        mean = c @ (W @ A + V).T + b
        covariance = s**2 * W @ W.T + SIGMA**2 * torch.eye(F, dtype=dtype)
        return torch.distributions.MultivariateNormal(mean, covariance).log_prob(x)

    assert torch.allclose(cov, torch.diag(torch.diagonal(cov)), atol=0.5)  # (diagonal-ish)
    return cvae, exact


def test_a_linear_gaussian_cvae_scores_its_exact_likelihood():
    cvae, exact = linear_cvae()
    c = torch.randn(30, 3, dtype=torch.float64)
    x = torch.randn(30, 4, dtype=torch.float64) + 2
    ours = pv.evaluate(cvae.model, cvae.guide, pv.Batches(x, c=c, batch_size=30),
                       num_particles=4000)  # fmt: skip
    assert ours.log_likelihood == pytest.approx(exact(x, c).mean().item(), abs=0.05)


def test_ppca_scores_its_exact_likelihood():
    vae, x, log_px, _ = ppca()
    ours = pv.evaluate(vae.model, vae.guide, x, num_particles=10)
    assert ours.log_likelihood == pytest.approx(log_px.mean().item(), abs=1e-6)


# ---- units, read-only scoring, models without a particle dimension ---------------------------


def test_bits_per_dim_count_the_scored_values():
    cvae = pv.ConditionalVAE(
        pv.GaussianEncoder(pv.MLP(20, 4), 2),
        pv.BernoulliLikelihood(pv.MLP(2 + 20, 20), 20),
        pv.GaussianEncoder(pv.MLP(20 + 20, 4), 2),
        mask="m",
    ).eval()
    x = torch.rand(16, 20).round()
    mask = torch.zeros(16, 20, dtype=torch.bool)
    mask[:, :5] = True  # 5 of 20 values scored
    ours, theirs = both(cvae.model, cvae.guide, x, c=x * ~mask, m=mask)
    assert ours.dims == 5
    assert ours.bits_per_dim == pytest.approx(-ours.log_likelihood / (5 * math.log(2)))
    assert ours.elbo == pytest.approx(theirs, rel=1e-4)


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


# (a latent library size under an untrained IAF guide overflows float32 on 100 points)
READ_ONLY = [
    c
    for c in COMBINATIONS
    if (c[1] in LATER_LIKELIHOODS or c[0] != "normal") and c[1:] != ("zinb-latent-library", "iaf")
][:14] + [
    ("normal", "bernoulli", g) for g in ("gaussian-encoder", "per-datapoint", "semi-amortized")
]


@pytest.mark.parametrize(("prior", "likelihood", "guide"), READ_ONLY)
def test_scoring_changes_nothing_of_the_model(prior, likelihood, guide):
    vae = build(prior, likelihood, guide)
    x = data_for(likelihood, 100, 6) * 2  # (counts: totals unlike the mean total of 1)
    x = x.clamp(max=1) if likelihood in ("bernoulli", "gaussian", "gaussian-learned") else x
    before = _state(vae)
    pv.evaluate(vae.model, vae.guide, x, num_particles=3)
    if (
        likelihood == "bernoulli" and guide != "per-datapoint"
    ):  # (raw counts make infer_local diverge)
        pv.amortization_gap(vae, pv.Batches(x[:8], batch_size=8), epochs=1, num_particles=3)
    after = _state(vae)
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key


def test_conditional_and_semi_supervised_scoring_changes_nothing():
    cvae, _ = linear_cvae(torch.float32)
    m2 = small_m2(alpha=3.0)
    x, y, c = torch.randn(20, 6), torch.randint(0, 3, (20,)), torch.randn(20, 3)
    for model, data in ((cvae, pv.Batches(x[:, :4], c=c, batch_size=7)),
                        (m2, pv.Batches(x, y=y, y_mask=y > 0, batch_size=7))):  # fmt: skip
        model.train()
        before = _state(model)
        pv.evaluate(model.model, model.guide, data, num_particles=5)
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
        assert model.training  # (the modes are put back)


@pytest.mark.parametrize("through", ["batches", pytest.param("loader", marks=SHUFFLING_LOADER)])
def test_a_size_factor_keeps_the_whole_training_sets_mean_total(through):
    lik = pv.PoissonLikelihood(pv.MLP(2, 5, (8,)), 5, size_factor=True)
    vae = pv.VAE(pv.StandardNormalPrior(2), lik, pv.GaussianEncoder(pv.MLP(5, 4, (8,)), 2))
    counts = torch.poisson(torch.full((40, 5), 3.0) * torch.linspace(0.2, 4, 40)[:, None])
    if through == "batches":
        data = pv.Batches(counts, batch_size=10)
    else:
        dataset = pv.Indexed(TensorDataset(counts))
        data = DataLoader(dataset, batch_size=10, shuffle=True)
    pv.fit(
        vae.model,
        vae.guide,
        data,
        epochs=1,
        device=here(),
        log=False,
        validation=counts[:5] * 0,
    )
    wanted = counts.sum(-1).mean().item()
    assert float(lik.mean_total) == pytest.approx(wanted, rel=1e-6)
    pv.evaluate(vae.model, vae.guide, counts[:3], num_particles=2)  # a test set's totals
    assert float(lik.mean_total) == pytest.approx(wanted, rel=1e-6)


class PyroStyleCVAE(nn.Module):
    """A conditional model as Pyro's examples write one: the decoder reads
    ``torch.cat([z, onehot(y)], -1)``, which does not broadcast over a particle dimension."""

    def __init__(self) -> None:
        super().__init__()
        self.decoder, self.encoder = nn.Linear(2 + 3, 6), nn.Linear(6 + 3, 4)

    def model(self, x, idx=None, num_data=None, *, y):
        pyro.module("decoder", self.decoder)
        onehot = nn.functional.one_hot(y, 3).float()
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            logits = self.decoder(torch.cat([z, onehot], -1))
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)

    def guide(self, x, idx=None, num_data=None, *, y):
        pyro.module("encoder", self.encoder)
        onehot = nn.functional.one_hot(y, 3).float()
        with pyro.plate("data", x.shape[0]):
            loc, log_scale = self.encoder(torch.cat([x, onehot], -1)).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))


def test_a_model_without_a_particle_dimension_is_scored_particle_by_particle():
    pair = PyroStyleCVAE()
    x, y = torch.rand(8, 6).round(), torch.randint(0, 3, (8,))
    pv.fit(
        pair.model,
        pair.guide,
        pv.Batches(x, y=y, batch_size=8),
        epochs=1,
        device=here(),
        log=False,
    )
    with pytest.warns(UserWarning, match=r"(?s)one at a time.*expand"):
        ours = pv.evaluate(pair.model, pair.guide, pv.Batches(x, y=y, batch_size=8),
                           num_particles=400)  # fmt: skip
    loss = pyro.infer.Trace_ELBO(num_particles=4000)
    theirs = -loss.loss(pair.model, pair.guide, x, y=y) / 8
    assert ours.elbo == pytest.approx(theirs, abs=0.15)  # Monte Carlo error: ~0.03
    assert ours.log_likelihood > ours.elbo


def test_a_disagreement_with_pyros_elbo_is_an_error(monkeypatch):
    """The once-only check against ``TraceEnum_ELBO`` (here told a value 1 nat away) stops
    the evaluation instead of reporting a number Pyro would not give."""
    from pyro_vae.infer import _scorer

    real = _scorer._pyro_elbo
    monkeypatch.setattr(_scorer, "_pyro_elbo", lambda *a: real(*a) + 1.0)
    vae = build("normal", "bernoulli", "gaussian-encoder")
    with pytest.raises(ValueError, match=r"differs from pyro\.infer\.TraceEnum_ELBO"):
        pv.evaluate(vae.model, vae.guide, torch.rand(8, 6).round(), num_particles=2)


def test_numpy_integers_are_particle_counts():
    import numpy as np

    vae = build("normal", "bernoulli", "gaussian-encoder")
    result = pv.evaluate(vae.model, vae.guide, torch.rand(8, 6).round(), num_particles=np.int32(10))
    assert result.num_particles == 10 and isinstance(result.num_particles, int)
