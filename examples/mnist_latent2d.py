"""A VAE with a 2-D latent space on MNIST, and the pictures of that space.

MLP encoder and decoder with two hidden layers of 400 (ReLU), 2 latent dimensions, a Bernoulli
likelihood on grey values (the usual summed binary cross-entropy), Adam lr 1e-3, batch 100,
50 epochs for the full run; the model is ``pyro_vae.models.zoo.latent2d_vae``. The MXNet Gluon VAE
tutorial, whose setup this is, reports a training loss of 137.45 and a validation loss of
141.13 nats per image after 50 epochs. The validation loss here is the test set's negative
ELBO with one sample after every epoch (``fit(validation=...)``).

    python examples/mnist_latent2d.py --epochs 50 --out runs/mnist_latent2d

Writes metrics.json, history.json and latent.png (test posterior means by digit),
latent_cdf.png (the same on Φ(μ)), manifold.png (20×20 decoded Normal quantiles),
samples.png (10×10), reconstructions.png and loss.png (train and validation) to --out.
"""

from __future__ import annotations

import argparse
import pathlib

import torch

import pyro_vae as pv
from pyro_vae.models import zoo

try:
    from . import _common as scripts
except ImportError:  # run as a file: python examples/<name>.py
    import _common as scripts


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = scripts.parser(
        __doc__,
        epochs=5,
        batch_size=100,
        out="runs/mnist_latent2d",
        full="50",
        default_particles=1000,
    )
    p.add_argument("--hidden", type=int, default=400)
    p.add_argument("--likelihood", choices=zoo.LIKELIHOODS, default="bernoulli")
    p.add_argument("--beta", type=float, default=1.0, help="weight of the KL term")
    p.add_argument("--warmup", type=int, default=0, help="epochs of linear KL warm-up")
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> dict:
    device, out = scripts.setup(args)
    x_train, _, x_test, y_test = scripts.mnist_tensors(args, device)
    train = pv.Batches(x_train, batch_size=args.batch_size)
    test = pv.Batches(x_test, batch_size=1000, shuffle=False)
    vae = zoo.latent2d_vae(likelihood=args.likelihood, hidden=args.hidden)

    def beta(epoch: int) -> float:
        return args.beta * min(1.0, epoch / args.warmup) if args.warmup else args.beta

    history = pv.fit(
        vae.model,
        vae.guide,
        train,
        epochs=args.epochs,
        optim=pv.LazyAdam({"lr": args.lr}),
        loss=pv.BetaELBO(beta),
        **scripts.run_options(args, out, device),
        validation=test,  # the validation loss, as trained: one sample, after every epoch
    )
    val_loss = [-elbo for elbo in history.val_elbo]
    vae.eval()
    result = scripts.score_test_set(
        vae.model,
        vae.guide,
        test,
        device,
        args.num_particles,
    )

    images = _pictures(vae, history, val_loss, test, y_test, scripts.pictures(out))
    metrics = {
        "epochs": len(history.epoch),
        "train_loss": history.loss[-1],
        "val_loss": val_loss[-1],
        "test_elbo": result.elbo,
        "test_log_likelihood": result.log_likelihood,
        "num_particles": args.num_particles,
        "device": pv.device_name(device),
        "seconds": history.seconds[-1],
        "images": images,
        "likelihood": args.likelihood,
        "beta": args.beta,
        "warmup": args.warmup,
        "batch_size": args.batch_size,
        "lr": args.lr,
    }
    return scripts.save_metrics(out, metrics)


def _pictures(
    vae: pv.VAE,
    history: pv.History,
    val_loss: list[float],
    test: pv.Batches,
    y_test: torch.Tensor,
    pics: pathlib.Path,
) -> list[str]:
    """The test set's posterior means (and their normal CDF) coloured by digit, the decoded
    manifold over a grid of prior quantiles, samples, reconstructions and the loss curves."""
    with torch.no_grad():
        mu = vae.variational(test.data, None).mean
    normal = torch.distributions.Normal(0.0, 1.0)
    quantiles = normal.icdf(torch.linspace(0.025, 0.975, 20, device=mu.device))
    grid = torch.stack(torch.meshgrid(quantiles, quantiles.flip(0), indexing="xy"), -1)
    with torch.no_grad():
        manifold = vae.likelihood(grid.reshape(-1, 2)).mean
    x = test.data[:80]
    images = [
        pv.plot_scatter(
            mu,
            y_test,
            pics / "latent.png",
            colorbar="digit",
            cmap="tab10",
            title="test set: posterior means E_q[z | x]",
        ),
        pv.plot_scatter(
            normal.cdf(mu),
            y_test,
            pics / "latent_cdf.png",
            colorbar="digit",
            cmap="tab10",
            title="test set: Φ(E_q[z | x])",
        ),
        pv.save_grid(manifold, pics / "manifold.png", nrow=20),
        pv.save_grid(vae.sample(100), pics / "samples.png", nrow=10),
        pv.save_reconstructions(x, vae.reconstruct(x), pics / "reconstructions.png", nrow=10),
        pv.plot_curves(
            {"train": (history.epoch, history.loss), "validation": (history.val_epoch, val_loss)},
            pics / "loss.png",
            ylabel="negative ELBO per image (nats)",
        ),
    ]
    return images


if __name__ == "__main__":
    scripts.command(main, parse_args)
