"""The image-completion table: our conditional VAE's conditional NLL beside Pyro's tutorial.

    python benchmarks/cvae_table.py runs/mnist_cvae_10 --readme docs/results.md --block cvae

Reads the ``metrics.json`` that ``examples/mnist_cvae.py`` wrote (one row per number of known
quadrants) and, with ``--readme``, puts the table between the block's markers.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pyro_vae._scripts import replace_block


def markdown(metrics: dict) -> str:
    """The table of one run of the example."""
    lines = [
        f"{metrics['epochs']} epochs per setting (batch {metrics['batch_size']}, Adam "
        f"{metrics['lr']}, z = {metrics['latent_dim']}, hidden {metrics['hidden']}) on "
        f"{metrics['device']}; conditional NLL -log p(unknown pixels | known pixels), nats per "
        "test image (lower is better), importance-sampled with K particles.",
        "",
        "| known quadrants | ours: CVAE | K | Pyro's tutorial: CVAE | Pyro's baseline | "
        "ours: test ELBO | training time |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in metrics["settings"]:
        lines.append(
            f"| {r['quadrants']} | {r['test_cll']:.1f} | {r['num_particles']} | "
            f"{r['pyro_cvae_cll']} | {r['pyro_baseline_cll']} | {r['test_elbo']:.1f} | "
            f"{r['seconds'] / 60:.1f} min |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("run", help="the example's --out folder")
    p.add_argument("--readme", default=None)
    p.add_argument("--block", default="cvae")
    args = p.parse_args(argv)
    text = markdown(json.loads((Path(args.run) / "metrics.json").read_text()))
    print(text)
    if args.readme:
        replace_block(Path(args.readme), args.block, text)


if __name__ == "__main__":
    main()
