"""The command-line scaffolding of the examples (and of the benchmarks that train them):
standard flags, set-up, MNIST binarized, the test-set scores, ``metrics.json`` and the docs
pages' result blocks. It uses the package's public names only. An example imports it as
``from . import _common`` (``python -m examples.x``) or ``import _common`` (``python
examples/x.py``).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

import pyro
import torch
from torch import Tensor

from pyro_vae import (
    Batches,
    Checkpoints,
    Compute,
    Evaluation,
    History,
    Logging,
    default_data_dir,
    default_device,
    device_name,
    evaluate,
    load_mnist,
)
from pyro_vae.devices.precision import PRECISIONS

__all__ = [
    "ACTIVATIONS",
    "binarized_mnist",
    "command",
    "mnist_from_args",
    "parser",
    "pictures",
    "rank",
    "replace_block",
    "run_options",
    "save_metrics",
    "score_test_set",
    "scores",
    "setup",
    "write_results",
]

ACTIVATIONS = {"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU}
"""The hidden units an example's ``--activation`` names."""


def parser(
    doc: str,
    *,
    epochs: int,
    batch_size: int,
    out: str,
    full: str,
    lr: float = 1e-3,
    default_particles: int | str = "5000 on cuda, 100 on cpu",
    mnist: bool = True,
) -> argparse.ArgumentParser:
    """An argument parser with ``--epochs --batch-size --device --data-dir --out --seed --lr
    --num-particles --no-progress --precision --resume --overwrite --log-dir`` (and
    ``--download --limit`` for an MNIST example); ``full`` says how many epochs the full run
    takes, ``default_particles`` the default K of the test log-likelihood (a number, or a text
    such as ``"5000 on cuda, 100 on cpu"`` for a default the example picks by device)."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--epochs", type=int, default=epochs, help=f"{full} for the full run")
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--data-dir", default=default_data_dir(), help="folder with MNIST/raw")
    p.add_argument("--out", default=out)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=lr, help="Adam step size")
    k = "K for the test log-likelihood"
    if isinstance(default_particles, str):
        k = f"{k} (default: {default_particles})"
        p.add_argument("--num-particles", type=int, default=None, help=k)
    else:
        p.add_argument("--num-particles", type=int, default=default_particles, help=k)
    if mnist:
        p.add_argument("--download", action="store_true", help="let torchvision download MNIST")
        p.add_argument("--limit", type=int, default=None, help="use only this many images")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="32",
        help="bf16-mixed: the networks' products in bfloat16 (fit's precision=)",
    )
    p.add_argument(
        "--log-dir", default=None, help="write TensorBoard events there (pyro_vae[tensorboard])"
    )
    runs = p.add_mutually_exclusive_group()
    runs.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    runs.add_argument(
        "--overwrite", action="store_true", help="start over in --out (deletes its checkpoints)"
    )
    return p


def run_options(
    args: argparse.Namespace,
    out: Path,
    device: torch.device,
    *,
    callback: Callable[[int, History], None] | None = None,
) -> dict:
    """The options of :func:`~pyro_vae.fit` that every example's flags set: the device and
    ``--precision``, the run folder (``--out``, ``--resume``, ``--overwrite``), the progress
    bar and ``--log-dir`` (with ``callback`` after each epoch)."""
    return {
        "device": Compute(device, precision=args.precision),
        "save": Checkpoints(out, resume=args.resume, overwrite=args.overwrite),
        "log": Logging(progress=not args.no_progress, tensorboard=args.log_dir, callback=callback),
    }


def mnist_from_args(
    args: argparse.Namespace, device: torch.device, *, test_points: int | None
) -> tuple[Batches, Batches]:
    """:func:`binarized_mnist` with an example's flags (``--data-dir``, ``--batch-size``,
    ``--limit``, ``--download``)."""
    return binarized_mnist(
        args.data_dir,
        device,
        batch_size=args.batch_size,
        limit=args.limit,
        test_points=test_points,
        download=args.download,
    )


def mnist_tensors(
    args: argparse.Namespace, device: torch.device, *, flatten: bool = True
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """MNIST's training images and labels, test images and labels, on ``device``, with an
    example's flags (``--data-dir``, ``--download``, ``--limit``: the first images of each)."""
    kw = {"device": device, "download": args.download, "flatten": flatten}
    x_train, y_train = load_mnist(args.data_dir, train=True, **kw)
    x_test, y_test = load_mnist(args.data_dir, train=False, **kw)
    n = args.limit
    return x_train[:n], y_train[:n], x_test[:n], y_test[:n]


def setup(args: argparse.Namespace) -> tuple[torch.device, Path]:
    """Seeds Pyro, clears its param store, picks the device and creates ``--out``."""
    pyro.set_rng_seed(args.seed)
    pyro.clear_param_store()
    device = torch.device(args.device) if args.device else default_device()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return device, out


def binarized_mnist(
    data_dir: str,
    device: torch.device,
    *,
    batch_size: int = 100,
    limit: int | None = None,
    test_points: int | None = None,
    download: bool = False,
) -> tuple[Batches, Batches]:
    """Dynamically binarized training batches (the first ``limit`` images, ``batch_size``) and
    the test set binarized once with a fixed seed (its first ``test_points`` images)."""
    x_train, _ = load_mnist(data_dir, train=True, device=device, download=download)
    x_test, _ = load_mnist(data_dir, train=False, device=device, download=download)
    # One fixed binarization of the test set, drawn on the CPU: the same on every device.
    g = torch.Generator().manual_seed(1234)
    x_test = torch.bernoulli(x_test.cpu(), generator=g).to(device)
    train = Batches(x_train[:limit], batch_size=batch_size, binarize="dynamic")
    return train, Batches(x_test[:test_points], batch_size=1000, shuffle=False)


def score_test_set(
    model: Callable[..., object],
    guide: Callable[..., object],
    test: Batches,
    device: torch.device,
    num_particles: int | None,
    *,
    default_particles: tuple[int, int] = (5000, 100),
    max_rows: tuple[int, int] = (2**20, 2**16),
) -> Evaluation:
    """:func:`~pyro_vae.evaluate` on the test set with an example's budget: ``num_particles``
    (``--num-particles``), else ``default_particles[0]`` on CUDA and ``default_particles[1]``
    on the CPU; ``max_rows`` likewise."""
    cuda = device.type == "cuda"
    k = num_particles or default_particles[0 if cuda else 1]
    return evaluate(model, guide, test, num_particles=k, max_rows=max_rows[0 if cuda else 1])


def scores(history: History, result: Evaluation, device: torch.device, images: list[str]) -> dict:
    """The metrics every MNIST benchmark run reports: epochs, final training loss, test ELBO
    and log-likelihood (NLL), K, device, seconds and the pictures written."""
    return {
        "epochs": len(history.epoch),
        "train_loss": history.loss[-1] if history.loss else None,
        "test_elbo": result.elbo,
        "test_log_likelihood": result.log_likelihood,
        "test_nll": -result.log_likelihood,
        "num_particles": result.num_particles,
        "device": device_name(device),
        "seconds": history.seconds[-1] if history.seconds else 0.0,
        "images": images,
    }


def settings_scores(args: argparse.Namespace, runs: list[dict], device: torch.device) -> dict:
    """The metrics of an example that trains one model per setting (``runs``, each with its
    ``image``): the runs, the shared budget and widths, the device and the pictures."""
    return {
        "settings": runs,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "latent_dim": args.latent_dim,
        "hidden": args.hidden,
        "device": device_name(device),
        "images": [r["image"] for r in runs],
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
    """Writes ``metrics.json``, prints it (without the ``hide`` keys) and then where the run's
    outputs are, on rank 0 only."""
    if rank() == 0:
        (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
        print(json.dumps({k: v for k, v in metrics.items() if k not in hide}, indent=1))
        files = sorted(p.name for p in out.iterdir() if p.is_file() and not p.name.startswith("."))
        print(f"outputs in {out.resolve()}: {', '.join(files)}")
    return metrics


def command(main: Callable[[argparse.Namespace], object], parse_args: Callable) -> None:
    """Runs an example's ``main(parse_args())`` as a command: a run folder that holds a run
    is answered in the script's own flags (``--resume``, ``--overwrite``, ``--out``), with no
    traceback, and exit status 2."""
    args = parse_args()
    try:
        main(args)
    except FileExistsError as e:
        if "holds a run" not in str(e):
            raise
        print(
            f"{Path(sys.argv[0]).name}: --out {args.out} holds a run. Add --resume to continue it "
            f"(with a larger --epochs to train more), --overwrite to start over, or choose "
            "another --out",
            file=sys.stderr,
        )
        raise SystemExit(2) from None


def replace_block(readme: Path, block: str, text: str) -> None:
    """Puts ``text`` between the README's ``<!-- results:BLOCK:start/end -->`` markers."""
    start, end = f"<!-- results:{block}:start -->", f"<!-- results:{block}:end -->"
    content = readme.read_text()
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    if not pattern.search(content):
        raise SystemExit(f"{readme} has no {start} ... {end} block")
    readme.write_text(pattern.sub(lambda _: f"{start}\n{text}\n{end}", content))


def write_results(result: dict, args: argparse.Namespace, markdown: Callable[[dict], str]) -> dict:
    """A benchmark's figures to ``args.json`` (JSON) and, as ``markdown(result)``, into the
    README ``args.readme`` between the markers of ``args.block``, where given."""
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    if args.readme:
        replace_block(Path(args.readme), args.block, markdown(result))
    return result
