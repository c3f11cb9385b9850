"""Checkpoints: everything a training run needs to continue exactly where it stopped.

A checkpoint holds the training history, Pyro's param store, the optimizer's state, the
networks' state (parameters *and* buffers, e.g. BatchNorm statistics) and the random number
generators' states. It is written to a temporary file and renamed over the old one, so a
killed process leaves either the old or the new checkpoint, never half of one.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path

import pyro
import pyro.optim
import torch
from pyro import poutine
from torch import Tensor, nn
from torch.distributions import transform_to

__all__ = ["CHECKPOINT", "HISTORY", "load_checkpoint", "save_checkpoint"]

CHECKPOINT = "checkpoint.pt"
HISTORY = "history.json"


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


def save_checkpoint(
    path: str | os.PathLike,
    history: dict,
    optim: pyro.optim.PyroOptim,
    modules: nn.Module | None,
) -> None:
    """Writes a checkpoint atomically (temporary file, then rename).

    Args:
        path: The checkpoint file.
        history: The run's history as a dict (``dataclasses.asdict(History)``).
        optim: The Pyro optimizer whose state to save.
        modules: The networks whose ``state_dict`` to save (buffers included), if any.
    """
    path = Path(path)
    state = {
        "history": history,
        "param_store": pyro.get_param_store().get_state(),
        "optim": optim.get_state(),
        "modules": modules.state_dict() if modules is not None else None,
        "rng": _rng_state(),
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(
    path: str | os.PathLike,
    model: Callable[..., object],
    guide: Callable[..., object],
    batch: tuple[Tensor, Tensor],
    num_data: int,
    optim: pyro.optim.PyroOptim,
    modules: nn.Module | None,
    device: torch.device,
) -> dict:
    """Loads a checkpoint into the live objects and returns the saved history (a dict).

    One forward pass of ``model`` and ``guide`` on ``batch`` first registers every parameter
    in the param store, so that saved values are copied *into* the tensors the modules use (a
    resumed run then trains the same tensors whether a model registers modules or plain
    ``pyro.param``\\ s). Then the modules' state, the optimizer's state and the RNG states are
    restored.
    """
    state = torch.load(path, map_location=device, weights_only=False)
    x, idx = batch
    with poutine.block(), torch.no_grad():
        model(x, idx, num_data=num_data)
        guide(x, idx, num_data=num_data)
    store = pyro.get_param_store()
    saved = state["param_store"]
    with torch.no_grad():
        for name, value in saved["params"].items():
            if name in store:
                store.get_param(name).unconstrained().copy_(value)
            else:
                constraint = saved["constraints"][name]
                store.setdefault(name, transform_to(constraint)(value), constraint)
    if modules is not None and state["modules"] is not None:
        modules.load_state_dict(state["modules"])
    optim.set_state(state["optim"])
    _set_rng_state(state["rng"])
    return state["history"]
