r"""Evaluation: ELBO and importance-sampled :math:`\log p(x)` of any Pyro model/guide pair.

For a data point :math:`x` and :math:`K` guide samples :math:`z_k \sim q(z \mid x)`, the
importance weights are :math:`w_k = p(x, z_k) / q(z_k \mid x)`. Then

.. math::

    \mathrm{ELBO}(x) \approx \frac1K \sum_k \log w_k, \qquad
    \log p(x) \approx \log \frac1K \sum_k w_k \quad (\text{Burda et al. 2016, IWAE}),

the second a stochastic lower bound that tightens to :math:`\log p(x)` as :math:`K` grows.
Particles are vectorized by an outer ``pyro.plate("particles", K, dim=-2)`` and chunked so that
``points × particles`` stays below ``max_rows``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from torch import Tensor
from torch.utils.data import DataLoader

from .._checks import check_int, check_pair
from ..data._source import prepare
from ..data.batches import Batches, split_batch
from ..data.loaders import Loader
from ..devices._placement import DeviceCheck
from ..devices._world import all_sum, get_world
from ..devices.precision import check_precision, use_precision
from ..models.nets import modes

__all__ = ["Evaluation", "evaluate", "log_weights"]


@torch.no_grad()
def log_weights(
    model: Callable[..., object],
    guide: Callable[..., object],
    x: Tensor,
    idx: Tensor | None = None,
    *,
    num_particles: int = 1,
    max_plate_nesting: int = 1,
    num_data: int | None = None,
    fields: Mapping[str, Tensor] | None = None,
) -> Tensor:
    r"""Log importance weights :math:`\log p(x_n, z_{kn}) - \log q(z_{kn} \mid x_n)`.

    Args:
        model: A Pyro model ``model(x, idx)`` whose data plate is its only plate
            (``max_plate_nesting`` plates in all, the data plate at ``dim=-1``).
        guide: The matching guide.
        x: A minibatch, shape ``(B, *event_shape)``.
        idx: Its dataset indices ``(B,)`` (for per-datapoint guides).
        num_particles: :math:`K`, drawn in one vectorized pass.
        max_plate_nesting: Plates nested in ``model`` and ``guide``.
        num_data: :math:`N`, passed on as ``num_data=N`` when given (for pairs whose data
            plate needs it; the weights are per point either way: the plate's scale does not
            enter them).
        fields: The minibatch's other fields (labels, conditions, masks), passed to ``model``
            and ``guide`` as keywords, each with one row per point.

    Returns:
        Tensor of shape ``(K, B)``.

    Example:
        >>> vae = VAE(StandardNormalPrior(2), BernoulliLikelihood(MLP(2, 10), 10),
        ...           GaussianEncoder(MLP(10, 4), 2))
        >>> x = torch.rand(8, 10).round()
        >>> log_weights(vae.model, vae.guide, x, num_particles=5).shape
        torch.Size([5, 8])
    """
    if idx is None:
        idx = torch.arange(x.shape[0], device=x.device)
    try:
        with (
            poutine.block(),
            pyro.plate("particles", num_particles, dim=-1 - max_plate_nesting),
        ):
            kwargs = {} if num_data is None else {"num_data": num_data}
            kwargs.update(fields or {})
            guide_trace = poutine.trace(guide).get_trace(x, idx, **kwargs)
            model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
                x, idx, **kwargs
            )
    except ValueError as e:
        if "collide" not in str(e):
            raise
        said = next(line for line in str(e).splitlines() if line.strip())
        raise ValueError(f"{_ONE_PLATE} (Pyro: {said.strip()})") from None
    out: Tensor | float = 0.0
    for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
        for name, site in trace.nodes.items():
            if site["type"] == "sample" and not site_is_subsample(site):
                _check_plates(name, site)
                out = out + sign * site["fn"].log_prob(site["value"])
    return torch.as_tensor(out, device=x.device).expand(num_particles, x.shape[0])


_ONE_PLATE = (
    "evaluate scores one importance weight per data point: every sample site of the model and "
    "the guide must be in the data plate (at dim=-1) and in no other plate. A latent outside "
    "it (a global one) couples the points, and a plate inside it needs its own sum; score "
    "such a pair with a Pyro loss over the whole data set (e.g. pyro.infer.Trace_ELBO), or "
    "make the inner plate an event (.to_event(1))"
)


def _check_plates(name: str, site: dict) -> None:
    """Refuses a site outside the data plate or in a second plate (see ``_ONE_PLATE``)."""
    frames = [f for f in site["cond_indep_stack"] if f.name != "particles" and f.vectorized]
    if len(frames) != 1 or frames[0].dim != -1:
        where = ", ".join(f"{f.name!r} (dim={f.dim})" for f in frames) or "no plate"
        raise ValueError(f"{_ONE_PLATE}; the site {name!r} is in {where}")


@dataclass
class Evaluation:
    """Per-data-point means of an evaluation (nats).

    Attributes:
        elbo: Mean ELBO per data point (averaged over the ``num_particles`` samples).
        log_likelihood: Mean importance-sampled estimate of :math:`\\log p(x)`.
        num_particles: :math:`K`, the guide samples per data point.
        num_data: Data points evaluated.
        dims: Values per data point (the product of its event shape).
    """

    elbo: float
    log_likelihood: float
    num_particles: int
    num_data: int
    dims: int | None = None

    @property
    def bits_per_dim(self) -> float:
        r"""The importance-sampled negative log-likelihood in bits per value of a data point,
        :math:`-\log p(x) / (D \ln 2)` (``D = dims``, e.g. 784 for an MNIST image): the
        measure of discrete data such as 8-bit images (with a discretized likelihood)."""
        if not self.dims:
            raise ValueError("bits_per_dim needs dims, the number of values of a data point")
        return -self.log_likelihood / (self.dims * math.log(2))


def evaluate(
    model: Callable[..., object],
    guide: Callable[..., object],
    data: Batches | Loader | DataLoader | Tensor,
    *,
    num_particles: int = 1000,
    max_rows: int = 2**17,
    max_plate_nesting: int = 1,
    distributed: bool | None = None,
    precision: str = "32",
) -> Evaluation:
    """The ELBO and the importance-sampled log-likelihood of a data set.

    Both come from the same :math:`K` log weights per point: ELBO as their mean,
    log-likelihood as their log-mean-exp. Memory is bounded by evaluating at most ``max_rows``
    (point, particle) pairs at once: with ``K = 5000`` that is about 26 points per pass on the
    default, larger on a GPU (raise ``max_rows``).

    Args:
        model: A Pyro model ``model(x, idx)``.
        guide: The matching guide.
        data: Batches (their binarization applies; order is irrelevant) or a tensor
            ``(N, *event_shape)``.
        num_particles: :math:`K`.
        max_rows: Most (point, particle) pairs evaluated in one vectorized pass.
        max_plate_nesting: Plates nested in ``model`` and ``guide``.
        distributed: Under ``torchrun`` (an initialized process group; default ``None``:
            detect it) each rank scores a contiguous block of the points and all ranks get
            the global means; ``False`` scores everything in this process.
        precision: ``"32"`` or ``"bf16-mixed"`` (the networks' products in bfloat16; every
            log weight, mean and log-sum-exp in float32: :mod:`pyro_vae.devices.precision`).

    Returns:
        An :class:`Evaluation` with means per point.

    Example:
        >>> vae = VAE(StandardNormalPrior(2), BernoulliLikelihood(MLP(2, 10), 10),
        ...           GaussianEncoder(MLP(10, 4), 2))
        >>> result = evaluate(vae.model, vae.guide, torch.rand(32, 10).round(), num_particles=100)
        >>> result.num_data, result.num_particles
        (32, 100)
    """
    check_int("num_particles", num_particles)
    check_int("max_rows", max_rows)
    check_precision(precision)
    fix = "move the model and the data to one device and dtype (e.g. vae.to(data.device))"
    # once: the source (a tensor in chunks; a loader to the networks' device), the checks
    ready = prepare(model, guide, data, batch_size=max(1, max_rows // num_particles), fix=fix)
    data = ready.data
    world, offset = get_world(distributed), 0
    if world is not None and isinstance(data, Loader):
        raise ValueError("evaluate splits pv.Batches or a tensor across processes, not a loader")
    if world is not None:  # this rank scores its block of points (a per-datapoint guide's shard)
        block = torch.arange(data.num_data).tensor_split(world.size)[world.rank]
        offset = int(block[0]) if len(block) else 0
        part = slice(offset, offset + len(block))
        fields = {name: value[part] for name, value in data.fields.items()}
        size, binarize = data.batch_size, data.binarize
        data = (
            Batches(data.data[part], batch_size=size, shuffle=False, binarize=binarize, **fields)
            if len(block)
            else []
        )
    num_data = ready.data.num_data if _takes_num_data(model) and _takes_num_data(guide) else None
    with (
        modes(ready.modules, train=False),  # BatchNorm: running statistics, left as they are
        use_precision(precision, ready.data.points),
    ):
        elbo_sum, ll_sum, count = _score(
            model, guide, data, offset, num_particles, max_rows, max_plate_nesting, num_data,
            DeviceCheck(ready.device, ready.data.points.dtype, fix=fix),
        )  # fmt: skip
    device = ready.device
    if world is not None:  # the global sums
        elbo_sum, ll_sum, count = all_sum(
            torch.tensor([elbo_sum, ll_sum, count], dtype=torch.float64, device=device)
        )
        elbo_sum, ll_sum, count = elbo_sum.item(), ll_sum.item(), int(count.item())
    if count == 0:
        raise ValueError("evaluate got no data points: the data set is empty")
    dims = math.prod(ready.data.points.shape[1:])
    return Evaluation(elbo_sum / count, ll_sum / count, num_particles, count, dims)


def _score(
    model: Callable[..., object],
    guide: Callable[..., object],
    data: Batches | Loader | list,
    offset: int,
    num_particles: int,
    max_rows: int,
    max_plate_nesting: int,
    num_data: int | None,
    check: DeviceCheck,
) -> tuple[float, float, int]:
    """Sums of the ELBO and the log-likelihood estimates over ``data``'s points, and their
    number: two host reads per chunk of at most ``max_rows`` (point, particle) pairs. The first
    chunk checks the pair's shapes and runs under ``check``, validated as the user chose."""
    elbo_sum = ll_sum = 0.0
    count = 0
    for batch in data:
        x_batch, local_idx, fields_batch = split_batch(batch)
        idx_batch = local_idx + offset
        step = max(1, max_rows // num_particles)
        names = list(fields_batch)
        parts = zip(x_batch.split(step), idx_batch.split(step),
                    *(fields_batch[k].split(step) for k in names), strict=True)  # fmt: skip
        for x, idx, *values in parts:
            fields = dict(zip(names, values, strict=True))
            chunk = max(1, min(num_particles, max_rows // x.shape[0]))
            pair = (check(model), check(guide)) if count == 0 else (model, guide)
            if count == 0:  # once: the parameters' devices, then the sites' shapes
                check_pair(*pair, x, idx, num_data, fields)
            with nullcontext() if count == 0 else pyro.validation_enabled(False):
                parts = [
                    log_weights(
                        *pair,
                        x,
                        idx,
                        num_particles=min(chunk, num_particles - start),
                        max_plate_nesting=max_plate_nesting,
                        num_data=num_data,
                        fields=fields,
                    )
                    for start in range(0, num_particles, chunk)
                ]
            lw = torch.cat(parts)
            elbo_sum += lw.mean(0).sum().item()
            ll_sum += (lw.logsumexp(0) - math.log(num_particles)).sum().item()
            count += x.shape[0]
    return elbo_sum, ll_sum, count


def _takes_num_data(fn: Callable[..., object]) -> bool:
    """Whether ``fn`` follows ``fit``'s convention ``fn(x, idx, num_data=N)``."""
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # no signature to read
        return False
    return any(p.name == "num_data" or p.kind is p.VAR_KEYWORD for p in parameters)
