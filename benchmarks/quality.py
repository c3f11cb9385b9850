"""Quality: the standard VAE configurations on dynamically binarized MNIST, against the papers.

Each configuration is a run of one example: examples/mnist_flow_posterior.py (MLP 200-200 with
ReLU, z = 50, flow posteriors and priors) or examples/mnist_iwae.py (the tanh architectures of
Burda et al. 2016 with one or two stochastic layers, trained with the ELBO or the importance-
weighted bound, optionally a VampPrior). Adam 1e-3, batch 100, dynamic binarization; test set
binarized once with a fixed seed. The markdown table has test NLL (importance-sampled with K
samples), test ELBO, for the Gaussian guides of mnist_iwae.py the approximation and
amortization gaps (Cremer, Li & Duvenaud 2018) on the first ``--gap-points`` test images,
epochs, wall-clock and hardware, and the published figure of the same model beside it.

The README's tables were made on a 2-core CPU with two configurations running at a time, one
thread each, so their wall-clock figures are those of that setting; benchmarks/README.md has
the commands that run it that way.

Runs are resumable: each configuration checkpoints every epoch under ``--out/NAME`` and a
finished one (its metrics.json has the requested epochs and K) is skipped, so the script can be
re-run in commands of limited length until everything is done.

    python -m benchmarks.quality --epochs 100 --num-particles 5000 --readme docs/results.md

(from the repository root: it imports the examples as the package ``examples``).
"""

from __future__ import annotations

import argparse
import importlib
import json
from dataclasses import dataclass
from pathlib import Path

import pyro_vae as pv

try:
    from . import _common
except ImportError:  # run as a file: python benchmarks/<name>.py
    import _common

BURDA = "Burda et al. 2016, Table 1"


@dataclass(frozen=True)
class Config:
    """One row: the example that trains it, its flags and what the table says about it."""

    example: str
    flags: tuple[str, ...]
    prior: str = "N(0, I)"
    posterior: str = "Gaussian"
    layers: int = 1
    objective: str = "ELBO"
    published: str = ""


def _flow(flow: str, flows: int, prior: str, posterior: str, published: str = "") -> Config:
    flags = ("--posterior", flow, "--flows", str(max(flows, 1)), "--prior", prior)
    label = "MAF" if prior == "maf" else "N(0, I)"
    return Config("mnist_flow_posterior", flags, label, posterior, published=published)


def _iwae(
    layers: int, iw: int, *, prior: str = "normal", activation: str = "tanh", published: str = ""
) -> Config:
    flags = ("--layers", str(layers), "--iw", str(iw), "--prior", prior)
    flags += ("--activation", activation)
    return Config(
        "mnist_iwae",
        flags,
        "VampPrior (500)" if prior == "vamp" else "N(0, I)",
        "Gaussian" + (", ReLU" if activation == "relu" else ""),
        layers,
        f"IWAE k = {iw}" if iw > 1 else "ELBO",
        published,
    )


CONFIGS = {
    "vae": _flow("none", 0, "normal", "Gaussian", f"86.76 (ELBO; tanh; {BURDA})"),
    "vae_maf": _flow("none", 0, "maf", "Gaussian"),
    "planar4": _flow("planar", 4, "normal", "planar K=4"),
    "planar4_maf": _flow("planar", 4, "maf", "planar K=4"),
    "planar16": _flow("planar", 16, "normal", "planar K=16"),
    "planar16_maf": _flow("planar", 16, "maf", "planar K=16"),
    "iaf": _flow("iaf", 2, "normal", "IAF K=2"),
    "iaf_maf": _flow("iaf", 2, "maf", "IAF K=2"),
    "tanh_vae": _iwae(1, 1, published=f"86.76 ({BURDA})"),
    "iwae5": _iwae(1, 5, published=f"85.54 ({BURDA})"),
    "iwae50": _iwae(1, 50, published=f"84.78 ({BURDA})"),
    "vae2": _iwae(2, 1, published=f"85.33 ({BURDA})"),
    "iwae2_5": _iwae(2, 5, published=f"83.89 ({BURDA})"),
    "iwae2_50": _iwae(2, 50, published=f"82.90 ({BURDA})"),
    "relu_vae": _iwae(1, 1, activation="relu"),
    "vamp": _iwae(
        1,
        1,
        prior="vamp",
        activation="relu",
        published="85.57 (Tomczak & Welling 2018, gated MLP 300-300, z = 40)",
    ),
}
# Published figures of flow models, shown beside the flow configurations (test NLL)
PUBLISHED = [
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


def load_example(name: str):
    """``examples/<name>.py`` as a module (run this script with ``python -m`` from the root)."""
    return importlib.import_module(f"examples.{name}")


def run(name: str, args: argparse.Namespace) -> dict:
    out = Path(args.out) / name
    metrics_path = out / "metrics.json"
    config = CONFIGS[name]
    iwae = config.example == "mnist_iwae"
    if metrics_path.exists():  # finished with these settings: skip (else resume and rescore)
        m = json.loads(metrics_path.read_text())
        same = m["num_particles"] == args.num_particles and (
            not iwae
            or (m["gap_points"], m["gap_epochs"], m["test_points"])
            == (args.gap_points, args.gap_epochs, args.test_points or 10000)
        )
        if m["epochs"] >= args.epochs and same:
            return m
    example = load_example(config.example)
    argv = [
        *config.flags,
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
    if iwae:
        argv += ["--gap-points", str(args.gap_points), "--gap-epochs", str(args.gap_epochs)]
        if args.test_points:
            argv += ["--test-points", str(args.test_points)]
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
        "layers",
        "prior",
        "posterior",
        "objective",
        "test NLL (K)",
        "test ELBO",
        "approx. gap",
        "amort. gap",
        "epochs",
        "wall-clock",
        "hardware",
        "published NLL",
    )
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, m in results.items():
        c = CONFIGS[name]
        gap = m.get("gap")
        gaps = (
            (f"{gap['approximation_gap']:.2f}", f"{gap['amortization_gap']:.2f}")
            if gap
            else ("—", "—")
        )
        points = m.get("test_points", 10000)
        nll = f"{-m['test_log_likelihood']:.2f} ({m['num_particles']})"
        if points != 10000:
            nll += f", first {points} test images"
        lines.append(
            f"| `{name}` | {c.layers} | {c.prior} | {c.posterior} | {c.objective} | {nll} "
            f"| {m['test_elbo']:.2f} | {gaps[0]} | {gaps[1]} | {m['epochs']} "
            f"| {m['seconds'] / 60:.1f} min | {m['device']} | {c.published} |"
        )
    flows = any(CONFIGS[name].example == "mnist_flow_posterior" for name in results)
    for label, value in PUBLISHED if flows else ():  # beside the flow posteriors
        lines.append(f"| published: {label} |" + " |" * 11 + f" {value} |")
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
    p.add_argument("--test-points", type=int, default=None, help="score the first N test images")
    p.add_argument("--gap-points", type=int, default=0, help="test images for the gap columns")
    p.add_argument("--gap-epochs", type=int, default=100)
    p.add_argument("--progress", action="store_true")
    p.add_argument("--readme", type=Path, default=None, help="write the table into this README")
    p.add_argument("--block", default="quality")
    args = p.parse_args(argv)
    results = {name: run(name, args) for name in args.configs}
    text = table(results)
    if args.readme is not None:
        _common.replace_block(args.readme, args.block, text)
    print(text)
    return text


if __name__ == "__main__":
    main()
