r"""Evaluation: ELBO and importance-sampled :math:`\log p(x)` of any Pyro model/guide pair.

For a data point :math:`x` and :math:`K` guide samples :math:`z_k \sim q(z \mid x)`, the
importance weights are :math:`w_k = p(x, z_k) / q(z_k \mid x)`. Then

.. math::

    \mathrm{ELBO}(x) \approx \frac1K \sum_k \log w_k, \qquad
    \log p(x) \approx \log \frac1K \sum_k w_k \quad (\text{Burda et al. 2016, IWAE}),

the second a stochastic lower bound that tightens to :math:`\log p(x)` as :math:`K` grows.
Particles are vectorized by an outer ``pyro.plate("particles", K, dim=-2)`` and chunked so that
``points × particles`` stays below ``max_rows``. Discrete sites marked for enumeration are
summed out exactly, as ``pyro.infer.TraceEnum_ELBO`` sums them, masks apply, and training-only
terms are left out (``pyro_vae.infer._weights``); ``dims`` counts the values scored. Once per
call, on the first chunk, the vectorized pass is checked against a pass without the particle
plate and against Pyro's
``TraceEnum_ELBO`` with the same random numbers: a model that does not broadcast over the
particles is scored particle by particle (with a warning that says how to vectorize it), and a
disagreement with Pyro's ELBO is an error.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from .._checks import check_int
from .._placement import DeviceCheck
from .._precision import check_precision
from .._source import prepare
from .._world import all_sum, get_world
from ..data.batches import Batches
from ..data.loaders import Loader
from ..devices.precision import use_precision
from ..models.nets import training_modes
from ._scorer import Scorer, score
from ._weights import pair_scores, run_pair

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

    Discrete sites enumerated in the guide or the model (``infer={"enumerate": "parallel"}``)
    are summed out inside each weight, masks apply, scales do not, and sites marked
    ``infer={"training_only": True}`` are left out (``pyro_vae.infer._weights``).

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
    kwargs = {} if num_data is None else {"num_data": num_data}
    kwargs.update(fields or {})
    traces = run_pair(model, guide, x, idx, kwargs, particles=num_particles,
                      max_plate_nesting=max_plate_nesting)  # fmt: skip
    return pair_scores(*traces, particles=num_particles, num_points=x.shape[0],
                       max_plate_nesting=max_plate_nesting)[1]  # fmt: skip


@dataclass
class Evaluation:
    """Per-data-point means of an evaluation (nats).

    Attributes:
        elbo: Mean ELBO per data point (averaged over the ``num_particles`` samples).
        log_likelihood: Mean importance-sampled estimate of :math:`\\log p(x)`.
        num_particles: :math:`K`, the guide samples per data point.
        num_data: Data points evaluated.
        dims: Values scored per data point, on average: the observed values the model
            scores (masks applied; e.g. 784 for an MNIST image, the unknown pixels only for a
            masked completion, and one more for a point whose label is observed).
    """

    elbo: float
    log_likelihood: float
    num_particles: int
    num_data: int
    dims: float | None = None

    @property
    def bits_per_dim(self) -> float:
        r"""The importance-sampled negative log-likelihood in bits per value of a data point,
        :math:`-\log p(x) / (D \ln 2)` (``D = dims``, the values scored, e.g. 784 for an
        MNIST image): the measure of discrete data such as 8-bit images (with a discretized
        likelihood)."""
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
    num_particles, max_rows = int(num_particles), int(max_rows)  # (numpy integers too)
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
        training_modes(ready.modules, train=False),  # BatchNorm: its statistics, left as they are
        use_precision(precision, ready.data.points),
    ):
        scorer = Scorer(model, guide, num_particles, max_rows, max_plate_nesting, num_data)
        check = DeviceCheck(ready.device, ready.data.points.dtype, fix=fix)
        elbo_sum, ll_sum, count, values = score(scorer, data, offset, check)
    device = ready.device
    if world is not None:  # the global sums
        sums = torch.tensor([elbo_sum, ll_sum, count, values], dtype=torch.float64, device=device)
        elbo_sum, ll_sum, count, values = all_sum(sums).tolist()
        count = int(count)
    if count == 0:
        raise ValueError("evaluate got no data points: the data set is empty")
    return Evaluation(elbo_sum / count, ll_sum / count, num_particles, count, values / count)


def _takes_num_data(fn: Callable[..., object]) -> bool:
    """Whether ``fn`` follows ``fit``'s convention ``fn(x, idx, num_data=N)``."""
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # no signature to read
        return False
    return any(p.name == "num_data" or p.kind is p.VAR_KEYWORD for p in parameters)
