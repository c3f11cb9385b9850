"""``fit(compile=True)`` on every ``pyro_vae.models.zoo`` model: compiled or not, and the
same losses.

For each model (default widths, N = 32 random points, batches of 11, so the last batch is
smaller) the script trains 2 epochs eagerly and 2 with ``compile=True`` from the same seed,
with inductor drawing torch's own random numbers (``fallback_random``), so both runs see the
same noise. It reports whether the run compiled or fell back (with the warning's reason), the
largest relative difference of the per-epoch losses, and the compiled run's wall-clock (its
compiling included).

    python -m benchmarks.compiled_zoo [--models NAME ...] [--json out.json] [--readme FILE]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import pyro
import torch
import torch._dynamo
import torch._inductor.config

import pyro_vae as pv
from pyro_vae.models import zoo

try:
    from . import _common
except ImportError:  # run as a file: python benchmarks/<name>.py
    import _common

N, BATCH = 32, 11

MODELS: dict[str, Callable[[], pv.VAE]] = {
    "flow_prior": zoo.flow_prior_vae,
    **{f"flow_posterior-{p}": (lambda p=p: zoo.flow_posterior_vae(p)) for p in zoo.POSTERIORS},
    "iwae-1": lambda: zoo.iwae_vae(layers=1),
    "iwae-2": lambda: zoo.iwae_vae(layers=2),
    "iwae-2-vamp": lambda: zoo.iwae_vae(layers=2, prior="vamp", num_pseudo=20),
    **{f"conv-{lik}": (lambda lik=lik: zoo.conv_vae(likelihood=lik)) for lik in zoo.LIKELIHOODS},
    "latent2d": zoo.latent2d_vae,
    **{f"circle-{i}": (lambda i=i: zoo.circle_vae(i, num_data=N)) for i in zoo.INFERENCE},
}


def run(name: str, compile: bool) -> tuple[list[float], float, str | None]:
    """Losses of 2 epochs, seconds, and the fallback warning (if any)."""
    pyro.clear_param_store()
    torch.manual_seed(0)
    torch._dynamo.reset()
    vae = MODELS[name]()
    shape = vae.event_shape
    x = torch.randn(N, 2) if name.startswith("circle") else torch.rand(N, *shape).round()
    data = pv.Batches(x, batch_size=BATCH)
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = pv.fit(
            vae.model,
            vae.guide,
            data,
            epochs=2,
            device=pv.Compute("cpu", compile=compile),
            log=False,
        )
    reasons = [str(w.message) for w in caught if "compile=True" in str(w.message)]
    return history.loss, time.perf_counter() - t0, reasons[0] if reasons else None


def main(args: argparse.Namespace) -> dict:
    pyro.enable_validation(False)
    result = {"torch": torch.__version__, "pyro": pyro.__version__, "models": {}}
    with torch._inductor.config.patch(fallback_random=True):
        for name in args.models:
            eager, _, _ = run(name, False)
            compiled, seconds, reason = run(name, True)
            diff = max(abs(a - b) / abs(a) for a, b in zip(eager, compiled, strict=True))
            row = {"compiled": reason is None, "reason": reason, "rel_diff": diff}
            result["models"][name] = row | {"seconds": seconds}
            print(f"{name:24s} {'compiled' if reason is None else reason} {diff:.1e}", flush=True)
    return _common.write_results(result, args, markdown)


def markdown(result: dict) -> str:
    lines = [
        f"torch {result['torch']}, pyro {result['pyro']}, on the CPU; 2 epochs of 32 random points"
        " in batches of 11, eager and compiled from one seed with the same noise.",
        "",
        "| zoo model | `Compute(compile=True)` | largest relative loss difference | compiled run |",
        "|---|---|---|---|",
    ]
    for name, r in result["models"].items():
        how = "compiled" if r["compiled"] else "eager: " + r["reason"].split(": ", 1)[1]
        how = how.replace("; this run takes the eager step", "").replace("|", "/")
        lines.append(f"| {name} | {how} | {r['rel_diff']:.1e} | {r['seconds']:.0f} s |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--json", default=None)
    p.add_argument("--from-json", default=None, help="render a saved run's JSON, measure nothing")
    p.add_argument("--readme", default=None)
    p.add_argument("--block", default="compiled-zoo")
    return p.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    if args.from_json:
        _common.write_results(json.loads(Path(args.from_json).read_text()), args, markdown)
    else:
        main(args)
