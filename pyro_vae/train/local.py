r"""Local inference under a trained model: per-datapoint E-steps on new data and the
amortization gap.

Both *fit* a per-datapoint guide with the model frozen (the loop of :func:`~pyro_vae.fit`,
E-steps only) and then *score* it (:func:`~pyro_vae.evaluate`), so this module sits
above the training loop and the scoring below it.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from torch import Tensor, nn
from torch.utils.data import DataLoader

from .._checks import check_floating
from .._placement import check_module
from .._source import as_source
from ..data.batches import Batches, split_batch
from ..data.loaders import Loader
from ..infer.optim import LazyAdam
from ..infer.scoring import evaluate
from ..models.guides import PerDatapointGaussian
from ..models.vae import VAE
from .loop import train

__all__ = ["AmortizationGap", "amortization_gap", "infer_local"]


def infer_local(
    vae: VAE,
    data: Batches | Loader | DataLoader | Tensor,
    *,
    epochs: int,
    lr: float = 1e-2,
    init: nn.Module | Sequence[nn.Module] | None = None,
    name: str = "local",
    progress: bool = False,
    final_lr_ratio: float = 1.0,
    precision: str = "32",
    local: VAE | None = None,
) -> VAE:
    r"""Fits a per-datapoint Gaussian guide to ``data`` with the model's parameters frozen
    (one per latent layer of a :class:`~pyro_vae.HierarchicalVAE`).

    This is the E-step that evaluating a per-datapoint model on new data needs, and, started
    from an amortized guide's outputs (``init``), semi-amortized inference at evaluation time
    (Kim et al. 2018): :math:`\lambda_n^{(0)} = \mathrm{enc}(x_n)`, then gradient steps.

    Args:
        vae: A trained VAE; its prior and likelihood are shared, not changed.
        data: The data points, ``N'`` of them; their indices address the new local parameters
            (a tensor ``(N', *event_shape)``: shuffled minibatches of up to 256).
        epochs: Passes of :class:`~pyro_vae.LazyAdam` steps over ``data``.
        lr: Step size for the local parameters.
        init: An amortized Gaussian guide to start from (a list, one per layer, bottom-up,
            for a hierarchical VAE: each layer starts from the one below's means); default:
            :math:`\mu_n = 0`, :math:`\sigma_n = 1`.
        name: Param-store prefix of the returned VAE (distinct from the training VAE's).
        progress: Show a progress bar.
        final_lr_ratio: Anneal the step size geometrically to ``lr * final_lr_ratio`` over the
            epochs (e.g. 0.01), so that the local parameters settle instead of jittering.
        precision: ``fit``'s ``precision`` (``"bf16-mixed"``: the networks' products in
            bfloat16; the local parameters and every log-density in float32).
        local: A VAE an earlier ``infer_local`` returned for the same ``data``: its local
            parameters take ``epochs`` more E-steps (``init`` and ``name`` do not apply).

    Returns:
        A :class:`VAE` over the same model with :class:`PerDatapointGaussian` guides for
        ``data``: pass its ``model``/``guide`` to :func:`evaluate`.

    Example:
        >>> vae = VAE(StandardNormalPrior(2), BernoulliLikelihood(MLP(2, 10), 10),
        ...           GaussianEncoder(MLP(10, 4), 2))
        >>> held_out = Batches(torch.rand(32, 10).round(), batch_size=16)
        >>> local = infer_local(vae, held_out, epochs=2)
        >>> local.variational.loc.shape
        torch.Size([32, 2])
        >>> evaluate(local.model, local.guide, held_out, num_particles=10).num_data
        32
    """
    _check_local(vae)
    if not final_lr_ratio > 0:
        raise ValueError(
            f"final_lr_ratio must be a number > 0 (the step size ends at lr * final_lr_ratio); "
            f"got {final_lr_ratio!r}"
        )
    if isinstance(data, Tensor):  # as evaluate takes it: here, shuffled minibatches of 256
        data = Batches(data, batch_size=min(len(data), 256))
    data = as_source(data)
    if isinstance(data, Loader):  # streamed: to the model's device, batch by batch
        data = data.to(next(vae.parameters()).device)
    # The VAE's own data check does not apply: its per-datapoint guide (if any) is replaced.
    check_floating(data.points)
    check_module(
        vae, data.device, data.points.dtype, fix="move the VAE to the data's device (vae.to(...))"
    )
    if local is None:
        local = vae.with_guide(_local_guides(vae, data, init), name=name)
    optim = LazyAdam({"lr": lr})

    def anneal(epoch: int, history: object) -> None:  # lr → lr · final_lr_ratio, geometrically
        for optimizer in optim.optim_objs.values():
            for group in optimizer.param_groups:
                group["lr"] = lr * final_lr_ratio ** (epoch / epochs)

    train(
        local.model,
        local.guide,
        data,
        epochs=epochs,
        optim=optim,
        device=data.device,
        freeze_model=True,
        progress=progress,
        callback=anneal if final_lr_ratio != 1.0 else None,
        precision=precision,
    )
    return local


def _local_guides(
    vae: VAE, data: Batches | Loader, init: nn.Module | Sequence[nn.Module] | None
) -> list[PerDatapointGaussian]:
    """One per-datapoint Gaussian per latent layer for ``data``'s points, on their device:
    at μ = 0, σ = 1, or at ``init``'s outputs (bottom-up: each layer from the one below's
    means)."""
    layers = vae.guide_layers()
    if init is None:
        guides = [PerDatapointGaussian(data.num_data, g.latent_dim) for g in layers]
    else:
        inits = list(init) if isinstance(init, Sequence | nn.ModuleList) else [init]
        if len(inits) != len(layers):
            raise ValueError(f"init needs one guide per latent layer ({len(layers)})")
        points = _guide_inputs(vae, data)
        guides = []
        for guide in inits:
            guides.append(PerDatapointGaussian.from_guide(guide, points, num_data=data.num_data))
            points = guides[-1].loc.detach()
    return [guide.to(data.points) for guide in guides]


@dataclass
class AmortizationGap:
    r"""Inference suboptimality (Cremer, Li & Duvenaud 2018), mean nats per data point.

    Attributes:
        log_likelihood: Importance-sampled :math:`\log p(x)` (with the optimized guide).
        elbo_optimal: ELBO of the per-datapoint optimized Gaussian :math:`q^*` (the best in the
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
    data: Batches | Loader | DataLoader | Tensor,
    *,
    epochs: int = 100,
    lr: float = 1e-2,
    num_particles: int = 1000,
    max_rows: int = 2**17,
    precision: str = "32",
) -> AmortizationGap:
    r"""Splits a trained amortized VAE's gap :math:`\log p(x) - \mathrm{ELBO}` into the
    approximation and amortization gaps on ``data``.

    The per-datapoint optimum :math:`q^*` is found by :func:`infer_local` started from the
    encoder's outputs, with the step size annealed to 1% of ``lr`` so that it converges.
    Check that ``epochs`` suffice: too few leave :math:`q^*` short of the optimum and move
    part of the amortization gap into the approximation gap (``benchmarks/gap_convergence.py``
    measures how the gap settles as ``epochs`` grow).

    Args:
        vae: A trained VAE with an amortized guide (an encoder; a per-datapoint guide is
            refused: it has no amortization gap).
        data: The points: :class:`~pyro_vae.Batches`, a DataLoader over
            :class:`~pyro_vae.Indexed`, or a tensor ``(N, *event_shape)``.
        epochs: Epochs of :func:`infer_local` towards the per-datapoint optimum.
        lr: Its initial step size (annealed to 1% of it).
        num_particles: :math:`K` of the importance-sampled log-likelihood.
        max_rows: Most (point, particle) pairs scored at once.
        precision: The precision of the three runs (``"32"`` or ``"bf16-mixed"``, see
            :func:`~pyro_vae.fit`).

    Returns:
        An :class:`AmortizationGap` (nats per point); a warning says when the optimum's ELBO
        falls below the amortized one (``infer_local`` has not converged).

    Example:
        >>> vae = VAE(StandardNormalPrior(2), BernoulliLikelihood(MLP(2, 10), 10),
        ...           GaussianEncoder(MLP(10, 4), 2))
        >>> data = Batches(torch.rand(32, 10).round(), batch_size=16)
        >>> gap = amortization_gap(vae, data, epochs=2, num_particles=10)
        >>> gap.approximation_gap >= 0
        True
    """
    if isinstance(vae.variational, PerDatapointGaussian):
        raise ValueError(
            "amortization_gap compares an amortized guide (an encoder) with the per-datapoint "
            "optimum; this VAE's guide is PerDatapointGaussian, already per-datapoint: score it "
            "with pv.evaluate, or pass a VAE with an encoder"
        )
    _check_local(vae)  # (before a whole evaluation)
    # once: evaluate and infer_local take the source as it is (a tensor: in chunks)
    data = as_source(data, batch_size=max(1, max_rows // num_particles))
    scores = {"num_particles": num_particles, "max_rows": max_rows, "precision": precision}
    amortized = evaluate(vae.model, vae.guide, data, **scores)
    local = infer_local(vae, data, epochs=epochs, lr=lr, init=vae.guide_layers(), name="gap",
                        final_lr_ratio=0.01, precision=precision)  # fmt: skip
    optimal = evaluate(local.model, local.guide, data, **scores)
    if optimal.elbo < amortized.elbo:
        warnings.warn(
            f"the per-datapoint optimum's ELBO ({optimal.elbo:.3f}) is below the amortized "
            f"ELBO ({amortized.elbo:.3f}): infer_local has not converged in {epochs} epochs, "
            "so the amortization gap is negative. Raise epochs (or lr)",
            stacklevel=2,
        )
    log_px = max(optimal.log_likelihood, amortized.log_likelihood)
    return AmortizationGap(
        log_likelihood=log_px,
        elbo_optimal=optimal.elbo,
        elbo_amortized=amortized.elbo,
        approximation_gap=log_px - optimal.elbo,
        amortization_gap=optimal.elbo - amortized.elbo,
    )


def _check_local(vae: VAE) -> None:
    """Refuses a VAE whose guide cannot be replaced by per-datapoint parameters, with its own
    reason (M2's guide of z reads the enumerated label)."""
    why = getattr(vae, "no_local_inference", None)
    if why:
        raise NotImplementedError(why)


def _guide_inputs(vae: VAE, data: Batches | Loader) -> Tensor | Iterator[tuple[Tensor, Tensor]]:
    """What the amortized guide reads for ``data``'s points: the points themselves (a stream
    as it comes), or what a VAE with a ``guide_input(x, fields)`` (a
    :class:`~pyro_vae.ConditionalVAE`) makes of each batch and its fields."""
    guide_input = getattr(vae, "guide_input", None)
    if guide_input is None:
        return data if isinstance(data, Loader) else data.data
    return ((guide_input(x, fields), idx) for x, idx, fields in map(split_batch, data))
