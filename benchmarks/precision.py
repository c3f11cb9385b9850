"""bf16-mixed against float32 on the seed model: what the halved arithmetic costs in nats.

The MNIST VAE with a MAF prior (``zoo.flow_prior_vae``: MLPs 784-1024-1024, batch 256,
thresholded MNIST, ``LazyAdam`` 1e-3) is trained twice from the same initial values and the
same random numbers, ``precision="32"`` and ``precision="bf16-mixed"``, for ``--epochs``
each. Reported: the last epoch's training loss, the test ELBO and importance-sampled
log-likelihood (``--num-particles``, scored in float32, the same noise for both models), the
seconds of training; and the float32 model scored once more in bf16-mixed with the same
noise (the scoring's own error).

    python benchmarks/precision.py --epochs 10 --device cuda --seed 0 --json runs/precision_0.json
    python benchmarks/precision.py --from-json runs/precision_*.json \\
        --readme docs/guide/speed.md --block precision    # one table for several seeds
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pyro
import torch

import pyro_vae as pv
from pyro_vae.devices.precision import PRECISIONS
from pyro_vae.models import zoo

try:
    from . import _common
except ImportError:  # run as a file: python benchmarks/<name>.py
    import _common


def train(precision: str, train: pv.Batches, args: argparse.Namespace, device) -> tuple:
    """A seed model trained at ``precision``: the VAE, its history and the seconds."""
    torch.manual_seed(args.seed)
    vae = zoo.flow_prior_vae(hidden=args.hidden)
    vae.name = f"vae_{precision}"  # its own param-store names
    t0 = time.perf_counter()
    history = pv.fit(
        vae.model,
        vae.guide,
        train,
        epochs=args.epochs,
        device=pv.Compute(device, compile=args.compile, precision=precision),
        log=pv.Logging(progress=not args.no_progress),
    )
    return vae.eval(), history, time.perf_counter() - t0


def score(vae: pv.VAE, test: pv.Batches, args: argparse.Namespace, precision: str) -> dict:
    """The test ELBO and log-likelihood, with the benchmark's fixed noise."""
    torch.manual_seed(args.seed + 1)
    result = pv.evaluate(vae.model, vae.guide, test, num_particles=args.num_particles,
                         max_rows=args.max_rows, precision=precision)  # fmt: skip
    return {"test_elbo": result.elbo, "test_log_likelihood": result.log_likelihood}


def main(args: argparse.Namespace) -> dict:
    if args.from_json:
        runs = [json.loads(Path(path).read_text()) for path in args.from_json]
        return _common.write_results(runs, args, markdown)
    device = torch.device(args.device) if args.device else pv.default_device()
    pyro.clear_param_store()
    x_train, _, x_test, _ = _common.mnist_tensors(args, device)
    train_set = pv.Batches(x_train, batch_size=256, binarize="threshold")
    test = pv.Batches(x_test, batch_size=1000, binarize="threshold", shuffle=False)
    result = {"device": pv.device_name(device), "threads": torch.get_num_threads(),
              "seed": args.seed, "torch": torch.__version__, "epochs": args.epochs,
              "compile": args.compile, "num_particles": args.num_particles,
              "num_train": train_set.num_data, "num_test": test.num_data}  # fmt: skip
    models = {}
    for precision in PRECISIONS:
        vae, history, seconds = train(precision, train_set, args, device)
        models[precision] = vae
        result[precision] = {"train_loss": history.loss[-1], "seconds": seconds,
                             **score(vae, test, args, "32")}  # fmt: skip
        print(precision, result[precision], flush=True)
    result["float32_model_scored_in_bf16"] = score(models["32"], test, args, "bf16-mixed")
    print("float32 model, bf16-mixed scoring:", result["float32_model_scored_in_bf16"])
    return _common.write_results(result, args, lambda r: markdown([r]))


KEYS = ("train_loss", "test_elbo", "test_log_likelihood")
NAMES = {"train_loss": "train loss", "test_elbo": "test ELBO", "test_log_likelihood": "log p(x)"}


def markdown(runs: list[dict]) -> str:
    """The runs' figures (one per seed) as a markdown table, with the mean differences."""
    first = runs[0]
    lines = [
        f"Measured on {first['device']} ({first['threads']} threads), torch {first['torch']}: "
        f"{first['epochs']} epochs on {first['num_train']} images, "
        f"{'compiled' if first['compile'] else 'eager'} steps; test set of {first['num_test']}"
        f" images, K = {first['num_particles']}; {len(runs)} seed(s).",
        "",
        "| seed | precision | train loss (last epoch) | test ELBO | test log p(x) | time |",
        "|---|---|---|---|---|---|",
    ]
    diffs = {key: [] for key in KEYS}
    for seed, result in enumerate(runs):
        a, b = result["32"], result["bf16-mixed"]
        for precision in PRECISIONS:
            r = result[precision]
            lines.append(
                f"| {result.get('seed', seed)} | {precision} | {r['train_loss']:.2f} | "
                f"{r['test_elbo']:.2f} | {r['test_log_likelihood']:.2f} | {r['seconds']:.0f} s |"
            )
        for key in KEYS:
            diffs[key].append(b[key] - a[key])
        cells = " | ".join(f"{b[key] - a[key]:+.2f}" for key in KEYS)
        lines.append(f"| {result.get('seed', seed)} | bf16-mixed − 32 | {cells} | |")
    mean = " | ".join(f"{sum(d) / len(d):+.2f}" for d in diffs.values())
    lines.append(f"| mean | bf16-mixed − 32 | {mean} | |")
    scoring = [
        (r["float32_model_scored_in_bf16"][key] - r["32"][key])
        for r in runs
        for key in ("test_elbo", "test_log_likelihood")
    ]
    if len(runs) > 1:
        values = {key: [r["32"][key] for r in runs] for key in KEYS}
        spread = ", ".join(f"{NAMES[k]} {max(v) - min(v):.2f}" for k, v in values.items())
        lines += ["", f"float32's own spread across the seeds (max − min): {spread}."]
    lines += [
        "",
        f"Each float32 model scored once more in bf16-mixed (the same noise): its test ELBO and "
        f"log p(x) moved by at most {max(abs(d) for d in scoring):.3f} nats.",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--device", default=None)
    p.add_argument("--data-dir", default=pv.default_data_dir())
    p.add_argument("--download", action="store_true")
    p.add_argument("--limit", type=int, default=None, help="use only this many images")
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--num-particles", type=int, default=1000)
    p.add_argument("--max-rows", type=int, default=2**17)
    p.add_argument("--compile", action="store_true", help="fit(compile=True)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", default=None)
    p.add_argument("--from-json", nargs="+", default=None,
                   help="render saved runs' JSON (one per seed), measure nothing")  # fmt: skip
    p.add_argument("--readme", default=None)
    p.add_argument("--block", default="precision")
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
