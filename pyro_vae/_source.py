"""The set-up every entry point shares: the data source, the networks, the once-only checks.

:func:`~pyro_vae.fit`, :func:`~pyro_vae.evaluate`, :func:`~pyro_vae.infer_local` and
:func:`~pyro_vae.amortization_gap` take data in several forms and a model/guide pair whose
networks they find themselves. :func:`prepare` does that once: it turns the data into a
source of ``(x, idx)`` minibatches (:func:`as_source`), finds the ``nn.Module`` behind the
pair, puts the data and the networks on one device, and runs the checks that read values
once per data set (``check_data``) and the device and dtype check of
every parameter and buffer. What is checked per parameter *site* happens in the first step
(:class:`~pyro_vae._placement.DeviceCheck`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ._checks import check_data, check_field, check_takes_fields
from ._placement import check_module, owner_modules
from .data.batches import Batches, DataSource, split_batch
from .data.loaders import Indexed, Loader

__all__ = ["Prepared", "as_source", "find_modules", "prepare", "record_statistics"]


def as_source(data: object, *, batch_size: int | None = None) -> DataSource:
    """``data`` as minibatches with indices: :class:`~pyro_vae.Batches` and
    :class:`~pyro_vae.Loader` as they are, a ``DataLoader`` over :class:`~pyro_vae.Indexed`
    wrapped in a ``Loader`` (over another dataset it is refused: its items' second element is
    not known to be an index), a tensor ``(N, *event_shape)`` as unshuffled ``Batches`` of
    ``batch_size`` (where given).

    Example:
        >>> as_source(torch.zeros(10, 3), batch_size=4).num_data
        10
    """
    if isinstance(data, DataLoader):
        if not isinstance(data.dataset, Indexed):  # its second element may be a label
            raise TypeError(
                f"a DataLoader over {type(data.dataset).__name__} yields that dataset's items "
                "(e.g. (x, label)), and their second element would be taken for the points' "
                "indices: wrap the dataset, DataLoader(pv.Indexed(dataset), ...), or pass "
                "pv.Loader(loader, num_data=N) if it does yield dataset indices"
            )
        return Loader(data)
    if isinstance(data, Tensor) and batch_size is not None:
        return Batches(data, batch_size=batch_size, shuffle=False)
    if isinstance(data, DataSource):
        return data
    raise TypeError(
        f"expected minibatches with their indices; got {type(data).__name__}. Wrap a tensor: "
        "pv.Batches(x, batch_size=256), or pass a DataLoader over pv.Indexed(dataset)"
    )


def find_modules(
    model: Callable[..., object], guide: Callable[..., object], modules: nn.Module | None = None
) -> nn.Module | None:
    """``modules``, else the ``nn.Module`` whose bound methods ``model`` and ``guide`` are
    (e.g. the :class:`~pyro_vae.VAE` of ``vae.model``), a ``ModuleList`` of them when there are
    several, or ``None`` (a hand-written pair of functions)."""
    if modules is not None:
        return modules
    found = owner_modules(model, guide)
    return found[0] if len(found) == 1 else nn.ModuleList(found) if found else None


@dataclass
class Prepared:
    """What :func:`prepare` returns: the source on its device, the device, the networks."""

    data: DataSource
    device: torch.device
    modules: nn.Module | None


def prepare(
    model: Callable[..., object],
    guide: Callable[..., object],
    data: object,
    *,
    device: torch.device | str | None = None,
    modules: nn.Module | None = None,
    batch_size: int | None = None,
    fix: str = "move the model and the data to one device and dtype (e.g. vae.to(data.device))",
    training: bool = False,
) -> Prepared:
    """Normalizes ``data`` (:func:`as_source`), finds the networks (:func:`find_modules`),
    puts both on one device and checks them against the data, once.

    With ``device`` (training) the data and the networks are moved there. Without it
    (scoring, local inference) nothing of the model moves: a streamed source goes to the
    networks' device as it comes, a tensor stays where it is. Then every parameter and buffer
    must be on the data's device and of its floating dtype (else a :class:`ValueError` with
    ``fix``), and each network's ``check_data`` sees the whole data set (a streamed one: its
    first batch). With ``training``, the statistics a likelihood keeps of its training set
    (a count likelihood's ``record_mean_total``) are set from the whole of ``data``; scoring
    leaves every module as it is.
    """
    source = as_source(data, batch_size=batch_size)
    found = find_modules(model, guide, modules)
    if device is not None:
        device = torch.device(device)
        if found is not None:
            found.to(device)
    elif isinstance(source, Loader):  # streamed: to the networks' device, batch by batch
        devices = {p.device for p in found.parameters()} if found is not None else set()
        device = devices.pop() if len(devices) == 1 else None
    source = source.to(device) if device is not None else source
    if source.points.dtype == torch.float16:
        raise ValueError(
            "the data are float16 (half precision), whose range (largest 65504, smallest "
            "normal 6e-5) cannot hold a VAE's log-densities summed over pixels nor Adam's "
            "squared gradients: the loss becomes NaN within steps. Train and score in float32 "
            "(x.float(), vae.float()), or in bfloat16 (x.bfloat16(), vae.bfloat16())"
        )
    fields = getattr(source, "fields", {})  # (a streamed source: its first batch's)
    if found is not None:
        check_module(found, source.device, source.points.dtype, fix=fix)
        check_data(found, source.points, num_data=source.num_data, fields=fields)
        if training:
            record_statistics(found, source)
    for name, value in fields.items():
        check_field(name, value, source.points.dtype)
    check_takes_fields("model", model, fields)
    check_takes_fields("guide", guide, fields)
    return Prepared(source, source.device, found)


def record_statistics(modules: nn.Module, source: DataSource) -> None:
    """Gives each module with a ``record_mean_total`` method (the count likelihoods) the
    training set's mean total count: of the whole tensor, or summed over one pass of a
    streamed source (on the device, read once)."""
    takers = [m for m in modules.modules() if callable(getattr(m, "record_mean_total", None))]
    if not takers:
        return
    if isinstance(source, Loader):  # one pass, a batch at a time (nothing kept)
        total, count = torch.zeros((), dtype=torch.float64, device=source.device), 0
        with torch.random.fork_rng():  # (a shuffling loader: the run's stream is kept)
            for batch in source:
                x = split_batch(batch)[0]
                total, count = total + _totals(x).sum(), count + len(x)
        mean_total = total / max(count, 1)
    else:
        mean_total = _totals(source.points).mean()
    for module in takers:
        module.record_mean_total(mean_total)


def _totals(x: Tensor) -> Tensor:
    """Each point's total count, in float64."""
    return x.reshape(len(x), -1).sum(-1).double()
