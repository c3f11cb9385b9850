"""Checks that run once — on an option, a whole data set (and its fields), a model/guide pair,
or after an epoch — never per step, and the protocols the set-up and the loop recognize
modules by.

Each check raises an error that names the problem, the value seen, and what to do.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Callable, Iterable
from typing import Protocol, runtime_checkable

import pyro
import torch
from torch import Tensor, nn

__all__ = [
    "BatchChecked",
    "DataChecked",
    "LocalParameters",
    "check_data",
    "check_field",
    "check_finite_params",
    "check_floating",
    "check_int",
    "check_pair",
    "check_takes_fields",
]


@runtime_checkable
class DataChecked(Protocol):
    """A module that checks a whole data set once before it is used (e.g.
    :meth:`pyro_vae.VAE.check_data`): shape, finite values, support, size. Raises
    :class:`ValueError` naming the problem and the fix."""

    def check_data(self, data: Tensor, *, num_data: int | None = None) -> None: ...


@runtime_checkable
class BatchChecked(Protocol):
    """A module that tests a minibatch on the device (e.g. :meth:`pyro_vae.VAE.batch_ok`):
    finite values in the likelihood's support, as a 0-dim bool tensor (no host read)."""

    def batch_ok(self, x: Tensor) -> Tensor: ...


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
    """Raises a :class:`ValueError` unless ``value`` is an integer ``>= minimum`` (a Python or
    a numpy integer).

    Example:
        >>> check_int("epochs", 0)
        Traceback (most recent call last):
        ...
        ValueError: epochs must be a positive integer; got 0
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        kind = {0: "a non-negative integer", 1: "a positive integer"}.get(
            minimum, f"an integer >= {minimum}"
        )
        raise ValueError(f"{name} must be {kind}; got {value!r}")


def check_floating(data: Tensor) -> None:
    """Raises a :class:`ValueError` naming the dtype and the fix unless ``data`` is floating
    point (what networks read).

    Example:
        >>> check_floating(torch.zeros(2, dtype=torch.uint8))
        Traceback (most recent call last):
        ...
        ValueError: the data are torch.uint8; the networks read floating-point values: ...
    """
    if not data.is_floating_point():
        raise ValueError(
            f"the data are {data.dtype}; the networks read floating-point values: convert "
            "them, e.g. x.float() for 0/1 values or x.float() / 255 for 0..255 images"
        )


def check_data(
    modules: nn.Module,
    data: Tensor,
    *,
    num_data: int | None = None,
    fields: dict[str, Tensor] | None = None,
) -> None:
    """Runs the ``check_data(data, num_data=N)`` method of every module in ``modules`` that has
    one (e.g. :meth:`pyro_vae.VAE.check_data`: shape, finite values, the likelihood's support,
    a per-datapoint guide's N) on a whole data set, or on the first batch of a streamed one
    (then ``num_data`` is the data set's size), and ``check_fields(fields)`` of those that
    read fields (e.g. M2's labels)."""
    for module in modules.modules():
        if isinstance(module, DataChecked):
            module.check_data(data, num_data=num_data)
        check_fields = getattr(module, "check_fields", None)
        if callable(check_fields) and fields is not None:
            check_fields(fields)


def check_field(name: str, value: Tensor, dtype: torch.dtype | None = None) -> None:
    """Refuses a field of the data (a label, condition or mask) with non-finite values, or
    with floating values of another dtype than the data's (``dtype``: a float64 condition
    from numpy meets float32 networks), naming it: missing values go in a mask field, not as
    NaN."""
    if dtype is not None and value.is_floating_point() and value.dtype != dtype:
        raise ValueError(
            f"the field {name!r} holds {value.dtype} values and the data {dtype}: the networks "
            f"that read it compute in {dtype}. Convert it, e.g. {name}={name}.to({dtype}) "
            "(a numpy array becomes float64: torch.as_tensor(a, dtype=torch.float32))"
        )
    if value.is_floating_point() and not bool(torch.isfinite(value).all()):
        raise ValueError(
            f"the field {name!r} has values that are not finite (NaN or inf): mark missing "
            "values with a mask field instead (e.g. y_mask=..., read in the model as "
            "pyro.sample(..., obs=y, obs_mask=y_mask)) and put any finite value in their place"
        )


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


def check_pair(
    model: Callable[..., object],
    guide: Callable[..., object],
    x: Tensor,
    idx: Tensor,
    num_data: int | None = None,
    fields: dict[str, Tensor] | None = None,
) -> object:
    """Runs ``guide`` and ``model`` once on ``(x, idx)``, with the batch's ``fields`` as
    keywords (no gradients, nothing recorded, the random streams restored), and raises a
    :class:`ValueError` naming the first latent site where the guide's sample does not have
    the model's event shape — e.g. a prior of dimension 1 with a guide of dimension 3, which
    broadcasting would otherwise score as a plausible, wrong ELBO — or that the guide samples
    and the model lacks."""
    from pyro import poutine  # (pyro's handlers: only this check needs them here)

    kwargs = {} if num_data is None else {"num_data": num_data}
    kwargs.update(fields or {})
    devices = [x.device] if x.device.type == "cuda" and torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices), torch.no_grad(), poutine.block():
        guide_trace = poutine.trace(guide).get_trace(x, idx, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
            x, idx, **kwargs
        )
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"] or name not in guide_trace.nodes:
            continue
        event = getattr(site["fn"], "event_shape", None)  # (a plate's subsample site: none)
        value = site["value"]
        if event is None or not isinstance(value, Tensor):
            continue
        if tuple(value.shape[value.dim() - len(event) :]) != tuple(event):
            raise ValueError(
                f"the guide samples {name!r} with shape {tuple(value.shape)} but the model's "
                f"distribution there has event shape {tuple(event)}: the guide and the model "
                "disagree on the latent dimension; build them with the same one"
            )
    for name, site in guide_trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"] or name in model_trace.nodes:
            continue
        if type(site["fn"]).__name__ == "_Subsample" or site["infer"].get("is_auxiliary"):
            continue
        raise ValueError(
            f"the guide samples {name!r}, which the model has no site for: its density would "
            "enter the ELBO and the importance weights without a model term (a wrong number); "
            "give the model's site the same name, or mark the guide's "
            "infer={'is_auxiliary': True}"
        )
    return model_trace


def check_minibatch_scale(model_trace: object, batch_size: int, num_data: int) -> None:
    """Warns when a minibatch of ``batch_size < num_data`` points enters the model unscaled
    (every site's scale 1): its plate ignores ``num_data``, so the loss ``fit`` reports (the
    data set's, divided by :math:`N`) would be the minibatch's divided by :math:`N`."""
    from pyro.poutine.util import site_is_subsample

    if batch_size >= num_data:
        return
    scales = [site["scale"] for site in model_trace.nodes.values()
              if site["type"] == "sample" and not site_is_subsample(site)]  # fmt: skip
    if scales and all(isinstance(s, (int, float)) and s == 1.0 for s in scales):
        warnings.warn(
            f"the model scores a minibatch of {batch_size} of the {num_data} points without "
            f"scaling it (its plate ignores num_data): the loss fit reports is the data set's "
            f"divided by N only when the plate scales the batch by N / B. Write "
            "pyro.plate('data', num_data, subsample=idx) (fit passes num_data=N)",
            stacklevel=4,
        )


def check_takes_fields(role: str, fn: Callable[..., object], fields: dict[str, Tensor]) -> None:
    """Refuses a model or guide whose signature takes no keyword for a field of the batches
    (a callable without a readable signature, e.g. one wrapped by a Pyro handler, passes: the
    call will tell)."""
    import inspect

    if not fields:
        return
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # no signature to read (a Pyro handler): the call will tell
        return
    if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        return
    missing = [name for name in fields if name not in parameters]
    if missing:
        raise TypeError(
            f"the batches carry the field(s) {', '.join(map(repr, missing))}, which the "
            f"{role} receives as keywords, but {getattr(fn, '__qualname__', role)} takes no "
            f"such argument: add it, e.g. def {role}(x, idx=None, num_data=None, *, "
            f"{missing[0]}=None), or leave the field out of the data"
        )
