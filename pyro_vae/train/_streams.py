"""A run's random streams, saved and restored: torch's (CPU and every CUDA device), Python's
``random``, numpy's global generator (Pyro's ``pyro.set_rng_seed`` seeds all three), and the
private ``torch.Generator``\\ s a DataLoader draws its order and its workers' seeds from
(``DataLoader(generator=g)``, a sampler's ``generator``).

What each stream must hold for a resumed run to draw what the uninterrupted run draws: the
state after the last epoch saved. Worker processes that outlive an epoch
(``persistent_workers=True``) keep streams of their own that no checkpoint can reach:
:func:`loader_caveat` names them.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "global_streams",
    "loader_caveat",
    "loader_generators",
    "loader_states",
    "set_global_streams",
    "set_loader_states",
]


def global_streams() -> dict:
    """The global random streams' states, as data (tensors and numbers)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_global_streams(state: dict) -> None:
    """Restores what :func:`global_streams` returned (a checkpoint without numpy's stream,
    written before it was saved, leaves numpy's as it is)."""
    torch.set_rng_state(state["torch"].cpu())
    python = state["python"]  # (a tuple after torch.load reads it back as a list: both work)
    random.setstate((python[0], tuple(python[1]), python[2]))
    numpy = state.get("numpy")
    if numpy is not None:
        keys = numpy["keys"].cpu().numpy().astype(np.uint32)
        np.random.set_state(
            (numpy["kind"], keys, numpy["pos"], numpy["has_gauss"], numpy["cached"])
        )
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _pipeline(data: object) -> object:
    """The iterable that yields the batches (a DataLoader inside a ``Loader``)."""
    inner = getattr(data, "data", None)  # (data-parallel batches wrap the run's Batches)
    if inner is not None and not hasattr(data, "batches"):
        data = inner
    return getattr(data, "batches", data)


def loader_generators(data: object) -> list[torch.Generator]:
    """The private generators of the run's DataLoader, each once, in a fixed order: the
    loader's ``generator`` (its order and its workers' base seed), its sampler's and its batch
    sampler's sampler's (``[]`` for ``pv.Batches``, which draw from torch's global stream)."""
    loader = _pipeline(data)
    sampler = getattr(loader, "sampler", None)
    batch_sampler = getattr(loader, "batch_sampler", None)
    found: list[torch.Generator] = []
    for owner in (loader, sampler, getattr(batch_sampler, "sampler", None)):
        g = getattr(owner, "generator", None)
        if isinstance(g, torch.Generator) and all(g is not h for h in found):
            found.append(g)
    return found


def loader_states(data: object) -> list[Tensor]:
    """The states of :func:`loader_generators`."""
    return [g.get_state() for g in loader_generators(data)]


def set_loader_states(data: object, states: list[Tensor]) -> bool:
    """Restores :func:`loader_states`; ``False`` when the loader has another number of
    generators than the checkpoint (another pipeline: nothing is restored)."""
    generators = loader_generators(data)
    if len(generators) != len(states):
        return False
    for g, state in zip(generators, states, strict=True):
        g.set_state(state.cpu())
    return True


def loader_caveat(data: object) -> str | None:
    """Why a resumed run may draw other random numbers than the uninterrupted one, for a
    DataLoader whose workers persist across epochs (``None``: no such reason)."""
    loader = _pipeline(data)
    if getattr(loader, "persistent_workers", False) and getattr(loader, "num_workers", 0):
        return (
            "the DataLoader keeps its workers across epochs (persistent_workers=True): their "
            "random streams are not in a checkpoint, so a dataset that draws random numbers "
            "(dynamic binarization, augmentation) draws others after a resume"
        )
    return None
