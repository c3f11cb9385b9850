"""One epoch of :func:`~pyro_vae.fit`: the pass over the minibatches (the loss kept on the
device and read every ``log_every`` steps, streamed batches checked with it), the checks and
records after the pass, and validation.
"""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import Tensor

from .._checks import BatchChecked, check_finite_params
from .._world import World, agree, global_mean
from ..data.batches import Batches, split_batch
from ..data.loaders import Loader
from ..infer.scoring import evaluate
from ._distributed import average_buffers
from ._run import Run

__all__ = ["close_epoch", "mean_loss", "read_running", "show_epoch", "train_epoch", "validate"]


def train_epoch(run: Run, epoch: int, log_every: int) -> float:
    """One pass over the run's data; returns the epoch's mean loss per point. The loss stays on
    the device: it is read every ``log_every`` steps (the progress bar, TensorBoard, the check
    that it is finite) and at the end."""
    step, data, world = run.step, run.data, run.world
    total, count = 0.0, 0
    checked, since = isinstance(data, Loader) and isinstance(step.modules, BatchChecked), 0
    bad: Tensor | None = None  # any batch since the last read not finite or not in the support
    for i, batch in enumerate(data):
        x, idx, fields = split_batch(batch)
        if checked:  # streamed batches: tested on the device, read with the loss
            fault = ~step.modules.batch_ok(x)
            bad = fault if bad is None else bad | fault
        total = total + step(x, idx, fields) * (x.shape[0] / data.num_data)
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
            if not math.isfinite(running) and epoch == 1 and i == 0 and not run.history.epoch:
                raise FloatingPointError(
                    f"the loss is {running} at the initial weights (the first step's, before "
                    "any update): no step size causes that. A log-density is not finite there: "
                    "check that the data are what the networks and the likelihood expect (e.g. "
                    "raw counts or 0..255 values read by an encoder: give it log1p(x) or x / "
                    "255) and that no parameter starts at an extreme value"
                )
            if not math.isfinite(running):
                raise FloatingPointError(
                    f"the loss became {running} in epoch {epoch} by step {i + 1}; {run.hint()}"
                )
            run.bar.set_postfix(epoch=epoch, loss=f"{running:.2f}")
            if run.board is not None:
                run.board.running((epoch - 1) * len(data) + i, running)
        run.bar.update()
    if count == 0:  # (a loader read once already, or one that yields nothing)
        raise ValueError(
            f"the data yielded no batch in epoch {epoch}: a one-shot iterable (a generator, an "
            "iterator) can be read only once, and a loader can be empty (e.g. drop_last=True "
            "with a batch_size larger than the data set). Pass a DataLoader, or pv.Batches"
        )
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


def close_epoch(run: Run, epoch: int, loss: float, elapsed: float) -> None:
    """After an epoch's steps: its loss and every parameter must be finite (one host read, on
    every rank alike), the ranks' buffers agree (BatchNorm statistics), and the history
    records the epoch."""
    if not math.isfinite(loss):
        raise FloatingPointError(f"the loss became {loss} in epoch {epoch}; {run.hint()}")
    anywhere = None
    if run.world is not None:
        if run.modules is not None and run.modules.training:
            average_buffers(run.modules)  # one model (BatchNorm statistics) on every rank
        anywhere = partial(agree, device=run.step.check.device)
    check_finite_params(run.state.track(), epoch, run.hint(), anywhere=anywhere)  # one sync
    run.history.epoch.append(epoch)
    run.history.loss.append(loss)
    run.history.seconds.append(elapsed)


def show_epoch(
    run: Run, epoch: int, loss: float, beta: float, val_elbo: float | None, images_every: int
) -> None:
    """The epoch's loss on the progress bar and, with a TensorBoard writer, its scalars and
    (every ``images_every`` epochs; 0: never) the grids of samples and reconstructions."""
    run.bar.set_postfix(epoch=epoch, loss=f"{loss:.2f}")
    if run.board is not None:
        run.board.epoch(epoch, loss, beta, val_elbo)
        if images_every and epoch % images_every == 0:
            run.board.images(epoch, run.modules, run.data.points, run.data.point_indices)


def validate(run: Run, epoch: int, validation: Batches | Loader, particles: int) -> float:
    """The validation ELBO (``evaluate`` puts the networks in eval mode), drawn with its own
    random numbers (validating, or not, never changes the training run's RNG stream) and
    recorded in the history, checked finite."""
    device = validation.device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        val_elbo = evaluate(
            run.model,
            run.guide,
            validation,
            num_particles=particles,
            distributed=run.world is not None,
        ).elbo
    if not math.isfinite(val_elbo):
        raise FloatingPointError(
            f"the validation ELBO became {val_elbo} after epoch {epoch}; {run.hint()}"
        )
    run.history.val_epoch.append(epoch)
    run.history.val_elbo.append(val_elbo)
    return val_elbo
