"""Overhead: what a GPU would pay per training step, measured on the CPU.

A small VAE on a GPU is bound by per-step overhead, not arithmetic: every aten op that runs a
kernel costs a launch, every host read a synchronization, and the Python that dispatches them
runs on the host whatever the device. For each model and each of three loops, in one run:

* ``fit``: the step ``pyro_vae.fit`` takes by default (the VAE's derived estimator, eager,
  after its check against ``TensorTrace_ELBO``; ``LazyAdam``, validation off);
* ``fit with Pyro's loss``: the step ``fit`` takes with ``loss=pv.TensorTrace_ELBO()`` passed
  (``gradient_step``: Pyro's traced loss, the reference);
* ``SVI.step``: ``pyro.infer.SVI`` with ``Trace_ELBO`` and ``pyro.optim.Adam``;
* ``plain``: a plain-PyTorch loop of the same modules (``-(log p(x|z) + log p(z) -
  log q(z|x)).mean()``, ``torch.optim.Adam``, ``zero_grad(set_to_none=True)``);
* ``compiled``: the step ``fit(compile=True)`` takes (the VAE's derived estimator as one
  inductor graph forward and one backward, then ``LazyAdam``),

the script counts, on ``meta`` tensors (the op stream without data) under
:class:`pyro_vae.devices.dispatch.DispatchWatch`, the aten ops per step, the ops that would launch a
kernel (not views or allocations), and the reads of device values per step (the optimizers
use ``foreach`` Adam, as on CUDA); and it times, on the CPU with tiny layers (where the
arithmetic is negligible, as on a GPU), the host milliseconds per step (best of interleaved
repeats; ``--device cuda`` times them on a GPU instead). The GPU step floor is an
*estimate*: max(host time, kernels x launch cost), with a launch cost of ``--launch-us``
microseconds (default 5: the driver and runtime take 4-6 us per launch, as measured on an
RTX 5070 Ti in "pegainfer (3): From Launch Overhead to CUDA Graph", susun-blog.com).

A compiled graph cannot run on ``meta`` (nor under a dispatch mode), so every loop is also
counted a second way, on the CPU with torch's profiler: the outermost aten ops that would
launch a kernel plus the kernels inductor generated (``cpp_fused_*``). That count is higher
than the ``meta`` one for every loop (the CPU optimizer's step counters add ~20 small ops) and
is the one the compiled row is compared on; on a GPU inductor fuses differently (Triton), so
it is an estimate of the launches there.

Models: ``seed`` (``zoo.flow_prior_vae()``: MAF prior, MLPs 1024, batch 256), ``iaf``
(``zoo.flow_posterior_vae("iaf", flows=2)``: z = 50, MLPs 200, batch 100) and ``tiny`` (one
hidden layer of 8, 2 latents, 8 features, batch 16). Host times use the same models with
hidden width 8 (64 for ``iaf``, whose autoregressive networks need at least z = 50).

    python benchmarks/overhead.py [--device cpu] [--json out.json] [--readme docs/guide/cuda.md]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import pyro
import torch
import torch._inductor.config
from pyro.infer import SVI, Trace_ELBO

import pyro_vae as pv
from pyro_vae.devices.dispatch import DispatchWatch, launches
from pyro_vae.models import zoo
from pyro_vae.train.step import Step, gradient_step

try:
    from . import _common
except ImportError:  # run as a file: python benchmarks/<name>.py
    import _common

LOOPS = ("fit", "fit with Pyro's loss", "SVI.step", "plain", "compiled")


def tiny_vae(hidden: int = 8) -> pv.VAE:
    return pv.VAE(
        pv.StandardNormalPrior(2),
        pv.BernoulliLikelihood(pv.MLP(2, 8, (hidden,)), 8),
        pv.GaussianEncoder(pv.MLP(8, 4, (hidden,)), 2),
    )


MODELS: dict[str, tuple[Callable[[int], pv.VAE], int, int, int]] = {
    # name: (build(hidden), hidden as published, hidden for host times, batch size)
    "seed": (lambda h: zoo.flow_prior_vae(hidden=h), 1024, 8, 256),
    "iaf": (lambda h: zoo.flow_posterior_vae("iaf", flows=2, hidden=h), 200, 64, 100),
    "tiny": (tiny_vae, 8, 8, 16),
}


def stepper(loop: str, vae: pv.VAE, num_data: int) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """One training step of ``loop`` on ``vae``, as a function of the batch."""
    if loop == "fit with Pyro's loss":
        optim, loss = pv.LazyAdam({"lr": 1e-3, "foreach": True}), pv.TensorTrace_ELBO()
        return lambda x, idx: gradient_step(
            vae.model, vae.guide, loss, optim, x, idx, num_data=num_data
        )
    if loop in ("fit", "compiled"):
        device = next(vae.parameters()).device
        return Step(vae.model, vae.guide, pv.LazyAdam({"lr": 1e-3, "foreach": True}),
                    pv.TensorTrace_ELBO(), num_data=num_data, device=device,
                    dtype=torch.float32, compile=loop == "compiled", derive=True,
                    modules=vae)  # fmt: skip
    if loop == "SVI.step":
        svi = SVI(
            vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3, "foreach": True}), Trace_ELBO()
        )
        return lambda x, idx: svi.step(x, idx, num_data=num_data)
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-3, foreach=True)

    def plain(x: torch.Tensor, idx: torch.Tensor) -> None:
        loss = _common.plain_loss(vae, x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return plain


def batch(vae: pv.VAE, size: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.rand(size, *vae.event_shape, device=device).round()
    return x, torch.arange(size, device=device)


def count(name: str, loop: str) -> dict:
    """Ops, kernel launches and device reads of one steady-state step, on ``meta`` (the
    compiled loop: not countable there), and the launches counted by the profiler."""
    launched, step = profiled(name, loop)
    if loop == "fit" and not step.derived:
        raise RuntimeError(f"fit's default step did not take {name}'s derived estimator")
    row = {"profiled": launched}
    if loop == "compiled":  # (a pair torch.compile cannot capture takes the eager step)
        eager = step.compiled is None
        return row | {"ops": None, "kernels": None, "reads": None, "eager_fallback": eager}
    build, hidden, _, size = MODELS[name]
    pyro.clear_param_store()
    torch.manual_seed(0)
    vae = build(hidden).to("meta")
    step = stepper(loop, vae, num_data=60000)
    x, idx = batch(vae, size, "meta")
    with DispatchWatch():  # registration and optimizer state, not the steady state (the watch
        for _ in range(2):  # gives the reads of meta tensors stand-in values)
            step(x, idx)
    with DispatchWatch(root=vae) as watch:
        step(x, idx)
    return row | {
        "ops": sum(watch.ops.values()),
        "kernels": watch.launches,
        "reads": len(watch.reads),
    }


def profiled(name: str, loop: str) -> tuple[int, Callable]:
    """Kernel launches of one steady-state step on the CPU, by torch's profiler: outermost
    aten ops that launch a kernel (as :class:`DispatchWatch` classifies them) and inductor's
    generated kernels; and the step."""
    build, hidden, _, size = MODELS[name]
    pyro.clear_param_store()
    torch.manual_seed(0)
    vae = build(hidden)
    x, idx = batch(vae, size, "cpu")
    with torch._inductor.config.patch({"cpp.enable_kernel_profile": True}):
        step = stepper(loop, vae, num_data=60000)
        for _ in range(2):  # registration, optimizer state, compilation
            step(x, idx)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            step(x, idx)
    return sum(_launch(event) for event in prof.events()), step


def _launch(event: object) -> bool:
    if "cpp_fused" in event.name:
        return True
    namespace, _, name = event.name.partition("::")
    packet = getattr(torch.ops.aten, name, None) if namespace == "aten" else None
    if packet is None:
        return False
    overloads = packet.overloads()
    if not launches(getattr(packet, "default" if "default" in overloads else overloads[0])):
        return False
    parent = event.cpu_parent
    while parent is not None:  # an op inside another aten op is part of it
        if parent.name.startswith("aten::"):
            return False
        parent = parent.cpu_parent
    return True


def host_ms(
    name: str, loops: tuple[str, ...], *, steps: int, repeats: int, device: torch.device
) -> dict[str, float]:
    """Best-of-repeats milliseconds per step with tiny layers on ``device`` (the CPU: host
    time; a GPU: wall time, synchronized after the timed steps), loops interleaved."""
    build, _, hidden, size = MODELS[name]
    runs = {}
    for loop in loops:
        pyro.clear_param_store()
        torch.manual_seed(0)
        vae = build(hidden).to(device)
        vae.name = f"vae_{LOOPS.index(loop)}"  # its own param-store names
        runs[loop] = (stepper(loop, vae, num_data=60000), batch(vae, size, device))
    best = dict.fromkeys(loops, float("inf"))
    for _ in range(repeats):
        for loop, (step, (x, idx)) in runs.items():
            for _ in range(3):
                step(x, idx)  # warm up
            _common.sync(device)
            t0 = time.perf_counter()
            for _ in range(steps):
                step(x, idx)
            _common.sync(device)
            best[loop] = min(best[loop], 1e3 * (time.perf_counter() - t0) / steps)
    return best


def main(args: argparse.Namespace) -> dict:
    if args.from_json:  # the table of a saved run, without measuring again
        return _common.write_results(json.loads(Path(args.from_json).read_text()), args, markdown)
    pyro.enable_validation(False)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    result = {
        "device": pv.device_name(device),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "threads": args.threads,
        "launch_us": args.launch_us,
        "models": {},
    }
    for name in args.models:
        times = host_ms(name, LOOPS, steps=args.steps, repeats=args.repeats, device=device)
        rows = {}
        for loop in LOOPS:
            row = count(name, loop) | {"host_ms": times[loop]}
            row["gpu_floor_ms"] = max(row["host_ms"], row["profiled"] * args.launch_us / 1e3)
            rows[loop] = row
            print(f"{name:5s} {loop:9s} " + "  ".join(f"{k} {v}" for k, v in row.items()))
        result["models"][name] = rows
    return _common.write_results(result, args, markdown)


def markdown(result: dict) -> str:
    labels = {
        "seed": "MAF prior, MLP 1024, batch 256",
        "iaf": "IAF posterior, MLP 200, batch 100",
        "tiny": "tiny (hidden 8, z = 2, batch 16)",
    }
    lines = [
        f"Counted on `meta` tensors and timed on {result['device']} ({result['threads']} "
        f"thread(s), hidden width 8 for the times, 64 for the IAF model), torch "
        f"{result['torch']}, pyro {result['pyro']}. Kernels: on `meta` (not possible for a "
        "compiled graph: n/a) and by the profiler on the CPU (every loop; inductor's generated "
        "kernels count one each). GPU floor: an estimate, max(host time, profiled kernels × "
        f"{result['launch_us']} µs).",
        "",
        "| model | loop | aten ops | kernels (meta) | vs plain | kernels (profiler) | vs plain |"
        " device reads | host ms | vs plain | GPU floor (estimate) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, rows in result["models"].items():
        plain = rows["plain"]
        for loop, r in rows.items():
            meta = "n/a | n/a | n/a | n/a"
            if r["kernels"] is not None:
                ratio = r["kernels"] / plain["kernels"]
                meta = f"{r['ops']} | {r['kernels']} | {ratio:.2f} | {r['reads']}"
            ops, kernels, ratio, reads = meta.split(" | ")
            if r.get("eager_fallback"):
                loop = "compiled (not capturable: the eager step)"
            lines.append(
                f"| {labels.get(name, name)} | {loop} | {ops} | {kernels} | {ratio} | "
                f"{r['profiled']} | {r['profiled'] / plain['profiled']:.2f} | {reads} | "
                f"{r['host_ms']:.2f} | {r['host_ms'] / plain['host_ms']:.2f} | "
                f"{r['gpu_floor_ms']:.2f} ms |"
            )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--steps", type=int, default=50, help="timed steps per repeat")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="where the steps are timed")
    p.add_argument("--launch-us", type=float, default=5.0, help="assumed cost of one launch")
    p.add_argument("--json", default=None)
    p.add_argument("--from-json", default=None, help="render a saved run's JSON, measure nothing")
    p.add_argument("--readme", default=None)
    p.add_argument("--block", default="overhead")
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
