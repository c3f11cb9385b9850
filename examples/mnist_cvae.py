"""Image completion on MNIST with a conditional VAE, as Pyro's ``examples/cvae``.

One, two or three quadrants of a digit are known; the model draws the rest (Sohn, Lee & Yan
2015).

The data point ``x`` is the whole image; the batches carry two fields, the condition ``c``
(the image with the unknown pixels set to -1) and the mask ``unknown`` (the pixels the
likelihood scores), which ``fit`` and ``evaluate`` pass to the model and guide as keywords. The
model is ``pyro_vae.models.zoo.completion_cvae`` (Pyro's networks; where the model differs
from Pyro's, its docstring says). Two scores of the unknown pixels given the known ones, in
nats per test image: the negative ELBO, the quantity of Pyro's tutorial table (its
``Trace_ELBO(num_particles=10)`` loss: 71.8 / 51.0 / 24.2 for its CVAE and 100.4 / 61.9 / 25.4
for a deterministic baseline, 1 / 2 / 3 known quadrants), and the conditional negative
log-likelihood -log p(x_unknown | x_known) estimated by importance sampling (a tighter bound,
not the tutorial's quantity). Known quadrants, as Pyro's: 1 = bottom left, 2 = the left half,
3 = all but the bottom right.

    python examples/mnist_cvae.py                   # 2 epochs per setting
    python examples/mnist_cvae.py --epochs 10       # the results page's run
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

PYRO_CVAE = {1: 71.8, 2: 51.0, 3: 24.2}
"""Pyro's tutorial: the CVAE's negative ELBO of the unknown pixels (nats per image; its
``Trace_ELBO(num_particles=10)`` loss) by known quadrants."""
PYRO_BASELINE = {1: 100.4, 2: 61.9, 3: 25.4}
"""Pyro's deterministic baseline network's loss (the Bernoulli negative log-likelihood of its
one completion of the unknown pixels, nats per image)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = scripts.parser(
        __doc__, epochs=2, batch_size=128, out="runs/mnist_cvae", full="10", default_particles=100
    )
    p.add_argument("--quadrants", type=int, nargs="+", default=[1, 2, 3], choices=(1, 2, 3))
    p.add_argument("--latent-dim", type=int, default=200)
    p.add_argument("--hidden", type=int, default=500)
    return p.parse_args(argv)


def known_pixels(quadrants: int) -> torch.Tensor:
    """The pixels of the known quadrants, a ``(784,)`` boolean mask."""
    known = torch.zeros(28, 28, dtype=torch.bool)
    known[14:, :14] = True  # bottom left
    if quadrants >= 2:
        known[:, :14] = True  # the left half
    if quadrants == 3:
        known[:14, :] = True  # and the top right
    return known.flatten()


def conditioned(x: torch.Tensor, quadrants: int, **options: object) -> pv.Batches:
    """Batches of ``x`` with the fields ``c`` (unknown pixels at -1) and ``unknown``."""
    known = known_pixels(quadrants).to(x.device).expand_as(x)
    return pv.Batches(x, c=torch.where(known, x, -1.0), unknown=~known, **options)


def completions(cvae: pv.ConditionalVAE, test: pv.Batches, path) -> str:
    """Eight test digits: the known part (unknown pixels grey), three drawn completions, the
    truth; one digit a column."""
    x, c, unknown = test.data[:8], test.fields["c"][:8], test.fields["unknown"][:8]
    rows = [torch.where(unknown, torch.full_like(x, 0.5), x)]
    for _ in range(3):
        rows.append(torch.where(unknown, cvae.sample(c), x))
    rows.append(x)
    return pv.save_grid(torch.cat(rows), path, nrow=8)


def run(args: argparse.Namespace, quadrants: int, x_train, x_test, device, out) -> dict:
    train = conditioned(x_train, quadrants, batch_size=args.batch_size)
    test = conditioned(x_test, quadrants, batch_size=500, shuffle=False)
    cvae = zoo.completion_cvae(latent_dim=args.latent_dim, hidden=args.hidden)
    t0 = time.perf_counter()
    history = pv.fit(cvae.model, cvae.guide, train, epochs=args.epochs,
                     optim=pv.LazyAdam({"lr": args.lr}),
                     **scripts.run_options(args, out / f"quadrants{quadrants}",
                                           device))  # fmt: skip
    seconds = history.seconds[-1] if history.seconds else time.perf_counter() - t0
    result = scripts.score_test_set(cvae.model, cvae.guide, test, device, args.num_particles,
                                    default_particles=(1000, 100))  # fmt: skip
    image = completions(cvae, test, scripts.pictures(out) / f"completions{quadrants}.png")
    return {
        "quadrants": quadrants,
        "epochs": len(history.epoch),
        "train_loss": history.loss[-1] if history.loss else None,
        "test_neg_elbo": -result.elbo,
        "pyro_cvae_neg_elbo": PYRO_CVAE[quadrants],
        "pyro_baseline_loss": PYRO_BASELINE[quadrants],
        "test_cll": -result.log_likelihood,
        "num_particles": result.num_particles,
        "seconds": seconds,
        "image": image,
    }


def main(args: argparse.Namespace) -> dict:
    device, out = scripts.setup(args)
    x_train, _, x_test, _ = scripts.mnist_tensors(args, device)
    runs = [run(args, q, x_train, x_test, device, out) for q in args.quadrants]
    metrics = scripts.settings_scores(args, runs, device)
    return scripts.save_metrics(out, metrics)


if __name__ == "__main__":
    scripts.command(main, parse_args)
