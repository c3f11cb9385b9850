"""The training loop: Pyro SVI over shuffled minibatches, with history, validation,
checkpoints and resume.

:func:`fit` trains any Pyro model/guide pair that follows one calling convention::

    model(x, idx, num_data=N)   # and the same for guide

where ``x`` is a minibatch, ``idx`` its dataset indices and ``N`` the data set's size (the
package's :class:`~pyro_vae.VAE` does; so can a hand-written pair).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from functools import partial
from pathlib import Path

import pyro
import pyro.optim
import torch
from pyro.infer import ELBO, SVI
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .board import Board
from .checkpoint import (
    CHECKPOINT,
    HISTORY,
    CheckpointError,
    History,
    resume_run,
    save_checkpoint,
)
from .checks import check_data, check_finite_params, check_int
from .data import Batches
from .devices import DeviceCheck, check_module, default_device, move_param_store, owner_modules
from .distributed import (
    ShardedBatches,
    agree,
    average_buffers,
    combine_gradients,
    get_world,
    global_mean,
    min_max,
    shard_local_guides,
    start_ranks,
)
from .elbo import LatentScale, TensorTrace_ELBO
from .evaluate import evaluate
from .loaders import Loader
from .optim import LazyAdam, gradient_step

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
            train mode (not with ``freeze_model``), and saved in checkpoints with their
            buffers. Default: the ``nn.Module`` whose bound methods ``model`` and ``guide``
            are (e.g. the :class:`~pyro_vae.VAE` of ``vae.model``), if any.
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
    if isinstance(data, DataLoader):
        data = Loader(data)
    if not isinstance(data, (Batches, Loader)):
        raise TypeError(
            f"fit needs minibatches with their indices; got {type(data).__name__}. Wrap a "
            "tensor: pv.Batches(x, batch_size=256), or pass a DataLoader over "
            "pv.Indexed(dataset)"
        )
    world = get_world(distributed)
    device = torch.device(device) if device is not None else default_device()
    optim = optim if optim is not None else LazyAdam({"lr": 1e-3})
    loss = loss if loss is not None else TensorTrace_ELBO()
    data = data.to(device)
    if isinstance(validation, DataLoader):
        validation = Loader(validation)
    if validation is not None:
        validation = validation.to(device)
        val_points = validation if isinstance(validation, Tensor) else validation.data
        val_size = len(validation) if isinstance(validation, Tensor) else validation.num_data
    if modules is None:  # the networks behind bound methods, e.g. vae.model / vae.guide
        found = owner_modules(model, guide)
        modules = found[0] if len(found) == 1 else nn.ModuleList(found) if found else None
    if modules is not None:
        modules.to(device)
        check_module(modules, device, data.data.dtype, fix="convert it, e.g. vae.to(x.dtype)")
        check_data(modules, data.data, num_data=data.num_data)  # a loader: its first batch
        if validation is not None:
            check_data(modules, val_points, num_data=val_size)
        sparse = [m for m in modules.modules() if getattr(m, "sparse", False)]
        if sparse and not isinstance(optim, LazyAdam):
            raise ValueError(
                f"{type(sparse[0]).__name__} has row-sparse gradients, which "
                f"{type(optim).__name__} cannot step (and a dense Adam would move every "
                "point's parameters at every step): use optim=pv.LazyAdam({'lr': ...}, "
                "local_lr=...)"
            )
        if not freeze_model:  # a frozen model keeps its mode (and BatchNorm statistics)
            modules.train()
    move_param_store(device)  # pyro.params of hand-written pairs registered before the call
    if world is not None and isinstance(data, Loader):
        raise ValueError(
            "data-parallel training reads pv.Batches (a tensor data set on each process); a "
            "DataLoader is not split across processes yet"
        )
    if world is not None:  # this rank's parts of the global minibatches (and its shard)
        data = ShardedBatches(data, world, block=shard_local_guides(modules, data.num_data, world))
    kl_scale = LatentScale()
    train_model, train_guide = model, guide
    if beta != 1.0:
        train_model, train_guide = kl_scale(model), kl_scale(guide)
    num_data = data.num_data
    # The first step (and a resume's forward pass) runs model and guide under a DeviceCheck,
    # innermost, so it sees every parameter site, blocked ones included; later steps don't pay.
    check = DeviceCheck(device, data.data.dtype)
    pairs = {
        True: (check(train_model), check(train_guide)),
        False: (train_model, train_guide),
    }
    svis = None
    if not hasattr(loss, "differentiable_loss"):  # e.g. RenyiELBO: Pyro's own SVI step
        if e_steps:
            raise ValueError(
                f"e_steps needs a loss with differentiable_loss; {type(loss).__name__} has "
                "none. Use e_steps=0 or a Trace_ELBO-like loss"
            )
        if freeze_model:
            raise ValueError(
                f"freeze_model=True needs a loss with differentiable_loss; "
                f"{type(loss).__name__} has none. Use a Trace_ELBO-like loss for E-steps"
            )
        if world is not None:
            raise ValueError(
                f"data-parallel training needs a loss with differentiable_loss; "
                f"{type(loss).__name__} has none"
            )
        svis = {first: SVI(*pair, optim, loss) for first, pair in pairs.items()}

    def train_step(x: Tensor, idx: Tensor, first: bool) -> Tensor | float:
        if not first:  # the first step validates as the user chose; the data are checked
            with pyro.validation_enabled(False):
                return _train_step(x, idx, first)
        return _train_step(x, idx, first)

    def _train_step(x: Tensor, idx: Tensor, first: bool) -> Tensor | float:
        if svis is not None:
            return svis[first].step(x, idx, num_data=num_data)
        hook = None
        if world is not None:  # rank r's gradient enters with weight b_r / b
            hook = partial(combine_gradients, weight=x.shape[0] / data.global_size)
        step = partial(
            gradient_step, *pairs[first], loss, optim, x, idx, num_data=num_data, before_step=hook
        )
        if freeze_model:
            return step(update_model=False)
        if e_steps:
            for _ in range(e_steps):
                step(update_model=False)
            return step(update_guide=False)
        return step()

    def validate() -> float:
        was_training = modules.training if modules is not None else None
        if modules is not None:
            modules.eval()
        # Its own random draws: validating (or not) never changes the training run's RNG stream.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            try:
                return evaluate(
                    model,
                    guide,
                    validation,
                    num_particles=validation_particles,
                    distributed=world is not None,
                ).elbo
            finally:
                if modules is not None:
                    modules.train(was_training)

    history, start = History(), 0
    name = CHECKPOINT if world is None or world.rank == 0 else f"checkpoint.rank{world.rank}.pt"
    ckpt_path = Path(save_dir) / name if save_dir is not None else None
    writes = world is None or world.rank == 0  # the bar and history.json
    if ckpt_path is not None:
        ckpt_path.parent.mkdir(parents=True, exist_ok=True)
        ckpt_path.with_suffix(".tmp").unlink(missing_ok=True)  # left by a killed process
        exists = ckpt_path.exists()
        if world is not None:  # every process decides alike
            exists = agree(exists, device)
        if exists and not resume:
            if not overwrite:
                raise FileExistsError(
                    f"{ckpt_path} exists: a run was saved there. Pass resume=True to continue "
                    "it, overwrite=True to start over (its checkpoints are deleted), or "
                    "another save_dir"
                )
            for path in (ckpt_path, ckpt_path.with_suffix(".prev.pt")):
                path.unlink(missing_ok=True)
            if writes:
                (ckpt_path.parent / HISTORY).unlink(missing_ok=True)
        if resume and exists:
            batch, error = next(iter(data)), None
            try:
                saved, names = resume_run(
                    ckpt_path,
                    *pairs[True],
                    batch,
                    num_data,
                    optim,
                    modules,
                    device,
                    world_size=world.size if world is not None else 1,
                )
            except CheckpointError as e:
                error = e
            if world is not None and agree(error is not None, device) and error is None:
                error = CheckpointError("another process could not resume: see its error")
            if error is not None:
                raise error
            check.names.update(dict.fromkeys(names))
            history = History(**saved)
            start = history.epoch[-1] if history.epoch else 0
    history.svi_step = svis is not None  # which step this run takes
    if world is not None and resume:  # all processes continue from the same epoch
        low, high = min_max(start, device)
        if low != high:
            raise CheckpointError(
                f"the processes' checkpoints in {save_dir} end at different epochs (from "
                f"{low} to {high}; a process was stopped between two "
                "saves): put back the .prev.pt checkpoints of the processes that are ahead, "
                "or start over with overwrite=True"
            )
    if world is not None and start == 0:  # a new run: the same initial values everywhere
        start_ranks(*pairs[True], data, world)

    def stop_hint() -> str:
        retry = "a smaller step size (e.g. optim=LazyAdam({'lr': ...}))"
        if ckpt_path is not None and ckpt_path.exists():
            return f"{ckpt_path} is untouched: continue from it with resume=True and {retry}"
        return f"train again with {retry}"

    elapsed = history.seconds[-1] if history.seconds else 0.0
    bar = tqdm(
        total=(epochs - start) * len(data),
        disable=not (progress and writes),
        desc="train",
        unit="step",
    )
    board = Board(log_dir) if log_dir is not None and writes else None
    try:
        first = True
        for epoch in range(start + 1, epochs + 1):
            kl_scale.beta = beta(epoch) if callable(beta) else beta
            t0 = time.perf_counter()
            total, count = 0.0, 0  # the epoch's loss stays on the device: no sync per step
            for step, (x, idx) in enumerate(data):
                value = train_step(x, idx, first)
                first = False
                total = total + value * (x.shape[0] / num_data)
                count += x.shape[0]
                if step % log_every == 0:  # the only host sync: every log_every steps
                    running = (
                        global_mean(total, count, world, device) if world else float(total) / count
                    )
                    if not math.isfinite(running):
                        raise FloatingPointError(
                            f"the loss became {running} in epoch {epoch} by step {step + 1}; "
                            + stop_hint()
                        )
                    bar.set_postfix(epoch=epoch, loss=f"{running:.2f}")
                    if board is not None:
                        board.running((epoch - 1) * len(data) + step, running)
                bar.update()
            epoch_loss = global_mean(total, count, world, device) if world else float(total) / count
            elapsed += time.perf_counter() - t0
            if not math.isfinite(epoch_loss):
                raise FloatingPointError(
                    f"the loss became {epoch_loss} in epoch {epoch}; {stop_hint()}"
                )
            anywhere = None
            if world is not None:
                if modules is not None and modules.training:
                    average_buffers(modules)  # one model (BatchNorm statistics) on every rank
                anywhere = partial(agree, device=device)
            check_finite_params(check.names, epoch, stop_hint(), anywhere=anywhere)  # one sync
            history.epoch.append(epoch)
            history.loss.append(epoch_loss)
            history.seconds.append(elapsed)
            if validation is not None and (epoch % validate_every == 0 or epoch == epochs):
                val_elbo = validate()
                if not math.isfinite(val_elbo):
                    raise FloatingPointError(
                        f"the validation ELBO became {val_elbo} after epoch {epoch}; {stop_hint()}"
                    )
                history.val_epoch.append(epoch)
                history.val_elbo.append(val_elbo)
            bar.set_postfix(epoch=epoch, loss=f"{epoch_loss:.2f}")
            if board is not None:
                validated = bool(history.val_epoch) and history.val_epoch[-1] == epoch
                board.epoch(
                    epoch, epoch_loss, kl_scale.beta, history.val_elbo[-1] if validated else None
                )
                if log_images_every and epoch % log_images_every == 0:
                    board.images(epoch, modules, data.data)
            if callback is not None:  # before saving: a schedule it sets is in the checkpoint
                callback(epoch, history)
            if save_dir is not None:  # the checkpoint first: history.json is never ahead of it
                save_checkpoint(
                    ckpt_path,
                    asdict(history),
                    optim,
                    modules,
                    list(check.names),
                    world_size=world.size if world is not None else 1,
                )
                if writes:
                    history.save(Path(save_dir) / HISTORY)
    finally:
        bar.close()
        if board is not None:
            board.close()
    return history
