"""``benchmarks/speed.py``'s rows for the models whose batches carry fields: the M2 of
examples/mnist_ssvae.py (``zoo.m2_vae``, batch 200, 3000 known labels mixed into every batch,
the label enumerated over its 10 classes) and the CVAE of examples/mnist_cvae.py
(``zoo.completion_cvae``, batch 128, one known quadrant).

Each model's training step is timed five ways over the same batches, interleaved (best of the
repeats, so all of them see the same machine load):

* ``derived``: ``fit``'s default step, the model's derived estimator run eagerly (M2's sums
  the label exactly, as ``TraceEnum_ELBO`` does), after its once-only check;
* ``pyro``: Pyro's traced loss in every step (``TraceEnum_ELBO`` for M2, ``TensorTrace_ELBO``
  for the CVAE), what ``fit(loss=...)`` runs;
* ``compiled`` and ``compiled_bf16``: ``fit(compile=True)``'s step, in float32 and in
  ``bf16-mixed``;
* ``plain`` and ``plain_foreach``: a plain-PyTorch loop of the same model
  (``_baseline.plain_m2_loss``, ``plain_cvae_loss``) with ``torch.optim.Adam`` (its default,
  and ``foreach=True``, ``LazyAdam``'s implementation).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable

import pyro
import torch
from pyro.infer import TraceEnum_ELBO

import pyro_vae as pv
from pyro_vae.devices.precision import use_precision
from pyro_vae.models import zoo
from pyro_vae.train.step import Step

try:
    from . import _common
except ImportError:  # run as a file
    import _common

__all__ = ["cvae_case", "field_steps", "m2_case"]


def m2_case(x: torch.Tensor, y: torch.Tensor, labels: int = 3000) -> dict:
    """M2 as examples/mnist_ssvae.py trains it: its model, batches and loss."""
    known = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    known[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:labels]] = True
    alpha = 0.1 * len(x) / labels
    return {
        "build": lambda: zoo.m2_vae(alpha=alpha),
        "fields": {"y": torch.where(known, y, -1), "y_mask": known},
        "batch_size": 200,
        "loss": lambda: TraceEnum_ELBO(max_plate_nesting=1),
        "plain": lambda m, x, f: _common.plain_m2_loss(m, x, f["y"], f["y_mask"]),
        "classes": 10,
    }


def cvae_case(x: torch.Tensor) -> dict:
    """The CVAE as examples/mnist_cvae.py trains it (one known quadrant)."""
    known = torch.zeros(28, 28, dtype=torch.bool, device=x.device)
    known[14:, :14] = True
    known = known.flatten().expand_as(x)
    return {
        "build": zoo.completion_cvae,
        "fields": {"c": torch.where(known, x, -1.0), "unknown": ~known},
        "batch_size": 128,
        "loss": pv.TensorTrace_ELBO,
        "plain": lambda m, x, f: _common.plain_cvae_loss(m, x, f["c"], f["unknown"]),
        "classes": None,
    }


def field_steps(name: str, case: dict, x: torch.Tensor, *, args, device) -> dict:
    """Milliseconds per step of each way (see the module), and their ratios to the plain
    loop's; prints one line."""
    torch.manual_seed(args.seed)
    pyro.clear_param_store()
    build, size = case["build"], case["batch_size"]
    first = build().to(device)

    def copy(label: str) -> pv.VAE:  # the same initial values, its own param-store names
        return _common.twin(build, first, label, device)

    def batches(steps: int) -> pv.Batches:
        n = steps * size
        fields = {k: v[:n] for k, v in case["fields"].items()}
        return pv.Batches(x[:n], batch_size=size, **fields)

    few, warm = batches(args.steps), batches(args.warmup)
    timers = {}
    for way, options in (("derived", {"derive": True}), ("pyro", {}),
                         ("compiled", {"compile": True}),
                         ("compiled_bf16", {"compile": True})):  # fmt: skip
        vae = copy(way)
        step = Step(vae.model, vae.guide, pv.LazyAdam({"lr": 1e-3}), case["loss"](),
                    num_data=len(x), device=device, dtype=x.dtype, modules=vae,
                    **options)  # fmt: skip
        precision = "bf16-mixed" if way.endswith("bf16") else "32"
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # (a fallback would time the wrong step)
            step_epoch(step, warm, device, precision)  # the check, and compiling
        timers[way] = lambda s=step, p=precision: step_epoch(s, few, device, p)
    for way, foreach in (("plain", None), ("plain_foreach", True)):
        vae = copy(way)
        optimizer = torch.optim.Adam(vae.parameters(), lr=1e-3, foreach=foreach)
        plain_epoch(vae, case["plain"], warm, optimizer, device)
        timers[way] = lambda v=vae, o=optimizer: plain_epoch(v, case["plain"], few, o, device)
    times = {way: [] for way in timers}
    for _ in range(args.repeats):  # interleaved
        for way, timer in timers.items():
            times[way].append(timer() / len(few))
    result = {"steps": len(few), **{f"{way}_step_ms": 1e3 * min(t) for way, t in times.items()}}
    for way in ("derived", "pyro", "compiled", "compiled_bf16"):
        result[f"{way}_ratio"] = result[f"{way}_step_ms"] / result["plain_step_ms"]
        result[f"{way}_foreach_ratio"] = result[f"{way}_step_ms"] / result["plain_foreach_step_ms"]
    if case["classes"]:
        result["derived_ms_per_class"] = result["derived_step_ms"] / case["classes"]
    print(f"{name}: " + ", ".join(f"{k} {v:.3f}" for k, v in result.items() if k != "steps"),
          flush=True)  # fmt: skip
    return result


def step_epoch(step: Step, batches: pv.Batches, device, precision: str = "32") -> float:
    """Seconds for one pass of ``step`` over ``batches`` and their fields, as ``fit``'s loop
    takes it (the loss summed on the device, one host read at the end)."""
    _common.sync(device)
    t0 = time.perf_counter()
    total = 0.0
    with use_precision(precision):
        for x, idx, fields in batches:
            total = total + step(x, idx, fields) * (x.shape[0] / batches.num_data)
        float(total)
    _common.sync(device)
    return time.perf_counter() - t0


def plain_epoch(vae: pv.VAE, loss: Callable, batches: pv.Batches, optimizer, device) -> float:
    """Seconds for one pass of the plain loop (``loss(vae, x, fields)``) over ``batches``."""
    _common.sync(device)
    t0 = time.perf_counter()
    total = 0.0
    for x, _, fields in batches:
        value = loss(vae, x, fields)
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()
        total = total + value.detach()
    float(total)
    _common.sync(device)
    return time.perf_counter() - t0


def table(result: dict) -> list[str]:
    """The rows of the models with fields, when the run measured them."""
    keys = [k for k in ("m2", "cvae") if k in result]
    lines = [
        "",
        "| model (batches with fields) | plain step | plain, foreach Adam | derived (fit's "
        "default) | Pyro's traced loss | compiled | compiled bf16-mixed | derived per class |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key in keys:
        r = result[key]
        cells = [f"{r['plain_step_ms']:.1f} ms", f"{r['plain_foreach_step_ms']:.1f} ms"] + [
            f"{r[f'{w}_step_ms']:.1f} ms ({r[f'{w}_ratio']:.2f}×)"
            for w in ("derived", "pyro", "compiled", "compiled_bf16")
        ]
        per = r.get("derived_ms_per_class")
        cells.append(f"{per:.1f} ms" if per is not None else "")
        lines.append(f"| {_LABELS[key]} | " + " | ".join(cells) + " |")
    return lines if keys else []


_LABELS = {
    "m2": "M2, MLP 500, 10 classes, batch 200",
    "cvae": "CVAE completion, MLP 500-500, batch 128",
}
