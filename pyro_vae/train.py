"""The training loop: Pyro SVI over shuffled minibatches, with history, validation,
checkpoints and resume.

:func:`fit` trains any Pyro model/guide pair that follows one calling convention::

    model(x, idx, num_data=N)   # and the same for guide

where ``x`` is a minibatch, ``idx`` its dataset indices and ``N`` the data set's size (the
package's :class:`~pyro_vae.VAE` does; so can a hand-written pair).
"""

from __future__ import annotations

import math
import numbers
import os
import time
from collections.abc import Callable
from contextlib import ExitStack
from functools import partial

import pyro
import pyro.optim
import torch
from pyro.infer import ELBO
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .board import Board
from .checkpoint import CheckpointError, History
from .checks import BatchChecked, check_finite_params, check_int
from .data import Batches
from .devices import default_device, move_param_store
from .distributed import (
    ShardedBatches,
    World,
    agree,
    average_buffers,
    check_same_data,
    combine_gradients,
    get_world,
    global_mean,
    min_max,
    shard_local_guides,
    start_ranks,
    timed_out,
)
from .elbo import LatentScale, TensorTrace_ELBO
from .evaluate import evaluate
from .loaders import Loader
from .nets import modes
from .optim import LazyAdam
from .prepare import prepare
from .runs import RunFolder
from .steps import Step

__all__ = ["fit"]


def fit(
    model: Callable[..., object],
    guide: Callable[..., object],
    data: Batches | Loader | DataLoader,
    *,
    epochs: int,
    optim: pyro.optim.PyroOptim | None = None,
    loss: ELBO | None = None,
    device: torch.device | str | None = None,
    modules: nn.Module | None = None,
    save_dir: str | os.PathLike | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    callback: Callable[[int, History], None] | None = None,
    e_steps: int = 0,
    freeze_model: bool = False,
    beta: float | Callable[[int], float] = 1.0,
    log_every: int = 50,
    validation: Batches | Loader | DataLoader | Tensor | None = None,
    validate_every: int = 1,
    validation_particles: int = 1,
    distributed: bool | None = None,
    log_dir: str | os.PathLike | None = None,
    log_images_every: int = 0,
    compile: bool | str = False,
) -> History:
    r"""Trains a Pyro model/guide pair by stochastic variational inference.

    Each step does what ``pyro.infer.SVI(model, guide, optim, loss).step(x, idx,
    num_data=N)`` does — the ELBO's gradient on a minibatch, one step of the Pyro optimizer on
    the parameters the step traced — through the differentiable-loss interface, without the
    host synchronizations of ``SVI.step`` (the loss stays a device tensor; the progress bar
    reads it every ``log_every`` steps). The loss, scaled to the whole data set by the model's
    subsampled plate, is divided by ``N``: the history holds the mean negative ELBO per point.

    Args:
        model: A Pyro model ``model(x, idx, num_data=N)``.
        guide: A Pyro guide with the same signature.
        data: The training minibatches: :class:`~pyro_vae.Batches` (a tensor on the
            device: the fast path), or a :class:`torch.utils.data.DataLoader` (e.g. over
            :class:`~pyro_vae.Indexed` with workers and ``pin_memory=True``) or any
            :class:`~pyro_vae.Loader` of ``(x, idx)``: batches are moved to the device as they
            come, and the data checks see the first batch only.
        epochs: Train until this many epochs are done (counting those of a resumed run).
        optim: A Pyro optimizer; default :class:`~pyro_vae.LazyAdam` with ``lr=1e-3`` (Adam,
            with sparse updates for per-datapoint parameters).
        loss: A Pyro ELBO; default :class:`~pyro_vae.TensorTrace_ELBO` (``Trace_ELBO``'s
            estimator without per-site syncs). One without ``differentiable_loss`` is run
            through ``SVI.step`` (joint updates only).
        device: Where to train; default :func:`~pyro_vae.default_device`. The data, the
            networks (``modules``) and the param store's parameters are moved there; any other
            parameter the first step registers on another device (or in another floating
            dtype than the data) stops training with a :class:`ValueError` that names it.
        modules: The networks behind ``model`` and ``guide``: moved to ``device``, put in
            train mode while training (not with ``freeze_model``) and back in the mode each
            was in at the end, and saved in checkpoints with their buffers. Default: the
            ``nn.Module`` whose bound methods ``model`` and ``guide`` are (e.g. the
            :class:`~pyro_vae.VAE` of ``vae.model``), if any.
        save_dir: If given, ``history.json`` and ``checkpoint.pt`` (param store, optimizer
            state, module state, epoch, RNG states) are written there after every epoch.
        resume: Continue from ``save_dir/checkpoint.pt`` when it exists. The checkpoint must
            come from the same model, guide and optimizer type (else a
            :class:`~pyro_vae.checkpoint.CheckpointError` names the first difference); new
            optimizer settings (e.g. another ``lr``) replace the saved ones, with a warning.
        overwrite: Start over in a ``save_dir`` that holds a run (its checkpoints are deleted).
            Without it (and without ``resume``) an existing checkpoint is never overwritten:
            :class:`FileExistsError`.
        progress: Show a tqdm bar with the running loss.
        callback: Called as ``callback(epoch, history)`` after every epoch (e.g. to evaluate).
        e_steps: The schedule. ``0``: joint stochastic updates of the model's parameters
            :math:`\theta` and the guide's :math:`\lambda` (one ``SVI.step`` per batch).
            ``k > 0``: variational EM with alternating steps: per batch, ``k`` updates of the
            guide's parameters with :math:`\theta` fixed (E-step), then one update of
            :math:`\theta` with the guide fixed (M-step).
        freeze_model: Update only the guide's parameters (an E-step over the data), e.g. to
            fit a per-datapoint guide to held-out data under a trained model.
        beta: Weight :math:`\beta` of the KL term (see :class:`LatentScale`), or a function
            of the epoch (from 1) for a warm-up, e.g. ``lambda e: min(1.0, e / 10)``. The
            history then records the :math:`\beta`-weighted loss.
        log_every: Steps between progress-bar updates (each reads the loss: a host sync).
        validation: Held-out batches whose mean ELBO per point (``β = 1``, the networks in
            eval mode) is recorded in ``History.val_elbo`` every ``validate_every`` epochs
            and after the last one. For amortized guides (a per-datapoint guide has no
            parameters for new points: use :func:`~pyro_vae.infer_local`).
        validate_every: Epochs between validations.
        validation_particles: Guide samples per validation point.
        distributed: Data-parallel training under ``torchrun`` (default ``None``: when a
            process group is initialized or ``WORLD_SIZE > 1``; ``False``: one process).
            ``data.batch_size`` is then the global batch; each rank trains on its part and
            the gradients are combined into the single-process gradient (see
            :mod:`pyro_vae.distributed`); a per-datapoint guide is partitioned by rank. The
            history's loss is global; rank 0 shows the bar and writes ``history.json``; each
            rank writes its own checkpoint (``checkpoint.pt`` on rank 0,
            ``checkpoint.rank<r>.pt`` on the others) and resumes from it, with the same number
            of processes. ``callback`` runs on every rank.
        log_dir: If given, TensorBoard event files are written there (rank 0 only; needs
            ``pip install 'pyro_vae[tensorboard]'``): ``train/loss_running`` at every loss
            read (global step), and per epoch ``train/loss``, ``train/beta`` and
            ``validation/elbo`` (see :class:`~pyro_vae.board.Board`).
        log_images_every: Epochs between image grids in ``log_dir`` (``0``: never): 16
            samples and reconstructions of the first 8 training points, for a
            :class:`~pyro_vae.VAE` of images (``event_shape`` 784 or ``(C, H, W)``); drawn
            with their own random numbers (the training run is unchanged).
        compile: Run the steps as compiled graphs (``torch.compile`` of the
            VAE's derived estimator :meth:`~pyro_vae.VAE.elbo_loss`, one graph forward and
            one backward; see :mod:`pyro_vae.compiled`): for a :class:`~pyro_vae.VAE`'s pair
            with ``TensorTrace_ELBO``/``Trace_ELBO`` (one particle), checked once against the
            loss on the first batch. Otherwise the run stays eager, with one warning that
            says why. Compiling takes tens of seconds (cached by inductor across runs). A
            string is ``torch.compile``'s ``mode``: ``"reduce-overhead"`` records the graphs
            as CUDA graphs on a GPU, with a capturable Adam (untested on GPU hardware).

    Returns:
        The :class:`History` of all epochs (those of the resumed run included).

    Example:
        >>> vae = VAE(StandardNormalPrior(2), BernoulliLikelihood(MLP(2, 10), 10),
        ...           GaussianEncoder(MLP(10, 4), 2))
        >>> data = Batches(torch.rand(64, 10).round(), batch_size=16)
        >>> history = fit(vae.model, vae.guide, data, epochs=2, device="cpu", progress=False)
        >>> history.epoch, len(history.loss)
        ([1, 2], 2)
    """
    _check_options(epochs, log_every, e_steps, validate_every, log_images_every, freeze_model)
    _beta(beta, None)  # (a number: checked now; a schedule: every epoch)
    world = get_world(distributed)
    optim = optim if optim is not None else LazyAdam({"lr": 1e-3})
    data, device, modules = _place(model, guide, data, device, modules, world)
    validation = _held_out(model, guide, validation, validation_particles, device, modules)
    _check_sparse(modules, optim)
    kl_scale = LatentScale()  # β on the latent sites of both (validation scores with β = 1)
    step = Step(model, guide, loss if loss is not None else TensorTrace_ELBO(), optim,
                num_data=data.num_data, device=device, dtype=data.points.dtype,
                e_steps=e_steps, freeze_model=freeze_model, modules=modules,
                scale=kl_scale if beta != 1.0 else None, compile=compile,
                combine=_combine(data) if world is not None else None)  # fmt: skip
    writes = world is None or world.rank == 0  # the bar, history.json and TensorBoard
    folder = _folder(save_dir, world)

    def hint() -> str:
        return folder.hint(_RETRY) if folder is not None else f"train again with {_RETRY}"

    try:
        with ExitStack() as stack:  # closed in reverse: bar, run folder, board, modes
            stack.enter_context(modes(modules, train=None if freeze_model else True))
            board = _open(stack, Board(log_dir) if log_dir and writes else None, folder)
            history, start = _begin(
                folder, step, data, optim, modules, device, world, resume, overwrite
            )
            history.svi_step = not step.sync_free  # which step this run takes
            total, quiet = (epochs - start) * len(data), not (progress and writes)
            bar = stack.enter_context(tqdm(total=total, disable=quiet, desc="train", unit="step"))
            elapsed = history.seconds[-1] if history.seconds else 0.0
            for epoch in range(start + 1, epochs + 1):
                kl_scale.beta = _beta(beta, epoch)
                t0 = time.perf_counter()
                epoch_loss = _train_epoch(step, data, epoch, log_every, bar, board, world, hint)
                elapsed += time.perf_counter() - t0
                _close_epoch(history, epoch, epoch_loss, elapsed, step, modules, world, hint)
                val_elbo = None
                if validation is not None and (epoch % validate_every == 0 or epoch == epochs):
                    val_elbo = _validate(model, guide, validation, validation_particles, world)
                    _record_validation(history, epoch, val_elbo, hint)
                bar.set_postfix(epoch=epoch, loss=f"{epoch_loss:.2f}")
                if board is not None:
                    board.epoch(epoch, epoch_loss, kl_scale.beta, val_elbo)
                    if log_images_every and epoch % log_images_every == 0:
                        board.images(epoch, modules, data.points)
                if callback is not None:  # before saving: a schedule it sets is checkpointed
                    callback(epoch, history)
                if folder is not None:  # the checkpoint first: history.json never ahead of it
                    folder.save(history, optim, modules, list(step.names))
    except RuntimeError as e:  # a data-parallel process that did not answer: say so
        if world is not None and timed_out(e) is not None:
            raise timed_out(e) from e
        raise
    return history


_RETRY = "a smaller step size (e.g. optim=LazyAdam({'lr': ...}))"


def _folder(save_dir: str | os.PathLike | None, world: World | None) -> RunFolder | None:
    """The run folder of this process (``None``: nothing is saved)."""
    if save_dir is None:
        return None
    rank, size = (world.rank, world.size) if world is not None else (0, 1)
    return RunFolder(save_dir, rank=rank, world_size=size)


def _open(stack: ExitStack, board: Board | None, folder: RunFolder | None) -> Board | None:
    """The TensorBoard writer and the run folder (held: one run at a time, writable), closed
    with ``stack``; both are checked before a saved run is touched."""
    if board is not None:
        stack.callback(board.close)
    if folder is not None:
        folder.hold()
        stack.callback(folder.release)
    return board


def _held_out(
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


def _record_validation(history: History, epoch: int, val_elbo: float, hint: Callable) -> None:
    """The validation ELBO in the history, checked finite."""
    if not math.isfinite(val_elbo):
        raise FloatingPointError(
            f"the validation ELBO became {val_elbo} after epoch {epoch}; {hint()}"
        )
    history.val_epoch.append(epoch)
    history.val_elbo.append(val_elbo)


def _check_options(
    epochs: int,
    log_every: int,
    e_steps: int,
    validate_every: int,
    log_images_every: int,
    freeze_model: bool,
) -> None:
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


def _place(
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


def _beta(beta: float | Callable[[int], float], epoch: int | None) -> float:
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


def _check_sparse(modules: nn.Module | None, optim: object) -> None:
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


def _combine(data: ShardedBatches) -> Callable[[list[Tensor], Tensor], None]:
    """Rank r's gradient enters with weight b_r / b (b: the global batch)."""

    def combine(params: list[Tensor], x: Tensor) -> None:
        combine_gradients(params, weight=x.shape[0] / data.global_size)

    return combine


def _begin(
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


def _close_epoch(
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


def _train_epoch(
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
            running, faulty = _read(total, count, bad, world, step.check.device)
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
    return _mean(total, count, world, step.check.device)


def _read(
    total: Tensor | float,
    count: int,
    bad: Tensor | None,
    world: World | None,
    device: torch.device,
) -> tuple[float, bool]:
    """The running loss and whether a batch was bad, in one host read."""
    if bad is None or world is not None:
        return _mean(total, count, world, device), False
    pair = torch.stack([torch.as_tensor(total, dtype=torch.float64, device=device).reshape(()),
                        bad.to(device=device, dtype=torch.float64)])  # fmt: skip
    loss_sum, faulty = pair.tolist()
    return loss_sum / count, bool(faulty)


def _mean(total: Tensor | float, count: int, world: World | None, device: torch.device) -> float:
    """``total / count`` on the host (over all ranks): the read of the loss."""
    return global_mean(total, count, world, device) if world else float(total) / count


def _validate(
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
