"""MNIST VAE with a masked autoregressive flow prior, in Pyro (after zuko's and Pyro's tutorial).

Gaussian encoder 784→1024→1024→2×16 (ReLU), Bernoulli decoder 16→1024→1024→784, MAF prior with
3 transforms and hidden features (256, 256), Adam lr 1e-3, batch 256, thresholded MNIST; the
model is ``pyro_vae.models.zoo.flow_prior_vae``. zuko's plain-PyTorch tutorial ("Variational
autoencoders", zuko's documentation) reports a training loss of 65.8 nats per image after 64
epochs.

    python examples/mnist_flow_prior.py --epochs 64 --out runs/mnist_flow_prior

Writes ``metrics.json``, ``history.json``, ``samples.png`` and ``reconstructions.png`` to --out.
"""

from __future__ import annotations

import argparse
import time

import pyro
import torch

import pyro_vae as pv
from pyro_vae.models import zoo

try:
    from . import _common as scripts
except ImportError:  # run as a file: python examples/<name>.py
    import _common as scripts


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = scripts.parser(__doc__, epochs=2, batch_size=256, out="runs/mnist_flow_prior", full="64")
    p.add_argument("--latent-dim", type=int, default=16)
    p.add_argument("--hidden", type=int, default=1024, help="width of the MLPs' hidden layers")
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> dict:
    device, out = scripts.setup(args)

    x_train, _, x_test, _ = scripts.mnist_tensors(args, device)
    train = pv.Batches(x_train, batch_size=args.batch_size, binarize="threshold")
    test = pv.Batches(x_test, batch_size=1000, binarize="threshold", shuffle=False)

    vae = zoo.flow_prior_vae(latent_dim=args.latent_dim, hidden=args.hidden)
    t0 = time.perf_counter()
    history = pv.fit(
        vae.model,
        vae.guide,
        train,
        epochs=args.epochs,
        optim=pyro.optim.Adam({"lr": args.lr}),
        **scripts.run_options(args, out, device),
    )
    seconds = history.seconds[-1] if history.seconds else time.perf_counter() - t0

    vae.eval()
    result = scripts.score_test_set(vae.model, vae.guide, test, device, args.num_particles)
    x = test.data[:64]
    pics = scripts.pictures(out)  # rank 0 writes to --out
    images = [
        pv.save_grid(vae.sample(64), pics / "samples.png"),
        pv.save_reconstructions(x, vae.reconstruct(x), pics / "reconstructions.png"),
    ]
    metrics = {
        **scripts.scores(history, result, device, images),
        "seconds": seconds,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "num_train": train.num_data,
        "num_test": test.num_data,
        "torch": torch.__version__,
        "pyro": pyro.__version__,
    }
    return scripts.save_metrics(out, metrics)


if __name__ == "__main__":
    scripts.command(main, parse_args)
