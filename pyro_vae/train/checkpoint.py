"""What a run saves: its :class:`History` (``history.json``) and checkpoints, everything a
training run needs to continue exactly where it stopped, as data.

A checkpoint is the run's history, the values of the model's and guide's parameters (Pyro's
param store, by name), the networks' state (parameters *and* buffers, e.g. BatchNorm
statistics), the optimizer's state (moments, step counts and the current hyperparameters, so a
learning-rate schedule continues), the optimizer's type and settings, the random number
generators' states (torch's, CUDA's, Python's, numpy's, a DataLoader's own generators), the
parameters created after the first step with their constraints, and the loss's and
compiler's settings. It holds only tensors and plain containers and is read with
``torch.load(weights_only=True)``: loading a checkpoint never runs code from it.

Files, in the run's folder: ``checkpoint.pt`` (the latest; what ``resume=True`` reads) and
``checkpoint.prev.pt`` (the one before it, kept so that one bad epoch never destroys a run). A
new checkpoint is written to ``checkpoint.tmp`` and renamed over ``checkpoint.pt``, so a killed
process leaves the old or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..devices.stand_in import StandInTensor

__all__ = ["CheckpointError", "History", "load_checkpoint", "save_model"]

_CHECKPOINT = "checkpoint.pt"
_PREVIOUS = "checkpoint.prev.pt"
_HISTORY = "history.json"
_KEYS = ("history", "params", "optim", "optim_settings", "modules", "rng")


@dataclass
class History:
    """Per-epoch training record.

    Attributes:
        epoch: Epoch numbers, from 1.
        loss: Mean negative ELBO per data point over the epoch's minibatches (nats).
        seconds: Cumulative training wall-clock at the end of each epoch.
        val_epoch: The epochs after which the validation set was evaluated.
        val_elbo: Mean ELBO per validation point at those epochs (nats; ``β = 1``).
        svi_step: ``True`` when the loss has no ``differentiable_loss`` (e.g.
            ``TraceGraph_ELBO``, ``RenyiELBO``) and each step ran ``pyro.infer.SVI.step``,
            which reads the loss (a host sync per step), instead of the sync-free step.

    Example:
        >>> History(epoch=[1], loss=[2.5], seconds=[0.1]).loss
        [2.5]
    """

    epoch: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    val_epoch: list[int] = field(default_factory=list)
    val_elbo: list[float] = field(default_factory=list)
    svi_step: bool = False

    def save(self, path: str | os.PathLike) -> None:
        """Writes the history as JSON, atomically (a temporary file renamed over ``path``: a
        killed process leaves the old history or the new one, never an empty file)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> History:
        """Reads a history written by :meth:`save`."""
        return cls(**json.loads(Path(path).read_text()))


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or that belongs to another model or optimizer."""


_PLAIN = (bool, int, float, str, type(None), torch.dtype, torch.device, torch.Size)


def _as_data(value: object, where: str = "checkpoint") -> object:
    """``value`` as a checkpoint holds it: numpy scalars as Python numbers and numpy arrays as
    tensors, through dicts, lists and tuples (a learning rate given as ``np.float64``, or set
    by a schedule with ``np.cos``, would otherwise be pickled as a numpy object that
    ``weights_only`` loading refuses, so that no checkpoint of the run could be read back).

    Raises:
        TypeError: For anything else that ``torch.load(weights_only=True)`` would not read
            back (named by its place in the checkpoint), when saving, not when loading.
    """
    if isinstance(value, dict):
        return {k: _as_data(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(_as_data(v, f"{where}[{i}]") for i, v in enumerate(value))
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    if type(value) is torch.Tensor or type(value) is nn.Parameter or isinstance(value, _PLAIN):
        return value
    if isinstance(value, StandInTensor):  # (the CUDA stand-in's: saved as CUDA tensors are)
        return value
    raise TypeError(
        f"{where} would hold a {type(value).__module__}.{type(value).__qualname__} "
        f"({value!r:.80}), which torch.load(weights_only=True) cannot read back: the run would "
        "save checkpoints that nothing can resume. Give the optimizer plain numbers (e.g. "
        "{'lr': float(lr)}) and keep objects out of its settings"
    )


def _moved(value: object, device: torch.device | str) -> object:
    """``value`` with its tensors on ``device``, through dicts, lists and tuples."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _moved(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_moved(v, device) for v in value)
    return value


def _write_tmp(state: dict, path: Path) -> Path:
    """Writes ``state`` (as :func:`_as_data` made it) beside ``path``, as ``<path>.tmp`` with
    ``.pt`` replaced (``checkpoint.tmp``), for the caller to rename over ``path``. A write
    that fails (e.g. a full disk) removes the partial file and raises the :class:`OSError`
    of :func:`_refuse_unsaveable`."""
    tmp = path.with_suffix(".tmp")
    try:
        torch.save(state, tmp)
    except (OSError, RuntimeError) as e:
        tmp.unlink(missing_ok=True)
        raise _refuse_unsaveable(path, e) from e
    return tmp


def _refuse_unsaveable(path: Path, error: BaseException) -> OSError:
    """The error for a checkpoint that could not be written (``error``: what torch raised)."""
    detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    try:
        free = shutil.disk_usage(path.parent).free
        space = f"{free / 2**20:.0f} MiB free there"
    except OSError:
        space = "its free space unknown"
    return OSError(
        f"could not write the checkpoint {path} ({detail}; {space}): free space or choose "
        "another run folder, then continue with resume=True (the previous checkpoint is intact)"
    )


def _read_checkpoint(
    path: str | os.PathLike, device: torch.device | str = "cpu", *, keys: tuple[str, ...] = _KEYS
) -> dict:
    """Reads a checkpoint as data (``weights_only=True``) and checks that it is complete.

    Raises:
        CheckpointError: When the file is truncated, empty, not a checkpoint, missing keys, or
            holds anything but tensors and plain containers (e.g. pickled code).
    """
    path = Path(path)
    if path.name.endswith(".prev.pt"):  # already the previous one: no older to fall back on
        advice = "start over with overwrite=True"
    else:
        advice = (
            f"resume from the previous checkpoint (replace {path.name} by "
            f"{path.with_suffix('.prev.pt').name} when it exists) or start over with "
            "overwrite=True"
        )
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"cannot load {path} onto {device}: torch sees no CUDA device here; load it with "
            "map_location='cpu' (the file is not at fault)"
        )
    try:
        # read on the host, then moved (a device without storages of its own, such as the
        # CUDA stand-in, takes tensors but not a map_location)
        state = _moved(torch.load(path, map_location="cpu", weights_only=True), device)
    except Exception as e:  # truncated, random bytes, empty, or code that is not data
        raise CheckpointError(
            f"the checkpoint {path} cannot be read as data ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else 'no details'}); {advice}"
        ) from None
    missing = [k for k in keys if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(
            f"the checkpoint {path} is not a complete pyro_vae checkpoint (missing "
            f"{', '.join(missing)}); {advice}"
        )
    history = state["history"]
    known = {f.name for f in fields(History)}
    if not isinstance(history, dict) or set(history) - known:
        extra = sorted(set(history) - known) if isinstance(history, dict) else type(history)
        raise CheckpointError(
            f"the checkpoint {path} holds a history pyro_vae does not know ({extra}): written "
            f"by another version? Read it with that version, or {advice}"
        )
    return state


def load_checkpoint(
    path: str | os.PathLike,
    module: nn.Module,
    *,
    map_location: torch.device | str = "cpu",
) -> History:
    """Loads the weights and buffers a :func:`~pyro_vae.fit` checkpoint (or a file of
    :func:`save_model`) holds into ``module``
    (e.g. a :class:`~pyro_vae.VAE` built as in training), for inference: no optimizer, no
    ``fit``, no code run from the file (it is read with ``weights_only=True``).

    Args:
        path: A ``checkpoint.pt`` written by ``fit`` (``<folder>/checkpoint.pt``).
        module: The networks ``fit`` trained, built with the same architecture.
        map_location: Where the loaded tensors go first (then into ``module``'s own).

    Returns:
        The run's :class:`History`.

    Raises:
        CheckpointError: When the file is not a readable checkpoint, holds no network state,
            or was written by another architecture (the first differing entry is named).

    Example:
        >>> import tempfile
        >>> def tiny():
        ...     return VAE(StandardNormalPrior(2), BernoulliLikelihood(MLP(2, 6, (8,)), 6),
        ...                GaussianEncoder(MLP(6, 4, (8,)), 2))
        >>> with tempfile.TemporaryDirectory() as run:
        ...     trained = tiny()
        ...     _ = fit(trained.model, trained.guide, Batches(torch.rand(32, 6).round(),
        ...             batch_size=8), epochs=2, save=run, log=False, device="cpu")
        ...     vae = tiny()  # e.g. in another script
        ...     history = load_checkpoint(f"{run}/checkpoint.pt", vae)
        >>> history.epoch, torch.equal(vae.likelihood.decoder[0].weight,
        ...                            trained.likelihood.decoder[0].weight)
        ([1, 2], True)
    """
    path = Path(path)
    state = _read_checkpoint(path, map_location, keys=("history", "modules"))
    saved = state["modules"]
    if saved is None:
        raise CheckpointError(
            f"the checkpoint {path} holds no network state (fit found no nn.Module behind the "
            "model and guide); its parameters are in state['params'], by param-store name"
        )
    own = module.state_dict()
    fix = "build the module with the architecture that was trained"
    for name, value in own.items():
        if name not in saved:
            raise CheckpointError(f"the checkpoint {path} has no entry {name!r}; {fix}")
        if saved[name].shape != value.shape:
            raise CheckpointError(
                f"{name!r} has shape {tuple(saved[name].shape)} in the checkpoint {path} but "
                f"{tuple(value.shape)} in {type(module).__name__}; {fix}"
            )
    extra = [name for name in saved if name not in own]
    if extra:
        raise CheckpointError(
            f"the checkpoint {path} has an entry {extra[0]!r} that {type(module).__name__} "
            f"lacks; {fix}"
        )
    module.load_state_dict(saved)
    return History(**state["history"])


def save_model(
    path: str | os.PathLike,
    module: nn.Module,
    *,
    history: History | None = None,
    overwrite: bool = False,
) -> None:
    """Writes a trained module's weights and buffers (and its history, if given) to ``path``,
    as data that :func:`load_checkpoint` reads back: the way to keep a model trained without
    the run folder (a ``fit`` checkpoint holds the same, with the optimizer's state to resume).

    Args:
        path: The file to write (its folder is created); written atomically.
        module: The trained networks (e.g. a :class:`~pyro_vae.VAE`).
        history: The run's :class:`History` (``fit``'s return value), kept beside the weights.
        overwrite: Replace an existing file (else a :class:`FileExistsError`).

    Example:
        >>> import tempfile
        >>> vae = VAE(StandardNormalPrior(2), BernoulliLikelihood(MLP(2, 6), 6),
        ...           GaussianEncoder(MLP(6, 4), 2))
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     save_model(f"{folder}/vae.pt", vae)
        ...     again = VAE(StandardNormalPrior(2), BernoulliLikelihood(MLP(2, 6), 6),
        ...                 GaussianEncoder(MLP(6, 4), 2))
        ...     _ = load_checkpoint(f"{folder}/vae.pt", again)
        >>> torch.equal(vae.likelihood.decoder[0].weight, again.likelihood.decoder[0].weight)
        True
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder: pass a file name, e.g. {path / 'model.pt'}")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists: pass overwrite=True to replace it, or another path")
    path.parent.mkdir(parents=True, exist_ok=True)
    state = _as_data({"history": asdict(history or History()), "modules": module.state_dict()})
    os.replace(_write_tmp(state, path), path)
