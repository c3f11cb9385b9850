r"""What :func:`~pyro_vae.fit` takes beside Pyro's own arguments, one object per concept.

``fit(model, guide, data, *, epochs, optim, loss, ...)`` keeps ``SVI``'s arguments first; the
rest of a run is four ideas, each one argument that takes a plain value for the common case
and a small object for the rest:

- ``device``: ``"cuda"``, ``"cpu"`` or a ``torch.device``; or :class:`~pyro_vae.Compute`,
  with the precision, compiling and data-parallel processes too.
- ``save``: a folder (a new run: a folder that holds one is refused); or
  :class:`~pyro_vae.Checkpoints`, which resumes or overwrites a run there and says how often
  to save.
- ``validation``: held-out data (scored every epoch, one particle); or
  :class:`~pyro_vae.Validation`, with how often and how many particles.
- ``log``: ``False`` (no progress bar); or :class:`~pyro_vae.Logging`: the bar, TensorBoard,
  a callback.

Example:
    >>> vae = VAE(StandardNormalPrior(2), BernoulliLikelihood(MLP(2, 10), 10),
    ...           GaussianEncoder(MLP(10, 4), 2))
    >>> data = Batches(torch.rand(64, 10).round(), batch_size=16)
    >>> history = fit(vae.model, vae.guide, data, epochs=2, device="cpu",
    ...               validation=Validation(data, num_particles=5), log=False)
    >>> len(history.val_elbo)
    2
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from .._checks import check_int
from .._precision import check_precision
from ..data.batches import Batches
from ..data.loaders import Loader
from .checkpoint import History

__all__ = ["Checkpoints", "Compute", "Logging", "Validation"]


@dataclass(frozen=True)
class Compute:
    """Where and how a run's arithmetic happens.

    Args:
        device: Where to train; default :func:`~pyro_vae.default_device`.
        precision: ``"32"`` (the data's dtype throughout) or ``"bf16-mixed"``: the networks'
            matrix products and convolutions in bfloat16 (autocast), every log-density, the
            loss, the parameters, gradients and optimizer state in float32
            (:mod:`pyro_vae.devices.precision`). Saved with the run.
        compile: Run the steps as compiled graphs (``torch.compile`` of a
            :class:`~pyro_vae.VAE`'s derived estimator, checked once against the loss on the
            first batch; otherwise the run stays eager, with one warning that says why). A
            string is ``torch.compile``'s ``mode``: ``"reduce-overhead"`` records CUDA graphs
            on a GPU.
        distributed: Data-parallel training under ``torchrun`` (default ``None``: when a
            process group is initialized or ``WORLD_SIZE > 1``; ``False``: one process). The
            batches' ``batch_size`` is then the global batch, each rank trains on its part,
            the gradients combine into the single-process gradient, and each rank writes its
            own checkpoint (see :doc:`/guide/distributed`).

    Example:
        >>> Compute("cpu", precision="bf16-mixed").precision
        'bf16-mixed'
    """

    device: torch.device | str | None = None
    precision: str = "32"
    compile: bool | str = False
    distributed: bool | None = None

    def __post_init__(self) -> None:
        check_precision(self.precision)


@dataclass(frozen=True)
class Checkpoints:
    """Where a run is saved, and whether an existing run there continues or starts over.

    ``history.json`` and ``checkpoint.pt`` (the param store, optimizer state, module state,
    epoch, random streams) are written to ``folder`` after the epochs ``every`` names and
    after the last one. Without ``resume`` or ``overwrite``, a folder that holds a run is never
    written over (:class:`FileExistsError`).

    Args:
        folder: The run's folder.
        resume: Continue from ``folder/checkpoint.pt`` when it exists. The checkpoint must come
            from the same model, guide and optimizer type (else a
            :class:`~pyro_vae.CheckpointError` names the first difference); new optimizer
            settings (e.g. another ``lr``) replace the saved ones, with a warning.
        overwrite: Start over in a folder that holds a run.
        every: Save after every ``every``-th epoch (and the last). Default ``None``: after each
            epoch while the time spent saving stays within a twentieth of the time spent
            training (a run of many short epochs saves every few epochs, and a run stopped
            between saves resumes, exactly, from the last one); under data-parallel training,
            every epoch.

    Example:
        >>> Checkpoints("runs/vae", resume=True).resume
        True
    """

    folder: str | os.PathLike
    resume: bool = False
    overwrite: bool = False
    every: int | None = None

    def __post_init__(self) -> None:
        if self.folder is None:
            raise ValueError("Checkpoints needs the run's folder, e.g. Checkpoints('runs/vae')")
        if self.resume and self.overwrite:
            raise ValueError(
                "resume=True continues the run in the folder and overwrite=True deletes it: "
                "pass one"
            )
        if self.every is not None:
            check_int("every", self.every)


@dataclass(frozen=True)
class Validation:
    """Held-out data scored during training: its mean ELBO per point (``β = 1``, the networks
    in eval mode; :func:`~pyro_vae.evaluate`'s) goes to ``History.val_elbo``.

    Args:
        data: Held-out batches or a tensor, for an amortized guide (a per-datapoint guide has
            no parameters for new points: use :func:`~pyro_vae.infer_local`).
        every: Epochs between validations (and after the last one).
        num_particles: Guide samples per point.
        patience: Early stopping, the rule of Pyro's ``examples/cvae``: the run stops once
            this many validations in a row have not raised the validation ELBO above its
            best, and the weights go back to the best validation's: at a stop, before the last
            checkpoint (resuming the stopped run trains no further); after the last epoch, in
            memory only (the checkpoint keeps the last weights, so that a run resumed with more
            epochs continues exactly). ``None``: train every epoch, keep the last weights.

    Example:
        >>> Validation(torch.rand(8, 10).round(), every=5).every
        5
        >>> Validation(torch.rand(8, 10).round(), patience=3).patience
        3
    """

    data: Batches | Loader | DataLoader | Tensor
    every: int = 1
    num_particles: int = 1
    patience: int | None = None

    def __post_init__(self) -> None:
        check_int("every", self.every)
        check_int("num_particles", self.num_particles)
        if self.patience is not None:
            check_int("patience", self.patience)


@dataclass(frozen=True)
class Logging:
    """What a run shows and records as it goes.

    Args:
        progress: Show a tqdm bar with the running loss.
        every: Steps between progress-bar updates (each reads the loss: a host sync).
        tensorboard: A folder for TensorBoard event files (rank 0 only; needs ``pip install
            'pyro_vae[tensorboard]'``): ``train/loss_running`` at every loss read, and per
            epoch ``train/loss``, ``train/beta`` and ``validation/elbo``.
        images_every: Epochs between image grids in ``tensorboard`` (``0``: never): 16
            samples and reconstructions of the first 8 training points, for a
            :class:`~pyro_vae.VAE` of images; drawn with their own random numbers.
        callback: Called as ``callback(epoch, history)`` after every epoch (on every rank).

    Example:
        >>> Logging(progress=False, tensorboard="runs/board").every
        50
    """

    progress: bool = True
    every: int = 50
    tensorboard: str | os.PathLike | None = None
    images_every: int = 0
    callback: Callable[[int, History], None] | None = None

    def __post_init__(self) -> None:
        check_int("every", self.every)
        check_int("images_every", self.images_every, minimum=0)
        if self.images_every and not self.tensorboard:
            raise ValueError("images_every needs tensorboard=... (the TensorBoard folder)")


def flat_options(
    device: torch.device | str | Compute | None,
    save: str | os.PathLike | Checkpoints | None,
    validation: object,
    log: Logging | bool | None,
) -> dict[str, object]:
    """The four arguments as the training loop's flat options."""
    compute = device if isinstance(device, Compute) else Compute(device)
    if save is not None and not isinstance(save, Checkpoints):
        save = Checkpoints(save)
    if validation is not None and not isinstance(validation, Validation):
        validation = Validation(validation)
    if log is None or isinstance(log, bool):
        log = Logging(progress=log is not False)
    if not isinstance(log, Logging):
        raise TypeError(f"log must be a pv.Logging or False; got {type(log).__name__}")
    return {
        "device": compute.device,
        "precision": compute.precision,
        "compile": compute.compile,
        "distributed": compute.distributed,
        "save_dir": save.folder if save is not None else None,
        "resume": save.resume if save is not None else False,
        "overwrite": save.overwrite if save is not None else False,
        "save_every": save.every if save is not None else None,
        "validation": validation.data if validation is not None else None,
        "validate_every": validation.every if validation is not None else 1,
        "validation_particles": validation.num_particles if validation is not None else 1,
        "patience": validation.patience if validation is not None else None,
        "progress": log.progress,
        "log_every": log.every,
        "log_dir": log.tensorboard,
        "log_images_every": log.images_every,
        "callback": log.callback,
    }
