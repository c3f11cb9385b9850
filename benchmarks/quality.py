"""Quality: the standard VAE configurations on dynamically binarized MNIST, against the papers.

Trains each configuration with examples/mnist_flow_posterior.py (MLP 200-200, z = 50, Adam
1e-3, batch 100, dynamic binarization; test set binarized once with a fixed seed) and writes
a markdown table of test NLL (importance-sampled with K samples), test ELBO, epochs,
wall-clock and hardware, with the published figures beside it (each with its paper).

The README's table was made on a 2-core CPU with two configurations running at a time, one
thread each, so its wall-clock figures are those of that setting; benchmarks/README.md has the
commands that run it that way.

Runs are resumable: each configuration checkpoints every epoch under ``--out/NAME`` and a
finished one (its metrics.json has the requested epochs) is skipped, so the script can be
re-run in commands of limited length until everything is done.

    python benchmarks/quality.py --epochs 100 --num-particles 5000 --readme README.md
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import pyro_vae as pv

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import replace_block  # noqa: E402

# name: (guide flow, number of maps, prior)
CONFIGS = {
    "vae": ("none", 0, "normal"),
    "vae_maf": ("none", 0, "maf"),
    "planar4": ("planar", 4, "normal"),
    "planar4_maf": ("planar", 4, "maf"),
    "planar16": ("planar", 16, "normal"),
    "planar16_maf": ("planar", 16, "maf"),
    "iaf": ("iaf", 2, "normal"),
    "iaf_maf": ("iaf", 2, "maf"),
}
# label (with its source), test NLL as the source reports it (K = importance samples)
PUBLISHED = [
    (
        "VAE, MLP 200-200, z = 50 (Burda, Grosse & Salakhutdinov 2016, "
        '"Importance Weighted Autoencoders", Table 1)',
        "86.76 (5000)",
    ),
    ("IWAE, 2 stochastic layers, k = 50 (Burda et al. 2016, Table 1)", "82.90 (5000)"),
    (
        'planar flows K = 80 (Rezende & Mohamed 2015, "Variational Inference with Normalizing '
        'Flows")',
        "≤ 85.1 (bound)",
    ),
    (
        "IAF with a ResNet VAE (Kingma et al. 2016, "
        '"Improved Variational Inference with Inverse Autoregressive Flow")',
        "79.10",
    ),
]
POSTERIOR = {"none": "Gaussian", "planar": "planar K={k}", "iaf": "IAF K={k}", "nsf": "NSF K={k}"}


def load_example():
    path = ROOT / "examples" / "mnist_flow_posterior.py"
    spec = importlib.util.spec_from_file_location("mnist_flow_posterior", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(name: str, args: argparse.Namespace) -> dict:
    out = Path(args.out) / name
    metrics_path = out / "metrics.json"
    if metrics_path.exists():
        metrics = json.loads(metrics_path.read_text())
        if metrics["epochs"] >= args.epochs and metrics["num_particles"] == args.num_particles:
            return metrics
    flow, flows, prior = CONFIGS[name]
    example = load_example()
    argv = [
        "--flow",
        flow,
        "--flows",
        str(max(flows, 1)),
        "--prior",
        prior,
        "--epochs",
        str(args.epochs),
        "--num-particles",
        str(args.num_particles),
        "--out",
        str(out),
        "--data-dir",
        args.data_dir,
        "--seed",
        str(args.seed),
        "--resume",
    ]
    if args.device:
        argv += ["--device", args.device]
    if args.limit:
        argv += ["--limit", str(args.limit)]
    if not args.progress:
        argv.append("--no-progress")
    return example.main(example.parse_args(argv))


def table(results: dict[str, dict]) -> str:
    header = (
        "configuration",
        "prior",
        "posterior",
        "test NLL (K)",
        "test ELBO",
        "epochs",
        "wall-clock",
        "hardware",
    )
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, m in results.items():
        flow, flows, prior = CONFIGS[name]
        lines.append(
            f"| `{name}` | {'MAF' if prior == 'maf' else 'N(0, I)'} "
            f"| {POSTERIOR[flow].format(k=flows)} "
            f"| {-m['test_log_likelihood']:.2f} ({m['num_particles']}) | {m['test_elbo']:.2f} "
            f"| {m['epochs']} | {m['seconds'] / 60:.1f} min | {m['device']} |"
        )
    for label, nll in PUBLISHED:
        lines.append(f"| published: {label} | | | {nll} | | | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--num-particles", type=int, default=5000)
    p.add_argument("--device", default=None)
    p.add_argument("--data-dir", default=pv.default_data_dir(), help="folder with MNIST/raw")
    p.add_argument("--out", default="runs/quality")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="use only this many images (smoke)")
    p.add_argument("--progress", action="store_true")
    p.add_argument("--readme", type=Path, default=None, help="write the table into this README")
    p.add_argument("--block", default="quality")
    args = p.parse_args(argv)
    results = {name: run(name, args) for name in args.configs}
    text = table(results)
    if args.readme is not None:
        replace_block(args.readme, args.block, text)
    print(text)
    return text


if __name__ == "__main__":
    main()
