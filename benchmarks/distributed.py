"""Data-parallel scaling: an epoch of the flow-prior model with 1 process and with W processes.

Runs ``pv.fit`` on the zuko-tutorial MAF VAE (``pyro_vae.models.zoo.flow_prior_vae``, batch 256,
thresholded MNIST, or random binary images when MNIST is absent) once in one process and once
in ``--world`` processes (``torch.multiprocessing`` spawn, gloo on the CPU or NCCL on GPUs),
and reports the time of the last of ``--epochs`` epochs (the first pays for warm-up). The
threads are split evenly: one process gets all ``--threads``, each of W processes
``threads / W``, so the comparison is on the same cores.

    python benchmarks/distributed.py --world 2 --json runs/distributed.json \
        --readme docs/guide/distributed.md
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
from pathlib import Path

import pyro
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp

import pyro_vae as pv

try:
    from . import _common
except ImportError:  # run as a file: python benchmarks/<name>.py
    import _common


def load(args: argparse.Namespace) -> tuple[torch.Tensor, str]:
    try:
        x, _ = pv.load_mnist(args.data_dir, train=True)
        name = "MNIST"
    except FileNotFoundError:
        # the same images in every process (fit compares the ranks' data sets)
        g = torch.Generator().manual_seed(0)
        x, name = torch.rand(60000, 784, generator=g), "random images (MNIST not found)"
    return x[: args.limit] if args.limit else x, name


def train(args: argparse.Namespace, device: str) -> float:
    """Trains and returns the seconds of the last epoch."""
    x, _ = load(args)
    pyro.set_rng_seed(0)
    vae = pv.models.zoo.flow_prior_vae(hidden=args.hidden)
    history = pv.fit(
        vae.model,
        vae.guide,
        pv.Batches(x, batch_size=args.batch_size, binarize="threshold"),
        epochs=args.epochs,
        optim=pyro.optim.Adam({"lr": 1e-3}),
        device=device,
        log=False,
    )
    seconds = history.seconds
    return seconds[-1] - (seconds[-2] if len(seconds) > 1 else 0.0)


def _rank(rank: int, world: int, port: int, args: argparse.Namespace, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        RANK=str(rank),
    )
    torch.set_num_threads(max(1, args.threads // world))
    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.set_device(rank)
    tdist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    try:
        seconds = train(args, f"cuda:{rank}" if cuda else "cpu")
        if rank == 0:
            Path(out).write_text(json.dumps(seconds))
    finally:
        tdist.barrier()  # nobody leaves (rank 0 hosts the store) before all are done
        tdist.destroy_process_group()


def main(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    one = train(args, "cuda" if args.device == "cuda" else "cpu")
    with tempfile.TemporaryDirectory() as tmp, socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        out = os.path.join(tmp, "seconds.json")
        mp.spawn(_rank, args=(args.world, port, args, out), nprocs=args.world)
        many = json.loads(Path(out).read_text())
    _, data = load(args)
    result = {
        "device": args.device,
        "threads": args.threads,
        "world": args.world,
        "data": data,
        "num_data": len(load(args)[0]),
        "batch_size": args.batch_size,
        "hidden": args.hidden,
        "epochs": args.epochs,
        "epoch_s_1": one,
        f"epoch_s_{args.world}": many,
        "speedup": one / many,
        "torch": torch.__version__,
    }
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1))
    if args.readme:
        _common.replace_block(Path(args.readme), "distributed", markdown(result))
    print(json.dumps(result, indent=1))
    return result


def markdown(r: dict) -> str:
    w = r["world"]
    return (
        f"Measured on {r['device']} ({r['threads']} threads in all), torch {r['torch']}, data: "
        f"{r['data']} ({r['num_data']} images), MAF VAE with MLPs of {r['hidden']}, global "
        f"batch {r['batch_size']}, the last of {r['epochs']} epochs.\n\n"
        f"| processes | epoch | speed-up |\n|---|---|---|\n"
        f"| 1 | {r['epoch_s_1']:.2f} s | 1.00 |\n"
        f"| {w} | {r[f'epoch_s_{w}']:.2f} s | {r['speedup']:.2f} |\n"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--world", type=int, default=2, help="processes of the parallel run")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--limit", type=int, default=None, help="use only this many images")
    p.add_argument("--data-dir", default=pv.default_data_dir())
    p.add_argument("--json", default=None)
    p.add_argument("--readme", default=None, help="write the table into this README")
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
