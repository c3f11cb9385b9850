"""Speed: pyro_vae's training loop against a plain-PyTorch loop of the same model, in one run.

For each model the script times training steps (best of interleaved repeats) and a whole
epoch through ``pyro_vae.fit`` and through a plain-PyTorch loop on the same device, data and
batches, and prints both and their ratio (package ÷ plain; below 1 is faster). The compiled
step (the ``Step`` that ``fit(compile=True)`` takes, run in a loop like ``fit``'s) is timed in
the same interleaved repeats, after one epoch that checks and compiles it; a whole epoch of a
new ``fit(compile=True)`` call (its last, smaller batch compiles once more) is timed too:

* ``flow_prior``: ``zoo.flow_prior_vae()``, the model of examples/mnist_flow_prior.py (MLPs
  784-1024-1024, 16 latents, MAF prior, batch 256, thresholded MNIST), plus one epoch of zuko's
  tutorial pipeline (a ``DataLoader`` over torchvision's MNIST with ``to_tensor``) with the
  plain step;
* ``flow_posterior``: ``zoo.flow_posterior_vae("iaf", flows=2, hidden=H)``, the IAF model of
  examples/mnist_flow_posterior.py (z = 50, K = 2 maps, batch 100) with hidden width
  H = max(32, --hidden // 5): 204 by default, not the example's 200;
* ``per_datapoint``: SVI steps of a per-datapoint guide for N = 10^4 and 10^6 points, with sparse
  updates (LazyAdam) and with dense gradients (Pyro's Adam);
* ``m2`` and ``cvae``: the models whose batches carry fields (examples/mnist_ssvae.py's M2 with
  its enumerated label, examples/mnist_cvae.py's CVAE): ``fit``'s default (derived) step, Pyro's
  traced loss, the compiled step in float32 and bf16-mixed, against a plain loop of the same
  model (``_fields_speed.py``).

The plain loop uses the same modules and distribution objects, so the difference is the cost
of Pyro's inference machinery (traces, messengers, param store, per-parameter optimizers):
loss = -(log p(x|z) + log p(z) - log q(z|x)).mean(), ``torch.optim.Adam``, no host sync per
step. Validation is off in both, as in a tuned run. ``torch.optim.Adam`` with its defaults
loops over the parameters on the CPU (its multi-tensor ``foreach`` path is the default only
on CUDA), while ``LazyAdam`` takes the ``foreach`` path everywhere: the steps are also timed
against the plain loop with ``foreach=True``, so that choice is not mistaken for Pyro's cost.

    python benchmarks/speed.py --device cpu          # or cuda; --json out.json
    python benchmarks/speed.py --models m2 cvae      # some of the models
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO

import pyro_vae as pv
from pyro_vae.devices.precision import use_precision
from pyro_vae.models import zoo
from pyro_vae.train.step import Step

try:
    from . import _common, _fields_speed
except ImportError:  # run as a file: python benchmarks/<name>.py
    import _common
    import _fields_speed

BF16 = "bf16-mixed"
MODELS = ("flow_prior", "flow_posterior", "per_datapoint", "m2", "cvae")


def package_epoch(
    vae: pv.VAE, batches: pv.Batches, optim, device, compile=False, precision="32"
) -> float:
    """Seconds for one epoch of ``pyro_vae.fit`` over ``batches``."""
    _common.sync(device)
    t0 = time.perf_counter()
    pv.fit(
        vae.model,
        vae.guide,
        batches,
        epochs=1,
        optim=optim,
        device=pv.Compute(device, compile=compile, precision=precision),
        log=False,
    )
    _common.sync(device)
    return time.perf_counter() - t0


def compare(
    name, build, x, *, batch_size, binarize, args, device, tutorial=None, loader=None
) -> dict:
    """Steps and an epoch of one model through pyro_vae and through plain PyTorch."""
    torch.manual_seed(args.seed)
    pyro.clear_param_store()
    vae_pkg = build().to(device)

    def copy(name: str) -> pv.VAE:  # the same initial values, its own param-store names
        return _common.twin(build, vae_pkg, name, device)

    vae_ref, vae_fe = copy("plain"), copy("plain_foreach")
    vae_bf, vae_cmp, vae_cmp_bf = copy("bf16"), copy("compiled"), copy("compiled_bf16")
    optim, optim_bf = pv.LazyAdam({"lr": 1e-3}), pv.LazyAdam({"lr": 1e-3})
    optim_cmp, optim_cmp_bf = pv.LazyAdam({"lr": 1e-3}), pv.LazyAdam({"lr": 1e-3})
    optimizer = torch.optim.Adam(vae_ref.parameters(), lr=1e-3)
    # the plain loop with foreach Adam, LazyAdam's implementation
    optimizer_fe = torch.optim.Adam(vae_fe.parameters(), lr=1e-3, foreach=True)
    few = pv.Batches(x[: args.steps * batch_size], batch_size=batch_size, binarize=binarize)
    warm = pv.Batches(x[: args.warmup * batch_size], batch_size=batch_size, binarize=binarize)
    package_epoch(vae_pkg, warm, optim, device)
    package_epoch(vae_bf, warm, optim_bf, device, precision="bf16-mixed")
    _common.plain_epoch(vae_ref, warm, optimizer, device)
    _common.plain_epoch(vae_fe, warm, optimizer_fe, device)
    step_cmp, first, fallback = compiled_step(vae_cmp, few, optim_cmp, device)
    step_cmp_bf, first_bf, _ = compiled_step(vae_cmp_bf, few, optim_cmp_bf, device, "bf16-mixed")
    timers = {  # seconds per step of each, over the same batches
        "pyro_vae_step_ms": lambda: package_epoch(vae_pkg, few, optim, device),
        "plain_torch_step_ms": lambda: _common.plain_epoch(vae_ref, few, optimizer, device),
        "plain_foreach_step_ms": lambda: _common.plain_epoch(vae_fe, few, optimizer_fe, device),
        "compiled_step_ms": lambda: step_epoch(step_cmp, few, device),
        "bf16_step_ms": lambda: package_epoch(vae_bf, few, optim_bf, device, precision=BF16),
        "compiled_bf16_step_ms": lambda: step_epoch(step_cmp_bf, few, device, BF16),
    }
    times = {key: [] for key in timers}
    for _ in range(args.repeats):  # interleaved, so all of them see the same machine load
        for key, timer in timers.items():
            times[key].append(timer() / len(few))
    result = {"steps": len(few), **{key: 1e3 * min(t) for key, t in times.items()}}
    result["compile_s"] = first - min(times["compiled_step_ms"]) * len(few)
    result["compile_bf16_s"] = first_bf - min(times["compiled_bf16_step_ms"]) * len(few)
    result["compiled_fallback"] = fallback
    result["step_ratio"] = result["pyro_vae_step_ms"] / result["plain_torch_step_ms"]
    result["compiled_step_ratio"] = result["compiled_step_ms"] / result["plain_torch_step_ms"]
    result["compiled_bf16_step_ratio"] = (
        result["compiled_bf16_step_ms"] / result["plain_torch_step_ms"]
    )
    if args.epochs:
        full = pv.Batches(x, batch_size=batch_size, binarize=binarize)
        result["pyro_vae_epoch_s"] = package_epoch(vae_pkg, full, optim, device)
        result["plain_torch_epoch_s"] = _common.plain_epoch(vae_ref, full, optimizer, device)
        result["epoch_ratio"] = result["pyro_vae_epoch_s"] / result["plain_torch_epoch_s"]
        # (its last, smaller batch compiles once more: counted here)
        result["compiled_epoch_s"] = package_epoch(vae_cmp, full, optim_cmp, device, compile=True)
        result["compiled_epoch_ratio"] = result["compiled_epoch_s"] / result["plain_torch_epoch_s"]
        if tutorial is not None:
            result["zuko_tutorial_pipeline_epoch_s"] = _common.plain_epoch(
                vae_ref, tutorial, optimizer, device
            )
        if loader is not None:  # fit through a DataLoader over the same files
            result["pyro_vae_loader_epoch_s"] = package_epoch(vae_pkg, loader, optim, device)
    line = (
        f"{name}: step {result['pyro_vae_step_ms']:.2f} ms (pyro_vae) vs "
        f"{result['plain_torch_step_ms']:.2f} ms (plain), ratio {result['step_ratio']:.3f}; "
        f"compiled {result['compiled_step_ms']:.2f} ms, ratio {result['compiled_step_ratio']:.3f}"
        f" (compiling: {result['compile_s']:.1f} s); bf16-mixed {result['bf16_step_ms']:.2f} ms,"
        f" compiled {result['compiled_bf16_step_ms']:.2f} ms, ratio "
        f"{result['compiled_bf16_step_ratio']:.3f}"
    )
    if args.epochs:
        line += (
            f"; epoch {result['pyro_vae_epoch_s']:.2f} s vs {result['plain_torch_epoch_s']:.2f} s,"
            f" ratio {result['epoch_ratio']:.3f}"
        )
    if "zuko_tutorial_pipeline_epoch_s" in result:
        line += f"; zuko tutorial pipeline epoch {result['zuko_tutorial_pipeline_epoch_s']:.2f} s"
    if "pyro_vae_loader_epoch_s" in result:
        line += f"; fit through a DataLoader {result['pyro_vae_loader_epoch_s']:.2f} s"
    print(line, flush=True)
    return result


def compiled_step(
    vae: pv.VAE, few: pv.Batches, optim, device, precision: str = "32"
) -> tuple[Step, float, str | None]:
    """The step ``fit(compile=True)`` takes (:class:`pyro_vae.train.step.Step` with
    ``compile=True``), the seconds of its first epoch over ``few``, which checks the derived
    estimator against the Pyro loss and compiles (its excess over a later epoch is the
    once-per-run cost), and the warning of a pair that fell back to the eager step."""
    step = Step(vae.model, vae.guide, optim, pv.TensorTrace_ELBO(), num_data=few.num_data,
                device=device, dtype=torch.float32, compile=True, modules=vae)  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        seconds = step_epoch(step, few, device, precision)
    fallback = [str(w.message) for w in caught if "compile=True" in str(w.message)]
    return step, seconds, fallback[0] if fallback else None


def step_epoch(step: Step, batches: pv.Batches, device, precision: str = "32") -> float:
    """Seconds for one pass of ``step`` over ``batches``, as ``fit``'s loop takes it (the
    loss summed on the device, one host read at the end), at ``precision``."""
    _common.sync(device)
    t0 = time.perf_counter()
    total = 0.0
    with use_precision(precision):
        for x, idx in batches:
            x, idx = x.to(device, non_blocking=True), idx.to(device, non_blocking=True)
            total = total + step(x, idx) * (x.shape[0] / batches.num_data)
        float(total)
    _common.sync(device)
    return time.perf_counter() - t0


def tutorial_loader(data_dir: str, batch_size: int, limit: int | None):
    """zuko's tutorial pipeline: DataLoader over torchvision MNIST with to_tensor, x.round()."""
    from torchvision.datasets import MNIST
    from torchvision.transforms.functional import to_tensor

    ds = MNIST(data_dir, train=True, download=False, transform=to_tensor)
    if limit:
        ds = torch.utils.data.Subset(ds, range(limit))
    return _Rounded(torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True))


def package_loader(data_dir: str, batch_size: int, limit: int | None, workers: int):
    """fit's DataLoader path over the same files: pv.Indexed(MNIST) with ``to_tensor``,
    flattened and thresholded per item, ``pin_memory`` when CUDA is there."""
    from torchvision.datasets import MNIST
    from torchvision.transforms import Compose, Lambda, ToTensor

    ds = MNIST(
        data_dir, train=True, download=False, transform=Compose([ToTensor(), Lambda(torch.flatten)])
    )
    if limit:
        ds = torch.utils.data.Subset(ds, range(limit))
    return torch.utils.data.DataLoader(
        pv.Indexed(ds, binarize="threshold"),
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
    )


class _Rounded:
    """Iterates a DataLoader as the tutorial's loop does: ``x.round().flatten(-3)``."""

    def __init__(self, loader) -> None:
        self.loader = loader

    def __iter__(self):
        for x, y in self.loader:
            yield x.round().flatten(-3), y


def per_datapoint_step(
    n: int,
    *,
    sparse: bool,
    batch_size: int,
    latent: int,
    steps: int,
    warmup: int,
    device: torch.device,
) -> float:
    """Mean seconds per SVI step of a per-datapoint VAE over ``n`` points (2-D data)."""
    pyro.clear_param_store()
    data = pv.Batches(torch.randn(n, 2, device=device), batch_size=batch_size)
    vae = pv.VAE(
        pv.StandardNormalPrior(latent),
        pv.GaussianLikelihood(pv.MLP(latent, 2, (64, 64)), 2, scale=0.1),
        pv.PerDatapointGaussian(n, latent, sparse=sparse),
    ).to(device)
    optim = pv.LazyAdam({"lr": 1e-2}) if sparse else pyro.optim.Adam({"lr": 1e-2})
    svi = SVI(vae.model, vae.guide, optim, Trace_ELBO())
    batches = (batch for _ in iter(int, 1) for batch in data)  # epochs without end
    for _ in range(warmup):
        svi.step(*next(batches), num_data=n)
    _common.sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        svi.step(*next(batches), num_data=n)
    _common.sync(device)
    return (time.perf_counter() - t0) / steps


def main(args: argparse.Namespace) -> dict:
    if args.from_json:  # the tables of a saved run, without measuring again
        return _common.write_results(json.loads(Path(args.from_json).read_text()), args, markdown)
    device = torch.device(args.device) if args.device else pv.default_device()
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    pyro.enable_validation(False)
    torch.manual_seed(args.seed)
    try:
        x, _ = pv.load_mnist(args.data_dir, device=device)
        source = "MNIST"
        tutorial = tutorial_loader(args.data_dir, 256, args.limit)
        loader = package_loader(args.data_dir, 256, args.limit, args.workers)
    except FileNotFoundError:
        x, source, tutorial, loader = (
            torch.rand(60000, 784, device=device),
            "random data",
            None,
            None,
        )
    if args.limit:
        x = x[: args.limit]
    result = {
        "device": pv.device_name(device),
        "threads": torch.get_num_threads(),
        "data": source,
        "torch": torch.__version__,
        "pyro": pyro.__version__,
    }
    print(f"device: {result['device']}, {result['threads']} threads, data: {source}")

    if "m2" in args.models or "cvae" in args.models:
        labels = pv.load_mnist(args.data_dir, device=device)[1] if source == "MNIST" else (
            torch.randint(0, 10, (len(x),), device=device))  # fmt: skip
        fields = (x > 0.5).float()  # (thresholded, as both examples binarize)
        if "m2" in args.models:
            case = _fields_speed.m2_case(fields, labels[: len(x)])
            result["m2"] = _fields_speed.field_steps("M2", case, fields, args=args, device=device)
        if "cvae" in args.models:
            case = _fields_speed.cvae_case(fields)
            result["cvae"] = _fields_speed.field_steps("CVAE", case, fields, args=args,
                                                       device=device)  # fmt: skip
    if "flow_prior" in args.models:
        result["flow_prior"] = _flow_prior(x, args, device, tutorial, loader)
    if "flow_posterior" in args.models:
        result["flow_posterior"] = _flow_posterior(x, args, device)
    if "per_datapoint" in args.models:
        _per_datapoint(result, args, device)
    return _common.write_results(result, args, markdown)


def _flow_prior(x, args, device, tutorial, loader) -> dict:
    return compare(
        "flow prior (MAF prior, MLP 1024-1024, batch 256)",
        lambda: zoo.flow_prior_vae(hidden=args.hidden),
        x,
        batch_size=256,
        binarize="threshold",
        args=args,
        device=device,
        tutorial=tutorial,
        loader=loader,
    )


def _flow_posterior(x, args, device) -> dict:
    return compare(
        "flow posterior (IAF K=2, MLP 200-200, z=50, batch 100)",
        lambda: zoo.flow_posterior_vae("iaf", flows=2, hidden=max(32, args.hidden // 5)),
        x,
        batch_size=100,
        binarize="dynamic",
        args=args,
        device=device,
    )


def _per_datapoint(result: dict, args, device) -> None:
    sizes = args.per_datapoint_sizes
    for sparse in (True, False):
        label = "sparse + LazyAdam" if sparse else "dense + pyro.optim.Adam"
        times = [
            per_datapoint_step(
                n,
                sparse=sparse,
                batch_size=256,
                latent=16,
                steps=args.steps,
                warmup=args.warmup,
                device=device,
            )
            for n in sizes
        ]
        result["per_datapoint_sparse" if sparse else "per_datapoint_dense"] = {
            "sizes": sizes,
            "step_ms": [1e3 * t for t in times],
            "ratio_largest_to_smallest": times[-1] / times[0],
        }
        cells = ", ".join(f"N={n:.0e}: {1e3 * t:.2f} ms" for n, t in zip(sizes, times, strict=True))
        print(
            f"per-datapoint guide, {label}: {cells}; ratio {times[-1] / times[0]:.2f}", flush=True
        )


def _foreach_table(result: dict) -> list[str]:
    """The steps against a plain loop with foreach Adam (``LazyAdam``'s implementation;
    torch's default only on CUDA), when the run measured it."""
    keys = [k for k in _LABELS if "plain_foreach_step_ms" in result.get(k, {})]
    lines = [
        "",
        "| model | plain step, foreach Adam | pyro_vae step vs it | compiled step vs it |",
        "|---|---|---|---|",
    ]
    for key in keys:
        r = result[key]
        fe = r["plain_foreach_step_ms"]
        lines.append(
            f"| {_LABELS[key]} | {fe:.2f} ms | {r['pyro_vae_step_ms'] / fe:.3f} | "
            f"{r['compiled_step_ms'] / fe:.3f} |"
        )
    return lines if keys else []


def _precision_table(result: dict) -> list[str]:
    """The steps in bf16-mixed beside float32, eager and compiled, against the plain float32
    loop (when the run measured them)."""
    keys = [k for k in _LABELS if "compiled_bf16_step_ms" in result.get(k, {})]
    lines = [
        "",
        "| model | plain float32 step | eager float32 | eager bf16-mixed | compiled float32 |"
        " compiled bf16-mixed | compiled bf16-mixed vs plain float32 |",
        "|---|---|---|---|---|---|---|",
    ]
    for key in keys:
        r = result[key]
        lines.append(
            f"| {_LABELS[key]} | {r['plain_torch_step_ms']:.2f} ms | "
            f"{r['pyro_vae_step_ms']:.2f} ms | {r['bf16_step_ms']:.2f} ms | "
            f"{r['compiled_step_ms']:.2f} ms | {r['compiled_bf16_step_ms']:.2f} ms | "
            f"{r['compiled_bf16_step_ratio']:.3f} |"
        )
    return lines if keys else []


_LABELS = {
    "flow_prior": "MAF prior, MLP 1024, batch 256",
    "flow_posterior": "IAF posterior, MLP 200, batch 100",
}


def markdown(result: dict) -> str:
    """The figures of one run as a markdown table."""
    lines = [
        f"Measured on {result['device']} ({result['threads']} threads), torch "
        f"{result['torch']}, pyro {result['pyro']}, data: {result['data']}.",
        "",
        "| model | pyro_vae step | plain step | ratio | pyro_vae epoch | plain epoch | ratio |"
        " zuko tutorial pipeline epoch | pyro_vae DataLoader epoch |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    compiled = [
        "",
        "| model, `fit(compile=True)` | compiled step | vs plain step | a full epoch in a new"
        " fit call (the last batch's graph compiles) | vs plain epoch | check + compiling"
        " (first epoch's excess) | break-even vs eager fit |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, label in _LABELS.items():
        if key not in result:
            continue
        r = result[key]
        epoch = (
            (
                f"{r['pyro_vae_epoch_s']:.2f} s | {r['plain_torch_epoch_s']:.2f} s | "
                f"{r['epoch_ratio']:.3f}"
            )
            if "epoch_ratio" in r
            else "| |"
        )
        tutorial = r.get("zuko_tutorial_pipeline_epoch_s")
        lines.append(
            f"| {label} | {r['pyro_vae_step_ms']:.2f} ms | {r['plain_torch_step_ms']:.2f} ms | "
            f"{r['step_ratio']:.3f} | {epoch} | "
            + (f"{tutorial:.2f} s |" if tutorial is not None else "|")
            + (
                f" {r['pyro_vae_loader_epoch_s']:.2f} s |"
                if "pyro_vae_loader_epoch_s" in r
                else " |"
            )
        )
        epoch = (
            f"{r['compiled_epoch_s']:.2f} s | {r['compiled_epoch_ratio']:.3f}"
            if "compiled_epoch_s" in r
            else " | "
        )
        saved_ms = r["pyro_vae_step_ms"] - r["compiled_step_ms"]  # per step, against eager fit
        even = f"{1e3 * r['compile_s'] / saved_ms:.0f} steps" if saved_ms > 0 else "never"
        if r.get("compiled_fallback"):
            label += " (not capturable: the eager step)"
            even = "n/a"
        compiled.append(
            f"| {label} | {r['compiled_step_ms']:.2f} ms | {r['compiled_step_ratio']:.3f} | "
            f"{epoch} | {r['compile_s']:.1f} s | {even} |"
        )
    lines += compiled
    lines += _foreach_table(result)
    lines += _precision_table(result)
    lines += _fields_speed.table(result)
    return "\n".join(lines + _per_datapoint_table(result))


def _per_datapoint_table(result: dict) -> list[str]:
    if "per_datapoint_sparse" not in result:
        return []
    lines = [
        "",
        "| per-datapoint guide | "
        + " | ".join(f"N = {n:.0e}" for n in result["per_datapoint_sparse"]["sizes"])
        + " | ratio |",
        "|---|" + "---|" * (len(result["per_datapoint_sparse"]["sizes"]) + 1),
    ]
    for key, label in (
        ("per_datapoint_sparse", "sparse rows + LazyAdam"),
        ("per_datapoint_dense", "dense + pyro.optim.Adam"),
    ):
        r = result[key]
        cells = " | ".join(f"{t:.2f} ms" for t in r["step_ms"])
        lines.append(f"| {label} | {cells} | {r['ratio_largest_to_smallest']:.2f} |")
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default=None)
    p.add_argument("--hidden", type=int, default=1024, help="width of the flow-prior MLPs")
    p.add_argument("--steps", type=int, default=40, help="timed steps per repeat")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--no-epochs", dest="epochs", action="store_false", help="skip the whole-epoch timings"
    )
    p.add_argument("--limit", type=int, default=None, help="use only this many images")
    p.add_argument("--per-datapoint-sizes", type=int, nargs="+", default=[10**4, 10**6])
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS),
                   help="which models to time (default: all)")  # fmt: skip
    p.add_argument("--data-dir", default=pv.default_data_dir())
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers of fit's loader path")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    p.add_argument("--from-json", default=None, help="render a saved run's JSON, measure nothing")
    p.add_argument("--readme", default=None, help="write the table into this README")
    p.add_argument("--block", default="speed")
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
