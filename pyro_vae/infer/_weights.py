r"""Per-point scores of a Pyro model/guide pair: ELBO terms and log importance weights.

One pass runs the guide and the model replayed against it, as ``pyro.infer.TraceEnum_ELBO``
does (the guide under ``EnumMessenger(first_available_dim=...)``, the model under a second
``EnumMessenger`` that keeps the allocator's state, so model-side enumeration takes the
dimensions left of the guide's), with the particles as an outer ``pyro.plate`` or, for a model
that does not broadcast over one, without it. From the traces, per data point:

.. math::

    \log \tilde p(x, z, e_g) = \log \sum_{e_m} p(x, z, e_g, e_m), \qquad
    \mathrm{ELBO} = \sum_{e_g} \bar q(e_g)\,\big[\log \tilde p(x, z, e_g)
        - \log q(z \mid e_g) - \log q(e_g)\big],

    \log w = \log \sum_{e_g} \bar q(e_g)\,
        \frac{\tilde p(x, z, e_g)}{q(z \mid e_g)\, q(e_g)},

with :math:`e_m` the variables enumerated in the model (summed out exactly; their factors
unmasked, as ``TraceEnum_ELBO`` takes them), :math:`e_g` those enumerated in the guide
(weighted by :math:`\bar q`, the unmasked :math:`q(e_g)` normalized per point, as
``TraceEnum_ELBO``'s Dice weighs them, while :math:`\log q(e_g)` in the bracket is masked: a
point where the site is masked out averages identical branches) and :math:`z` the sampled
latents. Masks
(``poutine.mask``, ``obs_mask``, masked distributions) apply; scales (a subsampled plate's
:math:`N/B`, :class:`~pyro_vae.LatentScale`'s :math:`\beta`) do not: the scores are per point.
Sites marked ``infer={"training_only": True}`` (e.g. M2's auxiliary classification term) are
left out: they shape training, they are not part of :math:`p(x)`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import nullcontext

import pyro
import torch
from pyro import poutine
from pyro.distributions import Independent, MaskedDistribution
from pyro.distributions.util import scale_and_mask
from pyro.poutine.enum_messenger import EnumMessenger
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from torch import Tensor

__all__ = ["TRAINING_ONLY", "Unscaled", "pair_scores", "run_pair", "training_only_hidden"]

TRAINING_ONLY = "training_only"
"""The ``infer`` key that marks a site as a training device, left out of every score."""

_ONE_PLATE = (
    "evaluate scores one importance weight per data point: every sample site of the model and "
    "the guide must be in the data plate (at dim=-1) and in no other plate. A latent outside "
    "it (a global one) couples the points, and a plate inside it needs its own sum; score "
    "such a pair with a Pyro loss over the whole data set (e.g. pyro.infer.Trace_ELBO), or "
    "make the inner plate an event (.to_event(1))"
)


class Unscaled(Messenger):
    """Sets every sample site's scale to 1 (applied outermost: after the plates' and
    ``poutine.scale``'s), so that a Pyro loss scores the per-point quantity."""

    def _process_message(self, msg: dict) -> None:
        if msg["type"] == "sample":
            msg["scale"] = 1.0


def training_only_hidden(fn: Callable[..., object]) -> Callable[..., object]:
    """``fn`` with its training-only sites hidden from every handler outside it."""
    return poutine.block(fn, hide_fn=lambda msg: bool(msg["infer"].get(TRAINING_ONLY)))


def run_pair(
    model: Callable[..., object],
    guide: Callable[..., object],
    x: Tensor,
    idx: Tensor,
    kwargs: Mapping[str, object],
    *,
    particles: int | None,
    max_plate_nesting: int,
) -> tuple[poutine.Trace, poutine.Trace]:
    """The guide's and the replayed model's traces, enumerated as ``TraceEnum_ELBO`` does;
    ``particles`` draws under ``pyro.plate("particles", particles, dim=-1 - nesting)``,
    ``None`` draws one particle without that plate."""
    nesting = max_plate_nesting + (1 if particles is not None else 0)
    plate = (
        pyro.plate("particles", particles, dim=-1 - max_plate_nesting)
        if particles is not None
        else nullcontext()
    )
    try:
        with poutine.block(), plate:
            guide_enum = EnumMessenger(first_available_dim=-1 - nesting)
            guide_trace = poutine.trace(guide_enum(guide)).get_trace(x, idx, **kwargs)
            replayed = poutine.replay(model, trace=guide_trace)
            model_trace = poutine.trace(EnumMessenger()(replayed)).get_trace(x, idx, **kwargs)
    except ValueError as e:
        if "collide" not in str(e):
            raise
        said = next(line for line in str(e).splitlines() if line.strip())
        raise ValueError(f"{_ONE_PLATE} (Pyro: {said.strip()})") from None
    return model_trace, guide_trace


def pair_scores(
    model_trace: poutine.Trace,
    guide_trace: poutine.Trace,
    *,
    particles: int | None,
    num_points: int,
    max_plate_nesting: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per point and particle: the ELBO term, the log importance weight (module docstring)
    and the number of values scored (of every observed site, masks applied: a known label
    is one), each of shape ``(particles or 1, num_points)``."""
    log_p = log_q = log_qe = log_weight = counted = None
    model_dims, guide_dims = set(), set()
    for name, site in _scored_sites(model_trace):
        log_prob = site["fn"].log_prob(site["value"])
        dim = site["infer"].get("_enumerate_dim")
        if dim is not None and name not in guide_trace.nodes:
            model_dims.add(dim)  # a summed-out variable's factor: unmasked (TraceEnum_ELBO's)
        else:
            log_prob = scale_and_mask(log_prob, mask=site["mask"])
        log_p = _plus(log_p, log_prob)
        if site["is_observed"]:
            counted = _plus(counted, _values_scored(site))
    for _, site in _scored_sites(guide_trace):
        unmasked = site["fn"].log_prob(site["value"])
        log_prob = scale_and_mask(unmasked, mask=site["mask"])
        dim = site["infer"].get("_enumerate_dim")
        if dim is not None:  # weighted unmasked, scored masked (TraceEnum_ELBO's Dice)
            guide_dims.add(dim)
            log_qe = _plus(log_qe, log_prob)
            log_weight = _plus(log_weight, unmasked)
        else:
            log_q = _plus(log_q, log_prob)
    zero = torch.zeros((), device=_device(model_trace, guide_trace))
    log_p = _sum_out(_or(log_p, zero), model_dims)
    inner = log_p - _or(log_q, zero)
    if guide_dims:
        dims = sorted(guide_dims)
        inner, log_weight = torch.broadcast_tensors(inner - log_qe, log_weight)
        log_bar = log_weight - log_weight.logsumexp(dims, keepdim=True)
        weight = log_bar.exp()
        elbo = torch.where(weight > 0, weight * inner, torch.zeros_like(inner)).sum(dims)
        log_w = (log_bar + inner).logsumexp(dims)
    else:
        elbo = log_w = inner
    shape = (1 if particles is None else particles, num_points)
    nesting = max_plate_nesting + (1 if particles is not None else 0)
    counted = _or(counted, zero)
    while counted.dim() > nesting:  # the same count in every enumerated branch
        counted = counted[0]
    return tuple(_per_point(t, shape, nesting) for t in (elbo, log_w, counted))  # type: ignore[return-value]


def _scored_sites(trace: poutine.Trace):
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        if site["infer"].get(TRAINING_ONLY):
            continue
        _check_plates(name, site)
        yield name, site


def _check_plates(name: str, site: dict) -> None:
    """Refuses a site outside the data plate or in a second plate (see ``_ONE_PLATE``)."""
    frames = [f for f in site["cond_indep_stack"] if f.name != "particles" and f.vectorized]
    if len(frames) != 1 or frames[0].dim != -1:
        where = ", ".join(f"{f.name!r} (dim={f.dim})" for f in frames) or "no plate"
        raise ValueError(f"{_ONE_PLATE}; the site {name!r} is in {where}")


def _values_scored(site: dict) -> Tensor:
    """How many values an observed site scores per batch element: its event's size, less
    what a masked distribution (``Independent(dist.mask(m))``) or ``poutine.mask`` leaves
    out."""
    fn, reinterpreted = site["fn"], 0
    while isinstance(fn, Independent):
        reinterpreted += fn.reinterpreted_batch_ndims
        fn = fn.base_dist
    event = fn.event_shape.numel()
    mask = getattr(fn, "_mask", None) if isinstance(fn, MaskedDistribution) else None
    if isinstance(mask, Tensor):
        count = mask.expand(fn.batch_shape).to(torch.get_default_dtype())
        count = count.sum(tuple(range(-reinterpreted, 0))) if reinterpreted else count
        count = count * event
    else:
        size = site["fn"].event_shape.numel()
        count = torch.full(site["fn"].batch_shape, float(size), device=site["value"].device)
        if mask is False:
            count = torch.zeros_like(count)
    outer = site["mask"]
    return count if outer is None else scale_and_mask(count, mask=outer)


def _sum_out(log_p: Tensor, dims: set[int]) -> Tensor:
    """``log_p`` with the model's enumerated dimensions summed out (log-sum-exp)."""
    dims = sorted(d for d in dims if -d <= log_p.dim())
    return log_p.logsumexp(dims) if dims else log_p


def _per_point(t: Tensor, shape: tuple[int, int], nesting: int) -> Tensor:
    """A score over the plates' dimensions (``nesting`` of them; the particles' first where
    they have a plate; the data plate last, the others of size 1) as ``(particles, points)``."""
    t = t.reshape((1,) * (nesting - t.dim()) + tuple(t.shape))
    lead = t.shape[0] if nesting > 1 else 1
    return t.reshape(lead, t.shape[-1]).expand(shape)


def _plus(total: Tensor | None, term: Tensor) -> Tensor:
    return term if total is None else total + term


def _or(t: Tensor | None, default: Tensor) -> Tensor:
    return default if t is None else t


def _device(*traces: poutine.Trace) -> torch.device:
    for trace in traces:
        for site in trace.nodes.values():
            if site["type"] == "sample" and isinstance(site["value"], Tensor):
                return site["value"].device
    return torch.device("cpu")
