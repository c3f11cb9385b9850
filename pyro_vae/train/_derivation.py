r"""The once-only check behind ``fit(compile=True)``: whether a Pyro pair has a derived
estimator (a :class:`~pyro_vae.VAE`'s :meth:`~pyro_vae.VAE.elbo_loss`) for its loss, and
whether that estimator gives the Pyro loss's value and the gradient of every parameter on a
batch, with the same random numbers (relative 1e-3 in float32; a gradient that cancels to
rounding noise is compared against the largest one's norm). ``_compiled`` compiles the
estimator only after this check, and says why where it refuses.
"""

from __future__ import annotations

from collections.abc import Callable

import pyro
import torch
from pyro import poutine
from pyro.infer import ELBO, Trace_ELBO, TraceEnum_ELBO
from torch import Tensor

from ..devices.precision import use_precision
from ..infer.elbo import ImportanceWeightedELBO, LatentScale, TensorTrace_ELBO
from ..models.guides import PerDatapointGaussian
from ..models.nets import training_modes
from ..models.vae import VAE

__all__ = ["check_derivation", "default_loss", "num_particles", "settle_nesting", "unsupported"]

# Relative tolerance of the once-only check (float32: different summation orders).
_TOLERANCE = 1e-3


def num_particles(loss: ELBO) -> int:
    """:math:`K` of :class:`~pyro_vae.ImportanceWeightedELBO`; 1 for the ELBO."""
    return loss.num_particles if isinstance(loss, ImportanceWeightedELBO) else 1


def unsupported(model: object, guide: object, loss: ELBO) -> str | None:
    """Why a pair or its loss has no derived estimator (``None``: it has one). It has one
    for the ``model`` and ``guide`` of one :class:`~pyro_vae.VAE` (not a subclass with its
    own ``model``/``guide`` and no ``elbo_loss`` of its own; a per-datapoint guide only in a
    one-layer VAE) with :class:`~pyro_vae.TensorTrace_ELBO` or ``Trace_ELBO`` (one particle)
    or :class:`~pyro_vae.ImportanceWeightedELBO`.

    Returns:
        The reason, for the warning of a run that stays eager; or ``None``.

    Example:
        >>> vae = VAE(StandardNormalPrior(2), BernoulliLikelihood(MLP(2, 6), 6),
        ...           GaussianEncoder(MLP(6, 4), 2))
        >>> unsupported(vae.model, vae.guide, TensorTrace_ELBO()) is None
        True
        >>> unsupported(vae.model, vae.guide, Trace_ELBO(num_particles=2))[:45]
        'Trace_ELBO (num_particles=2) has no compiled '
    """
    vae = getattr(model, "__self__", None)
    if not isinstance(vae, VAE) or getattr(guide, "__self__", None) is not vae:
        return (
            "the model and guide are not one pv.VAE's (a hand-written pair has no derived "
            "estimator)"
        )
    elbo = type(loss) in (TensorTrace_ELBO, Trace_ELBO, TraceEnum_ELBO)
    if not (elbo and loss.num_particles == 1) and type(loss) is not ImportanceWeightedELBO:
        return (
            f"{type(loss).__name__} (num_particles={getattr(loss, 'num_particles', '?')}) has "
            "no compiled form; TensorTrace_ELBO(), Trace_ELBO() or TraceEnum_ELBO() with one "
            "particle, and ImportanceWeightedELBO, have"
        )
    local = vae.variational if isinstance(vae.variational, PerDatapointGaussian) else None
    sparse = [m for m in vae.modules() if getattr(m, "sparse", False) is True and m is not local]
    if sparse or (local is not None and type(vae).elbo_loss is not VAE.elbo_loss):
        return (
            f"{type(sparse[0] if sparse else local).__name__}'s row-sparse gradients cannot be "
            "compiled here (a per-datapoint guide can, as the guide of a one-layer pv.VAE)"
        )
    return None


def default_loss(
    model: Callable[..., object],
    guide: Callable[..., object],
    x: Tensor,
    fields: dict[str, Tensor],
    *,
    num_data: int,
) -> ELBO:
    """``fit``'s loss when none is given: ``TraceEnum_ELBO(max_plate_nesting=n)`` where the
    guide or the model marks a latent site for enumeration (``infer={"enumerate": ...}``, e.g.
    :class:`~pyro_vae.SemiSupervisedVAE`'s unknown label, which ``Trace_ELBO`` would sample
    instead of summing out), :class:`~pyro_vae.TensorTrace_ELBO` otherwise.

    The pair runs once on the first two points (no gradients, nothing recorded, the random
    streams restored; the caller puts the networks in eval mode). A pair that fails there gets
    ``TensorTrace_ELBO``; the first step's checks name its problem.

    Args:
        model: The Pyro model.
        guide: The guide.
        x: The training points (or a first batch).
        fields: Their fields (rows matching ``x``'s).
        num_data: :math:`N`.

    Example:
        >>> m2 = SemiSupervisedVAE(MLP(6, 3), BernoulliLikelihood(MLP(2 + 3, 6), 6),
        ...                        GaussianEncoder(MLP(6 + 3, 2 * 2), 2), num_classes=3)
        >>> x, y = torch.rand(8, 6).round(), torch.randint(0, 3, (8,))
        >>> loss = default_loss(m2.model, m2.guide, x, {"y": y, "y_mask": y > 0}, num_data=8)
        >>> type(loss).__name__, loss.max_plate_nesting
        ('TraceEnum_ELBO', 1)
    """
    first = min(2, x.shape[0])
    idx = torch.arange(first, device=x.device)
    kwargs = {"num_data": num_data, **{k: v[:first] for k, v in fields.items()}}
    devices = [x.device] if x.device.type == "cuda" and torch.cuda.is_available() else []
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad(), poutine.block():
            guide_trace = poutine.trace(guide).get_trace(x[:first], idx, **kwargs)
            replayed = poutine.replay(model, trace=guide_trace)
            model_trace = poutine.trace(replayed).get_trace(x[:first], idx, **kwargs)
    except Exception:  # (the first step's checks say what is wrong, with their own words)
        return TensorTrace_ELBO()
    sites = [site for trace in (guide_trace, model_trace) for site in trace.nodes.values()
             if site["type"] == "sample"]  # fmt: skip
    if not any(site["infer"].get("enumerate") and not site["is_observed"] for site in sites):
        return TensorTrace_ELBO()
    dims = [-frame.dim for site in sites for frame in site["cond_indep_stack"] if frame.vectorized]
    return TraceEnum_ELBO(max_plate_nesting=max(dims, default=0))


def settle_nesting(
    loss: object, model: Callable[..., object], guide: Callable[..., object], *args, **kwargs
) -> None:
    """Makes a Pyro loss guess its ``max_plate_nesting`` now, as it would at its first call
    (vectorized particles, enumeration), when it was not given one: the guess runs the pair
    once and draws random numbers, which must not fall among the ones that matter (the
    check's common random numbers, a resumed run's restored streams)."""
    if not isinstance(loss, ELBO) or loss.max_plate_nesting != float("inf"):
        return
    if getattr(loss, "vectorize_particles", False) or isinstance(loss, TraceEnum_ELBO):
        with poutine.block(), torch.no_grad():
            loss._guess_max_plate_nesting(model, guide, args, kwargs)


def check_derivation(
    model: Callable[..., object],
    guide: Callable[..., object],
    loss: ELBO,
    x: Tensor,
    idx: Tensor,
    *,
    num_data: int,
    scale: LatentScale | None = None,
    fields: dict[str, Tensor] | None = None,
) -> tuple[tuple[list[Tensor], list[Tensor]] | None, str | None]:
    """Whether the derived estimator of the VAE whose methods ``model`` and ``guide`` are
    (:meth:`~pyro_vae.VAE.elbo_loss`) gives ``loss``'s value and gradients on one batch, with
    the same random numbers (torch's generator is restored afterwards). The networks run in
    eval mode (a BatchNorm's statistics stay as they are; the check trains nothing) and in
    float32 arithmetic (a bf16-mixed run's rounding is not the derivation's).

    Args:
        model: ``vae.model`` of a :class:`~pyro_vae.VAE`.
        guide: ``vae.guide``.
        loss: The run's Pyro loss (see :func:`unsupported`).
        x: A minibatch.
        idx: Its indices.
        num_data: :math:`N`.
        scale: The run's β (:class:`~pyro_vae.LatentScale`), if any.
        fields: The batch's fields (keywords of the model, the guide and ``elbo_loss``).

    Returns:
        The model's and the guide's parameters (as the eager step collects them), and
        ``None`` where the two agree or the reason they do not (on ``meta`` tensors, which
        hold no values, only the parameters are collected).
    """
    vae: VAE = model.__self__
    beta, seed = 1.0 if scale is None else float(scale.beta), 0  # (the RNG is restored)
    devices = [x.device] if x.device.type == "cuda" else []
    # Pyro's guess of the plate nesting, where the loss makes one, as at the eager first step
    # (on the run's random stream, in the networks' mode): not among the common numbers
    kwargs = {"num_data": num_data, **(fields or {})}
    settle_nesting(loss, model, guide, x, idx, **kwargs)
    # in float32 arithmetic whatever the run's precision: bf16-mixed rounds the networks'
    # products to 2^-9, beyond the tolerance on gradients that cancel (M2's classifier); the
    # estimators run the same networks at either precision
    with (
        torch.random.fork_rng(devices=devices),
        training_modes(vae, train=False),
        use_precision("32"),
    ):
        torch.manual_seed(seed)
        with poutine.trace(param_only=True) as in_model:
            poutine.trace(model).get_trace(x, idx, **kwargs)
        with poutine.trace(param_only=True) as in_guide:
            guide(x, idx, **kwargs)
        sides = tuple(
            [site["value"].unconstrained() for site in t.trace.nodes.values()]
            for t in (in_model, in_guide)
        )
        torch.manual_seed(seed)
        with LatentScale(beta), pyro.validation_enabled(False):
            expected = loss.differentiable_loss(model, guide, x, idx, **kwargs)
        torch.manual_seed(seed)
        try:
            derived = vae.elbo_loss(x, idx, beta=beta, num_particles=num_particles(loss), **kwargs)
        except NotImplementedError as e:
            return None, str(e)
    if x.device.type == "meta":
        return sides, None
    return sides, _disagreement(sides, expected, derived, type(loss).__name__)


def _disagreement(
    sides: tuple[list[Tensor], list[Tensor]], expected: Tensor, derived: Tensor, name: str
) -> str | None:
    """Where the derived loss or a gradient differs from the Pyro loss's (``None``: nowhere).
    Gradients are compared against the largest one's norm as well as their own (a gradient
    that cancels to ~0, e.g. a bias before a BatchNorm, is rounding noise on both sides)."""
    params = sides[0] + [p for p in sides[1] if all(p is not q for q in sides[0])]
    wanted = torch.autograd.grad(expected, params, allow_unused=True)
    got = torch.autograd.grad(derived, params, allow_unused=True)
    if not _close(derived.detach(), expected.detach()):
        return (
            f"the derived estimator gives {derived.item():.6g} where {name} gives "
            f"{expected.item():.6g} (the VAE's pieces sample or score something the derivation "
            "does not see)"
        )
    norms = [(g.to_dense() if g.is_sparse else g).norm() for g in wanted if g is not None]
    floor = 1e-3 * max(norms) if norms else None
    store = pyro.get_param_store()
    for p, a, b in zip(params, wanted, got, strict=True):
        if not _close(b, a, floor=floor):
            return f"the derived gradient of {store.param_name(p)} differs from Pyro's"
    return None


def _close(a: Tensor | None, b: Tensor | None, *, floor: Tensor | None = None) -> bool:
    """Equal within ``_TOLERANCE`` of the larger norm, or of ``floor`` where that is larger
    (both ``None``: no gradient)."""
    if a is None or b is None:
        return a is None and b is None
    a, b = (t.to_dense() if t.is_sparse else t for t in (a, b))
    scale = torch.maximum(a.norm(), b.norm()).clamp_min(1e-12)
    if floor is not None:
        scale = torch.maximum(scale, floor)
    return bool((a - b).norm() <= _TOLERANCE * scale)
