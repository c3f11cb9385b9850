r"""Objectives: an ELBO whose losses stay on the device, and the KL weight :math:`\beta`.

Pyro's ``Trace_ELBO.differentiable_loss`` converts every site's log-density to a Python float
(``.item()``), which on CUDA is a host-device synchronization per site per step
(pyro-ppl/pyro#222, #361, #829). :class:`TensorTrace_ELBO` computes the same estimator and
the same gradients but returns the loss as a tensor, so a training loop can read it every
few steps instead of every step. :class:`ImportanceWeightedELBO` is the importance-weighted
bound (IWAE) with vectorized particles, on the same sync-free path.

The names follow Pyro's: ``<Trace>_ELBO`` for an estimator of the ELBO itself computed from
a trace (``Trace_ELBO``, ``TraceMeanField_ELBO``, ``JitTrace_ELBO``; here
:class:`TensorTrace_ELBO`), a plain name for another bound (Pyro's ``RenyiELBO``; here
:class:`ImportanceWeightedELBO`, the Rényi bound at α = 0).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from pyro.infer import Trace_ELBO
from pyro.infer.trace_elbo import _compute_log_r
from pyro.infer.util import get_dependent_plate_dims, is_identically_zero, torch_sum
from pyro.poutine.messenger import Messenger

__all__ = ["BetaELBO", "ImportanceWeightedELBO", "LatentScale", "TensorTrace_ELBO"]


class TensorTrace_ELBO(Trace_ELBO):
    r"""``Trace_ELBO`` with tensor-valued losses (no ``.item()``, no NaN check per step).

    The estimator is Pyro's: for reparameterized sites the pathwise gradient of
    :math:`\log p(x, z) - \log q(z)`, for the others the score-function term with Pyro's
    dependency-aware :math:`\log r`. ``differentiable_loss`` returns a 0-dim tensor whose value
    is the loss and whose gradient is the surrogate's; ``loss_and_grads`` returns the detached
    loss tensor (the one intended difference from ``Trace_ELBO``, which returns a float: reading
    it would be a host sync). Where nothing trainable reaches the loss, no backward pass runs
    and the loss is returned as a constant tensor (``0`` without any sample site), as
    ``Trace_ELBO`` does. Everything else (``num_particles``, ``vectorize_particles``,
    ``max_plate_nesting``) is as in :class:`pyro.infer.Trace_ELBO`; works with
    :class:`pyro.infer.SVI` too.

    Example:
        >>> vae = VAE(StandardNormalPrior(2), BernoulliLikelihood(MLP(2, 10), 10),
        ...           GaussianEncoder(MLP(10, 4), 2))
        >>> x, idx = torch.rand(8, 10).round(), torch.arange(8)
        >>> loss = TensorTrace_ELBO().differentiable_loss(vae.model, vae.guide, x, idx)
        >>> loss.shape, loss.requires_grad
        (torch.Size([]), True)
        >>> loss.backward()
    """

    def _differentiable_loss_particle(self, model_trace, guide_trace):
        # Sums start at their first term (not at 0.0): the same values, one kernel fewer each.
        elbo = surrogate = None
        log_r = None
        for site in model_trace.nodes.values():
            if site["type"] == "sample":
                elbo = _plus(elbo, site["log_prob_sum"].detach())
                surrogate = _plus(surrogate, site["log_prob_sum"])
        for site in guide_trace.nodes.values():
            if site["type"] == "sample":
                _, score_function_term, entropy_term = site["score_parts"]
                elbo = _minus(elbo, site["log_prob_sum"].detach())
                if not is_identically_zero(entropy_term):
                    surrogate = _minus(surrogate, entropy_term.sum())
                if not is_identically_zero(score_function_term):
                    if log_r is None:
                        log_r = _compute_log_r(model_trace, guide_trace)
                    weight = log_r.sum_to(site["cond_indep_stack"])
                    surrogate = _plus(surrogate, (weight * score_function_term).sum())
        return -_zero(elbo), -_zero(surrogate)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        loss = surrogate = None
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            particle_loss, particle_surrogate = self._differentiable_loss_particle(
                model_trace, guide_trace
            )
            if self.num_particles != 1:  # (x / 1 is x: no kernel for it)
                particle_loss = particle_loss / self.num_particles
                particle_surrogate = particle_surrogate / self.num_particles
            loss = _plus(loss, particle_loss)
            surrogate = _plus(surrogate, particle_surrogate)
        if not getattr(surrogate, "requires_grad", False):  # nothing trainable reaches it
            return torch.as_tensor(loss)  # (0 without any sample site, as Trace_ELBO)
        return loss + (surrogate - surrogate.detach())

    def loss_and_grads(self, model, guide, *args, **kwargs) -> torch.Tensor:
        value = self.differentiable_loss(model, guide, *args, **kwargs)
        if value.requires_grad:  # as Trace_ELBO: no backward through a constant
            value.backward()
        return value.detach()


def _plus(total: torch.Tensor | None, term: torch.Tensor) -> torch.Tensor:
    return term if total is None else total + term


def _minus(total: torch.Tensor | None, term: torch.Tensor) -> torch.Tensor:
    return -term if total is None else total - term


def _zero(total: torch.Tensor | float | None) -> torch.Tensor | float:
    return 0.0 if total is None else total


class ImportanceWeightedELBO(Trace_ELBO):
    r"""The importance-weighted bound of Burda, Grosse & Salakhutdinov (2016, "Importance
    Weighted Autoencoders"), per data point, with :math:`K` vectorized particles:

    .. math::

        \mathcal{L}_K = \sum_n \mathbb{E}\Big[\log \frac1K \sum_{k=1}^K
            \frac{p(x_n, z_{kn})}{q(z_{kn} \mid x_n)}\Big] \le \sum_n \log p(x_n),
        \qquad z_{kn} \sim q(z \mid x_n).

    :math:`\mathcal{L}_1` is the ELBO; :math:`\mathcal{L}_K` grows with :math:`K` towards
    :math:`\log p(x)`. The gradient is that of the bound (reparameterized samples, normalized
    importance weights :math:`\tilde w_{kn}`: :math:`\sum_k \tilde w_{kn} \nabla \log w_{kn}`).
    The particles are drawn in one pass under an outer ``pyro.plate`` (as in
    :func:`~pyro_vae.evaluate`, whose ``log_likelihood`` is this bound's estimate) and the loss
    stays a device tensor, so :func:`~pyro_vae.fit` runs it on its sync-free step, with
    ``e_steps`` and ``freeze_model`` too.

    "Per data point" means per element of the plates that hold every sample site (the data
    plate): the weights are multiplied within a point and averaged over particles per point. A
    subsampled plate's scale :math:`N / B` multiplies the bounds of the points (outside the
    log-mean-exp), so a minibatch estimates the bound of all :math:`N` points without bias.
    Other scales (e.g. :math:`\beta` of :class:`LatentScale`) weight their sites inside the
    weights. With a full batch this is ``pyro.infer.RenyiELBO(alpha=0, num_particles=K,
    vectorize_particles=True)``, which with a subsampled plate puts :math:`N / B` inside the
    log-mean-exp instead: another objective, not an estimate of the :math:`N`-point bound
    (larger; as :math:`N / B` grows it tends to the best particle's weight alone).

    Args:
        num_particles: :math:`K`.
        max_plate_nesting: Plates nested in the model and guide (the particle plate goes
            left of them); default: guessed from a first run, as in Pyro.

    Raises:
        NotImplementedError: For a guide site without reparameterized samples (the bound's
            gradient would silently miss the score-function term): use ``TensorTrace_ELBO``.

    Example:
        >>> vae = VAE(StandardNormalPrior(2), BernoulliLikelihood(MLP(2, 10), 10),
        ...           GaussianEncoder(MLP(10, 4), 2))
        >>> x, idx = torch.rand(8, 10).round(), torch.arange(8)
        >>> iwae = ImportanceWeightedELBO(num_particles=5, max_plate_nesting=1)
        >>> loss = iwae.differentiable_loss(vae.model, vae.guide, x, idx, num_data=80)
        >>> loss.shape, loss.requires_grad
        (torch.Size([]), True)
    """

    def __init__(self, num_particles: int = 5, *, max_plate_nesting: float = float("inf")) -> None:
        if not isinstance(num_particles, int) or num_particles < 1:
            raise ValueError(f"num_particles must be an integer >= 1; got {num_particles!r}")
        super().__init__(
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=True,
        )

    def _log_weights(self, model_trace, guide_trace) -> tuple[torch.Tensor, float]:
        """Log weights ``(K, *points)`` with the subsample scale divided out, and the scale."""
        sum_dims = get_dependent_plate_dims(model_trace.nodes.values())
        common = None
        log_w = 0.0
        for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
            for name, site in trace.nodes.items():
                if site["type"] != "sample":
                    continue
                frames = set(site["cond_indep_stack"])
                common = frames if common is None else common & frames
                if trace is guide_trace and not is_identically_zero(site["score_parts"][1]):
                    raise NotImplementedError(
                        f"ImportanceWeightedELBO needs reparameterized guide samples; site "
                        f"{name!r} ({type(site['fn']).__name__}) has none. Use "
                        "TensorTrace_ELBO (Trace_ELBO's score-function estimator) for it"
                    )
                log_w = log_w + sign * torch_sum(site["log_prob"], sum_dims)
        if common is None:  # no sample site: a constant 0, as Trace_ELBO
            return torch.zeros(1), 1.0
        scale = 1.0
        for frame in common:
            if frame.full_size is not None and frame.size != frame.full_size:
                scale *= frame.full_size / frame.size
        log_w = torch.as_tensor(log_w)
        if self.num_particles == 1:  # no particle plate: add its dimension
            log_w = log_w.unsqueeze(0)
        return log_w / scale, scale

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """The negative bound (a 0-dim device tensor) whose gradient is the bound's."""
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            log_w, scale = self._log_weights(model_trace, guide_trace)
        bound = torch.logsumexp(log_w, dim=0) - math.log(self.num_particles)
        return -scale * bound.sum()

    @torch.no_grad()
    def loss(self, model, guide, *args, **kwargs) -> float:
        """The negative bound as a float (a host sync), as Pyro's ``loss``."""
        return self.differentiable_loss(model, guide, *args, **kwargs).item()

    def loss_and_grads(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """Backward of the negative bound; returns it detached (a device tensor)."""
        value = self.differentiable_loss(model, guide, *args, **kwargs)
        if value.requires_grad:
            value.backward()
        return value.detach()


class LatentScale(Messenger):
    r"""Scales the log-densities of latent (unobserved) sample sites by :math:`\beta`.

    Applied to both the model and the guide, the ELBO becomes
    :math:`\mathbb{E}_q[\log p(x \mid z)] - \beta\,\mathrm{KL}(q(z \mid x) \,\|\, p(z))`:
    the :math:`\beta`-VAE objective (Higgins et al. 2017) and, with :math:`\beta` rising from
    0 to 1, KL warm-up (Bowman et al. 2016; Sønderby et al. 2016). It is ``poutine.scale``
    restricted to latent sites; ``beta`` may be changed between steps.

    Args:
        beta: :math:`\beta \ge 0`.

    Example:
        >>> vae = VAE(StandardNormalPrior(2), BernoulliLikelihood(MLP(2, 10), 10),
        ...           GaussianEncoder(MLP(10, 4), 2))
        >>> x = torch.rand(8, 10).round()
        >>> with LatentScale(0.5):
        ...     loss = Trace_ELBO().differentiable_loss(vae.model, vae.guide, x)
        >>> loss.shape
        torch.Size([])
    """

    def __init__(self, beta: float = 1.0) -> None:
        super().__init__()
        self.beta = beta

    def _process_message(self, msg: dict) -> None:
        if msg["type"] == "sample" and not msg["is_observed"] and self.beta != 1.0:
            msg["scale"] = msg["scale"] * self.beta


class BetaELBO:
    r"""A loss for :func:`~pyro_vae.fit` whose KL term weighs :math:`\beta`:
    :math:`\mathbb{E}_q[\log p(x \mid z)] - \beta\,\mathrm{KL}(q(z \mid x) \,\|\, p(z))`, the
    :math:`\beta`-VAE objective (Higgins et al. 2017) or, with :math:`\beta` rising from 0 to
    1, KL warm-up (Bowman et al. 2016; Sønderby et al. 2016). ``fit`` runs ``loss`` under
    :class:`LatentScale` with :math:`\beta` for the epoch; the history records the
    :math:`\beta`-weighted loss, and validation scores with :math:`\beta = 1`.

    Args:
        beta: :math:`\beta \ge 0`, or a function of the epoch (from 1), e.g.
            ``lambda epoch: min(1.0, epoch / 10)``.
        loss: The estimator (a Pyro ELBO); default ``None``: ``fit``'s default.

    Example:
        >>> warm_up = BetaELBO(lambda epoch: min(1.0, epoch / 10))
        >>> warm_up.beta(5)
        0.5
    """

    def __init__(self, beta: float | Callable[[int], float], loss: object = None) -> None:
        self.beta, self.loss = beta, loss

    def __repr__(self) -> str:
        return f"BetaELBO(beta={self.beta!r}, loss={self.loss!r})"
