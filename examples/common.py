"""What every example shares: its standard flags, its setup and its metrics.json."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pyro
import torch

import pyro_vae as pv

ACTIVATIONS = {"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU}
"""The hidden units an example's ``--activation`` names."""


def parser(
    doc: str, *, epochs: int, batch_size: int, out: str, full: str
) -> argparse.ArgumentParser:
    """An argument parser with ``--epochs --batch-size --device --data-dir --out --seed
    --no-progress --resume --overwrite --log-dir``; ``full`` says how many epochs the full run
    takes."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--epochs", type=int, default=epochs, help=f"{full} for the full run")
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--data-dir", default=pv.default_data_dir(), help="folder with MNIST/raw")
    p.add_argument("--out", default=out)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--log-dir", default=None, help="write TensorBoard events there (pyro_vae[tensorboard])"
    )
    runs = p.add_mutually_exclusive_group()
    runs.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    runs.add_argument(
        "--overwrite", action="store_true", help="start over in --out (deletes its checkpoints)"
    )
    return p


def setup(args: argparse.Namespace) -> tuple[torch.device, Path]:
    """Seeds Pyro, clears its param store, picks the device and creates ``--out``."""
    pyro.set_rng_seed(args.seed)
    pyro.clear_param_store()
    device = torch.device(args.device) if args.device else pv.default_device()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return device, out


def binarized_mnist(
    args: argparse.Namespace, device: torch.device, *, test_points: int | None = None
) -> tuple[pv.Batches, pv.Batches]:
    """Dynamically binarized training batches (``args.limit`` images, ``args.batch_size``) and
    the test set binarized once with a fixed seed (its first ``test_points`` images)."""
    x_train, _ = pv.load_mnist(args.data_dir, train=True, device=device, download=args.download)
    x_test, _ = pv.load_mnist(args.data_dir, train=False, device=device, download=args.download)
    g = torch.Generator(device=device).manual_seed(1234)  # one fixed binarization of the test set
    x_test = torch.bernoulli(x_test, generator=g)
    train = pv.Batches(x_train[: args.limit], batch_size=args.batch_size, binarize="dynamic")
    return train, pv.Batches(x_test[:test_points], batch_size=1000, shuffle=False)


def scores(
    history: pv.History, result: pv.Evaluation, device: torch.device, images: list[str]
) -> dict:
    """The metrics every MNIST benchmark run reports: epochs, final training loss, test ELBO
    and log-likelihood (NLL), K, device, seconds and the pictures written."""
    return {
        "epochs": len(history.epoch),
        "train_loss": history.loss[-1] if history.loss else None,
        "test_elbo": result.elbo,
        "test_log_likelihood": result.log_likelihood,
        "test_nll": -result.log_likelihood,
        "num_particles": result.num_particles,
        "device": pv.device_name(device),
        "seconds": history.seconds[-1] if history.seconds else 0.0,
        "images": images,
    }


def rank() -> int:
    """This process's rank under torchrun (0 in a single process)."""
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def pictures(out: Path) -> Path:
    """Where this process writes its PNGs: ``out`` on rank 0; other ranks (under torchrun)
    write their copies to ``out/.rank<r>`` so that no two processes write one file."""
    if rank() == 0:
        return out
    folder = out / f".rank{rank()}"
    folder.mkdir(exist_ok=True)
    return folder


def save_metrics(out: Path, metrics: dict, *, hide: tuple[str, ...] = ()) -> dict:
    """Writes ``metrics.json`` and prints it (without the ``hide`` keys), on rank 0 only."""
    if rank() == 0:
        (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
        print(json.dumps({k: v for k, v in metrics.items() if k not in hide}, indent=1))
    return metrics
