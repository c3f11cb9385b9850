"""What several test files share: small models, the exact PPCA oracle, the 2-process harness
and the examples' loader (see tests/README.md)."""

from __future__ import annotations

import datetime
import importlib
import math
import os
import socket
from types import ModuleType

import pyro
import pyro.distributions as dist
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp
from torch import nn

import pyro_vae as pv

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


# ---- the exact oracle: a linear-Gaussian VAE is probabilistic PCA ---------------------------

PPCA_D, PPCA_F, PPCA_B, PPCA_SIGMA = 2, 5, 16, 0.3


def ppca(dtype=torch.float64):
    """PPCA (Tipping & Bishop 1999) as a VAE whose guide is the exact posterior, data from it,
    the exact log p(x) and the posterior's map ``(a, b, cov)`` (see tests/test_exact.py)."""
    D, F, B, SIGMA = PPCA_D, PPCA_F, PPCA_B, PPCA_SIGMA
    g = torch.Generator().manual_seed(0)
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
