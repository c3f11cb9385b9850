"""The training loop: Pyro SVI over shuffled minibatches, with history, validation,
checkpoints and resume.

:func:`fit` trains any Pyro model/guide pair that follows one calling convention::

    model(x, idx, num_data=N)   # and the same for guide

where ``x`` is a minibatch, ``idx`` its dataset indices and ``N`` the data set's size (the
package's :class:`~pyro_vae.VAE` does; so can a hand-written pair). Batches with fields
(labels, conditions, masks: ``pv.Batches(x, y=labels, ...)``) add them as keywords,
``model(x, idx, num_data=N, y=y_batch)``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

import pyro
import pyro.optim
import torch
from pyro.infer import ELBO
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .._checks import check_int
from .._world import get_world, timed_out
from ..data.batches import Batches
from ..data.loaders import Loader
from ..devices.precision import use_precision
from ..infer.elbo import BetaELBO, LatentScale
from ..infer.optim import LazyAdam
from ..models.nets import training_modes
from ._derivation import default_loss
from ._derived import limit_is_an_error
from ._epoch import close_epoch, show_epoch, train_epoch, validate
from ._optim_state import step_schedule
from ._run import (
    Run,
    SaveSchedule,
    beta_at,
    check_options,
    check_run_options,
    check_sparse,
    combine_for,
    held_out,
    place,
    run_folder,
    warn_if_finished,
)
from ._stopping import EarlyStopping
from .checkpoint import History
from .options import Checkpoints, Compute, Logging, Validation, flat_options
from .step import Step

__all__ = ["fit"]


def fit(
    model: Callable[..., object],
    guide: Callable[..., object],
    data: Batches | Loader | DataLoader | Tensor,
    *,
    epochs: int,
    optim: pyro.optim.PyroOptim | None = None,
    loss: ELBO | BetaELBO | None = None,
    device: torch.device | str | Compute | None = None,
    modules: nn.Module | None = None,
    e_steps: int = 0,
    save: str | os.PathLike | Checkpoints | None = None,
    validation: Batches | Loader | DataLoader | Tensor | Validation | None = None,
    log: Logging | bool | None = None,
) -> History:
    r"""Trains a Pyro model/guide pair by stochastic variational inference.

    Each step does what ``pyro.infer.SVI(model, guide, optim, loss).step(x, idx,
    num_data=N)`` does — the ELBO's gradient on a minibatch, one step of the Pyro optimizer on
    the parameters the step traced — through the differentiable-loss interface, without the
    host synchronizations of ``SVI.step`` (the loss stays a device tensor; the progress bar
    reads it every ``Logging.every`` steps). The loss, scaled to the whole data set by the
    model's subsampled plate, is divided by ``N``: the history holds the mean negative ELBO
    per point.

    Args:
        model: A Pyro model ``model(x, idx, num_data=N)`` (``**fields`` as keywords when the
            batches carry fields).
        guide: A Pyro guide with the same signature.
        data: The training minibatches: :class:`~pyro_vae.Batches` (a tensor on the
            device: the fast path; a tensor ``(N, *event_shape)`` is taken as shuffled
            ``Batches`` of up to 256, as :func:`~pyro_vae.infer_local` takes it), or a
            :class:`torch.utils.data.DataLoader` (e.g. over
            :class:`~pyro_vae.Indexed` with workers and ``pin_memory=True``) or any
            :class:`~pyro_vae.Loader` of ``(x, idx)``: batches are moved to the device as they
            come, and the data checks see the first batch only.
        epochs: Train until this many epochs are done (counting those of a resumed run).
        optim: A Pyro optimizer; default :class:`~pyro_vae.LazyAdam` with ``lr=1e-3`` (Adam,
            with sparse updates for per-datapoint parameters). A Pyro learning-rate scheduler
            (``pyro.optim.ExponentialLR``, ``pyro.optim.ReduceLROnPlateau``, ...) steps once
            after each epoch, as Pyro's docs step it; ``ReduceLROnPlateau`` on the validation
            loss where there is a validation set (after the epochs it validates), else on the
            epoch's training loss. Its state resumes with the run.
        loss: A Pyro ELBO, or a :class:`~pyro_vae.BetaELBO` (a weight on the KL term, or a
            warm-up). Default ``None``: :class:`~pyro_vae.TensorTrace_ELBO`, or
            ``TraceEnum_ELBO(max_plate_nesting=n)`` where the guide or the model marks a latent
            site for enumeration (:class:`~pyro_vae.SemiSupervisedVAE`'s unknown label); and
            the ``model`` and ``guide`` of a :class:`~pyro_vae.VAE` (a
            :class:`~pyro_vae.ConditionalVAE` and a :class:`~pyro_vae.SemiSupervisedVAE`
            too, with the batch's fields) train through the VAE's derived estimator
            (:meth:`~pyro_vae.VAE.elbo_loss`, the one ``Compute(compile=True)`` compiles),
            run eagerly: that loss's estimator without Pyro's tracing in every step, checked
            against it on the first batch (values and every gradient, with the same random
            numbers); other pairs take the loss itself. Pass ``loss=pv.TensorTrace_ELBO()`` for
            Pyro's traced loss in every step. A loss without ``differentiable_loss`` is run
            through ``SVI.step`` (joint updates only). A resumed run takes the estimator its
            saved run took.
        device: Where to train (default :func:`~pyro_vae.default_device`), or a
            :class:`~pyro_vae.Compute` with the precision, compiling and data-parallel
            processes too. The data, the networks (``modules``) and the param store's
            parameters are moved there; any other parameter the first step registers on
            another device (or in another floating dtype than the data) stops training with a
            :class:`ValueError` that names it.
        modules: The networks behind ``model`` and ``guide``: moved to the device, put in
            train mode while training and back in the mode each was in at the end, and saved
            in checkpoints with their buffers. Default: the ``nn.Module`` whose bound methods
            ``model`` and ``guide`` are (e.g. the :class:`~pyro_vae.VAE` of ``vae.model``),
            if any.
        e_steps: The schedule. ``0``: joint stochastic updates of the model's parameters
            :math:`\theta` and the guide's :math:`\lambda` (one ``SVI.step`` per batch).
            ``k > 0``: variational EM: per batch, ``k`` updates of the guide's parameters
            with :math:`\theta` fixed (E-step), then one update of :math:`\theta` with the
            guide fixed (M-step). (E-steps alone, under a trained model:
            :func:`~pyro_vae.infer_local`.)
        save: A folder for the run (``history.json`` and ``checkpoint.pt``), or a
            :class:`~pyro_vae.Checkpoints` that resumes or overwrites a run there, and says
            how often to save.
        validation: Held-out data scored every epoch (one particle), or a
            :class:`~pyro_vae.Validation` that says how often and with how many particles.
        log: ``False``: no progress bar; or a :class:`~pyro_vae.Logging` (the bar,
            TensorBoard, a callback after every epoch). Default: the bar.

    Returns:
        The :class:`History` of all epochs (those of the resumed run included).

    Example:
        >>> vae = VAE(StandardNormalPrior(2), BernoulliLikelihood(MLP(2, 10), 10),
        ...           GaussianEncoder(MLP(10, 4), 2))
        >>> data = Batches(torch.rand(64, 10).round(), batch_size=16)
        >>> history = fit(vae.model, vae.guide, data, epochs=2, device="cpu", log=False)
        >>> history.epoch, len(history.loss)
        ([1, 2], 2)
    """
    check_int("e_steps", e_steps, minimum=0)
    beta = 1.0
    if isinstance(loss, BetaELBO):
        beta, loss = loss.beta, loss.loss
    options = flat_options(device, save, validation, log)
    return train(model, guide, data, epochs=epochs, optim=optim, loss=loss, modules=modules,
                 e_steps=e_steps, beta=beta, **options)  # fmt: skip


def train(
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
    patience: int | None = None,
    distributed: bool | None = None,
    log_dir: str | os.PathLike | None = None,
    log_images_every: int = 0,
    compile: bool | str = False,
    precision: str = "32",
    save_every: int | None = None,
) -> History:
    """:func:`fit` with its options flat (and ``freeze_model``: E-steps only, as
    :func:`~pyro_vae.infer_local` runs them); see :mod:`pyro_vae.train.options` for each."""
    with _one_thread():
        return _train(**locals())


def _train(
    model: Callable[..., object],
    guide: Callable[..., object],
    data: Batches | Loader | DataLoader,
    *,
    epochs: int,
    optim: pyro.optim.PyroOptim | None,
    loss: ELBO | None,
    device: torch.device | str | None,
    modules: nn.Module | None,
    save_dir: str | os.PathLike | None,
    resume: bool,
    overwrite: bool,
    progress: bool,
    callback: Callable[[int, History], None] | None,
    e_steps: int,
    freeze_model: bool,
    beta: float | Callable[[int], float],
    log_every: int,
    validation: Batches | Loader | DataLoader | Tensor | None,
    validate_every: int,
    validation_particles: int,
    patience: int | None,
    distributed: bool | None,
    log_dir: str | os.PathLike | None,
    log_images_every: int,
    compile: bool | str,
    precision: str,
    save_every: int | None,
) -> History:
    check_options(epochs, log_every, e_steps, validate_every, log_images_every, freeze_model,
                  validation_particles=validation_particles, save_every=save_every,
                  precision=precision)  # fmt: skip
    check_run_options(save_dir, resume=resume, overwrite=overwrite, log_dir=log_dir,
                      log_images_every=log_images_every)  # fmt: skip
    beta_at(beta, None)  # (a number: checked now; a schedule: every epoch)
    world = get_world(distributed)
    optim = optim if optim is not None else LazyAdam({"lr": 1e-3})
    data, device, modules = place(model, guide, data, device, modules, world)
    validation = held_out(model, guide, validation, validation_particles, device, modules)
    check_sparse(modules, optim)
    kl_scale = LatentScale()  # β on the latent sites of both (validation scores with β = 1)
    loss, derive = _loss(loss, model, guide, data, modules)  # (derive: fit's default step)
    step = Step(model, guide, optim, loss,
                num_data=data.num_data, device=device, dtype=data.points.dtype,
                e_steps=e_steps, freeze_model=freeze_model, modules=modules,
                scale=kl_scale if beta != 1.0 else None, compile=compile, derive=derive,
                combine=combine_for(data) if world is not None else None)  # fmt: skip
    run = Run(model, guide, data, step, optim, modules, device, world, run_folder(save_dir, world),
              precision=precision, schedule=SaveSchedule.for_run(save_every, world),
              beta="a schedule" if callable(beta) else float(beta))  # fmt: skip
    with _said_if_timed_out(world), ExitStack() as stack:  # closed in reverse: bar, folder, ...
        stack.enter_context(training_modes(modules, train=None if freeze_model else True))
        stack.enter_context(use_precision(precision, data.points))
        if step.compile_mode is not None:  # a recompile limit: a warning, not a log line
            stack.enter_context(limit_is_an_error())
        run.open(stack, log_dir)
        start = run.begin(resume=resume, overwrite=overwrite)
        warn_if_finished(start, epochs, save_dir)
        run.bar = stack.enter_context(_bar(run, (epochs - start) * len(data), progress))
        elapsed = run.history.seconds[-1] if run.history.seconds else 0.0
        stopping = EarlyStopping(patience, run.history, modules)  # (None: it does nothing)
        for epoch in range(start + 1, epochs + 1 if not stopping.done else 0):
            kl_scale.beta = beta_at(beta, epoch)
            t0 = time.perf_counter()
            epoch_loss = train_epoch(run, epoch, log_every)
            elapsed += time.perf_counter() - t0
            close_epoch(run, epoch, epoch_loss, elapsed)
            due = validation is not None and (epoch % validate_every == 0 or epoch == epochs)
            val_elbo = validate(run, epoch, validation, validation_particles) if due else None
            show_epoch(run, epoch, epoch_loss, kl_scale.beta, val_elbo, log_images_every)
            step_schedule(optim, epoch_loss, val_elbo, validated=validation is not None)
            if callback is not None:  # before saving: a schedule it sets is checkpointed
                callback(epoch, run.history)
            stop = stopping.after(epoch, val_elbo)  # (at a stop: the best weights back)
            run.save(epoch, last=epoch == epochs or stop, training=elapsed)  # (then history)
            if stop:
                break
        stopping.finish(epochs)  # (after the last save: a resumed run continues exactly)
    return run.history


_OWNER: list[int] = []  # the thread whose fit runs (its nested calls: the same thread again)
_OWNER_LOCK = threading.Lock()


@contextmanager
def _one_thread() -> Iterator[None]:
    """Lets one thread of the process train at a time (calls nested in it, e.g. from a
    callback, included): Pyro's handlers and param store are global to a process, so two
    threads' fits would see each other's plates ("duplicate plate")."""
    me = threading.get_ident()
    with _OWNER_LOCK:
        if _OWNER and _OWNER[0] != me:
            raise RuntimeError(
                "fit is already training in another thread of this process: Pyro's handlers "
                "and param store are global to a process, so two fits in threads would see "
                "each other's plates and parameters. Run them one after the other, or in "
                "separate processes (e.g. multiprocessing or torch.multiprocessing)"
            )
        _OWNER.append(me)
    try:
        yield
    finally:
        with _OWNER_LOCK:
            _OWNER.pop()


def _loss(loss: ELBO | None, model: Callable[..., object], guide: Callable[..., object],
          data: object, modules: nn.Module | None) -> tuple[ELBO, bool]:  # fmt: skip
    """The run's loss, and whether the steps may take the derived estimator (fit's default,
    ``loss=None``: ``default_loss`` on the training set's points and fields, the networks in
    eval mode, so that a BatchNorm's statistics stay)."""
    if loss is not None:
        return loss, False
    with training_modes(modules, train=False):
        fields = getattr(data, "fields", {})
        return default_loss(model, guide, data.points, fields, num_data=data.num_data), True


def _bar(run: object, total: int, progress: bool) -> tqdm:
    """The run's progress bar over ``total`` steps (silent on ranks that do not write)."""
    return tqdm(total=total, disable=not (progress and run.writes), desc="train", unit="step")


@contextmanager
def _said_if_timed_out(world: object) -> Iterator[None]:
    """Within: a data-parallel process that did not answer is said so (``timed_out``)."""
    try:
        yield
    except RuntimeError as e:
        if world is not None and timed_out(e) is not None:
            raise timed_out(e) from e
        raise
