"""What several test files share: small models, a hand-written Pyro pair, the pieces of the
contract (every prior, likelihood and guide the package ships) and the zoo's models, the exact
PPCA oracle, the 2-process harness and the examples' loader (see tests/README.md)."""

from __future__ import annotations

import datetime
import importlib
import math
import os
import socket
from types import ModuleType

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp
import zuko
from pyro.distributions.transforms import ConditionalPlanar
from pyro.nn import DenseNN
from torch import nn

import pyro_vae as pv
from pyro_vae.devices import stand_in
from pyro_vae.models import zoo

# PyTorch's RandomSampler (DataLoader(shuffle=True)) draws its order with a CPU generator on
# torch's default device, which CUDA (and the stand-in) refuses: such tests run on the CPU.
SHUFFLING_LOADER = pytest.mark.host_default(
    "DataLoader(shuffle=True) draws on torch's default device with a CPU generator (PyTorch's)"
)


# Fake CUDA tensors (FakeTensorMode) look for the accelerator PyTorch sees: once the stand-in's
# device is registered in the process, they fail.
FAKE_TENSORS = "FakeTensorMode's CUDA tensors break once the stand-in's device is registered"


def here() -> torch.device:
    """torch's default device, where a test makes its tensors and trains: the CPU, or the
    run's ``PYRO_VAE_TEST_DEVICE`` (CUDA, or the CUDA stand-in)."""
    return torch.get_default_device()


def generator(seed: int) -> torch.Generator:
    """A seeded generator for torch's default device (CUDA refuses a CPU generator for CUDA
    numbers; on the CUDA stand-in, :func:`pyro_vae.devices.stand_in.generator`)."""
    device = torch.get_default_device()
    if stand_in.is_stand_in(device):
        return stand_in.generator(seed)
    return torch.Generator(device=device).manual_seed(seed)


# ---- small models ----------------------------------------------------------------------------


def bernoulli_vae(
    features: int = 6,
    latent: int = 2,
    hidden: int = 8,
    *,
    prior: nn.Module | None = None,
    likelihood: nn.Module | None = None,
    encoder: nn.Module | None = None,
    guide: nn.Module | None = None,
) -> pv.VAE:
    """N(0, I) prior, Bernoulli decoder and Gaussian encoder, one hidden layer each (built in
    that order: the initial weights under a seed); any piece may be given instead."""
    prior = prior if prior is not None else pv.StandardNormalPrior(latent)
    if likelihood is None:
        likelihood = pv.BernoulliLikelihood(pv.MLP(latent, features, (hidden,)), features)
    if guide is None:
        encoder = encoder if encoder is not None else pv.MLP(features, 2 * latent, (hidden,))
        guide = pv.GaussianEncoder(encoder, latent)
    return pv.VAE(prior, likelihood, guide)


def circle_vae(guide: nn.Module | None = None, *, hidden: tuple[int, ...] = (8,)) -> pv.VAE:
    """The circle's VAE (1-D latent, Gaussian likelihood σ = 0.1) with ``guide``, by default a
    Gaussian encoder of the same width."""
    likelihood = pv.GaussianLikelihood(pv.MLP(1, 2, hidden), 2, scale=0.1)
    guide = guide if guide is not None else pv.GaussianEncoder(pv.MLP(2, 2, hidden), 1)
    return pv.VAE(pv.StandardNormalPrior(1), likelihood, guide)


class DeltaPair(nn.Module):
    """A noise-free pair (a point-mass guide): processes can reproduce one another exactly; the
    plate also works without ``num_data`` (as :func:`pyro_vae.evaluate` calls it). ``norm``
    puts a BatchNorm1d in the encoder."""

    def __init__(self, norm: bool = False) -> None:
        super().__init__()
        self.encoder = (
            nn.Sequential(nn.BatchNorm1d(2), nn.Linear(2, 1)) if norm else nn.Linear(2, 1)
        )
        self.decoder = nn.Linear(1, 2)

    @staticmethod
    def plate(x, idx, num_data):
        if num_data is None:
            return pyro.plate("data", x.shape[0])
        return pyro.plate("data", num_data, subsample=idx)

    def model(self, x, idx=None, num_data=None):
        pyro.module("decoder", self.decoder)
        with self.plate(x, idx, num_data):
            z = pyro.sample("z", dist.Normal(torch.zeros(1), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.decoder(z), 0.5).to_event(1), obs=x)

    def guide(self, x, idx=None, num_data=None):
        pyro.module("encoder", self.encoder)
        with self.plate(x, idx, num_data):
            pyro.sample("z", dist.Delta(self.encoder(x)).to_event(1))


class ShiftedDeltaPair(DeltaPair):
    """:class:`DeltaPair` on points shifted by a field of the batches, ``shift`` (one value per
    point): a misaligned field changes every loss."""

    def model(self, x, idx=None, num_data=None, *, shift):
        return super().model(x - shift[:, None], idx, num_data)

    def guide(self, x, idx=None, num_data=None, *, shift):
        return super().guide(x - shift[:, None], idx, num_data)


# ---- the exact oracle: a linear-Gaussian VAE is probabilistic PCA ---------------------------

PPCA_D, PPCA_F, PPCA_B, PPCA_SIGMA = 2, 5, 16, 0.3


def ppca(dtype=torch.float64):
    """PPCA (Tipping & Bishop 1999) as a VAE whose guide is the exact posterior, data from it,
    the exact log p(x) and the posterior's map ``(a, b, cov)`` (see tests/test_exact.py)."""
    D, F, B, SIGMA = PPCA_D, PPCA_F, PPCA_B, PPCA_SIGMA
    g = generator(0)
    q, _ = torch.linalg.qr(torch.randn(F, F, generator=g, dtype=dtype))
    w = q[:, :D] * torch.tensor([2.0, 0.5], dtype=dtype)
    b = torch.randn(F, generator=g, dtype=dtype)
    decoder = nn.Linear(D, F).to(dtype)
    encoder = nn.Linear(F, 2 * D).to(dtype)
    cov = torch.linalg.inv(torch.eye(D, dtype=dtype) + w.T @ w / SIGMA**2)
    a = cov @ w.T / SIGMA**2
    with torch.no_grad():
        decoder.weight.copy_(w)
        decoder.bias.copy_(b)
        encoder.weight.zero_()
        encoder.weight[:D].copy_(a)
        encoder.bias[:D].copy_(-a @ b)
        encoder.bias[D:].copy_(0.5 * torch.diagonal(cov).log())
    vae = pv.VAE(
        pv.StandardNormalPrior(D),
        pv.GaussianLikelihood(decoder, F, scale=SIGMA),
        pv.GaussianEncoder(encoder, D),
    ).to(dtype)
    vae.likelihood.log_scale.fill_(math.log(SIGMA))  # not rounded through float32
    marginal = torch.distributions.MultivariateNormal(
        b, w @ w.T + SIGMA**2 * torch.eye(F, dtype=dtype)
    )
    x = marginal.sample((B,))
    assert torch.allclose(cov, torch.diag(torch.diagonal(cov)), atol=1e-12)
    return vae, x, marginal.log_prob(x), (a, b, cov)


# ---- two processes -------------------------------------------------------------------------

WORLD = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, scenario, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    timeout = datetime.timedelta(seconds=60)  # a stuck rank fails the test, never hangs CI
    tdist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=timeout)
    try:
        pyro.enable_validation(True)
        result = scenario(rank, out)
        torch.save(result, os.path.join(out, f"result{rank}.pt"))
    finally:
        tdist.barrier()  # nobody leaves (rank 0 hosts the store) before all are done
        tdist.destroy_process_group()


def run_ranks(scenario, tmp_path) -> list[dict]:
    mp.spawn(_worker, args=(free_port(), scenario, str(tmp_path)), nprocs=WORLD)
    return [torch.load(tmp_path / f"result{r}.pt", weights_only=False) for r in range(WORLD)]


# ---- examples --------------------------------------------------------------------------------


def load_example(name: str) -> ModuleType:
    """``examples/<name>.py``, imported as ``examples.<name>`` (the repository root is on the
    path: pytest puts the root conftest's folder there)."""
    return importlib.import_module(f"examples.{name}")


def circle_data(n: int = 64) -> pv.Batches:
    """``n`` points of the circle data set in batches of 16."""
    return pv.Batches(pv.make_circle(n)[0], batch_size=16)


_GROUPS = {
    "save": ("save_dir", "resume", "overwrite", "save_every"),
    "validation": ("validation", "validate_every", "validation_particles"),
    "log": ("progress", "log_every", "log_dir", "log_images_every", "callback"),
    "device": ("device", "precision", "compile", "distributed"),
}


def grouped(**flat) -> dict:
    """``fit``'s options from the flat names the tests vary one at a time (``resume=True``,
    ``beta=0.5``, ``log_dir=...``): each group as its object (:mod:`pyro_vae.train.options`),
    ``beta`` as a :class:`~pyro_vae.BetaELBO` around ``loss``."""
    out = {k: v for k, v in flat.items() if all(k not in names for names in _GROUPS.values())}
    if "beta" in out:
        out["loss"] = pv.BetaELBO(out.pop("beta"), loss=out.pop("loss", None))
    got = {k: v for k, v in flat.items() if k in _GROUPS["save"]}
    if got.get("save_dir") is not None or got.get("resume") or got.get("overwrite"):
        out["save"] = pv.Checkpoints(got.pop("save_dir"), resume=got.get("resume", False),
                                     overwrite=got.get("overwrite", False),
                                     every=got.get("save_every"))  # fmt: skip
    got = {k: v for k, v in flat.items() if k in _GROUPS["validation"]}
    if got.get("validation") is not None:
        every, particles = got.get("validate_every", 1), got.get("validation_particles", 1)
        out["validation"] = pv.Validation(got["validation"], every=every, num_particles=particles)
    got = {k: v for k, v in flat.items() if k in _GROUPS["log"]}
    if got:
        out["log"] = pv.Logging(progress=got.get("progress", True), every=got.get("log_every", 50),
                                tensorboard=got.get("log_dir"),
                                images_every=got.get("log_images_every", 0),
                                callback=got.get("callback"))  # fmt: skip
    got = {k: v for k, v in flat.items() if k in _GROUPS["device"]}
    if got:
        out["device"] = pv.Compute(got.get("device"), precision=got.get("precision", "32"),
                                   compile=got.get("compile", False),
                                   distributed=got.get("distributed"))  # fmt: skip
    return out


def fit_circle(save_dir, epochs, *, hidden=8, seed=0, optim=None, **options):
    """A fresh :func:`circle_vae` (initial weights from ``seed``) fitted on :func:`circle_data`
    for ``epochs`` on the CPU, saved in ``save_dir``; returns the VAE and its history. The
    options take the flat names of :func:`grouped`."""
    pyro.clear_param_store()
    torch.manual_seed(seed)
    vae = circle_vae(hidden=(hidden,))
    pyro.set_rng_seed(0)
    options = grouped(save_dir=save_dir, progress=False, device=here(), **options)
    history = pv.fit(
        vae.model,
        vae.guide,
        circle_data(),
        epochs=epochs,
        optim=optim if optim is not None else pv.LazyAdam({"lr": 1e-2}),
        **options,
    )
    return vae, history


# ---- a hand-written Pyro pair ----------------------------------------------------------------


class HandWritten(nn.Module):
    """A model/guide pair written in plain Pyro, not with the package's pieces: ``pyro.param``
    globals (a loading matrix, a positive noise scale) and a ``pyro.module`` encoder;
    ``features`` observed and ``latent`` latent dimensions."""

    def __init__(self, features: int, latent: int) -> None:
        super().__init__()
        self.features, self.latent = features, latent
        self.encoder = nn.Linear(features, 2 * latent)

    def model(self, x, idx=None, num_data=None):
        w = pyro.param("w", torch.zeros(self.features, self.latent) + 0.1)
        scale = pyro.param("scale", torch.ones(()), constraint=dist.constraints.positive)
        with pyro.plate("data", num_data, subsample=idx):
            z = pyro.sample("z", dist.Normal(torch.zeros(self.latent), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ w.T, scale).to_event(1), obs=x)

    def guide(self, x, idx=None, num_data=None):
        pyro.module("encoder", self.encoder)
        loc, log_scale = self.encoder(x).chunk(2, -1)
        with pyro.plate("data", num_data, subsample=idx):
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))


# ---- the contract's pieces: every prior, likelihood and guide the package ships ------------

D, F, B, N = 3, 6, 8, 100

PRIORS = {
    "normal": lambda: pv.StandardNormalPrior(D),
    "maf": lambda: pv.MAFPrior(D, transforms=2, hidden_features=(16, 16)),
    "nsf": lambda: pv.FlowPrior(zuko.flows.NSF(D, transforms=1, hidden_features=(16,))),
    # standalone here; in a VAE it reads the VAE's own encoder (see build)
    "vamp": lambda: pv.VampPrior(pv.GaussianEncoder(pv.MLP(F, 2 * D, (16,)), D), 4, (F,)),
    # (D - 1) coordinates and a log library size, for the latent-library likelihood
    "library": lambda: pv.LatentLibraryPrior(D - 1, loc=1.0, scale=0.5),
}
LIKELIHOODS = {
    "bernoulli": lambda: pv.BernoulliLikelihood(pv.MLP(D, F, (16,)), F),
    "gaussian": lambda: pv.GaussianLikelihood(pv.MLP(D, F, (16,)), F, scale=0.5),
    "gaussian-learned": lambda: pv.GaussianLikelihood(
        pv.MLP(D, F, (16,)), F, scale=0.5, learn_scale=True
    ),
    # the likelihoods of counts and 8-bit values (binary data are counts and 8-bit values too)
    "poisson-size": lambda: pv.PoissonLikelihood(pv.MLP(D, F, (16,)), F, size_factor=True),
    "zinb": lambda: pv.NegativeBinomialLikelihood(
        pv.MLP(D, 2 * F, (16,)), F, size_factor=True, zero_inflated=True
    ),
    "multinomial": lambda: pv.MultinomialLikelihood(pv.MLP(D, F, (16,)), F),
    "discretized-logistic": lambda: pv.DiscretizedLogisticLikelihood(
        pv.MLP(D, 6 * F, (16,)), F, components=2
    ),
    # the decoder reads D - 1 coordinates; the last is the log library size
    "zinb-latent-library": lambda: pv.NegativeBinomialLikelihood(
        pv.MLP(D - 1, 2 * F, (16,)), F, latent_library=True, zero_inflated=True
    ),
}
# The likelihoods added after the first three meet a few priors and guides each (the whole
# matrix would double the suite's contract cases): one of each kind of guide.
LATER_LIKELIHOODS = ("poisson-size", "zinb", "multinomial", "discretized-logistic",
                     "zinb-latent-library")  # fmt: skip
LATER_PAIRS = {("normal", "gaussian-encoder"), ("maf", "per-datapoint"), ("normal", "nsf"),
               ("nsf", "semi-amortized"), ("normal", "iaf"), ("library", "gaussian-encoder"),
               ("library", "per-datapoint")}  # fmt: skip
# Guides are built from the model's prior and likelihood (the semi-amortized one reads them).
GUIDES = {
    "gaussian-encoder": lambda p, lik: pv.GaussianEncoder(pv.MLP(F, 2 * D, (16,)), D),
    "per-datapoint": lambda p, lik: pv.PerDatapointGaussian(N, D),
    "semi-amortized": lambda p, lik: pv.SemiAmortizedGaussian(
        pv.GaussianEncoder(pv.MLP(F, 2 * D, (16,)), D), p, lik, steps=2, lr=1e-2
    ),
    "planar": lambda p, lik: pv.PlanarEncoder(pv.MLP(F, 16, (16,)), 16, D, flows=3),
    "iaf": lambda p, lik: pv.IAFEncoder(
        pv.MLP(F, 16, (16,)), 16, D, flows=2, hidden_features=(16,)
    ),
    "iaf-stable": lambda p, lik: pv.IAFEncoder(
        pv.MLP(F, 16, (16,)), 16, D, flows=2, hidden_features=(16,), stable=True
    ),
    "transformed-gaussian": lambda p, lik: pv.TransformedGaussianEncoder(
        pv.MLP(F, 16, (16,)),
        16,
        D,
        [ConditionalPlanar(DenseNN(16, [16], [1, D, D])) for _ in range(2)],
    ),
    "nsf": lambda p, lik: pv.ZukoFlowEncoder(
        pv.MLP(F, 16, (16,)), zuko.flows.NSF(D, context=16, transforms=2, hidden_features=(16,))
    ),
    "chain": lambda p, lik: pv.GuideChain(
        [pv.GaussianEncoder(pv.MLP(F, 8, (16,)), 4), pv.GaussianEncoder(pv.MLP(4, 2 * D, (8,)), D)]
    ),
    "maf-forward": lambda p, lik: pv.ZukoFlowEncoder(
        pv.MLP(F, 16, (16,)),
        zuko.flows.MAF(D, context=16, transforms=2, hidden_features=(16,)),
        inverse=False,
    ),
}
# Distributions the package exports, each with a value in its support to score.
DISTRIBUTIONS = {
    "unit-interval-bernoulli": (
        lambda: pv.UnitIntervalBernoulli(logits=torch.randn(B, F)),
        lambda: torch.rand(B, F),
    ),
    "discretized-logistic": (
        lambda: pv.DiscretizedLogistic(
            torch.rand(B, F, 3) * 2 - 1, torch.randn(B, F, 3), torch.randn(B, F, 3)
        ),
        lambda: torch.randint(0, 256, (B, F)).float(),
    ),
}


def data_for(likelihood_name: str, *shape: int, dtype=torch.float32) -> torch.Tensor:
    """Random data in the likelihood's support: grey values in [0, 1], or integers 0..5 for
    the likelihoods of counts and of 8-bit values (small: the contract's encoders read the
    values raw; the 0..255 range is tested in tests/models/test_counts_and_8bit.py)."""
    if likelihood_name in LATER_LIKELIHOODS:
        return torch.randint(0, 6, shape).to(dtype)
    return torch.rand(*shape, dtype=dtype)


def make_batch():
    x = torch.rand(B, F).round()
    idx = torch.randperm(N)[:B]
    return x, idx


# The VampPrior is the mixture of the guide's posteriors: it needs an amortized Gaussian one.
VAMP_GUIDES = ("gaussian-encoder", "semi-amortized")
COMBINATIONS = [
    (p, lik, g)
    for p in PRIORS
    for lik in LIKELIHOODS
    for g in GUIDES
    if (p != "vamp" or g in VAMP_GUIDES)
    and (lik not in LATER_LIKELIHOODS or (p, g) in LATER_PAIRS)
    and (p != "library" or lik == "zinb-latent-library")  # (the library prior: for it alone)
]


def build(prior_name, likelihood_name, guide_name):
    likelihood = LIKELIHOODS[likelihood_name]()
    if prior_name == "vamp":  # the prior reads the VAE's own encoder (shared weights)
        encoder = pv.GaussianEncoder(pv.MLP(F, 2 * D, (16,)), D)
        prior = pv.VampPrior(encoder, 4, (F,))
        guide = encoder
        if guide_name == "semi-amortized":
            guide = pv.SemiAmortizedGaussian(encoder, prior, likelihood, steps=2, lr=1e-2)
        return pv.VAE(prior, likelihood, guide)
    prior = PRIORS[prior_name]()
    return pv.VAE(prior, likelihood, GUIDES[guide_name](prior, likelihood))


# ---- the zoo: every standard architecture --------------------------------------------------

ZOO = {
    "flow_prior": lambda: zoo.flow_prior_vae(),
    **{f"flow_posterior-{f}": (lambda f=f: zoo.flow_posterior_vae(f)) for f in zoo.POSTERIORS},
    "flow_posterior-maf-prior": lambda: zoo.flow_posterior_vae("iaf", prior="maf"),
    "iwae-1": lambda: zoo.iwae_vae(layers=1),
    "iwae-2": lambda: zoo.iwae_vae(layers=2),
    "iwae-vamp": lambda: zoo.iwae_vae(layers=1, prior="vamp", num_pseudo=20),
    "iwae-2-vamp": lambda: zoo.iwae_vae(layers=2, prior="vamp", num_pseudo=20),
    **{f"conv-{lik}": (lambda lik=lik: zoo.conv_vae(likelihood=lik)) for lik in zoo.LIKELIHOODS},
    "latent2d": lambda: zoo.latent2d_vae(),
    **{f"circle-{i}": (lambda i=i: zoo.circle_vae(i, num_data=N)) for i in zoo.INFERENCE},
}


def assert_bf16_scoring_agrees(vae: pv.VAE, x: torch.Tensor, *, num_particles: int) -> None:
    """``evaluate`` of one trained model in bf16-mixed and in float32, with the same noise:
    its ELBO and log-likelihood within 0.1 nats (the bound bf16-mixed scoring is held to)."""
    scores = {}
    for precision in ("32", "bf16-mixed"):
        torch.manual_seed(1)
        scores[precision] = pv.evaluate(vae.model, vae.guide, x, num_particles=num_particles,
                                        precision=precision)  # fmt: skip
    assert abs(scores["32"].elbo - scores["bf16-mixed"].elbo) < 0.1
    assert abs(scores["32"].log_likelihood - scores["bf16-mixed"].log_likelihood) < 0.1
