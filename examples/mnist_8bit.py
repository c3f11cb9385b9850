"""8-bit MNIST with a mixture of discretized logistics, in bits per dimension.

The images as they are, 0..255 per pixel, scored by ``pv.DiscretizedLogisticLikelihood`` (a
mixture of ``--components`` discretized logistics per pixel: Kingma et al. 2016, Salimans et
al. 2017), beside the usual model of binarized MNIST (a Bernoulli likelihood on the images
thresholded at 0.5) with the same encoder and decoder widths. Both report the test set's
importance-sampled negative log-likelihood in bits per dimension (nats / (784 ln 2)): the
8-bit model's is the cost of coding the real images, the binarized one's of coding a 1-bit
version of them, so the two numbers measure different data.

    python examples/mnist_8bit.py --epochs 20 --out runs/mnist_8bit

Writes metrics.json, samples_8bit.png (the mixture's means at z ~ p(z)), samples_binary.png
and reconstructions_8bit.png.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import pyro_vae as pv

try:
    from . import _common as scripts
except ImportError:  # run as a file: python examples/<name>.py
    import _common as scripts


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = scripts.parser(__doc__, epochs=5, batch_size=128, out="runs/mnist_8bit", full="20",
                       default_particles=100)  # fmt: skip
    p.add_argument("--components", type=int, default=5, help="logistics per pixel")
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--latent-dim", type=int, default=32)
    return p.parse_args(argv)


class Scaled(nn.Module):
    """The encoder's first layer: 0..255 values to [0, 1]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / 255


def vae_8bit(*, latent_dim: int, hidden: int, components: int) -> pv.VAE:
    """Encoder 784 → hidden → (μ, log σ); decoder latent → hidden → 784 × 3K (K = 1: × 2)."""
    per_pixel = 2 if components == 1 else 3 * components
    likelihood = pv.DiscretizedLogisticLikelihood(
        pv.MLP(latent_dim, 784 * per_pixel, (hidden,)), 784, components=components
    )
    encoder = nn.Sequential(Scaled(), pv.MLP(784, 2 * latent_dim, (hidden,)))
    return pv.VAE(pv.StandardNormalPrior(latent_dim), likelihood,
                  pv.GaussianEncoder(encoder, latent_dim), name="vae8")  # fmt: skip


def vae_binary(*, latent_dim: int, hidden: int) -> pv.VAE:
    """The same widths with a Bernoulli likelihood, for binarized images."""
    return pv.VAE(pv.StandardNormalPrior(latent_dim),
                  pv.BernoulliLikelihood(pv.MLP(latent_dim, 784, (hidden,)), 784),
                  pv.GaussianEncoder(pv.MLP(784, 2 * latent_dim, (hidden,)), latent_dim),
                  name="vae1")  # fmt: skip


def main(args: argparse.Namespace) -> dict:
    device, out = scripts.setup(args)
    x_train, _, x_test, _ = scripts.mnist_tensors(args, device)
    widths = {"latent_dim": args.latent_dim, "hidden": args.hidden}
    runs = {}
    for kind, vae, train, test in [
        ("8bit", vae_8bit(components=args.components, **widths),
         (x_train * 255).round(), (x_test * 255).round()),
        ("binary", vae_binary(**widths), x_train.round(), x_test.round()),
    ]:  # fmt: skip
        folder = out / kind
        history = pv.fit(vae.model, vae.guide, pv.Batches(train, batch_size=args.batch_size),
                         epochs=args.epochs, optim=pv.LazyAdam({"lr": args.lr}),
                         **scripts.run_options(args, folder, device))  # fmt: skip
        vae.eval()
        result = scripts.score_test_set(vae.model, vae.guide, pv.Batches(test, batch_size=1000,
                                        shuffle=False), device, args.num_particles)  # fmt: skip
        runs[kind] = (vae, history, result, test)
    pics = scripts.pictures(out)
    vae8, _, _, test8 = runs["8bit"]
    images = [
        pv.save_grid(vae8.sample(64) / 255, pics / "samples_8bit.png"),
        pv.save_grid(runs["binary"][0].sample(64), pics / "samples_binary.png"),
        pv.save_reconstructions(test8[:32] / 255, vae8.reconstruct(test8[:32]) / 255,
                                pics / "reconstructions_8bit.png"),
    ]  # fmt: skip
    _, history, result, _ = runs["8bit"]
    metrics = {
        **scripts.scores(history, result, device, images),
        "bits_per_dim": result.bits_per_dim,
        "binary_bits_per_dim": runs["binary"][2].bits_per_dim,
        "binary_test_nll": -runs["binary"][2].log_likelihood,
        "components": args.components,
        "hidden": args.hidden,
        "latent_dim": args.latent_dim,
        "num_train": len(x_train),
        "num_test": len(x_test),
    }
    return scripts.save_metrics(out, metrics)


if __name__ == "__main__":
    scripts.command(main, parse_args)
