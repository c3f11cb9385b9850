"""The tables of the examples that run one model per setting, beside their anchors:
``examples/mnist_cvae.py`` (conditional NLL by known quadrants, beside Pyro's tutorial) and
``examples/mnist_ssvae.py`` (test error by number of labels, beside Kingma et al. 2014).

    python benchmarks/settings_table.py runs/mnist_cvae_10 --readme docs/results.md --block cvae
    python benchmarks/settings_table.py runs/mnist_ssvae_5 --readme docs/results.md --block ssvae

Reads the run's ``metrics.json`` (one row per setting) and, with ``--readme``, puts the table
between the block's markers. Several runs of one budget (settings run side by side, one
folder each) make one table, their rows in the order given.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

try:
    from . import _common
except ImportError:  # run as a file: python benchmarks/<name>.py
    import _common


def budget(metrics: dict) -> str:
    return (
        f"{metrics['epochs']} epochs per setting (batch {metrics['batch_size']}, Adam "
        f"{metrics['lr']}, z = {metrics['latent_dim']}, hidden {metrics['hidden']}) on "
        f"{metrics['device']}"
    )


def cvae(metrics: dict) -> str:
    """The image-completion table: Pyro's quantity (the negative ELBO of the unknown pixels)
    beside Pyro's numbers, the importance-sampled bound in its own column."""
    stopping = (
        f"; early stopping on the test set's loss in each stage (patience "
        f"{metrics['patience']}, Pyro's rule), so the epochs are a maximum"
        if metrics.get("patience")
        else ""
    )
    lines = [
        f"{budget(metrics)}{stopping}. Nats per test image on the unknown pixels (lower is "
        "better). "
        "Beside Pyro's tutorial, its quantity: the negative ELBO (Pyro's is "
        "`Trace_ELBO(num_particles=10)`'s; ours averages K particles: the same expectation). "
        "Then the conditional NLL -log p(unknown | known), importance-sampled with K particles "
        "(a tighter bound, not comparable with Pyro's column).",
        "",
        "| known quadrants | model | ours: negative ELBO | Pyro's tutorial: CVAE | ours: "
        "baseline | Pyro's baseline | ours: -log p, K-sample IS | K | epochs (best) | "
        "training time |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in metrics["settings"]:
        base = r.get("baseline_test_loss")
        epochs = f"{r['epochs']} ({r['best_epoch']})" if r.get("best_epoch") else r["epochs"]
        lines.append(
            f"| {r['quadrants']} | {r.get('model', 'ours')} | {r['test_neg_elbo']:.1f} | "
            f"{r['pyro_cvae_neg_elbo']} | {f'{base:.1f}' if base is not None else ''} | "
            f"{r['pyro_baseline_loss']} | {r['test_cll']:.1f} | {r['num_particles']} | "
            f"{epochs} | {r['seconds'] / 60:.1f} min |"
        )
    return "\n".join(lines)


def ssvae(metrics: dict) -> str:
    """The semi-supervised table."""
    lines = [
        f"{budget(metrics)}; test error of q(y | x) on the "
        f"{metrics['settings'][0]['test_points']} test images (lower is better).",
        "",
        "| labels | ours: M2 test error | Kingma et al. 2014: M2 | alpha per labelled point | "
        "train loss | training time |",
        "|---|---|---|---|---|---|",
    ]
    for r in metrics["settings"]:
        lines.append(
            f"| {r['labels']} | {r['test_error']:.2f} % | {r['kingma_m2_error']} % | "
            f"{r['alpha']:.4g} | {r['train_loss']:.1f} | {r['seconds'] / 60:.1f} min |"
        )
    return "\n".join(lines)


def markdown(metrics: dict) -> str:
    """The table of one run: by its settings' figures."""
    return cvae(metrics) if "test_cll" in metrics["settings"][0] else ssvae(metrics)


_BUDGET = ("epochs", "batch_size", "lr", "latent_dim", "hidden", "device", "patience")


def merged(runs: list[dict]) -> dict:
    """The metrics of runs of one budget as one run's: the settings' rows in order. Runs whose
    budgets differ are refused (one table states one budget)."""
    for other in runs[1:]:
        differ = [k for k in _BUDGET if other.get(k) != runs[0].get(k)]
        if differ:
            raise ValueError(
                f"the runs differ in {', '.join(differ)}: one table states one budget; make a "
                "table of each"
            )
    return {**runs[0], "settings": [r for run in runs for r in run["settings"]]}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("run", nargs="+", help="the example's --out folder (several: one table)")
    p.add_argument("--readme", default=None)
    p.add_argument("--block", required=True)
    args = p.parse_args(argv)
    runs = [json.loads((Path(run) / "metrics.json").read_text()) for run in args.run]
    text = markdown(merged(runs))
    print(text)
    if args.readme:
        _common.replace_block(Path(args.readme), args.block, text)


if __name__ == "__main__":
    main()
