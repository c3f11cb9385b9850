"""Results table: reads the examples' metrics.json files and writes a markdown table.

    python benchmarks/report.py runs/mnist_flow_prior_64 [more run folders] \
        --reference mnist_flow_prior_64="65.8 train loss (zuko)" \
        --readme docs/results.md --block mnist

Each row names the example's run folder and reads every figure from its ``metrics.json``, so
the README's numbers always come from a run. With ``--readme`` the table replaces the text
between ``<!-- results:BLOCK:start -->`` and ``<!-- results:BLOCK:end -->``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

try:
    from . import _common
except ImportError:  # run as a file: python benchmarks/<name>.py
    import _common


COLUMNS = (
    "run",
    "epochs",
    "train loss",
    "train ELBO",
    "test ELBO",
    "test log p(x) (K)",
    "reference",
    "wall-clock",
    "device",
)


def lookup(metrics: dict, key: str) -> object:
    """``metrics["a"]["b"]`` for the key ``"a.b"``; None where a part is missing."""
    value: object = metrics
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def row(folder: Path, references: dict[str, str], extra: list[str] = ()) -> str:
    m = json.loads((folder / "metrics.json").read_text())

    def num(key: str) -> str:
        value = lookup(m, key)
        if isinstance(value, float):
            return f"{value:.2f}"
        return "n/a" if value is None else str(value)

    cells = (
        f"`{folder.name}`",
        str(m["epochs"]),
        num("train_loss"),
        num("train_elbo"),
        num("test_elbo"),
        f"{num('test_log_likelihood')} ({m['num_particles']})",
        references.get(folder.name, ""),
        f"{m['seconds'] / 60:.1f} min",
        m["device"],
        *(num(key.split("=")[0]) for key in extra),
    )
    return "| " + " | ".join(cells) + " |"


def table(folders: list[Path], references: dict[str, str], extra: list[str] = ()) -> str:
    columns = (*COLUMNS, *(key.split("=")[-1] for key in extra))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += [row(f, references, extra) for f in folders]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("runs", nargs="+", type=Path, help="run folders holding metrics.json")
    p.add_argument(
        "--reference",
        action="append",
        default=[],
        metavar="RUN=TEXT",
        help="published figure to show beside a run",
    )
    p.add_argument(
        "--extra",
        action="append",
        default=[],
        metavar="KEY[=LABEL]",
        help="another metrics.json value as a column (a.b for nested keys; =LABEL names it)",
    )
    p.add_argument("--readme", type=Path, default=None)
    p.add_argument("--block", default="main", help="name of the README block to replace")
    args = p.parse_args(argv)
    references = dict(r.split("=", 1) for r in args.reference)
    text = table(args.runs, references, args.extra)
    if args.readme is not None:
        _common.replace_block(args.readme, args.block, text)
    print(text)
    return text


if __name__ == "__main__":
    main()
