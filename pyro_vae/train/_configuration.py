"""What a resumed run compares with the saved one beside parameters: the networks' settings.

Two kinds, read off the live modules:

- *settings*: each submodule's plain attributes (numbers, strings, booleans, ``None`` and
  tuples of them; e.g. M2's ``alpha``, a conditional VAE's ``mask`` field name), saved in the
  checkpoint. A resumed run whose settings differ continues with its own, with a warning that
  lists them (its history then mixes two objectives).
- *fixed values*: the buffers of the package's own modules that a constructor sets and
  training never changes (a Gaussian likelihood's fixed ``log_scale``, a prior's ``loc`` and
  ``scale``; not a count likelihood's ``mean_total``, a statistic of the data). The checkpoint
  would put the saved values back over the ones this run was built with, so a difference is a
  :class:`~pyro_vae.CheckpointError`.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from .checkpoint import CheckpointError

__all__ = ["check_fixed_values", "settings", "warn_changed_settings"]

_PLAIN = (bool, int, float, str, type(None))
_STATISTICS = ("mean_total",)  # buffers set from the data, not by a constructor


def settings(modules: nn.Module | None) -> dict[str, object]:
    """The plain attributes of every submodule, by ``<submodule>.<attribute>``."""
    out: dict[str, object] = {}
    for prefix, module in modules.named_modules() if modules is not None else ():
        for name, value in vars(module).items():
            if name.startswith("_") or name == "training":
                continue
            plain = isinstance(value, tuple) and all(isinstance(v, _PLAIN) for v in value)
            if isinstance(value, _PLAIN) or plain:
                out[f"{prefix}.{name}" if prefix else name] = value
    return out


def warn_changed_settings(path: Path, saved: dict | None, modules: nn.Module | None) -> None:
    """Warns, listing them, where this run's settings differ from the saved run's."""
    if saved is None:
        return
    live = settings(modules)
    changed = [f"{k}={live.get(k)!r} (saved: {saved.get(k)!r})"
               for k in sorted(set(live) | set(saved)) if live.get(k) != saved.get(k)]  # fmt: skip
    if changed:
        warnings.warn(
            f"resuming {path} with networks whose settings differ from the saved run's: "
            f"{', '.join(changed)}; the run continues with this run's (its history mixes "
            "the two)",
            stacklevel=5,
        )


def check_fixed_values(path: Path, saved: dict, modules: nn.Module | None) -> None:
    """Refuses a resume whose fixed values (module docstring) differ from the checkpoint's."""
    if modules is None:
        return
    for prefix, module in modules.named_modules():
        if not type(module).__module__.startswith("pyro_vae"):
            continue
        for name, value in module.named_buffers(recurse=False):
            key = f"{prefix}.{name}" if prefix else name
            if name in _STATISTICS or key not in saved:
                continue
            old = saved[key].to(value.device)
            if old.shape != value.shape or not torch.equal(old.to(value.dtype), value):
                raise _changed(path, key, old, value)


def _changed(path: Path, key: str, old: torch.Tensor, new: torch.Tensor) -> CheckpointError:
    def show(t: torch.Tensor) -> str:
        if t.numel() <= 6:
            values = [f"{v:.4g}" for v in t.flatten().tolist()]
            return values[0] if t.dim() == 0 else f"[{', '.join(values)}]"
        return f"a tensor of shape {tuple(t.shape)}"

    return CheckpointError(
        f"the checkpoint {path} was trained with {key} = {show(old)}; this run's network has "
        f"{show(new)}, and resuming would put the saved value back. Resume with the settings "
        "it was trained with, or start over with overwrite=True"
    )
