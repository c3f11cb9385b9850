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

import math
from collections.abc import Callable
from dataclasses import dataclass

import pyro
import torch
from pyro import poutine
from torch import Tensor

from .data import Batches
from .guides import PerDatapointGaussian
from .optim import LazyAdam
from .train import fit
from .vae import VAE

__all__ = [
    "AmortizationGap",
    "Evaluation",
    "amortization_gap",
    "evaluate",
    "infer_local",
    "log_weights",
]


@torch.no_grad()
def log_weights(
    model: Callable[..., object],
    guide: Callable[..., object],
    x: Tensor,
    idx: Tensor | None = None,
    *,
    num_particles: int = 1,
    max_plate_nesting: int = 1,
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

    Returns:
        Tensor of shape ``(K, B)``.
    """
    if idx is None:
        idx = torch.arange(x.shape[0], device=x.device)
    with (
        poutine.block(),
        pyro.plate("particles", num_particles, dim=-1 - max_plate_nesting),
    ):
        guide_trace = poutine.trace(guide).get_trace(x, idx)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x, idx)
    out: Tensor | float = 0.0
    for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
        for site in trace.nodes.values():
            if site["type"] == "sample":
                out = out + sign * site["fn"].log_prob(site["value"])
    return torch.as_tensor(out, device=x.device).expand(num_particles, x.shape[0])


@dataclass
class Evaluation:
    """Per-data-point means of an evaluation (nats).

    Attributes:
        elbo: Mean ELBO per data point (averaged over the ``num_particles`` samples).
        log_likelihood: Mean importance-sampled estimate of :math:`\\log p(x)`.
        num_particles: :math:`K`, the guide samples per data point.
        num_data: Data points evaluated.
    """

    elbo: float
    log_likelihood: float
    num_particles: int
    num_data: int


def evaluate(
    model: Callable[..., object],
    guide: Callable[..., object],
    data: Batches | Tensor,
    *,
    num_particles: int = 1000,
    max_rows: int = 2**17,
    max_plate_nesting: int = 1,
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

    Returns:
        An :class:`Evaluation` with per-point means.
    """
    if isinstance(data, Tensor):
        data = Batches(data, batch_size=max(1, max_rows // num_particles), shuffle=False)
    elbo_sum = ll_sum = 0.0
    count = 0
    for x_batch, idx_batch in data:
        step = max(1, max_rows // num_particles)
        for x, idx in zip(x_batch.split(step), idx_batch.split(step), strict=True):
            chunk = max(1, min(num_particles, max_rows // x.shape[0]))
            parts = [
                log_weights(
                    model,
                    guide,
                    x,
                    idx,
                    num_particles=min(chunk, num_particles - start),
                    max_plate_nesting=max_plate_nesting,
                )
                for start in range(0, num_particles, chunk)
            ]
            lw = torch.cat(parts)
            elbo_sum += lw.mean(0).sum().item()
            ll_sum += (lw.logsumexp(0) - math.log(num_particles)).sum().item()
            count += x.shape[0]
    return Evaluation(elbo_sum / count, ll_sum / count, num_particles, count)


def infer_local(
    vae: VAE,
    data: Batches,
    *,
    epochs: int,
    lr: float = 1e-2,
    init: torch.nn.Module | None = None,
    name: str = "local",
    progress: bool = False,
    final_lr_ratio: float = 1.0,
) -> VAE:
    r"""Fits a per-datapoint Gaussian guide to ``data`` with the model's parameters frozen.

    This is the E-step that evaluating a per-datapoint model on new data needs, and, started
    from an amortized guide's outputs (``init``), semi-amortized inference at evaluation time
    (Kim et al. 2018): :math:`\lambda_n^{(0)} = \mathrm{enc}(x_n)`, then gradient steps.

    Args:
        vae: A trained VAE; its prior and likelihood are shared, not changed.
        data: The data points, ``N'`` of them; their indices address the new local parameters.
        epochs: Passes of :class:`~pyro_vae.LazyAdam` steps over ``data``.
        lr: Step size for the local parameters.
        init: An amortized Gaussian guide to start from; default: :math:`\mu_n = 0`,
            :math:`\sigma_n = 1`.
        name: Param-store prefix of the returned VAE (distinct from the training VAE's).
        progress: Show a progress bar.
        final_lr_ratio: Anneal the step size geometrically to ``lr * final_lr_ratio`` over the
            epochs (e.g. 0.01), so that the local parameters settle instead of jittering.

    Returns:
        A :class:`VAE` over the same model with a :class:`PerDatapointGaussian` guide for
        ``data``: pass its ``model``/``guide`` to :func:`evaluate`.
    """
    if init is None:
        guide = PerDatapointGaussian(data.num_data, vae.prior.latent_dim)
    else:
        guide = PerDatapointGaussian.from_guide(init, data.data)
    local = vae.with_guide(guide.to(data.data), name=name)
    optim = LazyAdam({"lr": lr})

    def anneal(epoch: int, history: object) -> None:  # lr → lr · final_lr_ratio, geometrically
        for optimizer in optim.optim_objs.values():
            for group in optimizer.param_groups:
                group["lr"] = lr * final_lr_ratio ** (epoch / epochs)

    fit(
        local.model,
        local.guide,
        data,
        epochs=epochs,
        optim=optim,
        device=data.device,
        freeze_model=True,
        progress=progress,
        callback=anneal if final_lr_ratio != 1.0 else None,
    )
    return local


@dataclass
class AmortizationGap:
    r"""Inference suboptimality (Cremer, Li & Duvenaud 2018), mean nats per data point.

    Attributes:
        log_likelihood: Importance-sampled :math:`\log p(x)` (with the optimized guide).
        elbo_optimal: ELBO of the per-point optimized Gaussian :math:`q^*` (the best in the
            family, approximately).
        elbo_amortized: ELBO of the amortized guide.
        approximation_gap: :math:`\log p(x) - \mathcal{L}[q^*]`: the family's limit.
        amortization_gap: :math:`\mathcal{L}[q^*] - \mathcal{L}[q_\phi]`: the encoder's.
    """

    log_likelihood: float
    elbo_optimal: float
    elbo_amortized: float
    approximation_gap: float
    amortization_gap: float


def amortization_gap(
    vae: VAE,
    data: Batches,
    *,
    epochs: int = 100,
    lr: float = 1e-2,
    num_particles: int = 1000,
    max_rows: int = 2**17,
) -> AmortizationGap:
    r"""Splits a trained amortized VAE's gap :math:`\log p(x) - \mathrm{ELBO}` into the
    approximation and amortization gaps on ``data``.

    The per-point optimum :math:`q^*` is found by :func:`infer_local` started from the
    encoder's outputs, with the step size annealed to 1% of ``lr`` so that it converges.
    """
    amortized = evaluate(vae.model, vae.guide, data, num_particles=num_particles, max_rows=max_rows)
    local = infer_local(
        vae, data, epochs=epochs, lr=lr, init=vae.variational, name="gap", final_lr_ratio=0.01
    )
    optimal = evaluate(
        local.model, local.guide, data, num_particles=num_particles, max_rows=max_rows
    )
    log_px = max(optimal.log_likelihood, amortized.log_likelihood)
    return AmortizationGap(
        log_likelihood=log_px,
        elbo_optimal=optimal.elbo,
        elbo_amortized=amortized.elbo,
        approximation_gap=log_px - optimal.elbo,
        amortization_gap=optimal.elbo - amortized.elbo,
    )
