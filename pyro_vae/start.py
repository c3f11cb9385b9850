"""What :func:`~pyro_vae.fit` does before its first epoch: the options checked, the data and
networks placed on the training device (this process's part under data-parallel training),
the run folder and TensorBoard opened, and a saved run resumed.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Callable
from contextlib import ExitStack
from functools import partial

import pyro
import pyro.optim
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from .board import Board
from .checkpoint import CheckpointError, History
from .checks import check_int
from .data import Batches
from .devices import default_device, move_param_store
from .distributed import (
    ShardedBatches,
    World,
    agree,
    check_same_data,
    combine_gradients,
    min_max,
    shard_local_guides,
    start_ranks,
)
from .loaders import Loader
from .optim import LazyAdam
from .prepare import prepare
from .runs import RunFolder
from .steps import Step

__all__ = [
    "begin",
    "beta_at",
    "check_options",
    "check_sparse",
    "combine_for",
    "held_out",
    "open_run",
    "place",
    "run_folder",
]


def check_options(
    epochs: int,
    log_every: int,
    e_steps: int,
    validate_every: int,
    log_images_every: int,
    freeze_model: bool,
) -> None:
    """Refuses counts that are not positive integers (``e_steps`` and ``log_images_every``:
    not negative) and ``e_steps`` with ``freeze_model=True``, with the fix."""
    check_int("epochs", epochs)
    check_int("log_every", log_every)
    check_int("e_steps", e_steps, minimum=0)
    check_int("validate_every", validate_every)
    check_int("log_images_every", log_images_every, minimum=0)
    if e_steps and freeze_model:
        raise ValueError(
            "e_steps and freeze_model=True cannot be combined: freeze_model=True runs E-steps "
            "only (the model is never updated); for variational EM (k E-steps, then an M-step "
            "per batch) pass e_steps=k and leave freeze_model=False"
        )


def beta_at(beta: float | Callable[[int], float], epoch: int | None) -> float:
    """β for ``epoch`` (a number, or ``beta(epoch)``), checked: a finite number ≥ 0
    (``epoch=None``: a schedule is checked when called, a number now)."""
    if callable(beta) and epoch is None:
        return math.nan
    value = beta(epoch) if callable(beta) else beta
    where = f"beta({epoch}) returned" if callable(beta) else "beta must be"
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value < 0:
        raise ValueError(
            f"{where} a finite number >= 0 (the weight of the KL term); got {value!r}. Pass "
            "e.g. beta=0.5, or a warm-up such as beta=lambda epoch: min(1.0, epoch / 10)"
        )
    return float(value)


def place(
    model: Callable[..., object],
    guide: Callable[..., object],
    data: object,
    device: torch.device | str | None,
    modules: nn.Module | None,
    world: World | None,
) -> tuple[Batches | Loader | ShardedBatches, torch.device, nn.Module | None]:
    """The training data and networks on the training device, checked (see
    :func:`~pyro_vae.prepare.prepare`), Pyro's parameters moved there too; under
    data-parallel training, this rank's part of the data."""
    if not isinstance(data, (Batches, Loader, DataLoader)):
        raise TypeError(
            f"fit needs minibatches with their indices; got {type(data).__name__}. Wrap a "
            "tensor: pv.Batches(x, batch_size=256), or pass a DataLoader over "
            "pv.Indexed(dataset)"
        )
    device = device if device is not None else default_device()
    fix = "convert it, e.g. vae.to(x.dtype)"
    ready = prepare(model, guide, data, device=device, modules=modules, fix=fix)
    move_param_store(ready.device)  # pyro.params of hand-written pairs, registered before
    if world is None:
        return ready.data, ready.device, ready.modules
    if isinstance(ready.data, Loader):
        raise ValueError(
            "data-parallel training reads pv.Batches (a tensor data set on each process); a "
            "DataLoader is not split across processes yet"
        )
    check_same_data(ready.data.points, world)  # once: the same N and values on every rank
    block = shard_local_guides(ready.modules, ready.data.num_data, world)
    return ShardedBatches(ready.data, world, block=block), ready.device, ready.modules


def held_out(
    model: Callable[..., object],
    guide: Callable[..., object],
    validation: Batches | Loader | DataLoader | Tensor | None,
    particles: int,
    device: torch.device,
    modules: nn.Module | None,
) -> Batches | Loader | None:
    """The validation data on the device, checked (a tensor: in chunks of ~2^17 samples)."""
    if validation is None:
        return None
    size = max(1, 2**17 // particles)
    return prepare(model, guide, validation, device=device, modules=modules,
                   batch_size=size).data  # fmt: skip


def check_sparse(modules: nn.Module | None, optim: object) -> None:
    """Refuses row-sparse gradients without LazyAdam."""
    if modules is None:
        return
    # row-sparse gradients: the ``sparse`` flag of LocalParameters and of nn.Embedding
    sparse = [m for m in modules.modules() if getattr(m, "sparse", False) is True]
    if sparse and not isinstance(optim, LazyAdam):
        raise ValueError(
            f"{type(sparse[0]).__name__} has row-sparse gradients, which "
            f"{type(optim).__name__} cannot step (and a dense Adam would move every "
            "point's parameters at every step): use optim=pv.LazyAdam({'lr': ...}, "
            "local_lr=...)"
        )


def combine_for(data: ShardedBatches) -> Callable[[list[Tensor], Tensor], None]:
    """Rank r's gradient enters with weight b_r / b (b: the global batch)."""

    def combine(params: list[Tensor], x: Tensor) -> None:
        combine_gradients(params, weight=x.shape[0] / data.global_size)

    return combine


def run_folder(save_dir: str | os.PathLike | None, world: World | None) -> RunFolder | None:
    """The run folder of this process (``None``: nothing is saved)."""
    if save_dir is None:
        return None
    rank, size = (world.rank, world.size) if world is not None else (0, 1)
    return RunFolder(save_dir, rank=rank, world_size=size)


def open_run(stack: ExitStack, board: Board | None, folder: RunFolder | None) -> Board | None:
    """The TensorBoard writer and the run folder (held: one run at a time, writable), closed
    with ``stack``; both are checked before a saved run is touched."""
    if board is not None:
        stack.callback(board.close)
    if folder is not None:
        folder.hold()
        stack.callback(folder.release)
    return board


def begin(
    folder: RunFolder | None,
    step: Step,
    data: Batches | Loader | ShardedBatches,
    optim: pyro.optim.PyroOptim,
    modules: nn.Module | None,
    device: torch.device,
    world: World | None,
    resume: bool,
    overwrite: bool,
) -> tuple[History, int]:
    """The run's history so far and its last epoch: a saved run resumed (its parameters,
    optimizer and RNG states loaded), or a new one (data-parallel: the same start on every
    rank)."""
    history, start = History(), 0
    anywhere = partial(agree, device=device) if world is not None else None
    if folder is not None and folder.start(resume=resume, overwrite=overwrite, anywhere=anywhere):
        batch = next(iter(data))
        history, names = folder.resume(
            *step.checked, batch, data.num_data, optim, modules, device, anywhere=anywhere
        )
        step.names.update(dict.fromkeys(names))
        start = history.epoch[-1] if history.epoch else 0
    if world is not None and resume:  # all processes continue from the same epoch
        low, high = min_max(start, device)
        if low != high:
            raise CheckpointError(
                f"the processes' checkpoints in {folder.path} end at different epochs (from "
                f"{low} to {high}; a process was stopped between two saves): put back the "
                ".prev.pt checkpoints of the processes that are ahead, or start over with "
                "overwrite=True"
            )
    if world is not None and start == 0:  # a new run: the same initial values everywhere
        start_ranks(*step.checked, data, world)
    return history, start
