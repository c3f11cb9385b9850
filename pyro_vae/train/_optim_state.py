"""The optimizer's part of a run's state: its type and settings as a checkpoint records them,
and its saved state put back with this run's settings where they differ (a new ``lr`` or a
new setting of a learning-rate scheduler on resume replaces the saved one, with a warning;
equal ones keep the saved hyperparameters, so a schedule continues where it was); and the
once-an-epoch step of a Pyro learning-rate scheduler.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pyro.optim
import torch
from pyro.optim.lr_scheduler import PyroLRScheduler

from ..infer.optim import is_row_sparse_group
from .checkpoint import CheckpointError

__all__ = ["optim_settings", "restore_optim", "same_type", "step_schedule"]

_DATA = (bool, int, float, str, type(None))


def _type_name(name: str) -> str:
    """An optimizer type's name as checkpoints compare it: the package's own classes by their
    public name (``pyro_vae.LazyAdam``, whichever module holds it, so that a checkpoint outlives
    a move of the class), others by module and qualified name."""
    return f"pyro_vae.{name.rsplit('.', 1)[-1]}" if name.startswith("pyro_vae.") else name


def same_type(saved: str, live: str) -> bool:
    """Whether a checkpoint's optimizer type is this run's."""
    return _type_name(saved) == _type_name(live)


def optim_settings(optim: pyro.optim.PyroOptim, names: list[str] = ()) -> dict:
    """The optimizer's type and settings: its arguments (a dict; a callable's values for each
    parameter name in ``names``, ``args_by_param``) and ``local_lr``."""
    cls = type(optim)
    args = getattr(optim, "pt_optim_args", None)
    name = _type_name(f"{cls.__module__}.{cls.__qualname__}")
    schedule = None
    if isinstance(optim, PyroLRScheduler):  # (one Pyro class for every torch scheduler)
        inner = (optim.pt_scheduler_constructor, optim.pt_optim_constructor)
        name += f"({', '.join(f'{c.__module__}.{c.__qualname__}' for c in inner)})"
        schedule = {k: v for k, v in optim.kwargs.items() if isinstance(v, _DATA)}
    return {
        "type": name,
        "args": dict(args) if isinstance(args, dict) else None,
        "args_by_param": {n: dict(args(n)) for n in names} if callable(args) else None,
        "local_lr": getattr(optim, "local_lr", None),
        "schedule": schedule,
    }


def step_schedule(
    optim: pyro.optim.PyroOptim, loss: float, val_elbo: float | None, *, validated: bool
) -> None:
    """After an epoch: a Pyro learning-rate scheduler (a
    :class:`~pyro.optim.lr_scheduler.PyroLRScheduler` such as ``pyro.optim.ExponentialLR``)
    takes its step, as Pyro's docs step it after each epoch. ``ReduceLROnPlateau`` steps on the
    validation loss (:math:`-` ``val_elbo``) where the run has a validation set
    (``validated``; only after the epochs it validates), else on the epoch's training loss
    ``loss``. Other optimizers: nothing.

    Example:
        >>> sched = pyro.optim.ExponentialLR(
        ...     {"optimizer": torch.optim.Adam, "optim_args": {"lr": 0.1}, "gamma": 0.5})
        >>> p = torch.zeros(1, requires_grad=True)
        >>> p.grad = torch.ones(1)
        >>> sched([p])
        >>> step_schedule(sched, loss=1.0, val_elbo=None, validated=False)
        >>> sched.optim_objs[p].optimizer.param_groups[0]["lr"]
        0.05
    """
    if not isinstance(optim, PyroLRScheduler):
        return
    if issubclass(optim.pt_scheduler_constructor, torch.optim.lr_scheduler.ReduceLROnPlateau):
        if not validated:
            optim.step(loss)
        elif val_elbo is not None:
            optim.step(-val_elbo)
    else:
        optim.step()


def restore_optim(
    optim: pyro.optim.PyroOptim, state: dict, saved: dict, names: list[str], path: Path
) -> None:
    """Gives ``optim`` the saved per-parameter ``state`` (used when each parameter is next
    stepped), with this run's settings where they differ from the ``saved`` settings."""
    optim.set_state(_with_settings(state, saved, optim_settings(optim, names), path))


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
    schedule = _changed_schedule(optim_state, saved.get("schedule"), live.get("schedule"), path)
    if not changed and not local_lr_changed and not schedule:
        return optim_state
    shown = sorted({f"{k}={v!r}" for new in changed.values() for k, v in new.items()})
    shown += sorted(f"{k}={v!r}" for k, v in schedule.items())
    if local_lr_changed:
        shown.append(f"local_lr={live['local_lr']!r}")
    warnings.warn(
        f"resuming {path} with new optimizer settings ({', '.join(shown)}): they replace the "
        "checkpoint's",
        stacklevel=5,
    )
    for name, per_param in optim_state.items():
        if "scheduler" in per_param:  # (a scheduler's state and its optimizer's)
            per_param["scheduler"].update(schedule)
            per_param = per_param["optimizer"]
        for group in per_param.get("param_groups", []):
            sparse = is_row_sparse_group(group)
            for k, v in changed.get(name, {}).items():
                if k in group and not (sparse and k == "lr" and live["local_lr"] is not None):
                    group[k] = v
            if sparse and live["local_lr"] is not None:
                group["lr"] = live["local_lr"]
    return optim_state


def _changed_schedule(optim_state: dict, saved: dict | None, live: dict | None, path: Path) -> dict:
    """A learning-rate scheduler's settings that this run changes (``{}``: none); a setting the
    scheduler's saved state does not hold under its own name cannot replace it: an error."""
    if not live or saved is None:
        return {}
    new = {k: v for k, v in live.items() if saved.get(k, object()) != v}
    states = [s["scheduler"] for s in optim_state.values() if "scheduler" in s]
    for k, v in new.items():
        if any(k not in state for state in states):
            raise CheckpointError(
                f"resuming {path} with the scheduler setting {k}={v!r} (the checkpoint's: "
                f"{saved.get(k, 'none')!r}), which the scheduler's saved state does not hold "
                f"as such: it cannot replace it. Resume with {k}={saved.get(k)!r}, or start "
                "over with overwrite=True"
            )
    return new
