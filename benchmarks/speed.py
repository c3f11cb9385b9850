"""Speed: training steps of the MNIST flow-prior VAE through pyro_vae vs a plain-PyTorch loop.

Both loops train the same architecture (examples/mnist_flow_prior.py: MLP 784-1024-1024 encoder
and decoder, 16 latents, MAF prior) with Adam on the same device and the same data-resident
minibatches, in one run, and the script prints the mean step time of each and their ratio.

* pyro_vae: ``pyro.infer.SVI.step`` with ``Trace_ELBO`` on ``VAE.model`` / ``VAE.guide``,
  exactly what :func:`pyro_vae.fit` runs per step.
* plain PyTorch: the loss -(log p(x|z) + log p(z) - log q(z|x)) written by hand, as in zuko's
  tutorial, with ``torch.optim.Adam`` and no host sync per step.

* per-datapoint guide: SVI steps of a VAE with local parameters for N = 10^4 and 10^6 points
  (``--per-point-sizes``), with row-sparse gradients + LazyAdam and with dense gradients + Pyro's
  Adam; with sparse updates the step cost should not grow with N.

    python benchmarks/speed.py --device cpu --steps 50
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO

import pyro_vae as pv

ROOT = Path(__file__).resolve().parents[1]


def build_model(hidden: int) -> pv.VAE:
    spec = importlib.util.spec_from_file_location("example", ROOT / "examples/mnist_flow_prior.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    return example.build(16, hidden)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step, batches, steps: int, warmup: int, device: torch.device) -> float:
    """Mean seconds per step over ``steps`` steps after ``warmup`` untimed ones."""
    it = iter(batches)

    def next_batch():
        nonlocal it
        try:
            return next(it)
        except StopIteration:
            it = iter(batches)
            return next(it)

    for _ in range(warmup):
        step(*next_batch())
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step(*next_batch())
    sync(device)
    return (time.perf_counter() - t0) / steps


def per_point_step(
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
    return time_steps(lambda x, idx: svi.step(x, idx, num_data=n), data, steps, warmup, device)


def main(args: argparse.Namespace) -> dict:
    device = torch.device(args.device) if args.device else pv.default_device()
    pyro.enable_validation(False)  # as in a tuned training run; tests run with validation on
    torch.manual_seed(args.seed)
    try:
        x, _ = pv.load_mnist(args.data_dir, device=device)
        source = "MNIST"
    except FileNotFoundError:
        x, source = torch.rand(60000, 784, device=device), "random [0, 1] data (no MNIST found)"
    batches = pv.Batches(x, batch_size=args.batch_size, binarize="threshold")
    n = batches.num_data

    # pyro_vae: SVI on the package's VAE.
    pyro.clear_param_store()
    vae = build_model(args.hidden).to(device)
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
    pyro_step = time_steps(
        lambda xb, idx: svi.step(xb, idx, num_data=n), batches, args.steps, args.warmup, device
    )

    # Plain PyTorch: the same networks, the loss by hand.
    torch.manual_seed(args.seed)
    ref = build_model(args.hidden).to(device)
    encoder, decoder = ref.variational.encoder, ref.likelihood.decoder
    flow = ref.prior.flow
    optimizer = torch.optim.Adam(ref.parameters(), lr=1e-3)

    def torch_step(xb, idx):
        loc, log_scale = encoder(xb).chunk(2, -1)
        q = torch.distributions.Independent(torch.distributions.Normal(loc, log_scale.exp()), 1)
        z = q.rsample()
        logits = decoder(z)
        log_px = -torch.nn.functional.binary_cross_entropy_with_logits(
            logits, xb, reduction="none"
        ).sum(-1)
        loss = -(log_px + flow().log_prob(z) - q.log_prob(z)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.detach()

    torch_step_s = time_steps(torch_step, batches, args.steps, args.warmup, device)
    result = {
        "device": pv.device_name(device),
        "threads": torch.get_num_threads(),
        "data": source,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "pyro_vae_step_ms": 1e3 * pyro_step,
        "plain_torch_step_ms": 1e3 * torch_step_s,
        "ratio": pyro_step / torch_step_s,
        "pyro_vae_epoch_s": pyro_step * len(batches),
        "plain_torch_epoch_s": torch_step_s * len(batches),
    }
    print(f"device: {result['device']}, {result['threads']} threads, data: {source}")
    print(f"pyro_vae (SVI + Trace_ELBO): {result['pyro_vae_step_ms']:8.2f} ms/step")
    print(f"plain PyTorch             : {result['plain_torch_step_ms']:8.2f} ms/step")
    print(f"ratio pyro_vae / PyTorch  : {result['ratio']:8.3f}")
    sizes = args.per_point_sizes
    for sparse in (True, False):
        label = "sparse + LazyAdam" if sparse else "dense + pyro.optim.Adam"
        times = [
            per_point_step(
                n,
                sparse=sparse,
                batch_size=args.batch_size,
                latent=16,
                steps=args.steps,
                warmup=args.warmup,
                device=device,
            )
            for n in sizes
        ]
        key = "per_point_sparse" if sparse else "per_point_dense"
        result[key] = {
            "sizes": sizes,
            "step_ms": [1e3 * t for t in times],
            "ratio_largest_to_smallest": times[-1] / times[0],
        }
        cells = ", ".join(f"N={n:.0e}: {1e3 * t:.2f} ms" for n, t in zip(sizes, times, strict=True))
        print(f"per-point guide, {label}: {cells}; ratio {times[-1] / times[0]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default=None)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--data-dir", default=pv.default_data_dir())
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--per-point-sizes", type=int, nargs="+", default=[10**4, 10**6])
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
