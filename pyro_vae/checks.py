"""Checks that run once — on an option, a whole data set, or after an epoch — never per step,
and the two protocols the set-up and the loop recognize modules by.

Each check raises an error that names the problem, the value seen, and what to do.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol, runtime_checkable

import pyro
import torch
from torch import Tensor, nn

__all__ = ["DataChecked", "LocalParameters", "check_data", "check_finite_params", "check_int"]


@runtime_checkable
class DataChecked(Protocol):
    """A module that checks a whole data set once before it is used (e.g.
    :meth:`pyro_vae.VAE.check_data`): shape, finite values, support, size. Raises
    :class:`ValueError` naming the problem and the fix."""

    def check_data(self, data: Tensor, *, num_data: int | None = None) -> None: ...


@runtime_checkable
class LocalParameters(Protocol):
    """A guide with parameters per data point (e.g. :class:`~pyro_vae.PerDatapointGaussian`):
    rows ``loc`` for ``num_data`` points, row-sparse gradients when ``sparse`` (they need
    :class:`~pyro_vae.LazyAdam`), and ``shard(start, stop)`` to keep a data-parallel rank's
    rows only. It has no encoder: it cannot score new points."""

    num_data: int
    sparse: bool
    loc: Tensor

    def shard(self, start: int, stop: int) -> None: ...


def check_int(name: str, value: object, *, minimum: int = 1) -> None:
    """Raises a :class:`ValueError` unless ``value`` is an integer ``>= minimum``.

    Example:
        >>> check_int("epochs", 0)
        Traceback (most recent call last):
        ...
        ValueError: epochs must be a positive integer; got 0
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = {0: "a non-negative integer", 1: "a positive integer"}.get(
            minimum, f"an integer >= {minimum}"
        )
        raise ValueError(f"{name} must be {kind}; got {value!r}")


def check_data(modules: nn.Module, data: Tensor, *, num_data: int | None = None) -> None:
    """Runs the ``check_data(data, num_data=N)`` method of every module in ``modules`` that has
    one (e.g. :meth:`pyro_vae.VAE.check_data`: shape, finite values, the likelihood's support,
    a per-datapoint guide's N) on a whole data set, or on the first batch of a streamed one
    (then ``num_data`` is the data set's size)."""
    for module in modules.modules():
        if isinstance(module, DataChecked):
            module.check_data(data, num_data=num_data)


def check_finite_params(
    names: Iterable[str],
    epoch: int,
    hint: str,
    *,
    anywhere: Callable[[bool], bool] | None = None,
) -> None:
    """Raises a :class:`FloatingPointError` naming a parameter of Pyro's param store that is no
    longer finite (a step with a finite loss can still write NaN), with one host sync.
    ``anywhere(flag)`` (data-parallel runs) tells whether any process found one, so that all
    stop together."""
    store = pyro.get_param_store()
    names = [n for n in names if n in store]
    params = [store.get_param(n).unconstrained().detach() for n in names]
    finite = (
        torch.stack([p.isfinite().all() for p in params])
        if params
        else torch.ones(1, dtype=torch.bool)
    )
    bad = not bool(finite.all())
    if anywhere is not None:
        bad = anywhere(bad)
    if bad:
        name = (
            names[int((~finite).nonzero()[0])] if not bool(finite.all()) else "(on another process)"
        )
        raise FloatingPointError(
            f"the parameter {name!r} became non-finite in epoch {epoch}; {hint}"
        )
