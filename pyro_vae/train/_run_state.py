"""A run's whole state, gathered into a checkpoint and restored from one: :class:`RunState`.

What a continuation depends on is gathered in one place: every parameter the run trains (those
its first step registered, and those created later, found through the optimizer's state, with
their constraints), the networks' state with buffers, the optimizer's state (including state
loaded from a checkpoint and not yet used) and settings, every random stream (torch's, CUDA's,
Python's, numpy's, the DataLoader's generators), the loss's and compiler's settings, the epoch
(in the history) and the number of data-parallel processes. Everything gathered is checked to
read back with ``torch.load(weights_only=True)`` *before* the file is written
(:func:`~pyro_vae.train.checkpoint._as_data`). How a checkpoint is read as data:
:mod:`pyro_vae.train.checkpoint`.
"""

from __future__ import annotations

import os
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
from . import _configuration, _streams
from ._constraints import constraint_from_data, constraint_to_data
from ._derivation import settle_nesting
from ._optim_state import optim_settings, restore_optim, same_type
from .checkpoint import CheckpointError, _as_data, _read_checkpoint, _write_tmp

__all__ = ["Live", "RunState", "loss_settings"]


class Live(NamedTuple):
    """The live objects of a run that its state is gathered from and restored into."""

    model: Callable[..., object]
    guide: Callable[..., object]
    optim: pyro.optim.PyroOptim
    modules: nn.Module | None
    device: torch.device
    data: object = None  # the batches (their DataLoader's generators)
    loss: object = None  # the Pyro loss
    compile: str | None = None  # torch.compile's mode, None: eager
    precision: str = "32"  # fit's precision=
    step: object = None  # the training step (which estimator it took: saved, followed)
    beta: float | str = 1.0  # the KL weight, or "a schedule"


def loss_settings(
    loss: object, compile: str | None, precision: str = "32", beta: float | str = 1.0
) -> dict:
    """The loss's type and particle settings, its KL weight, the compile mode and the
    precision, as a checkpoint keeps them (a resumed run with other ones is told so)."""
    cls = type(loss)
    return {
        "loss": f"{cls.__module__}.{cls.__qualname__}",
        "num_particles": getattr(loss, "num_particles", None),
        "vectorize_particles": getattr(loss, "vectorize_particles", None),
        "compile": compile,
        "precision": precision,
        "beta": beta,
    }


class RunState:
    """A run's state: gathered into a checkpoint by :meth:`save`, restored by :meth:`restore`.

    Args:
        live: The run's live objects.
        names: The param-store names of the run's parameters, in order: the dict the training
            step fills at its first call (parameters found later are added to it, so the
            epoch's finiteness check sees them too).
        world_size: The number of data-parallel processes (each saves its own state).
    """

    def __init__(self, live: Live, names: dict[str, None], *, world_size: int = 1) -> None:
        self.live, self.names, self.world_size = live, names, world_size
        self.late: dict[str, dict] = {}  # created after the first step: name -> constraint

    def track(self) -> dict[str, None]:
        """The run's parameter names, with any the optimizer has met since the first step
        (a parameter a model creates late, e.g. when an index first appears)."""
        optim, store = self.live.optim, pyro.get_param_store()
        stepped = [store.param_name(p) for p in optim.optim_objs]
        for name in stepped + list(getattr(optim, "_state_waiting_to_be_consumed", {})):
            if name is not None and name not in self.names and name in store:
                self.names[name] = None
                self.late[name] = constraint_to_data(store._constraints[name], name)
        return self.names

    def gather(self, history: dict) -> dict:
        """Everything the run's continuation depends on, as data (checked to load back with
        ``weights_only=True``: a :class:`TypeError` names what would not)."""
        names, live = list(self.track()), self.live
        store = pyro.get_param_store()
        optim = live.optim
        waiting = dict(getattr(optim, "_state_waiting_to_be_consumed", {}))
        state = {
            "history": history,
            "params": {name: store.get_param(name).unconstrained().detach() for name in names},
            "late": self.late,
            "optim": {**waiting, **optim.get_state()},
            "optim_settings": optim_settings(optim, names),
            "modules": live.modules.state_dict() if live.modules is not None else None,
            "rng": _streams.global_streams(),
            "loaders": _streams.loader_states(live.data),
            "settings": loss_settings(live.loss, live.compile, live.precision, live.beta),
            "derived": bool(getattr(live.step, "derived", False)),
            "network_settings": _configuration.settings(live.modules),
            "world_size": self.world_size,
        }
        return _as_data(state)

    def save(self, path: str | os.PathLike, history: dict) -> None:
        """Writes the state atomically (``checkpoint.tmp`` renamed over ``path``), keeping the
        previous checkpoint as ``checkpoint.prev.pt``. A write that fails (e.g. a full disk)
        leaves the previous files as they were and raises an :class:`OSError` that names the
        folder."""
        path = Path(path)
        tmp = _write_tmp(self.gather(history), path)
        if path.exists():  # keep the last good checkpoint: checkpoint.pt stays valid throughout
            previous, link = path.with_suffix(".prev.pt"), path.with_suffix(".link")
            try:
                os.link(path, link)
            except OSError:
                shutil.copyfile(path, link)
            os.replace(link, previous)
        os.replace(tmp, path)

    def restore(self, path: str | os.PathLike, batch: tuple, num_data: int) -> dict:
        """Loads a checkpoint into the live objects; returns the saved history (a dict).

        One forward pass of the model and guide on ``batch`` first registers every parameter,
        so that saved values are copied *into* the tensors the networks use; parameters the
        saved run created later are created with their saved constraints. The checkpoint must
        match (the same parameters and shapes, module keys, optimizer type, number of
        processes), else a :class:`CheckpointError` names the first difference. Optimizer
        settings that differ replace the saved ones, and another loss or compile setting is
        used, each with a warning. The random streams are restored last.
        """
        path, live = Path(path), self.live
        state = self._read(path)
        x, idx, fields = split_batch(batch)
        with poutine.block(), poutine.trace(param_only=True) as capture, torch.no_grad():
            live.model(x, idx, num_data=num_data, **fields)
            live.guide(x, idx, num_data=num_data, **fields)
        settle_nesting(live.loss, live.model, live.guide, x, idx, num_data=num_data, **fields)
        names = list(capture.trace.nodes)
        late = state.get("late", {})
        if state["modules"] is not None:  # before the checkpoint writes over them
            _configuration.check_fixed_values(path, state["modules"], live.modules)
        self._load_params(path, state["params"], names, late)
        self._load_modules(path, state["modules"])
        _configuration.warn_changed_settings(path, state.get("network_settings"), live.modules)
        restore_optim(live.optim, state["optim"], state["optim_settings"], list(self.names), path)
        self._compare_settings(path, state.get("settings"))
        if live.step is not None:  # the estimator the saved run took
            live.step.follow(derived=state.get("derived", False))
        _streams.set_global_streams(state["rng"])
        if not _streams.set_loader_states(live.data, state.get("loaders", [])):
            warnings.warn(
                f"the checkpoint {path} holds {len(state.get('loaders', []))} DataLoader "
                f"generator states, this run's DataLoader has "
                f"{len(_streams.loader_generators(live.data))}: its order is not restored",
                stacklevel=4,
            )
        caveat = _streams.loader_caveat(live.data)
        if caveat is not None:
            warnings.warn(f"resuming {path}: {caveat}", stacklevel=4)
        return state["history"]

    def _read(self, path: Path) -> dict:
        if not path.exists():
            raise CheckpointError(
                f"{path} is missing: the run in {path.parent} was saved by another number of "
                f"processes than this one's {self.world_size}; resume with that number, or "
                "start over with overwrite=True"
            )
        state = _read_checkpoint(path, self.live.device)
        saved = state.get("world_size", 1)
        if saved != self.world_size:
            raise CheckpointError(
                f"the checkpoint {path} was written by {saved} data-parallel processes; this "
                f"run has {self.world_size}. Resume with {saved} processes, or start over with "
                "overwrite=True"
            )
        saved_type, live_type = state["optim_settings"]["type"], optim_settings(self.live.optim)
        if not same_type(saved_type, live_type["type"]):
            raise CheckpointError(
                f"the checkpoint {path} was trained with the optimizer {saved_type}; this run "
                f"uses {live_type['type']}. Resume with the same optimizer type, or start over "
                "with overwrite=True"
            )
        return state

    def _load_params(
        self, path: Path, saved: dict[str, Tensor], names: list[str], late: dict[str, dict]
    ) -> None:
        fix = "resume with the model and guide that wrote it, or start over with overwrite=True"
        store = pyro.get_param_store()
        for name in names:
            if name not in saved:
                raise CheckpointError(
                    f"the checkpoint {path} has no parameter {name!r} (this run's model or "
                    f"guide is not the one that wrote it); {fix}"
                )
        for name, value in saved.items():
            if name not in names and name not in late:
                raise CheckpointError(
                    f"the checkpoint {path} has a parameter {name!r} that this run's model and "
                    f"guide do not register; {fix}"
                )
            if name not in names:  # created after the saved run's first step: create it now
                constraint = constraint_from_data(late[name])
                store.setdefault(name, torch.zeros_like(value), constraint)
                self.late[name] = late[name]
            live = store.get_param(name).unconstrained()
            if live.shape != value.shape:
                raise CheckpointError(
                    f"the parameter {name!r} has shape {tuple(value.shape)} in the checkpoint "
                    f"{path} but {tuple(live.shape)} in this run; {fix}"
                )
            with torch.no_grad():
                live.copy_(value)
            self.names.setdefault(name)

    def _load_modules(self, path: Path, saved: dict | None) -> None:
        modules = self.live.modules
        if modules is None:
            return
        if saved is None:
            raise CheckpointError(
                f"the checkpoint {path} holds no network state but this run trains "
                f"{type(modules).__name__}; start over with overwrite=True"
            )
        try:
            modules.load_state_dict(saved)
        except RuntimeError as e:
            raise CheckpointError(
                f"the checkpoint {path} was written by other networks: {e}"
            ) from None

    def _compare_settings(self, path: Path, saved: dict | None) -> None:
        live = self.live
        live = loss_settings(live.loss, live.compile, live.precision, live.beta)
        if saved is None:
            return
        saved = {"precision": "32", "beta": 1.0, **saved}  # (older checkpoints: the defaults)
        if saved == live:
            return
        changed = [f"{k}={live[k]!r} (saved: {saved.get(k)!r})" for k in live
                   if saved.get(k) != live[k]]  # fmt: skip
        warnings.warn(
            f"resuming {path} with other settings than it was trained with: "
            f"{', '.join(changed)}; the run continues with this run's",
            stacklevel=4,
        )
