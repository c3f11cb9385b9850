"""Short epochs: what ``fit``'s per-epoch work (checks, history, checkpoints) adds to a run of
many short epochs, against a plain-PyTorch loop of the same model.

The circle example's amortized VAE (``zoo.circle_vae("amortized")``: 1-D latent, 20-unit
networks, 15 000 points in batches of 1000: 15 steps an epoch, Adam 3e-4) trained for
``--epochs`` epochs, best of interleaved repeats, five ways: a plain loop (one host read per
epoch, as ``fit``), ``fit`` without a run folder, ``fit`` with a run folder and the default
save schedule (saving kept within a twentieth of the training time), with ``save_every=1``, and
``fit`` with Pyro's traced loss (``loss=pv.TensorTrace_ELBO()``), no folder.

    python benchmarks/epochs.py --json runs/epochs.json --readme docs/guide/speed.md
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import pyro
import torch

import pyro_vae as pv
from pyro_vae.models import zoo

try:
    from . import _common
except ImportError:  # run as a file: python benchmarks/<name>.py
    import _common


def plain(x: torch.Tensor, epochs: int, batch_size: int) -> None:
    """The plain loop: the same modules, ``torch.optim.Adam``, a sum read once per epoch."""
    vae = zoo.circle_vae("amortized")
    optimizer = torch.optim.Adam(vae.parameters(), lr=3e-4)
    batches = pv.Batches(x, batch_size=batch_size)
    for _ in range(epochs):
        _common.plain_epoch(vae, batches, optimizer, "cpu")


def with_fit(
    x, epochs: int, batch_size: int, folder: Path | None, *, every: int | None = None, loss=None
) -> None:
    pyro.clear_param_store()
    vae = zoo.circle_vae("amortized")
    save = pv.Checkpoints(folder, overwrite=True, every=every) if folder is not None else None
    pv.fit(vae.model, vae.guide, pv.Batches(x, batch_size=batch_size), epochs=epochs, loss=loss,
           optim=pv.LazyAdam({"lr": 3e-4}), device="cpu", log=False, save=save)  # fmt: skip


def main(args: argparse.Namespace) -> dict:
    if args.from_json:
        return _common.write_results(json.loads(Path(args.from_json).read_text()), args, markdown)
    with torch.device("cpu"):  # (it times the CPU, whatever torch's default device is)
        return _measure(args)


def _measure(args: argparse.Namespace) -> dict:
    pyro.enable_validation(False)
    torch.manual_seed(args.seed)
    x, _ = pv.make_circle(15000)
    root = Path(tempfile.mkdtemp())
    e, b = args.epochs, 1000
    ways = {
        "plain loop": lambda: plain(x, e, b),
        "fit, no run folder": lambda: with_fit(x, e, b, None),
        "fit, run folder (default schedule)": lambda: with_fit(x, e, b, root / "a"),
        "fit, run folder, every=1": lambda: with_fit(x, e, b, root / "b", every=1),
        "fit with Pyro's loss, no run folder": lambda: with_fit(
            x, e, b, None, loss=pv.TensorTrace_ELBO()
        ),
    }
    best = dict.fromkeys(ways, float("inf"))
    try:
        for _ in range(args.repeats):
            for name, way in ways.items():
                t0 = time.perf_counter()
                way()
                best[name] = min(best[name], time.perf_counter() - t0)
    finally:
        shutil.rmtree(root)
    result = {"device": "cpu", "threads": torch.get_num_threads(), "torch": torch.__version__,
              "epochs": e, "steps_per_epoch": 15, "seconds": best}  # fmt: skip
    for name, seconds in best.items():
        print(f"{name}: {seconds:.2f} s", flush=True)
    return _common.write_results(result, args, markdown)


def markdown(result: dict) -> str:
    seconds = result["seconds"]
    plain_s, no_folder = seconds["plain loop"], seconds["fit, no run folder"]
    lines = [
        f"Measured on {result['device']} ({result['threads']} threads), torch {result['torch']}:"
        f" {result['epochs']} epochs of {result['steps_per_epoch']} steps, best of interleaved"
        " repeats.",
        "",
        "| loop | seconds | vs plain loop | vs fit without a run folder |",
        "|---|---|---|---|",
    ]
    for name, value in seconds.items():
        lines.append(f"| {name} | {value:.2f} | {value / plain_s:.2f} | {value / no_folder:.2f} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    p.add_argument("--from-json", default=None, help="render a saved run's JSON, measure nothing")
    p.add_argument("--readme", default=None)
    p.add_argument("--block", default="short-epochs")
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
