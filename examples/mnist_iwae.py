"""The models of "Importance Weighted Autoencoders" (Burda, Grosse & Salakhutdinov 2016):
one or two stochastic layers, trained with the ELBO or the importance-weighted bound.

Dynamically binarized MNIST (test set binarized once with a fixed seed), Bernoulli decoder,
tanh MLPs (the model is ``pyro_vae.models.zoo.iwae_vae``):

* ``--layers 1``: x → 200 → 200 → z (50);
* ``--layers 2``: x → 100 → 100 → z1 (100) → 50 → 50 → z2 (50), a ``pv.HierarchicalVAE``
  whose model and guide have the sites ``z1``, ``z2`` and ``x``: ``fit``, ``evaluate``,
  checkpoints and ``amortization_gap`` take it as they take the one-layer VAE.

``--iw K`` trains with ``pv.ImportanceWeightedELBO(K)`` (K = 1: the ELBO, through
``pv.TensorTrace_ELBO``); ``--prior vamp`` puts a VampPrior (Tomczak & Welling 2018) with
``--num-pseudo`` pseudo-inputs on the top layer: with the paper's tanh units it stays at the
data-independent solution (the encoder makes every posterior equal to the prior it defines;
``--warmup`` did not help in the runs made), so the benchmark trains it with
``--activation relu``. Test NLL is the importance-sampled estimate
with ``--num-particles`` samples (the paper: 5000) on the first ``--test-points`` test images;
``--gap-points`` > 0 splits the inference gap on that many test images into the approximation
and amortization gaps (Cremer, Li & Duvenaud 2018).

    python examples/mnist_iwae.py --layers 2 --iw 5 --epochs 100

Writes metrics.json, history.json, samples.png, reconstructions.png and loss.png to --out.
"""

from __future__ import annotations

import argparse

import torch

import pyro_vae as pv
from pyro_vae.models import zoo

try:
    from . import _common as scripts
except ImportError:  # run as a file: python examples/<name>.py
    import _common as scripts


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = scripts.parser(__doc__, epochs=2, batch_size=100, out="runs/mnist_iwae", full="3280")
    p.add_argument("--layers", type=int, choices=(1, 2), default=1)
    p.add_argument("--iw", type=int, default=1, help="K of the training bound (1: the ELBO)")
    p.add_argument("--prior", choices=zoo.IWAE_PRIORS, default="normal")
    p.add_argument("--num-pseudo", type=int, default=500, help="pseudo-inputs of the VampPrior")
    p.add_argument(
        "--activation", choices=list(scripts.ACTIVATIONS), default="tanh", help="hidden units"
    )
    p.add_argument(
        "--warmup", type=int, default=0, help="epochs of linear KL warm-up (β from 0 to 1)"
    )
    p.add_argument("--test-points", type=int, default=None, help="score the first N test images")
    p.add_argument("--gap-points", type=int, default=0, help="test images for the gap split")
    p.add_argument("--gap-epochs", type=int, default=100, help="E-step epochs of the gap split")
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> dict:
    device, out = scripts.setup(args)

    train, test = scripts.mnist_from_args(args, device, test_points=args.test_points)
    x_test = test.data
    activation = scripts.ACTIVATIONS[args.activation]
    vae = zoo.iwae_vae(
        layers=args.layers, prior=args.prior, num_pseudo=args.num_pseudo, activation=activation
    )
    loss = (
        pv.ImportanceWeightedELBO(args.iw, max_plate_nesting=1)
        if args.iw > 1
        else pv.TensorTrace_ELBO(max_plate_nesting=1)
    )
    if args.warmup:  # KL warm-up: β rises linearly to 1
        loss = pv.BetaELBO(lambda epoch: min(1.0, epoch / args.warmup), loss=loss)
    history = pv.fit(
        vae.model,
        vae.guide,
        train,
        epochs=args.epochs,
        loss=loss,
        optim=pv.LazyAdam({"lr": args.lr}),
        **scripts.run_options(args, out, device),
    )
    vae.eval()
    result = scripts.score_test_set(vae.model, vae.guide, test, device, args.num_particles)
    k, max_rows = result.num_particles, 2**20 if device.type == "cuda" else 2**16
    gap = None
    if args.gap_points:
        points = pv.Batches(x_test[: args.gap_points], batch_size=100, shuffle=False)
        gap = pv.amortization_gap(
            vae, points, epochs=args.gap_epochs, num_particles=k, max_rows=max_rows
        ).__dict__
    x = test.data[:64]
    pics = scripts.pictures(out)
    images = [
        pv.save_grid(vae.sample(64), pics / "samples.png"),
        pv.save_reconstructions(x, vae.reconstruct(x), pics / "reconstructions.png"),
        pv.plot_curves(
            {"train": (history.epoch, history.loss)},
            pics / "loss.png",
            ylabel=f"negative bound per image, k = {args.iw} (nats)",
            title=f"{args.layers} stochastic layer(s), {args.prior} prior",
        ),
    ]
    metrics = {
        **scripts.scores(history, result, device, images),
        "test_points": result.num_data,
        "gap": gap,
        "gap_points": args.gap_points,
        "gap_epochs": args.gap_epochs,
        "threads": torch.get_num_threads(),
        "layers": args.layers,
        "iw": args.iw,
        "prior": args.prior,
        "num_pseudo": args.num_pseudo if args.prior == "vamp" else 0,
        "activation": args.activation,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "warmup": args.warmup,
        "binarize": "dynamic",
    }
    return scripts.save_metrics(out, metrics)


if __name__ == "__main__":
    scripts.command(main, parse_args)
