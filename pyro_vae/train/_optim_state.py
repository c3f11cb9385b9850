"""The optimizer's part of a run's state: its type and settings as a checkpoint records them,
and its saved state put back with this run's settings where they differ (a new ``lr`` on
resume replaces the saved one, with a warning; equal ones keep the saved hyperparameters, so
a schedule continues where it was).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pyro.optim

from ..infer.optim import is_row_sparse_group

__all__ = ["optim_settings", "restore_optim", "same_type"]


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
    return {
        "type": _type_name(f"{cls.__module__}.{cls.__qualname__}"),
        "args": dict(args) if isinstance(args, dict) else None,
        "args_by_param": {n: dict(args(n)) for n in names} if callable(args) else None,
        "local_lr": getattr(optim, "local_lr", None),
    }


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
    if not changed and not local_lr_changed:
        return optim_state
    shown = sorted({f"{k}={v!r}" for new in changed.values() for k, v in new.items()})
    if local_lr_changed:
        shown.append(f"local_lr={live['local_lr']!r}")
    warnings.warn(
        f"resuming {path} with new optimizer settings ({', '.join(shown)}): they replace the "
        "checkpoint's",
        stacklevel=5,
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
