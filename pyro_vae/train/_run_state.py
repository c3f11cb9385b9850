"""A run's state saved and loaded back into the live objects: :func:`save_checkpoint` writes
one atomically (keeping the previous one), :func:`resume_run` loads one into a run's model,
guide, optimizer and networks (:class:`Live`) after checking that it comes from the same run.
What a checkpoint holds, and how it is read as data: :mod:`pyro_vae.train.checkpoint`.
"""

from __future__ import annotations

import os
import random
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pyro
import pyro.optim
import torch
from pyro import poutine
from torch import Tensor, nn

from ..data.batches import split_batch
from ..infer.optim import is_row_sparse_group
from .checkpoint import CheckpointError, read_checkpoint

__all__ = ["Live", "resume_run", "save_checkpoint"]


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"].cpu())
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _type_name(name: str) -> str:
    """An optimizer type's name as checkpoints compare it: the package's own classes by their
    public name (``pyro_vae.LazyAdam``, whichever module holds it, so that a checkpoint outlives
    a move of the class), others by module and qualified name."""
    return f"pyro_vae.{name.rsplit('.', 1)[-1]}" if name.startswith("pyro_vae.") else name


def _settings(optim: pyro.optim.PyroOptim, names: list[str] = ()) -> dict:
    """The optimizer's type and settings: its arguments (a dict; a callable's values for each
    parameter name in ``names``, ``args_by_param``) and ``local_lr``."""
    cls = type(optim)
    args = getattr(optim, "pt_optim_args", None)
    return {
        "type": _type_name(f"{cls.__module__}.{cls.__qualname__}"),
        "args": dict(args) if isinstance(args, dict) else None,
        "args_by_param": {n: dict(args(n)) for n in names} if callable(args) else None,
        "local_lr": getattr(optim, "local_lr", None),
    }


def save_checkpoint(
    path: str | os.PathLike,
    history: dict,
    optim: pyro.optim.PyroOptim,
    modules: nn.Module | None,
    param_names: list[str],
    *,
    world_size: int = 1,
) -> None:
    """Writes a checkpoint atomically and keeps the previous one as ``checkpoint.prev.pt``.

    Args:
        path: The checkpoint file.
        history: The run's history as a dict (``dataclasses.asdict(History)``).
        optim: The Pyro optimizer whose state and settings to save.
        modules: The networks whose ``state_dict`` to save (buffers included), if any.
        param_names: The param-store names of the run's parameters.
        world_size: The number of data-parallel processes (each saves its own checkpoint).
    """
    path = Path(path)
    store = pyro.get_param_store()
    state = {
        "history": history,
        "params": {name: store.get_param(name).unconstrained().detach() for name in param_names},
        "optim": optim.get_state(),
        "optim_settings": _settings(optim, param_names),
        "modules": modules.state_dict() if modules is not None else None,
        "rng": _rng_state(),
        "world_size": world_size,
    }
    state = _as_data(state)  # (what torch.load(weights_only=True) reads back)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    if path.exists():  # keep the last good checkpoint: checkpoint.pt stays valid throughout
        previous, link = path.with_suffix(".prev.pt"), path.with_suffix(".link")
        try:
            os.link(path, link)
        except OSError:
            shutil.copyfile(path, link)
        os.replace(link, previous)
    os.replace(tmp, path)


def _as_data(value: object) -> object:
    """``value`` with numpy scalars as Python numbers and numpy arrays as tensors, through
    dicts, lists and tuples: a learning rate given as ``np.float64`` (or set by a schedule with
    ``np.cos``) would otherwise be pickled as a numpy object, which ``weights_only`` loading
    refuses, so that no checkpoint of the run could be read back."""
    import numpy as np

    if isinstance(value, dict):
        return {k: _as_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(_as_data(v) for v in value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    return value


class Live(NamedTuple):
    """The live objects of a run that a checkpoint is loaded into."""

    model: Callable[..., object]
    guide: Callable[..., object]
    optim: pyro.optim.PyroOptim
    modules: nn.Module | None
    device: torch.device


def resume_run(
    path: str | os.PathLike,
    live: Live,
    batch: tuple,
    num_data: int,
    *,
    world_size: int = 1,
) -> tuple[dict, list[str]]:
    """Loads a checkpoint into the live objects and returns the saved history (a dict) and the
    run's parameter names.

    One forward pass of ``live.model`` and ``live.guide`` on ``batch`` first registers every
    parameter in the param store, so that saved values are copied *into* the tensors the
    modules use (a resumed run then trains the same tensors whether a model registers modules
    or plain ``pyro.param``\\ s). The checkpoint must match: the same parameter names and
    shapes, the same module state keys, the same optimizer type; else a :class:`CheckpointError`
    names the first difference. Optimizer settings (``optim_args``, ``local_lr``) that differ
    from the checkpoint's replace the saved hyperparameters (with a warning); equal ones restore
    the saved hyperparameters, so a schedule continues where it was.
    """
    path, (model, guide, optim, modules, device) = Path(path), live
    if not path.exists():
        raise CheckpointError(
            f"{path} is missing: the run in {path.parent} was saved by another number of "
            f"processes than this one's {world_size}; resume with that number, or start over "
            "with overwrite=True"
        )
    state = read_checkpoint(path, device)
    if state.get("world_size", 1) != world_size:
        raise CheckpointError(
            f"the checkpoint {path} was written by {state.get('world_size', 1)} data-parallel "
            f"processes; this run has {world_size}. Resume with "
            f"{state.get('world_size', 1)} processes, or start over with overwrite=True"
        )
    settings = _settings(optim)
    saved_settings = state["optim_settings"]
    if _type_name(saved_settings["type"]) != settings["type"]:
        raise CheckpointError(
            f"the checkpoint {path} was trained with the optimizer {saved_settings['type']}; "
            f"this run uses {settings['type']}. Resume with the same optimizer type, or start "
            "over with overwrite=True"
        )
    x, idx, fields = split_batch(batch)
    with poutine.block(), poutine.trace(param_only=True) as capture, torch.no_grad():
        model(x, idx, num_data=num_data, **fields)
        guide(x, idx, num_data=num_data, **fields)
    names = list(capture.trace.nodes)
    _check_params(path, state["params"], names)
    store = pyro.get_param_store()
    with torch.no_grad():
        for name in names:
            store.get_param(name).unconstrained().copy_(state["params"][name])
    if modules is not None:
        if state["modules"] is None:
            raise CheckpointError(
                f"the checkpoint {path} holds no network state but this run trains "
                f"{type(modules).__name__}; start over with overwrite=True"
            )
        try:
            modules.load_state_dict(state["modules"])
        except RuntimeError as e:
            raise CheckpointError(
                f"the checkpoint {path} was written by other networks: {e}"
            ) from None
    settings = _settings(optim, names)  # (a callable's arguments, per parameter)
    optim.set_state(_with_settings(state["optim"], saved_settings, settings, path))
    _set_rng_state(state["rng"])
    return state["history"], names


def _check_params(path: Path, saved: dict[str, Tensor], names: list[str]) -> None:
    fix = "resume with the model and guide that wrote it, or start over with overwrite=True"
    for name in names:
        if name not in saved:
            raise CheckpointError(
                f"the checkpoint {path} has no parameter {name!r} (this run's model or guide "
                f"is not the one that wrote it); {fix}"
            )
    for name, value in saved.items():
        if name not in names:
            raise CheckpointError(
                f"the checkpoint {path} has a parameter {name!r} that this run's model and "
                f"guide do not register; {fix}"
            )
        live = pyro.get_param_store().get_param(name).unconstrained()
        if live.shape != value.shape:
            raise CheckpointError(
                f"the parameter {name!r} has shape {tuple(value.shape)} in the checkpoint "
                f"{path} but {tuple(live.shape)} in this run; {fix}"
            )


def _with_settings(optim_state: dict, saved: dict, live: dict, path: Path) -> dict:
    """The saved per-parameter optimizer states, with the live settings where they differ from
    the saved settings (dict arguments, a callable's per-parameter values, ``local_lr``)."""
    changed: dict[str, dict] = {}  # parameter name -> the hyperparameters that changed
    if live["args"] is not None and saved["args"] is not None:
        new = {k: v for k, v in live["args"].items() if saved["args"].get(k, object()) != v}
        changed = {name: new for name in optim_state} if new else {}
    by_param, saved_by_param = live.get("args_by_param"), saved.get("args_by_param")
    if by_param is not None and saved_by_param is not None:
        for name, args in by_param.items():
            old = saved_by_param.get(name, {})
            new = {k: v for k, v in args.items() if old.get(k, object()) != v}
            if new and name in optim_state:
                changed[name] = new
    local_lr_changed = live["local_lr"] != saved["local_lr"]
    if not changed and not local_lr_changed:
        return optim_state
    shown = sorted({f"{k}={v!r}" for new in changed.values() for k, v in new.items()})
    if local_lr_changed:
        shown.append(f"local_lr={live['local_lr']!r}")
    warnings.warn(
        f"resuming {path} with new optimizer settings ({', '.join(shown)}): they replace the "
        "checkpoint's",
        stacklevel=3,
    )
    for name, per_param in optim_state.items():
        for group in per_param.get("param_groups", []):
            sparse = is_row_sparse_group(group)
            for k, v in changed.get(name, {}).items():
                if k in group and not (sparse and k == "lr" and live["local_lr"] is not None):
                    group[k] = v
            if sparse and live["local_lr"] is not None:
                group["lr"] = live["local_lr"]
    return optim_state
