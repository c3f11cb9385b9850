"""A training run: :class:`Run`, what the steps, epochs, checkpoints and validation of one
:func:`~pyro_vae.fit` call share, and how a run is set up: the options checked, the data and
networks placed on the training device (this process's part under data-parallel training),
the run folder and TensorBoard opened, and a saved run resumed.
"""

from __future__ import annotations

import math
import numbers
import os
import time
import warnings
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial

import pyro
import pyro.optim
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .._checks import LocalParameters, check_int
from .._placement import default_device, move_param_store
from .._precision import check_precision
from .._source import find_modules, prepare
from .._world import World, agree, check_same_data, min_max
from ..data.batches import Batches
from ..data.loaders import Loader
from ..infer.optim import LazyAdam
from ._board import Board
from ._distributed import ShardedBatches, combine_gradients, shard_local_guides, start_ranks
from ._folder import RunFolder
from ._run_state import Live, RunState
from .checkpoint import CheckpointError, History
from .step import Step

__all__ = [
    "Run",
    "SaveSchedule",
    "beta_at",
    "check_options",
    "check_run_options",
    "check_sparse",
    "combine_for",
    "held_out",
    "place",
    "run_folder",
    "warn_if_finished",
]


def check_options(
    epochs: int,
    log_every: int,
    e_steps: int,
    validate_every: int,
    log_images_every: int,
    freeze_model: bool,
    *,
    validation_particles: int = 1,
    save_every: int | None = None,
    precision: str = "32",
) -> None:
    """Refuses counts that are not positive integers (``e_steps`` and ``log_images_every``:
    not negative; ``save_every``: or ``None``), an unknown precision, and ``e_steps`` with
    ``freeze_model=True``, with the fix."""
    check_int("epochs", epochs)
    check_int("log_every", log_every)
    check_int("e_steps", e_steps, minimum=0)
    check_int("validate_every", validate_every)
    check_int("log_images_every", log_images_every, minimum=0)
    check_int("validation_particles", validation_particles)
    if save_every is not None:
        check_int("save_every", save_every)
    check_precision(precision)
    if e_steps and freeze_model:
        raise ValueError(
            "e_steps and freeze_model=True cannot be combined: freeze_model=True runs E-steps "
            "only (the model is never updated); for variational EM (k E-steps, then an M-step "
            "per batch) pass e_steps=k and leave freeze_model=False"
        )


def check_run_options(
    save_dir: object, *, resume: bool, overwrite: bool, log_dir: object, log_images_every: int
) -> None:
    """Refuses options that would be silently ignored or contradict each other."""
    if resume and overwrite:
        raise ValueError(
            "resume=True continues the run in save_dir and overwrite=True deletes it: pass one"
        )
    if (resume or overwrite) and save_dir is None:
        flag = "resume" if resume else "overwrite"
        raise ValueError(f"{flag}=True needs save_dir=... (the folder of the run)")
    if log_images_every and not log_dir:
        raise ValueError("log_images_every needs log_dir=... (the TensorBoard folder)")


def warn_if_finished(start: int, epochs: int, save_dir: object) -> None:
    """Says when a resumed run has its ``epochs`` done already (rather than train 0 steps
    without a word)."""
    if start >= epochs:
        warnings.warn(
            f"the run in {save_dir} has done {start} epochs, epochs={epochs}: nothing to "
            f"train. Pass epochs > {start} to continue it",
            stacklevel=3,
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
    ``prepare``), Pyro's parameters moved there too; under
    data-parallel training, this rank's part of the data."""
    if isinstance(data, Tensor):  # as evaluate and infer_local take it
        data = Batches(data, batch_size=min(len(data), 256))
    if not isinstance(data, (Batches, Loader, DataLoader)):
        raise TypeError(
            f"fit needs minibatches with their indices; got {type(data).__name__}. Wrap a "
            "tensor: pv.Batches(x, batch_size=256), or pass a DataLoader over "
            "pv.Indexed(dataset)"
        )
    device = device if device is not None else default_device()
    fix = "convert it, e.g. vae.to(x.dtype)"
    ready = prepare(model, guide, data, device=device, modules=modules, fix=fix, training=True)
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
    found = find_modules(model, guide, modules)
    local = [m for m in (found.modules() if found is not None else ()) if _is_local(m)]
    if local:
        raise ValueError(
            f"validation= scores held-out points, but {type(local[0]).__name__} has parameters "
            "for the training points only (it would score the held-out points with the "
            "training points' latents): validate after training with pv.infer_local(vae, "
            "held_out, epochs=...) and pv.evaluate, or use an amortized guide"
        )
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


@dataclass
class SaveSchedule:
    """When a run writes its checkpoint: after every ``every``-th epoch, or (``every=None``)
    after each epoch that keeps the seconds spent saving within ``share`` of the seconds
    spent training (every epoch unless epochs are shorter than about twenty saves: a run of many
    short epochs then saves every few epochs); after the last epoch always. A resumed run
    continues from whichever epoch was saved last, exactly."""

    every: int | None = None
    share: float = 0.05
    saving: float = 0.0  # seconds spent saving so far

    @classmethod
    def for_run(cls, save_every: int | None, world: World | None) -> SaveSchedule:
        """``fit``'s schedule: ``save_every``, else the time budget; under data-parallel
        training every epoch (the ranks' clocks would not agree on a budget)."""
        return cls(save_every if save_every is not None or world is None else 1)

    def due(self, epoch: int, *, last: bool, training: float) -> bool:
        """Whether to save after ``epoch``, ``training`` seconds into the run."""
        if last:
            return True
        if self.every is not None:
            return epoch % self.every == 0
        return self.saving <= self.share * training


@dataclass(eq=False)
class Run:
    """What one training run shares: the model/guide pair, this process's data, the step (the
    loss and the optimizer), the networks, the device, the data-parallel world, the run folder,
    the history, the TensorBoard writer, the progress bar and the precision.

    :func:`~pyro_vae.fit` builds one; the epoch's pass, its checks and records, validation and
    the checkpoints read it.
    """

    model: Callable[..., object]
    guide: Callable[..., object]
    data: Batches | Loader | ShardedBatches
    step: Step
    optim: pyro.optim.PyroOptim
    modules: nn.Module | None
    device: torch.device
    world: World | None = None
    folder: RunFolder | None = None
    history: History = field(default_factory=History)
    board: Board | None = None
    bar: tqdm | None = None
    precision: str = "32"
    schedule: SaveSchedule = field(default_factory=SaveSchedule)
    beta: float | str = 1.0  # the KL weight, or "a schedule" (compared on resume)
    state: RunState = field(init=False)

    def __post_init__(self) -> None:
        size = self.world.size if self.world is not None else 1
        self.state = RunState(self.live(), self.step.names, world_size=size)

    @property
    def writes(self) -> bool:
        """Whether this process shows the bar and writes ``history.json`` and TensorBoard."""
        return self.world is None or self.world.rank == 0

    def hint(self) -> str:
        """What to do after a failed epoch: continue from the checkpoint when there is one."""
        if self.folder is not None:
            return self.folder.hint(RETRY)
        return f"train again with {RETRY}"

    def live(self) -> Live:
        """The objects a checkpoint is loaded into (the pair under the step's device check)."""
        return Live(*self.step.checked, self.optim, self.modules, self.device, self.data,
                    self.step.loss, self.step.compile_mode, self.precision, self.step,
                    self.beta)  # fmt: skip

    def open(self, stack: ExitStack, log_dir: str | os.PathLike | None) -> None:
        """Opens the TensorBoard writer (``log_dir``, on the writing process) and holds the run
        folder (one run at a time, writable), both closed with ``stack``; both are checked
        before a saved run is touched."""
        if log_dir and self.writes:
            self.board = Board(log_dir)
            stack.callback(self.board.close)
        if self.folder is not None:
            self.folder.hold()
            stack.callback(self.folder.release)

    def begin(self, *, resume: bool, overwrite: bool) -> int:
        """Resumes a saved run (its parameters, optimizer and RNG states loaded, its history
        in :attr:`history`) or starts a new one (data-parallel: the same start on every
        rank); returns the last epoch done."""
        start, world, folder = 0, self.world, self.folder
        anywhere = partial(agree, device=self.device) if world is not None else None
        if folder is not None and folder.start(
            resume=resume, overwrite=overwrite, anywhere=anywhere
        ):
            batch = next(iter(self.data))
            self.history = folder.resume(self.state, batch, self.data.num_data,
                                         anywhere=anywhere)  # fmt: skip
            start = self.history.epoch[-1] if self.history.epoch else 0
        if world is not None and resume:  # all processes continue from the same epoch
            low, high = min_max(start, self.device)
            if low != high:
                raise CheckpointError(
                    f"the processes' checkpoints in {folder.path} end at different epochs (from "
                    f"{low} to {high}; a process was stopped between two saves): put back the "
                    ".prev.pt checkpoints of the processes that are ahead, or start over with "
                    "overwrite=True"
                )
        if world is not None and start == 0:  # a new run: the same initial values everywhere
            start_ranks(*self.step.checked, self.data, world)
        self.history.svi_step = not self.step.sync_free  # which step this run takes
        return start

    def save(self, epoch: int, *, last: bool, training: float) -> None:
        """Writes the checkpoint, then the history, when the schedule says so after ``epoch``
        (``last``: the run's last epoch; ``training``: the seconds its epochs took); nothing
        without a run folder."""
        if self.folder is None or not self.schedule.due(epoch, last=last, training=training):
            return
        t0 = time.perf_counter()
        self.folder.save(self.history, self.state)
        self.schedule.saving += time.perf_counter() - t0


RETRY = "a smaller step size (e.g. optim=LazyAdam({'lr': ...}))"


def _is_local(module: nn.Module) -> bool:
    """Whether ``module`` holds per-datapoint (local) parameters."""
    return isinstance(module, LocalParameters) and getattr(module, "num_data", None) is not None
