"""Semi-supervised MNIST with the M2 model, as Pyro's ``examples/vae/ss_vae_M2.py``.

A few labels are known (100, 600, 1000 or 3000, balanced over the classes); the rest of the
60000 training images are unlabelled. The batches carry the labels and the mask of known ones as
fields (``y`` and ``y_mask``); where a label is unknown the guide's classifier q(y | x) is
enumerated in parallel and ``TraceEnum_ELBO`` sums it out; Kingma et al.'s auxiliary term alpha
log q(y | x) trains the classifier on the known labels, alpha per labelled point = 0.1 N over
their number by default (``--alpha-scale 0.1``; Pyro's example uses ``--alpha 46``). The model
is ``pyro_vae.models.zoo.m2_vae``. The score is the classifier's test error (Kingma, Rezende,
Mohamed & Welling 2014, Table 1, M2: 11.97 / 4.94 / 3.60 / 3.92 % with 100 / 600 / 1000 / 3000
labels; Pyro's tutorial: about 4 % with 3000).

    python examples/mnist_ssvae.py                          # 3000 labels, 2 epochs
    python examples/mnist_ssvae.py --labels 100 3000 --epochs 10
"""

from __future__ import annotations

import argparse
import time

import torch

import pyro_vae as pv
from pyro_vae.models import zoo

try:
    from . import _common as scripts
except ImportError:  # run as a file: python examples/<name>.py
    import _common as scripts

KINGMA_M2 = {100: 11.97, 600: 4.94, 1000: 3.60, 3000: 3.92}
"""Kingma et al. (2014), Table 1: M2's test error (%) by number of labels."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = scripts.parser(
        __doc__, epochs=2, batch_size=200, out="runs/mnist_ssvae", full="50", default_particles=10
    )
    p.add_argument("--labels", type=int, nargs="+", default=[3000], help="known labels")
    p.add_argument("--alpha-scale", type=float, default=0.1, help="alpha = scale * N / labels")
    p.add_argument(
        "--alpha", type=float, default=None, help="alpha per labelled point (Pyro's example: 46)"
    )
    p.add_argument("--latent-dim", type=int, default=50)
    p.add_argument("--hidden", type=int, default=500)
    return p.parse_args(argv)


def known_labels(y: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """A mask of ``count`` known labels, the same number in each class."""
    with torch.device("cpu"):  # (the generator is the CPU's, whatever the default device)
        g = torch.Generator().manual_seed(seed)
        classes = int(y.max()) + 1
        mask = torch.zeros(len(y), dtype=torch.bool)
        for k in range(classes):
            members = (y.cpu() == k).nonzero().squeeze(1)
            chosen = members[torch.randperm(len(members), generator=g)[: count // classes]]
            mask[chosen] = True
        return mask.to(y.device)


def run(args: argparse.Namespace, labels: int, data: tuple, device, out) -> dict:
    x_train, y_train, x_test, y_test = data
    known = known_labels(y_train, labels, args.seed)
    alpha = args.alpha
    if alpha is None:  # Kingma et al.: 0.1 N over the labelled points' mean
        alpha = args.alpha_scale * len(x_train) / int(known.sum())
    m2 = zoo.m2_vae(latent_dim=args.latent_dim, hidden=args.hidden, alpha=alpha)
    train = pv.Batches(x_train, y=y_train, y_mask=known, batch_size=args.batch_size)
    t0 = time.perf_counter()
    # (no loss=: fit takes the enumerating loss for M2's enumerated label, through M2's
    # derived estimator, checked against TraceEnum_ELBO on the first batch)
    history = pv.fit(m2.model, m2.guide, train, epochs=args.epochs,
                     optim=pv.LazyAdam({"lr": args.lr}),
                     **scripts.run_options(args, out / f"labels{labels}", device))  # fmt: skip
    seconds = history.seconds[-1] if history.seconds else time.perf_counter() - t0
    predicted = torch.cat([m2.classify(x) for x in x_test.split(1000)])
    error = 100.0 * (predicted != y_test).double().mean().item()
    classes = torch.arange(10, device=device).repeat_interleave(8)
    image = pv.save_grid(m2.sample(classes), scripts.pictures(out) / f"samples{labels}.png")
    return {
        "labels": labels,
        "alpha": alpha,
        "epochs": len(history.epoch),
        "train_loss": history.loss[-1] if history.loss else None,
        "test_error": error,
        "test_points": len(y_test),
        "kingma_m2_error": KINGMA_M2.get(labels),
        "seconds": seconds,
        "image": image,
    }


def main(args: argparse.Namespace) -> dict:
    device, out = scripts.setup(args)
    data = scripts.mnist_tensors(args, device)
    runs = [run(args, labels, data, device, out) for labels in args.labels]
    metrics = scripts.settings_scores(args, runs, device)
    return scripts.save_metrics(out, metrics)


if __name__ == "__main__":
    scripts.command(main, parse_args)
