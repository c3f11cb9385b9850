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
import time
from collections.abc import Callable
from contextlib import ExitStack

import pyro
import pyro.optim
import torch
from pyro.infer import ELBO
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..data.batches import Batches
from ..data.loaders import Loader
from ..devices._world import get_world, timed_out
from ..devices.precision import use_precision
from ..infer._compiled import limit_is_an_error
from ..infer.elbo import LatentScale, TensorTrace_ELBO
from ..infer.optim import LazyAdam
from ..models.nets import modes
from ._epoch import close_epoch, show_epoch, train_epoch, validate
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
from ._step import Step
from .checkpoint import History

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
    precision: str = "32",
    save_every: int | None = None,
) -> History:
    r"""Trains a Pyro model/guide pair by stochastic variational inference.

    Each step does what ``pyro.infer.SVI(model, guide, optim, loss).step(x, idx,
    num_data=N)`` does — the ELBO's gradient on a minibatch, one step of the Pyro optimizer on
    the parameters the step traced — through the differentiable-loss interface, without the
    host synchronizations of ``SVI.step`` (the loss stays a device tensor; the progress bar
    reads it every ``log_every`` steps). The loss, scaled to the whole data set by the model's
    subsampled plate, is divided by ``N``: the history holds the mean negative ELBO per point.

    Args:
        model: A Pyro model ``model(x, idx, num_data=N)`` (``**fields`` as keywords when the
            batches carry fields).
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
            through ``SVI.step`` (joint updates only). With the default (``None``), the
            ``model`` and ``guide`` of a :class:`~pyro_vae.VAE` are trained through the VAE's
            derived estimator (:meth:`~pyro_vae.VAE.elbo_loss`, the one ``compile=True``
            compiles), run eagerly: ``TensorTrace_ELBO``'s estimator without Pyro's tracing in
            every step, checked against it on the first batch (values and every gradient,
            with the same random numbers); a pair or batches without one (a hand-written
            pair, batches with fields, a hierarchical VAE's per-datapoint guides) take
            ``TensorTrace_ELBO`` itself. Pass ``loss=pv.TensorTrace_ELBO()`` for Pyro's
            traced loss in every step (the reference). A resumed run takes the estimator its
            saved run took.
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
            state, module state, epoch, RNG states) are written there after the epochs that
            ``save_every`` names and after the last one.
        resume: Continue from ``save_dir/checkpoint.pt`` when it exists. The checkpoint must
            come from the same model, guide and optimizer type (else a
            :class:`~pyro_vae.train.checkpoint.CheckpointError` names the first difference); new
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
            the gradients are combined into the single-process gradient (rank r's with
            weight b_r / b); a per-datapoint guide is partitioned by rank. The
            history's loss is global; rank 0 shows the bar and writes ``history.json``; each
            rank writes its own checkpoint (``checkpoint.pt`` on rank 0,
            ``checkpoint.rank<r>.pt`` on the others) and resumes from it, with the same number
            of processes. ``callback`` runs on every rank.
        log_dir: If given, TensorBoard event files are written there (rank 0 only; needs
            ``pip install 'pyro_vae[tensorboard]'``): ``train/loss_running`` at every loss
            read (global step), and per epoch ``train/loss``, ``train/beta`` and
            ``validation/elbo``.
        log_images_every: Epochs between image grids in ``log_dir`` (``0``: never): 16
            samples and reconstructions of the first 8 training points, for a
            :class:`~pyro_vae.VAE` of images (``event_shape`` 784 or ``(C, H, W)``); drawn
            with their own random numbers (the training run is unchanged).
        compile: Run the steps as compiled graphs (``torch.compile`` of the
            VAE's derived estimator :meth:`~pyro_vae.VAE.elbo_loss`, one graph forward and
            one backward): for a :class:`~pyro_vae.VAE`'s pair
            with ``TensorTrace_ELBO``/``Trace_ELBO`` (one particle), checked once against the
            loss on the first batch. Otherwise the run stays eager, with one warning that
            says why. Compiling takes tens of seconds (cached by inductor across runs). A
            string is ``torch.compile``'s ``mode``: ``"reduce-overhead"`` records the graphs
            as CUDA graphs on a GPU, with a capturable Adam.
        precision: ``"32"`` (the data's dtype throughout) or ``"bf16-mixed"``: the networks'
            matrix products and convolutions in bfloat16 (autocast), their outputs, every
            log-density, the loss, the parameters, gradients and optimizer state in float32
            (see :mod:`pyro_vae.devices.precision`). With ``compile`` too; the precision is
            saved with the run (a resumed run with another one is told so).
        save_every: With ``save_dir``: save after every ``save_every``-th epoch (and the last).
            Default ``None``: after each epoch while the time spent saving stays within a
            twentieth of the time spent training — every epoch, unless epochs take less than
            about twenty saves (a run of many short epochs then saves every few epochs, and a
            run stopped between saves resumes, exactly, from the last one); under
            data-parallel training, every epoch.

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
    step = Step(model, guide, loss if loss is not None else TensorTrace_ELBO(), optim,
                num_data=data.num_data, device=device, dtype=data.points.dtype,
                e_steps=e_steps, freeze_model=freeze_model, modules=modules,
                scale=kl_scale if beta != 1.0 else None, compile=compile, derive=loss is None,
                combine=combine_for(data) if world is not None else None)  # fmt: skip
    run = Run(model, guide, data, step, optim, modules, device, world, run_folder(save_dir, world),
              precision=precision, schedule=SaveSchedule.for_run(save_every, world))  # fmt: skip
    try:
        with ExitStack() as stack:  # closed in reverse: bar, run folder, board, modes
            stack.enter_context(modes(modules, train=None if freeze_model else True))
            stack.enter_context(use_precision(precision, data.points))
            if step.mode is not None:  # a recompile limit reached: a warning, not a log line
                stack.enter_context(limit_is_an_error())
            run.open(stack, log_dir)
            start = run.begin(resume=resume, overwrite=overwrite)
            warn_if_finished(start, epochs, save_dir)
            total, quiet = (epochs - start) * len(data), not (progress and run.writes)
            run.bar = stack.enter_context(
                tqdm(total=total, disable=quiet, desc="train", unit="step")
            )
            elapsed = run.history.seconds[-1] if run.history.seconds else 0.0
            for epoch in range(start + 1, epochs + 1):
                kl_scale.beta = beta_at(beta, epoch)
                t0 = time.perf_counter()
                epoch_loss = train_epoch(run, epoch, log_every)
                elapsed += time.perf_counter() - t0
                close_epoch(run, epoch, epoch_loss, elapsed)
                val_elbo = None
                if validation is not None and (epoch % validate_every == 0 or epoch == epochs):
                    val_elbo = validate(run, epoch, validation, validation_particles)
                show_epoch(run, epoch, epoch_loss, kl_scale.beta, val_elbo, log_images_every)
                if callback is not None:  # before saving: a schedule it sets is checkpointed
                    callback(epoch, run.history)
                run.save(epoch, last=epoch == epochs, training=elapsed)  # (history.json after)
    except RuntimeError as e:  # a data-parallel process that did not answer: say so
        if world is not None and timed_out(e) is not None:
            raise timed_out(e) from e
        raise
    return run.history
