r"""What :class:`~pyro_vae.VAE` and :class:`~pyro_vae.HierarchicalVAE` share: the check that
each piece fits its role, and the arithmetic of their bounds (the minibatch's scale
:math:`N / B`, particles, the negative ELBO or importance-weighted bound from log-densities).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import pyro.distributions as dist
import torch
from torch import Tensor, nn

from .guides import Guide
from .likelihoods import Likelihood
from .priors import Prior

__all__ = ["batch_scale", "check_role", "log_density", "negative_bound", "particles", "takes"]

_ROLES = {  # the protocol, what it needs, and how many arguments forward takes
    "prior": (Prior, "latent_dim and forward() -> p(z)", 0),
    "likelihood": (Likelihood, "event_shape and forward(z) -> p(x|z)", 1),
    "guide": (Guide, "latent_dim and forward(x, idx) -> q(z|x)", 2),
}


def batch_scale(x: Tensor, idx: Tensor | None, num_data: int | None) -> tuple[Tensor, float]:
    """The minibatch's indices (default ``arange(B)``) and its scale :math:`N / B`."""
    batch = x.shape[0]
    if idx is None:
        idx = torch.arange(batch, device=x.device)
    return idx, (batch if num_data is None else num_data) / batch


def particles(q: dist.Distribution, num_particles: int, batch: int) -> dist.Distribution:
    """``q`` expanded to ``(K, B)`` for :math:`K > 1` particles, as a sample statement under
    Pyro's particle plate expands it (the same random numbers); ``q`` itself for one."""
    if num_particles == 1 or tuple(q.batch_shape) == (num_particles, batch):
        return q
    return q.expand(torch.Size((num_particles, batch)))


def negative_bound(
    log_x: Tensor, log_z: Tensor, log_q: Tensor, *, scale: float, beta: float | Tensor, K: int
) -> Tensor:
    r"""The negative ELBO (:math:`K = 1`, summed site by site as ``Trace_ELBO`` sums) or the
    negative importance-weighted bound from the log-densities of the minibatch, shape ``(B,)``
    or ``(K, B)``: :math:`-\frac{N}{B} \sum_n \log \frac1K \sum_k w_{kn}` with
    :math:`\log w = \log p(x \mid z) + \beta (\log p(z) - \log q(z))`."""
    if K == 1:
        latent = scale * beta
        return -((latent * log_z).sum() + (scale * log_x).sum() - (latent * log_q).sum())
    log_w = log_x + beta * (log_z - log_q)
    return -scale * (torch.logsumexp(log_w, dim=0) - math.log(K)).sum()


def log_density(prior: Prior, z: Tensor) -> Tensor:
    r""":math:`\log p(z)`: ``prior.log_prob(z)`` where the prior computes it directly (a
    :class:`~pyro_vae.FlowPrior`, which ``torch.compile`` traces), else
    ``prior().log_prob(z)``."""
    direct = getattr(prior, "log_prob", None)
    return direct(z) if direct is not None else prior().log_prob(z)


def check_role(role: str, piece: object) -> None:
    """Raises ``TypeError`` unless ``piece`` is an ``nn.Module`` that satisfies the protocol of
    its ``role`` (``"prior"``, ``"likelihood"`` or ``"guide"``) and whose ``forward`` takes
    that role's arguments: none for a prior, ``z`` for a likelihood, ``x`` and ``idx`` for a
    guide (which cannot be called without them). The protocols of priors and guides name the
    same attributes, so the arguments are what tell a guide given as a prior apart."""
    protocol, needs, count = _ROLES[role]
    ok = isinstance(piece, nn.Module) and isinstance(piece, protocol)
    if ok:
        forward = piece.forward
        ok = takes(forward, count) and not (role == "guide" and takes(forward, 0))
    if not ok:
        raise TypeError(
            f"the {role} must be an nn.Module with {needs} (see pyro_vae."
            f"{protocol.__name__}); got {type(piece).__name__}"
        )


def takes(fn: Callable[..., object], count: int) -> bool:
    """Whether ``fn`` can be called with ``count`` positional arguments."""
    try:
        inspect.signature(fn).bind(*[None] * count)
    except (TypeError, ValueError):
        return False
    return True
