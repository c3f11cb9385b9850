r"""Priors :math:`p(z)`: modules whose ``forward()`` returns a Pyro distribution over ``z``.

A prior has no context: ``prior()`` returns a distribution with ``event_shape == (D,)`` and an
empty batch shape, which ``pyro.plate`` broadcasts over the data points.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import pyro.distributions as dist
import torch
import zuko
from pyro.contrib.zuko import ZukoToPyro
from torch import Tensor, nn
from torch.distributions.utils import _sum_rightmost
from torch.nn.functional import hardtanh

from .._checks import LocalParameters

__all__ = ["FlowPrior", "MAFPrior", "Prior", "StandardNormalPrior", "VampPrior"]


@runtime_checkable
class Prior(Protocol):
    r"""What a prior is: a module whose ``forward()`` returns :math:`p(z)` with event shape
    ``(D,)`` and an empty batch shape, and that knows :math:`D` as ``latent_dim``.

    ``isinstance(module, Prior)`` checks the attributes.

    Example:
        >>> isinstance(StandardNormalPrior(2), Prior), isinstance(torch.nn.Linear(2, 2), Prior)
        (True, False)
    """

    latent_dim: int

    def __call__(self) -> dist.Distribution: ...


class StandardNormalPrior(nn.Module):
    r"""The standard normal prior :math:`p(z) = \mathcal{N}(z; 0, I_D)`.

    Args:
        latent_dim: The latent dimension :math:`D`.

    Example:
        >>> prior = StandardNormalPrior(16)
        >>> prior().sample((3,)).shape
        torch.Size([3, 16])
    """

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))

    def forward(self) -> dist.Distribution:
        """Returns :math:`p(z)`, event shape ``(D,)``."""
        return dist.Normal(self.loc, self.scale).to_event(1)


class FlowPrior(nn.Module):
    r"""A normalizing-flow prior :math:`p(z) = p_0(f^{-1}(z)) |\det J_{f^{-1}}(z)|`.

    Wraps any unconditional ``zuko`` flow; its distribution reaches Pyro through
    :class:`pyro.contrib.zuko.ZukoToPyro`, which caches the log-density of its own samples.

    Args:
        flow: An unconditional ``zuko.flows.Flow`` (``context=0``) over ``D`` features.

    Example:
        >>> prior = FlowPrior(zuko.flows.NSF(8, transforms=2, hidden_features=(32, 32)))
        >>> z = prior()((4,))
        >>> prior().log_prob(z).shape
        torch.Size([4])

    References:
        Chen et al. (2017), "Variational Lossy Autoencoder" (autoregressive flow priors).
    """

    def __init__(self, flow: zuko.flows.Flow) -> None:
        super().__init__()
        self.flow = flow
        self.latent_dim = flow().event_shape[-1]

    def forward(self) -> dist.Distribution:
        """Returns :math:`p(z)`, event shape ``(D,)``."""
        return ZukoToPyro(self.flow())

    def log_prob(self, z: Tensor) -> Tensor:
        r""":math:`\log p(z) = \log p_0(f^{-1}(z)) + \log |\det J_{f^{-1}}(z)|`, the value of
        ``self().log_prob(z)``, computed transform by transform (zuko's ``NormalizingFlow``
        and ``ComposedTransform`` are not built, so ``torch.compile`` traces it in one graph).

        Args:
            z: Points, shape ``(..., D)``.

        Returns:
            The log-density, shape ``(...)``.
        """
        transform, event_dim, total = self.flow.transform, 1, 0
        lazy = getattr(transform, "transforms", [transform])  # a LazyComposedTransform's parts
        for t in [part(None) for part in lazy]:
            z, ladj = t.call_and_ladj(z)
            total = total + _sum_rightmost(ladj, event_dim - t.domain.event_dim)
            event_dim += t.codomain.event_dim - t.domain.event_dim
        return self.flow.base(None).log_prob(z) + total


class MAFPrior(FlowPrior):
    r"""A masked autoregressive flow prior (Papamakarios et al. 2017, "Masked Autoregressive
    Flow for Density Estimation"), as in zuko's and Pyro's flow-prior VAE tutorials.

    Args:
        latent_dim: The latent dimension :math:`D`.
        transforms: Number of autoregressive transforms.
        hidden_features: Widths of each transform's MADE network.

    Example:
        >>> prior = MAFPrior(16, transforms=3, hidden_features=(256, 256))
        >>> prior()((5,)).shape
        torch.Size([5, 16])
    """

    def __init__(
        self,
        latent_dim: int,
        *,
        transforms: int = 3,
        hidden_features: Sequence[int] = (256, 256),
    ) -> None:
        super().__init__(
            zuko.flows.MAF(latent_dim, transforms=transforms, hidden_features=hidden_features)
        )


class VampPrior(nn.Module):
    r"""The variational mixture of posteriors prior (Tomczak & Welling 2018, "VAE with a
    VampPrior"): the guide's posteriors at :math:`K` learned pseudo-inputs :math:`u_k`,

    .. math::

        p_\lambda(z) = \frac1K \sum_{k=1}^K q_\phi(z \mid u_k),

    a ``pyro.distributions.MixtureSameFamily`` with equal weights. The encoder is the VAE's
    own guide (shared weights): the prior *reads* it and does not own it, so its only
    parameters are the pseudo-inputs (trained with the model) and the encoder's weights are
    registered, trained and saved once, as the guide's. :class:`~pyro_vae.VAE` refuses a
    VampPrior whose encoder is not part of its guide (it would never be trained). Pseudo-inputs
    are kept in ``bounds`` (``hardtanh``, as in the paper: pixel intensities in [0, 1]).

    Args:
        encoder: An amortized guide: ``encoder(u)`` with ``u`` of shape
            ``(K, *event_shape)`` returns a distribution with batch shape ``(K,)`` and event
            shape ``(D,)`` (e.g. :class:`~pyro_vae.GaussianEncoder`; for a hierarchical VAE,
            :class:`~pyro_vae.GuideChain` to the top layer).
        num_pseudo: :math:`K` (500 in the paper's MNIST experiments).
        event_shape: The shape of one data point.
        init: Initial pseudo-inputs ``(K, *event_shape)`` (e.g. random training images);
            default :math:`\mathcal{N}(0.05, 0.01^2)`, the paper's initialization.
        bounds: The range the pseudo-inputs are clamped to; ``None`` for none.

    Example:
        >>> encoder = GaussianEncoder(MLP(784, 2 * 16, (256,)), 16)
        >>> prior = VampPrior(encoder, 50, (784,))
        >>> vae = VAE(prior, BernoulliLikelihood(MLP(16, 784, (256,)), 784), encoder)
        >>> z = prior()((3,))
        >>> z.shape, prior().log_prob(z).shape
        (torch.Size([3, 16]), torch.Size([3]))

    Note:
        The prior follows the encoder, so the encoder can make every posterior equal to the
        prior at no KL cost: a data-independent solution. With the tanh networks of
        :func:`pyro_vae.models.zoo.iwae_vae` MNIST training stayed there for ten epochs (with or
        without KL warm-up); with ReLU networks it trained (README, Results).

    References:
        Tomczak & Welling (2018), "VAE with a VampPrior", AISTATS: a test NLL of 85.57 on
        dynamically binarized MNIST for a one-layer VAE with a VampPrior (their gated MLPs).
    """

    def __init__(
        self,
        encoder: Callable[..., dist.Distribution],
        num_pseudo: int,
        event_shape: Sequence[int],
        *,
        init: Tensor | None = None,
        bounds: tuple[float, float] | None = (0.0, 1.0),
    ) -> None:
        super().__init__()
        if not isinstance(encoder, nn.Module) or not hasattr(encoder, "latent_dim"):
            raise TypeError(
                "the VampPrior's encoder must be an amortized guide module with latent_dim "
                f"(e.g. the VAE's GaussianEncoder); got {type(encoder).__name__}"
            )
        if isinstance(encoder, LocalParameters):
            raise TypeError(
                "a VampPrior needs an amortized encoder that reads inputs; a per-datapoint "
                "guide has no encoder to apply to pseudo-inputs"
            )
        shape = (num_pseudo, *event_shape)
        if init is None:
            init = 0.05 + 0.01 * torch.randn(shape)
        elif tuple(init.shape) != shape:
            raise ValueError(f"init must have shape {shape}; got {tuple(init.shape)}")
        self.pseudo_inputs = nn.Parameter(init.detach().clone())
        self.reads = (encoder,)  # a tuple: read, not registered as a submodule
        self.latent_dim = encoder.latent_dim
        self.bounds = bounds

    def forward(self) -> dist.Distribution:
        """Returns :math:`p(z)`, event shape ``(D,)``, empty batch shape."""
        u = self.pseudo_inputs
        if self.bounds is not None:
            u = hardtanh(u, *self.bounds)
        q = self.reads[0](u)
        if q.batch_shape != u.shape[:1]:
            raise ValueError(
                f"the VampPrior's encoder must return batch shape ({u.shape[0]},) for "
                f"{u.shape[0]} pseudo-inputs; got {tuple(q.batch_shape)}"
            )
        weights = dist.Categorical(logits=torch.zeros(u.shape[0], device=u.device, dtype=u.dtype))
        base = q.base_dist if isinstance(q, dist.Independent) else None
        if isinstance(base, dist.Normal) and q.reinterpreted_batch_ndims == 1:
            return DiagonalNormalMixture(weights, q)
        return dist.MixtureSameFamily(weights, q)


class DiagonalNormalMixture(dist.MixtureSameFamily):
    r"""A mixture of :math:`K` diagonal Gaussians whose ``log_prob`` costs
    :math:`O(R K)` memory for :math:`R` values instead of :math:`O(R K D)`.

    The squared Mahalanobis distances come from matrix products,
    :math:`\sum_d (z_d - \mu_{kd})^2 / \sigma_{kd}^2 = z^2 \cdot \sigma_k^{-2}
    - 2 z \cdot (\mu_k \sigma_k^{-2}) + \mu_k^2 \cdot \sigma_k^{-2}`, so scoring a whole
    batch of particles against 500 components never materializes the ``(R, K, D)`` tensor
    that ``MixtureSameFamily.log_prob`` broadcasts (6.5 GB for :math:`R = 2^{16}`,
    :math:`K = 500`, :math:`D = 50`). The expansion loses digits to cancellation when
    :math:`|z|/\sigma` is large; it is evaluated in float64 (the inputs of the products are
    small: :math:`(R, D)` and :math:`(K, D)`) and the result returned in the value's dtype
    (on GPUs with slow float64 arithmetic this is the costly part of the prior).

    Args:
        mixture_distribution: ``Categorical`` over the :math:`K` components.
        component_distribution: ``Normal(loc, scale).to_event(1)`` with batch shape
            ``(K,)`` and event shape ``(D,)``.

    Example:
        >>> loc, scale = torch.randn(5, 3), torch.rand(5, 3) + 0.1
        >>> mix = DiagonalNormalMixture(
        ...     dist.Categorical(logits=torch.zeros(5)), dist.Normal(loc, scale).to_event(1)
        ... )
        >>> z = torch.randn(4, 3)
        >>> slow = dist.MixtureSameFamily(mix.mixture_distribution, mix.component_distribution)
        >>> torch.allclose(mix.log_prob(z), slow.log_prob(z), atol=1e-5)
        True
    """

    def expand(self, batch_shape: Sequence[int], _instance=None) -> dist.Distribution:
        """Keeps the ``(K, D)`` components and broadcasts the log-densities (what
        ``pyro.plate`` asks for) instead of expanding the components to ``(*batch, K, D)``."""
        return dist.ExpandedDistribution(self, torch.Size(batch_shape))

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        normal = self.component_distribution.base_dist
        if normal.loc.dim() != 2:  # batched components: the generic (broadcasting) path
            return super().log_prob(value)
        loc, scale = normal.loc.double(), normal.scale.double()
        z = value.double()
        precision = scale.reciprocal().square()  # (K, D)
        quad = (
            z.square() @ precision.T
            - 2 * z @ (loc * precision).T
            + (loc.square() * precision).sum(-1)
        )  # (..., K)
        log_norm = -scale.log().sum(-1) - 0.5 * loc.shape[-1] * math.log(2 * math.pi)
        log_mix = torch.log_softmax(self.mixture_distribution.logits.double(), -1)
        return torch.logsumexp(log_mix + log_norm - 0.5 * quad.clamp(min=0), -1).to(value.dtype)
