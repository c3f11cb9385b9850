"""One epoch of :func:`~pyro_vae.fit`: the pass over the minibatches (the loss kept on the
device and read every ``log_every`` steps, streamed batches checked with it), the checks and
records after the pass, and validation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .board import Board
from .checkpoint import History
from .checks import BatchChecked, check_finite_params
from .data import Batches
from .distributed import ShardedBatches, World, agree, average_buffers, global_mean
from .evaluate import evaluate
from .loaders import Loader
from .steps import Step

__all__ = [
    "close_epoch",
    "mean_loss",
    "read_running",
    "record_validation",
    "train_epoch",
    "validate",
]


def train_epoch(
    step: Step,
    data: Batches | Loader | ShardedBatches,
    epoch: int,
    log_every: int,
    bar: tqdm,
    board: Board | None,
    world: World | None,
    hint: Callable[[], str],
) -> float:
    """One pass over ``data``; returns the epoch's mean loss per point. The loss stays on the
    device: it is read every ``log_every`` steps (the progress bar, TensorBoard, the check
    that it is finite) and at the end."""
    total, count = 0.0, 0
    checked, since = isinstance(data, Loader) and isinstance(step.modules, BatchChecked), 0
    bad: Tensor | None = None  # any batch since the last read not finite or not in the support
    for i, (x, idx) in enumerate(data):
        if checked:  # streamed batches: tested on the device, read with the loss
            fault = ~step.modules.batch_ok(x)
            bad = fault if bad is None else bad | fault
        total = total + step(x, idx) * (x.shape[0] / data.num_data)
        count += x.shape[0]
        if i % log_every == 0 or (checked and i == len(data) - 1):
            running, faulty = read_running(total, count, bad, world, step.check.device)
            if faulty:
                raise ValueError(
                    f"a batch among steps {since + 1} to {i + 1} of epoch {epoch} has values "
                    "that are not finite or not in the likelihood's support (e.g. outside "
                    "[0, 1] for a Bernoulli): check the data pipeline (its transforms, "
                    "scaling); only the first batch of a DataLoader is checked in full"
                )
            bad, since = None, i + 1
            if not math.isfinite(running):
                raise FloatingPointError(
                    f"the loss became {running} in epoch {epoch} by step {i + 1}; {hint()}"
                )
            bar.set_postfix(epoch=epoch, loss=f"{running:.2f}")
            if board is not None:
                board.running((epoch - 1) * len(data) + i, running)
        bar.update()
    return mean_loss(total, count, world, step.check.device)


def read_running(
    total: Tensor | float,
    count: int,
    bad: Tensor | None,
    world: World | None,
    device: torch.device,
) -> tuple[float, bool]:
    """The running loss and whether a batch was bad, in one host read."""
    if bad is None or world is not None:
        return mean_loss(total, count, world, device), False
    pair = torch.stack([torch.as_tensor(total, dtype=torch.float64, device=device).reshape(()),
                        bad.to(device=device, dtype=torch.float64)])  # fmt: skip
    loss_sum, faulty = pair.tolist()
    return loss_sum / count, bool(faulty)


def mean_loss(
    total: Tensor | float, count: int, world: World | None, device: torch.device
) -> float:
    """``total / count`` on the host (over all ranks): the read of the loss."""
    return global_mean(total, count, world, device) if world else float(total) / count


def close_epoch(
    history: History,
    epoch: int,
    loss: float,
    elapsed: float,
    step: Step,
    modules: nn.Module | None,
    world: World | None,
    hint: Callable[[], str],
) -> None:
    """After an epoch's steps: its loss and every parameter must be finite (one host read, on
    every rank alike), the ranks' buffers agree (BatchNorm statistics), and the history
    records the epoch."""
    if not math.isfinite(loss):
        raise FloatingPointError(f"the loss became {loss} in epoch {epoch}; {hint()}")
    anywhere = None
    if world is not None:
        if modules is not None and modules.training:
            average_buffers(modules)  # one model (BatchNorm statistics) on every rank
        anywhere = partial(agree, device=step.check.device)
    check_finite_params(step.names, epoch, hint(), anywhere=anywhere)  # one sync
    history.epoch.append(epoch)
    history.loss.append(loss)
    history.seconds.append(elapsed)


def record_validation(history: History, epoch: int, val_elbo: float, hint: Callable) -> None:
    """The validation ELBO in the history, checked finite."""
    if not math.isfinite(val_elbo):
        raise FloatingPointError(
            f"the validation ELBO became {val_elbo} after epoch {epoch}; {hint()}"
        )
    history.val_epoch.append(epoch)
    history.val_elbo.append(val_elbo)


def validate(
    model: Callable[..., object],
    guide: Callable[..., object],
    validation: Batches | Loader,
    particles: int,
    world: World | None,
) -> float:
    """The validation ELBO (``evaluate`` puts the networks in eval mode) with its own random
    draws (validating, or not, never changes the training run's RNG stream)."""
    device = validation.device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        return evaluate(
            model, guide, validation, num_particles=particles, distributed=world is not None
        ).elbo
