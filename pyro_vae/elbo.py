r"""Objectives: an ELBO whose losses stay on the device, and the KL weight :math:`\beta`.

Pyro's ``Trace_ELBO.differentiable_loss`` converts every site's log-density to a Python float
(``.item()``), which on CUDA is a host-device synchronization per site per step
(pyro-ppl/pyro#222, #361, #829). :class:`TensorTrace_ELBO` computes the same estimator and
the same gradients but returns the loss as a tensor, so a training loop can read it every
few steps instead of every step.
"""

from __future__ import annotations

import torch
from pyro.infer import Trace_ELBO
from pyro.infer.trace_elbo import _compute_log_r
from pyro.infer.util import is_identically_zero
from pyro.poutine.messenger import Messenger

__all__ = ["LatentScale", "TensorTrace_ELBO"]


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
        elbo = 0.0
        surrogate = 0.0
        log_r = None
        for site in model_trace.nodes.values():
            if site["type"] == "sample":
                elbo = elbo + site["log_prob_sum"].detach()
                surrogate = surrogate + site["log_prob_sum"]
        for site in guide_trace.nodes.values():
            if site["type"] == "sample":
                _, score_function_term, entropy_term = site["score_parts"]
                elbo = elbo - site["log_prob_sum"].detach()
                if not is_identically_zero(entropy_term):
                    surrogate = surrogate - entropy_term.sum()
                if not is_identically_zero(score_function_term):
                    if log_r is None:
                        log_r = _compute_log_r(model_trace, guide_trace)
                    weight = log_r.sum_to(site["cond_indep_stack"])
                    surrogate = surrogate + (weight * score_function_term).sum()
        return -elbo, -surrogate

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        loss = 0.0
        surrogate = 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            particle_loss, particle_surrogate = self._differentiable_loss_particle(
                model_trace, guide_trace
            )
            loss = loss + particle_loss / self.num_particles
            surrogate = surrogate + particle_surrogate / self.num_particles
        if not getattr(surrogate, "requires_grad", False):  # nothing trainable reaches it
            return torch.as_tensor(loss)  # (0 without any sample site, as Trace_ELBO)
        return loss + (surrogate - surrogate.detach())

    def loss_and_grads(self, model, guide, *args, **kwargs) -> torch.Tensor:
        value = self.differentiable_loss(model, guide, *args, **kwargs)
        if value.requires_grad:  # as Trace_ELBO: no backward through a constant
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
