"""Likelihoods of counts (Poisson, NB, ZINB, multinomial) and 8-bit values (the discretized
logistic and its mixture): log-probabilities against references in float64 (torch's and
Pyro's distributions or the formula), the zero-inflation and the 0 and 255 edges, the 256
probabilities of a pixel summing to one, support checks that name the fix, and training and
evaluation through fit and evaluate (bits per dimension)."""

from __future__ import annotations

import math

import pyro
import pytest
import torch
from helpers import generator, here
from torch import nn

import pyro_vae as pv


class Fixed(nn.Module):
    """A "decoder" that returns fixed outputs (whatever the latent), to test the formulas."""

    def __init__(self, out: torch.Tensor) -> None:
        super().__init__()
        self.out = out

    def forward(self, z):
        return self.out.expand(*z.shape[:-1], *self.out.shape[-1:])


G, B = 6, 5


class Log1p(nn.Module):
    """An encoder's first layer for counts: log(1 + x), as scVI's encoder reads them."""

    def forward(self, x):
        return x.log1p()


class Scaled(nn.Module):
    """An encoder's first layer for 8-bit values: x / 255."""

    def forward(self, x):
        return x / 255


@pytest.fixture
def counts():
    g = generator(0)
    x = torch.poisson(torch.rand(B, G, generator=g, dtype=torch.float64) * 8)
    x[0, :3] = 0  # zeros, the zero-inflation's edge
    return x


def z_of(batch=B):
    return torch.zeros(batch, 2, dtype=torch.float64)


def nb_log_prob(x, mu, theta):
    return (torch.lgamma(x + theta) - torch.lgamma(theta) - torch.lgamma(x + 1)
            + theta * (theta / (theta + mu)).log() + x * (mu / (theta + mu)).log())  # fmt: skip


def test_poisson_against_torch(counts):
    h = torch.randn(G, dtype=torch.float64)
    lik = pv.PoissonLikelihood(Fixed(h), G)
    expected = torch.distributions.Poisson(h.exp()).log_prob(counts).sum(-1)
    torch.testing.assert_close(lik(z_of()).log_prob(counts), expected, rtol=1e-12, atol=0)
    sized = pv.PoissonLikelihood(Fixed(h), G, size_factor=True)
    rate = counts.sum(-1, keepdim=True) * h.softmax(-1)
    expected = torch.distributions.Poisson(rate).log_prob(counts).sum(-1)
    torch.testing.assert_close(sized(z_of()).log_prob(counts), expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("size_factor", [False, True])
@pytest.mark.parametrize("zero_inflated", [False, True])
def test_negative_binomial_and_zinb_against_the_formula(counts, size_factor, zero_inflated):
    h, gate = torch.randn(G, dtype=torch.float64), torch.randn(G, dtype=torch.float64)
    out = torch.cat([h, gate]) if zero_inflated else h
    options = {"size_factor": size_factor, "zero_inflated": zero_inflated, "dispersion": 2.5}
    lik = pv.NegativeBinomialLikelihood(Fixed(out), G, **options).double()
    mu = counts.sum(-1, keepdim=True) * h.softmax(-1) if size_factor else h.exp()
    theta = lik.log_theta.detach().exp().expand(mu.shape)  # (2.5, as float32 made it)
    log_nb = nb_log_prob(counts, mu, theta)
    if zero_inflated:  # π [x = 0] + (1 - π) NB(x)
        pi = torch.sigmoid(gate)
        mixed = torch.where(counts == 0, (pi + (1 - pi) * log_nb.exp()).log(),
                            (1 - pi).log() + log_nb)  # fmt: skip
        expected = mixed.sum(-1)
    else:
        expected = log_nb.sum(-1)
    torch.testing.assert_close(lik(z_of()).log_prob(counts), expected, rtol=1e-10, atol=1e-10)


def test_per_point_dispersion_comes_from_the_decoder(counts):
    h, log_theta = torch.randn(G, dtype=torch.float64), torch.randn(G, dtype=torch.float64)
    lik = pv.NegativeBinomialLikelihood(Fixed(torch.cat([h, log_theta])), G,
                                        per_point_dispersion=True)  # fmt: skip
    expected = nb_log_prob(counts, h.exp(), log_theta.exp()).sum(-1)
    torch.testing.assert_close(lik(z_of()).log_prob(counts), expected, rtol=1e-10, atol=1e-10)
    assert not any(n == "log_theta" for n, _ in lik.named_parameters())


def test_multinomial_against_torch(counts):
    h = torch.randn(G, dtype=torch.float64)
    lik = pv.MultinomialLikelihood(Fixed(h), G)
    got = lik(z_of()).log_prob(counts)
    for row, value in zip(counts, got, strict=True):  # each row with its own total
        expected = torch.distributions.Multinomial(int(row.sum()), logits=h).log_prob(row)
        torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("components", [1, 3])
def test_the_256_probabilities_of_a_pixel_sum_to_one(components):
    g = generator(1)
    shape = (4, components)  # 4 pixels with their own parameters
    loc = torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1
    log_scale = torch.rand(shape, generator=g, dtype=torch.float64) * 4 - 6  # sharp to wide
    logits = torch.randn(shape, generator=g, dtype=torch.float64)
    d = pv.DiscretizedLogistic(loc, log_scale, logits, event_dim=0)
    values = torch.arange(256, dtype=torch.float64)[:, None].expand(256, 4)
    total = d.log_prob(values).exp().sum(0)
    torch.testing.assert_close(total, torch.ones(4, dtype=torch.float64), rtol=0, atol=1e-4)


def test_discretized_logistic_edges_and_interior_against_the_formula():
    m, log_s = (
        torch.tensor([[0.1]], dtype=torch.float64),
        torch.tensor([[-2.0]], dtype=torch.float64),
    )
    d = pv.DiscretizedLogistic(m, log_s, event_dim=0)
    s, half = math.exp(-2.0), 1 / 255

    def cdf(y):
        return torch.sigmoid(torch.tensor((y - 0.1) / s, dtype=torch.float64))

    for x in (0.0, 255.0, 140.0):
        y = x / 127.5 - 1
        if x == 0:
            expected = cdf(y + half).log()
        elif x == 255:
            expected = (1 - cdf(y - half)).log()
        else:
            expected = (cdf(y + half) - cdf(y - half)).log()
        got = d.log_prob(torch.tensor([x], dtype=torch.float64))
        torch.testing.assert_close(got, expected.reshape(1), rtol=1e-9, atol=1e-12)


def test_a_mixture_is_the_log_sum_exp_of_its_components():
    loc = torch.tensor([[-0.5, 0.5]], dtype=torch.float64)
    log_scale = torch.tensor([[-3.0, -1.0]], dtype=torch.float64)
    logits = torch.tensor([[0.3, -0.2]], dtype=torch.float64)
    x = torch.tensor([70.0], dtype=torch.float64)
    mixture = pv.DiscretizedLogistic(loc, log_scale, logits, event_dim=0).log_prob(x)
    parts = [pv.DiscretizedLogistic(loc[:, k:k + 1], log_scale[:, k:k + 1], event_dim=0).log_prob(x)
             for k in range(2)]  # fmt: skip
    weights = logits.log_softmax(-1)[0]
    expected = torch.logsumexp(torch.stack([w + p for w, p in zip(weights, parts, strict=True)]), 0)
    torch.testing.assert_close(mixture, expected, rtol=1e-12, atol=1e-12)


def test_samples_are_in_the_support():
    lik = pv.DiscretizedLogisticLikelihood(pv.MLP(2, 10 * 6), 10, components=2)
    x = lik(torch.zeros(7, 2)).sample()
    assert x.shape == (7, 10) and bool(lik.in_support(x))
    counts = pv.NegativeBinomialLikelihood(pv.MLP(2, 2 * G), G, zero_inflated=True,
                                           size_factor=True)  # fmt: skip
    counts.check_support(torch.full((3, G), 4.0))  # a check: it records nothing
    assert float(counts.mean_total) == 1.0
    counts.record_mean_total(torch.tensor(24.0))  # (fit: the training set's)
    y = counts(torch.zeros(7, 2)).sample()
    assert y.shape == (7, G) and bool(counts.in_support(y))
    # sampling with a size factor draws with the training data's mean total (a buffer)
    assert float(counts.mean_total) == 24.0 and "mean_total" in counts.state_dict()


@pytest.mark.parametrize(
    ("lik", "data", "message"),
    [
        (lambda: pv.PoissonLikelihood(pv.MLP(2, G), G), torch.full((4, G), 0.5), "integers >= 0"),
        (lambda: pv.NegativeBinomialLikelihood(pv.MLP(2, G), G), -torch.ones(4, G), "raw counts"),
        (lambda: pv.MultinomialLikelihood(pv.MLP(2, G), G), torch.rand(4, G), "integers >= 0"),
        (
            lambda: pv.DiscretizedLogisticLikelihood(pv.MLP(2, 2 * G), G),
            torch.rand(4, G),
            r"0\.\.255.*multiply by 255",
        ),
        (
            lambda: pv.DiscretizedLogisticLikelihood(pv.MLP(2, 2 * G), G),
            torch.full((4, G), 256.0),
            r"integers 0\.\.255",
        ),
    ],
)
def test_data_outside_the_support_are_refused_with_the_fix(lik, data, message):
    likelihood = lik()
    vae = pv.VAE(pv.StandardNormalPrior(2), likelihood, pv.GaussianEncoder(pv.MLP(G, 4), 2))
    with pytest.raises(ValueError, match=message):
        pv.fit(
            vae.model,
            vae.guide,
            pv.Batches(data, batch_size=2),
            epochs=1,
            device=here(),
            log=False,
        )


def synthetic_counts(n=400, genes=20, seed=0):
    """Counts of two cell types with their own expression profiles, library sizes varying
    by a factor of 4: NB draws."""
    g = generator(seed)
    profiles = torch.distributions.Dirichlet(torch.ones(genes)).sample((2,))
    kind = torch.randint(0, 2, (n,), generator=g)
    library = 200 + 600 * torch.rand(n, generator=g)
    mu = library[:, None] * profiles[kind]
    theta = 5.0
    counts = torch.distributions.NegativeBinomial(theta, logits=(mu / theta).log()).sample()
    return counts, kind


@pytest.mark.parametrize(
    "make",
    [
        lambda: pv.PoissonLikelihood(pv.MLP(2, 20, (16,)), 20, size_factor=True),
        lambda: pv.NegativeBinomialLikelihood(
            pv.MLP(2, 40, (16,)), 20, size_factor=True, zero_inflated=True
        ),
        lambda: pv.MultinomialLikelihood(pv.MLP(2, 20, (16,)), 20),
    ],
    ids=["poisson", "zinb", "multinomial"],
)
@pytest.mark.parametrize("per_datapoint", [False, True], ids=["amortized", "per-datapoint"])
def test_count_vaes_train_and_evaluate(make, per_datapoint):
    torch.manual_seed(0)
    x, _ = synthetic_counts()
    encoder = nn.Sequential(Log1p(), pv.MLP(20, 4, (16,)))
    guide = pv.PerDatapointGaussian(len(x), 2) if per_datapoint else pv.GaussianEncoder(encoder, 2)
    vae = pv.VAE(pv.StandardNormalPrior(2), make(), guide)
    optim = pv.LazyAdam({"lr": 1e-2}, local_lr=0.05)
    history = pv.fit(
        vae.model,
        vae.guide,
        pv.Batches(x, batch_size=100),
        epochs=15,
        device=here(),
        log=False,
        optim=optim,
    )
    assert history.loss[-1] < history.loss[0]
    result = pv.evaluate(vae.model, vae.guide, x, num_particles=8)
    assert math.isfinite(result.log_likelihood) and result.log_likelihood < 0
    assert result.dims == 20
    assert result.bits_per_dim == pytest.approx(-result.log_likelihood / (20 * math.log(2)))
    if not per_datapoint:  # the encoder's gap splits into the family's and the encoder's
        gap = pv.amortization_gap(vae, x, epochs=10, lr=0.05, num_particles=8)
        assert math.isfinite(gap.amortization_gap) and gap.approximation_gap > 0
        # the parts against independent values: the amortized ELBO is evaluate's (other
        # draws), and the per-datapoint optimum lies between it and log p(x)
        assert gap.elbo_amortized == pytest.approx(result.elbo, abs=0.3)
        assert gap.elbo_amortized - 0.1 < gap.elbo_optimal < gap.log_likelihood + 0.1


def test_an_8bit_vae_trains_and_reports_bits_per_dim():
    torch.manual_seed(0)
    x = (torch.rand(64, 16) * 255).round()
    vae = pv.VAE(pv.StandardNormalPrior(2),
                 pv.DiscretizedLogisticLikelihood(pv.MLP(2, 16 * 6, (16,)), 16, components=2),
                 pv.GaussianEncoder(nn.Sequential(Scaled(), pv.MLP(16, 4, (16,))), 2))  # fmt: skip
    history = pv.fit(
        vae.model,
        vae.guide,
        pv.Batches(x, batch_size=16),
        epochs=5,
        device=here(),
        log=False,
    )
    assert history.loss[-1] < history.loss[0]
    result = pv.evaluate(vae.model, vae.guide, x, num_particles=8)
    # uniform noise over 256 values: 8 bits per value at best, a little more for the model
    assert 7.9 < result.bits_per_dim < 9.5


def test_a_zinb_run_resumes_exactly(tmp_path):
    """Stopped after epoch 1 and resumed by a VAE with other weights: the uninterrupted
    run's losses and weights (the recorded mean total, a buffer, included), bit for bit."""
    x, _ = synthetic_counts(n=120)

    def train(folder, epochs, seed):
        pyro.clear_param_store()
        torch.manual_seed(seed)
        likelihood = pv.NegativeBinomialLikelihood(pv.MLP(2, 40, (8,)), 20, size_factor=True,
                                                   zero_inflated=True)  # fmt: skip
        encoder = nn.Sequential(Log1p(), pv.MLP(20, 4, (8,)))
        vae = pv.VAE(pv.StandardNormalPrior(2), likelihood, pv.GaussianEncoder(encoder, 2))
        pyro.set_rng_seed(seed)
        history = pv.fit(
            vae.model,
            vae.guide,
            pv.Batches(x, batch_size=40),
            epochs=epochs,
            device=here(),
            log=False,
            save=pv.Checkpoints(folder, resume=True),
        )
        return vae, history

    full, full_history = train(tmp_path / "full", 3, 0)
    train(tmp_path / "cut", 1, 0)
    resumed, history = train(tmp_path / "cut", 3, 1)
    assert history.loss == full_history.loss
    for name, value in full.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name


def zinb_truth(genes: int, latent: int, generator: torch.Generator, *, library: str) -> tuple:
    """A known ZINB model: z ~ N(0, I), proportions softmax(W z + b), θ = 5, 10 % dropouts,
    library sizes ℓ ~ LogNormal(log 500, 0.3). Returns the likelihood (a linear decoder) with
    the mean scaled by the observed total (``library="observed"``, scVI's observed library) or
    by ℓ as the latent's last coordinate (``"latent"``), and a sampler of ``n`` cells and
    their library sizes."""
    w = 1.5 * torch.randn(latent, genes, generator=generator) / math.sqrt(latent)
    b = 0.5 * torch.randn(genes, generator=generator)
    decoder = nn.Linear(latent, 2 * genes)
    with torch.no_grad():
        decoder.weight.zero_()
        decoder.weight[:genes] = w.T
        decoder.bias.copy_(torch.cat([b, torch.full((genes,), math.log(0.1 / 0.9))]))
    observed = library == "observed"
    truth = pv.NegativeBinomialLikelihood(decoder, genes, size_factor=observed,
                                          latent_library=not observed, zero_inflated=True,
                                          dispersion=5.0)  # fmt: skip

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        z = torch.randn(n, latent, generator=generator)
        library = (math.log(500) + 0.3 * torch.randn(n, 1, generator=generator)).exp()
        mu = library * (z @ w + b).softmax(-1)
        gamma = torch._standard_gamma(torch.full_like(mu, 5.0), generator=generator)
        x = torch.poisson(gamma * mu / 5.0, generator=generator)  # NB(θ = 5, mean μ)
        x[torch.rand(x.shape, generator=generator) < 0.1] = 0.0
        return x, library.squeeze(-1)

    return truth, sample


def true_log_likelihood(prior: nn.Module, truth: nn.Module, guide: nn.Module, held) -> tuple:
    """The true model's ELBO and log-likelihood of ``held``, importance-sampled with a per-cell
    Gaussian fitted to its posterior (``infer_local`` from ``guide``'s, 1000 epochs)."""
    true_vae = pv.VAE(prior, truth, guide)
    true_vae.name = "truth"
    local = pv.infer_local(true_vae, held, epochs=1000, lr=5e-2, final_lr_ratio=0.01)
    torch.manual_seed(1)
    return pv.evaluate(local.model, local.guide, held, num_particles=2000)


def count_vae(prior: nn.Module, genes: int, **library: bool) -> pv.VAE:
    """A ZINB VAE over ``prior``'s latent: decoder ``D -> 64 -> 2G`` (``D`` the coordinates
    it reads: one less with a latent library), encoder log(1 + x) -> 64 -> 2 ``prior``'s."""
    latent = prior.latent_dim - bool(library.get("latent_library"))
    likelihood = pv.NegativeBinomialLikelihood(pv.MLP(latent, 2 * genes, (64,)), genes,
                                               zero_inflated=True, **library)  # fmt: skip
    encoder = nn.Sequential(Log1p(), pv.MLP(genes, 2 * prior.latent_dim, (64,)))
    return pv.VAE(prior, likelihood, pv.GaussianEncoder(encoder, prior.latent_dim))


def train_counts(vae: pv.VAE, train: torch.Tensor, held: torch.Tensor, epochs: int = 50):
    """``vae`` trained on ``train`` (LazyAdam 3e-3, batches of 128); its held-out scores."""
    pv.fit(
        vae.model,
        vae.guide,
        pv.Batches(train, batch_size=128),
        epochs=epochs,
        device=here(),
        optim=pv.LazyAdam({"lr": 3e-3}),
        log=False,
    )
    torch.manual_seed(1)
    return pv.evaluate(vae.model, vae.guide, held, num_particles=500)


@pytest.mark.long
def test_a_zinb_vae_comes_within_a_few_nats_of_the_true_model():
    """Cells drawn from a known ZINB model with a 10-d latent (:func:`zinb_truth`, observed
    library sizes): a ZINB VAE trained 50 epochs on 3000 of them scores 500 held-out cells
    within 6 nats per cell of the true model's log-likelihood (seen: 4.3 nats below it, of
    about 127), and not above it beyond the estimates' noise. The truth's log-likelihood is
    importance-sampled with a per-cell Gaussian fitted to its posterior
    (:func:`true_log_likelihood`: its ELBO within 3 nats of it, so the estimate is tight)."""
    genes, latent = 50, 10
    truth, sample = zinb_truth(genes, latent, generator(0), library="observed")
    (train, _), (held, _) = sample(3000), sample(500)
    torch.manual_seed(0)
    vae = count_vae(pv.StandardNormalPrior(latent), genes, size_factor=True)
    learned = train_counts(vae, train, held)
    exact = true_log_likelihood(pv.StandardNormalPrior(latent), truth, vae.variational, held)
    assert exact.log_likelihood - exact.elbo < 3.0  # a tight estimate of the truth
    assert exact.log_likelihood - 6.0 < learned.log_likelihood < exact.log_likelihood + 0.5


@pytest.mark.long
def test_a_latent_library_vae_recovers_the_library_sizes():
    """The same known model with the library sizes latent (scVI's other setting; the truth's
    prior :class:`~pyro_vae.LatentLibraryPrior` at log 500 ± 0.3): a VAE with a latent library
    (its prior from the training data's log totals) trained 100 epochs comes within 6 nats
    per cell of the true model's log-likelihood of the counts, totals included (seen: 3.6
    below it, of about 129), and its posterior means of the log library sizes follow the true
    ones: correlation > 0.55 (seen: 0.64; the observed log totals' own correlation with them
    is 0.79, the dropouts and the counts' noise between them), median error < 0.2 (seen:
    -0.11)."""
    genes, latent = 50, 10
    truth, sample = zinb_truth(genes, latent, generator(1), library="latent")
    (train, _), (held, library) = sample(3000), sample(500)
    torch.manual_seed(0)
    prior = pv.LatentLibraryPrior.from_counts(latent, train)
    vae = count_vae(prior, genes, latent_library=True)
    learned = train_counts(vae, train, held, epochs=100)
    true_prior = pv.LatentLibraryPrior(latent, loc=math.log(500), scale=0.3)
    exact = true_log_likelihood(true_prior, truth, vae.variational, held)
    assert exact.log_likelihood - 6.0 < learned.log_likelihood < exact.log_likelihood + 0.5
    with torch.no_grad():
        log_library = vae.variational(held).mean[:, -1]
    error = log_library - library.log()
    assert torch.corrcoef(torch.stack([log_library, library.log()]))[0, 1] > 0.55
    assert error.median().abs() < 0.2


class Reads(nn.Module):
    """A "decoder" that records what it reads and returns fixed outputs."""

    def __init__(self, out: torch.Tensor) -> None:
        super().__init__()
        self.out, self.seen = out, []

    def forward(self, z):
        self.seen.append(z.shape)
        return self.out.expand(*z.shape[:-1], *self.out.shape[-1:])


@pytest.mark.parametrize("zero_inflated", [False, True])
def test_a_latent_library_scales_the_proportions(counts, zero_inflated):
    """μ = exp(z_last) softmax(h(z[:-1])): the decoder reads all coordinates but the last."""
    h, gate = torch.randn(G, dtype=torch.float64), torch.randn(G, dtype=torch.float64)
    decoder = Reads(torch.cat([h, gate]) if zero_inflated else h)
    options = {"latent_library": True, "zero_inflated": zero_inflated, "dispersion": 2.5}
    lik = pv.NegativeBinomialLikelihood(decoder, G, **options).double()
    z = torch.randn(B, 3, dtype=torch.float64)
    mu = z[:, -1:].exp() * h.softmax(-1)
    theta = lik.log_theta.detach().exp().expand(mu.shape)
    log_nb = nb_log_prob(counts, mu, theta)
    if zero_inflated:
        pi = torch.sigmoid(gate)
        log_nb = torch.where(counts == 0, (pi + (1 - pi) * log_nb.exp()).log(),
                             (1 - pi).log() + log_nb)  # fmt: skip
    torch.testing.assert_close(lik(z).log_prob(counts), log_nb.sum(-1), rtol=1e-10, atol=1e-10)
    assert decoder.seen == [torch.Size([B, 2])]
    poisson = pv.PoissonLikelihood(Fixed(h), G, latent_library=True)
    expected = torch.distributions.Poisson(mu).log_prob(counts).sum(-1)
    torch.testing.assert_close(poisson(z).log_prob(counts), expected, rtol=1e-12, atol=0)


def test_the_library_prior_is_a_standard_normal_and_the_log_totals_gaussian(counts):
    prior = pv.LatentLibraryPrior.from_counts(3, counts).double()
    log_totals = counts.sum(-1).log()
    assert prior.latent_dim == 4
    v = torch.randn(B, 4, dtype=torch.float64)
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(v[:, :3]).sum(-1)
    last = torch.distributions.Normal(log_totals.mean(), log_totals.std()).log_prob(v[:, 3])
    torch.testing.assert_close(prior().log_prob(v), expected + last, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="drop empty rows"):
        pv.LatentLibraryPrior.from_counts(3, torch.zeros(4, G))
    with pytest.raises(ValueError, match="scale must be > 0"):
        pv.LatentLibraryPrior(3, loc=1.0, scale=0.0)
    with pytest.raises(ValueError, match="pass one"):
        pv.PoissonLikelihood(Fixed(torch.zeros(G)), G, size_factor=True, latent_library=True)


def test_a_poisson_size_factor_trains_on_an_all_zero_row():
    """A cell with no counts: its log-probability is ~0 and every gradient finite (the rate
    was exactly 0, and its gradient 0/0)."""
    lik = pv.PoissonLikelihood(pv.MLP(2, G, (8,)), G, size_factor=True)
    vae = pv.VAE(pv.StandardNormalPrior(2), lik, pv.GaussianEncoder(pv.MLP(G, 4, (8,)), 2))
    counts = torch.poisson(torch.full((16, G), 3.0))
    counts[5] = 0
    history = pv.fit(vae.model, vae.guide, pv.Batches(counts, batch_size=8), epochs=2,
                     device=here(), log=False)  # fmt: skip
    assert all(math.isfinite(v) for v in history.loss)
    assert all(bool(p.isfinite().all()) for p in vae.parameters())
    assert float(lik(torch.zeros(1, 2)).log_prob(counts[5:6])) == pytest.approx(0.0, abs=1e-4)


@pytest.mark.parametrize("make", [
    lambda: pv.PoissonLikelihood(pv.MLP(2, G), G),
    lambda: pv.PoissonLikelihood(pv.MLP(2, G), G, size_factor=True),
    lambda: pv.NegativeBinomialLikelihood(pv.MLP(2, 2 * G), G, zero_inflated=True),
    lambda: pv.NegativeBinomialLikelihood(pv.MLP(2, G), G, size_factor=True),
    lambda: pv.MultinomialLikelihood(pv.MLP(2, G), G),
], ids=["poisson", "poisson-size", "zinb", "nb-size", "multinomial"])  # fmt: skip
def test_large_counts_are_scored_exactly_in_float32(make):
    """Counts near 1e5 and 1e6 at a decoder that fits them: the float32 model's log-density
    equals the float64 model's within 1e-3 nats per point (the terms cancel)."""
    torch.manual_seed(0)
    lik = make()
    with torch.no_grad():  # a decoder whose mean is near the counts: the last layer's bias
        last = [m for m in lik.decoder.modules() if isinstance(m, torch.nn.Linear)][-1]
        last.weight.zero_()
        last.bias.fill_(math.log(3e5))
    counts = torch.poisson(torch.full((4, G), 3e5)).double()
    lik.record_mean_total(counts.sum(-1).mean())
    got = lik(torch.zeros(4, 2)).log_prob(counts.float())
    exact = lik.double()(torch.zeros(4, 2, dtype=torch.float64)).log_prob(counts)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), exact, rtol=0, atol=1e-3)
