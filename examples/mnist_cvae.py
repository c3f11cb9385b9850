"""Image completion on MNIST with a conditional VAE, as Pyro's ``examples/cvae``.

One, two or three quadrants of a digit are known; the model draws the rest (Sohn, Lee & Yan
2015).

The data point ``x`` is the whole image; the batches carry two fields, the condition ``c``
(the image with the unknown pixels set to -1) and the mask ``unknown`` (the pixels the
likelihood scores), which ``fit`` and ``evaluate`` pass to the model and guide as keywords.

``--model pyro`` (the default) is Pyro's model and training rule
(``pyro_vae.models.zoo.pyro_cvae``): a deterministic baseline network is trained first (the
Bernoulli loss of its completion of the unknown pixels, Adam, early stopping on the test set,
which Pyro's example uses as its validation set), then frozen; the CVAE's prior network reads
the condition completed by it, its recognition network the whole image; the CVAE trains with
early stopping on the test set's ELBO too (``--patience 3``, Pyro's; each stage at most
``--epochs``); ``--lr-decay 0.5`` multiplies the CVAE stage's rate by 0.5 after each
validation that does not improve on the best (``pyro.optim.ReduceLROnPlateau``, which ``fit``
steps after each epoch): the same model and stopping rule, a decaying rate. ``--model ours``
is ``zoo.completion_cvae`` (prior on the condition itself, recognition on [x, c]; no
baseline). Two scores of the unknown pixels given the known ones, in
nats per test image: the negative ELBO, the quantity of Pyro's tutorial table (its
``Trace_ELBO(num_particles=10)`` loss: 71.8 / 51.0 / 24.2 for its CVAE and 100.4 / 61.9 / 25.4
for a deterministic baseline, 1 / 2 / 3 known quadrants), and the conditional negative
log-likelihood -log p(x_unknown | x_known) estimated by importance sampling (a tighter bound,
not the tutorial's quantity). Known quadrants, as Pyro's: 1 = bottom left, 2 = the left half,
3 = all but the bottom right.

    python examples/mnist_cvae.py                   # at most 2 epochs per stage and setting
    python examples/mnist_cvae.py --epochs 101      # Pyro's budget (early stopping ends it)
    python examples/mnist_cvae.py --epochs 100 --lr-decay 0.5
"""

from __future__ import annotations

import argparse
import math
import time

import pyro.optim
import torch

import pyro_vae as pv
from pyro_vae.models import zoo
from pyro_vae.models.completion import completion_loss

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
    p.add_argument(
        "--model",
        choices=("pyro", "ours"),
        default="pyro",
        help="pyro: Pyro's CVAE with its baseline network; ours: completion_cvae",
    )
    p.add_argument(
        "--patience",
        type=int,
        default=3,
        help="early stopping on the test set's loss (Pyro's rule); 0: none",
    )
    p.add_argument(
        "--lr-decay",
        type=float,
        default=0.0,
        help="multiply the CVAE stage's rate by this after each validation that does not "
        "improve (pyro.optim.ReduceLROnPlateau, patience 0); 0: a constant rate (Pyro's)",
    )
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


def train_baseline(baseline: torch.nn.Module, train: pv.Batches, test: pv.Batches, args) -> int:
    """Pyro's first stage: the baseline network alone, the Bernoulli loss of its completion of
    the unknown pixels (mean per image), Adam at ``--lr``, early stopping on the test set
    (``--patience``; the best epoch's weights kept), at most ``--epochs``. Returns the number
    of epochs trained."""
    optimizer = torch.optim.Adam(baseline.parameters(), lr=args.lr)
    best, since, kept, trained = math.inf, 0, None, 0
    while trained < args.epochs and not (args.patience and since >= args.patience):
        trained += 1
        for x, _, fields in train:
            loss = completion_loss(baseline(fields["c"]), x, fields["unknown"]).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        score = baseline_score(baseline, test)
        if score < best:
            best, since = score, 0
            kept = {k: v.clone() for k, v in baseline.state_dict().items()}
        else:
            since += 1
    baseline.load_state_dict(kept)
    return trained


@torch.no_grad()
def baseline_score(baseline: torch.nn.Module, test: pv.Batches) -> float:
    """The baseline's loss on the test set, nats per image (Pyro's baseline row)."""
    total = sum(completion_loss(baseline(f["c"]), x, f["unknown"]).sum() for x, _, f in test)
    return float(total) / test.num_data


def optimizer(args: argparse.Namespace) -> pyro.optim.PyroOptim:
    """Adam at ``--lr`` (Pyro's), or with ``--lr-decay`` Adam whose rate is multiplied by it
    after each validation that does not improve the best (``fit`` steps the scheduler on the
    validation loss after each epoch)."""
    if not args.lr_decay:
        return pv.LazyAdam({"lr": args.lr})
    return pyro.optim.ReduceLROnPlateau({"optimizer": torch.optim.Adam,
                                         "optim_args": {"lr": args.lr},
                                         "factor": args.lr_decay, "patience": 0})  # fmt: skip


def run(args: argparse.Namespace, quadrants: int, x_train, x_test, device, out) -> dict:
    train = conditioned(x_train, quadrants, batch_size=args.batch_size)
    test = conditioned(x_test, quadrants, batch_size=500, shuffle=False)
    options = scripts.run_options(args, out / f"quadrants{quadrants}", device)
    t0 = time.perf_counter()
    resumed = args.resume and (out / f"quadrants{quadrants}" / "checkpoint.pt").exists()
    baseline, baseline_epochs = None, None  # (a resumed run's baseline: in its checkpoint)
    if args.model == "pyro" and not resumed:
        baseline = pv.MLP(784, 784, (args.hidden, args.hidden)).to(device)
        baseline_epochs = train_baseline(baseline, train, test, args)
    if args.model == "pyro":
        cvae = zoo.pyro_cvae(latent_dim=args.latent_dim, hidden=args.hidden, baseline=baseline)
    else:
        cvae = zoo.completion_cvae(latent_dim=args.latent_dim, hidden=args.hidden)
    cvae = cvae.to(device)
    validation = pv.Validation(test, patience=args.patience) if args.patience else None
    history = pv.fit(cvae.model, cvae.guide, train, epochs=args.epochs, optim=optimizer(args),
                     validation=validation, **options)  # fmt: skip
    seconds = history.seconds[-1] if history.seconds else time.perf_counter() - t0
    result = scripts.score_test_set(cvae.model, cvae.guide, test, device, args.num_particles,
                                    default_particles=(1000, 100))  # fmt: skip
    image = completions(cvae, test, scripts.pictures(out) / f"completions{quadrants}.png")
    best = history.val_epoch[history.val_elbo.index(max(history.val_elbo))] if (
        validation is not None and history.val_elbo) else None  # fmt: skip
    return {
        "quadrants": quadrants,
        "model": args.model + (f", rate x{args.lr_decay} on a plateau" if args.lr_decay else ""),
        "epochs": len(history.epoch),
        "best_epoch": best,
        "baseline_epochs": baseline_epochs,
        "baseline_test_loss": (
            baseline_score(cvae.prior.baseline, test) if args.model == "pyro" else None
        ),
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
    metrics = {**scripts.settings_scores(args, runs, device), "patience": args.patience}
    return scripts.save_metrics(out, metrics)


if __name__ == "__main__":
    scripts.command(main, parse_args)
