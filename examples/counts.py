"""Single-cell-like counts with a zero-inflated negative-binomial VAE (scVI's likelihood).

Data (synthetic, seed 0): 3 cell types and 2 sequencing batches. A cell of type t has a
10-dimensional state z = c_t + 0.3 ε around its type's centre; gene g's proportion is
softmax(W z + b_s)_g with a batch shift b_s (the batch effect), its count is drawn from
ZINB(μ = ℓ ρ_g, θ = 5, π = 0.1) with a library size ℓ ~ LogNormal(log 1000, 0.4). The VAE
(Lopez et al. 2018, "Deep generative modeling for single-cell transcriptomics", with an
observed library): encoder log(1 + x) → 128 → (μ, log σ) of a 10-d latent, decoder 10 → 128 →
(proportion logits, dropout logits), per-gene dispersion learned,
``pv.NegativeBinomialLikelihood(..., size_factor=True, zero_inflated=True)``.

    python examples/counts.py --epochs 100 --out runs/counts

Writes metrics.json (test ELBO and log-likelihood in nats per cell, the cell types'
nearest-neighbour accuracy in the latent space) and latent_by_type.png, latent_by_batch.png
(the first two latent axes of the test cells' posterior means) and loss.png. By default the
VAE is not told the batch: the latent space shows the batch effect beside the cell types.
``--batch-covariate`` gives it the batch as scVI does (a ConditionalVAE whose decoder and
encoder read the one-hot batch, a field of the batches), and the batches mix in the latent
space while the cell types stay apart.
"""

from __future__ import annotations

import argparse
import math

import torch
from torch import nn

import pyro_vae as pv

try:
    from . import _common as scripts
except ImportError:  # run as a file: python examples/<name>.py
    import _common as scripts


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = scripts.parser(__doc__, epochs=30, batch_size=128, out="runs/counts", full="100",
                       lr=1e-3, default_particles=200, mnist=False)  # fmt: skip
    p.add_argument("--batch-covariate", action="store_true",
                   help="give the VAE the batch (scVI's covariate: a ConditionalVAE)")  # fmt: skip
    p.add_argument("--cells", type=int, default=6000, help="cells (a quarter held out)")
    p.add_argument("--genes", type=int, default=200)
    return p.parse_args(argv)


def make_counts(cells: int, genes: int, *, seed: int = 0) -> dict[str, torch.Tensor]:
    """The synthetic data set above: counts ``(cells, genes)``, cell types, batches and
    library sizes (a private generator: the global RNG is untouched)."""
    with torch.device("cpu"):  # (the generator is the CPU's, whatever the default device)
        g = torch.Generator().manual_seed(seed)
        centres = 2.0 * torch.randn(3, 10, generator=g)
        weights = torch.randn(10, genes, generator=g) / math.sqrt(10)
        shifts = 0.5 * torch.randn(2, genes, generator=g)
        kind = torch.randint(0, 3, (cells,), generator=g)
        batch = torch.randint(0, 2, (cells,), generator=g)
        z = centres[kind] + 0.3 * torch.randn(cells, 10, generator=g)
        rho = (z @ weights + shifts[batch]).softmax(-1)
        library = (math.log(1000) + 0.4 * torch.randn(cells, generator=g)).exp()
        mu, theta = library[:, None] * rho, 5.0
        # ZINB: NB(θ, p) as a Poisson of a Gamma(θ, θ / μ) rate, then dropouts with π = 0.1
        rate = torch._standard_gamma(torch.full_like(mu, theta), generator=g) * mu / theta
        counts = torch.poisson(rate, generator=g)
        counts[torch.rand(counts.shape, generator=g) < 0.1] = 0.0
        return {"x": counts, "kind": kind, "batch": batch, "library": library}


class Log1p(nn.Module):
    """The encoder's first layer: log(1 + x) of the counts."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.log1p()


def count_vae(genes: int, *, latent_dim: int = 10, hidden: int = 128, batches: int = 0) -> pv.VAE:
    """The ZINB VAE described above; with ``batches`` > 0, scVI's batch covariate: a
    :class:`~pyro_vae.ConditionalVAE` whose decoder and encoder also read the one-hot batch
    (the field ``batch``), so that the latent need not carry the batch effect."""
    likelihood = pv.NegativeBinomialLikelihood(
        pv.MLP(latent_dim + batches, 2 * genes, (hidden,)), genes, size_factor=True,
        zero_inflated=True,
    )  # fmt: skip
    encoder = nn.Sequential(Log1p(), pv.MLP(genes + batches, 2 * latent_dim, (hidden,)))
    prior, guide = pv.StandardNormalPrior(latent_dim), pv.GaussianEncoder(encoder, latent_dim)
    if not batches:
        return pv.VAE(prior, likelihood, guide)
    return pv.ConditionalVAE(prior, likelihood, guide, condition="batch")


def neighbour_accuracy(z: torch.Tensor, labels: torch.Tensor) -> float:
    """How often a cell's nearest other cell (Euclidean, in the latent space) has its type."""
    distances = torch.cdist(z, z)
    distances.fill_diagonal_(math.inf)
    return float((labels[distances.argmin(-1)] == labels).float().mean())


def main(args: argparse.Namespace) -> dict:
    device, out = scripts.setup(args)
    data = {k: v.to(device) for k, v in make_counts(args.cells, args.genes).items()}
    split = args.cells * 3 // 4
    fields = {}  # with --batch-covariate: the one-hot batch, a field of the batches
    if args.batch_covariate:
        fields = {"batch": torch.nn.functional.one_hot(data["batch"], 2).float()}
    train = pv.Batches(data["x"][:split], batch_size=args.batch_size,
                       **{k: v[:split] for k, v in fields.items()})  # fmt: skip
    test = pv.Batches(data["x"][split:], batch_size=1000, shuffle=False,
                      **{k: v[split:] for k, v in fields.items()})  # fmt: skip
    vae = count_vae(args.genes, batches=2 if args.batch_covariate else 0)
    optim = pv.LazyAdam({"lr": args.lr})
    history = pv.fit(vae.model, vae.guide, train, epochs=args.epochs,
                     optim=optim, **scripts.run_options(args, out, device))  # fmt: skip
    vae.eval()
    result = pv.evaluate(vae.model, vae.guide, test, num_particles=args.num_particles)
    with torch.no_grad():
        inputs = vae.guide_input(test.data, test.fields) if fields else test.data
        z = vae.variational(inputs).mean
    kind, batch = data["kind"][split:], data["batch"][split:]
    pics = scripts.pictures(out)
    images = [
        pv.plot_scatter(z[:, :2], kind, pics / "latent_by_type.png", colorbar="cell type",
                        title="test cells, E_q[z | x] (axes 1-2), by cell type"),
        pv.plot_scatter(z[:, :2], batch, pics / "latent_by_batch.png", colorbar="batch",
                        title="test cells, E_q[z | x] (axes 1-2), by batch"),
        pv.plot_curves({"train": (history.epoch, [-v for v in history.loss])},
                       pics / "loss.png", ylabel="ELBO per cell (nats)"),
    ]  # fmt: skip
    metrics = {
        **scripts.scores(history, result, device, images),
        "cells": args.cells,
        "genes": args.genes,
        "type_neighbour_accuracy": neighbour_accuracy(z, kind),
        "batch_neighbour_accuracy": neighbour_accuracy(z, batch),
        "batch_covariate": args.batch_covariate,
    }
    return scripts.save_metrics(out, metrics)


if __name__ == "__main__":
    scripts.command(main, parse_args)
