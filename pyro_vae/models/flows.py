r"""Normalizing-flow guides: :math:`q(z \mid x)` as a base draw pushed through invertible maps.

.. math::

    z_0 \sim q_0(z_0 \mid x), \quad z_K = f_K \circ \dots \circ f_1(z_0), \qquad
    \log q(z_K \mid x) = \log q_0(z_0 \mid x)
        - \sum_k \log \left| \det \frac{\partial f_k}{\partial z_{k-1}} \right|.

Every guide here samples in one pass and scores its own samples from the forward pass's
cache (Pyro transforms keep the last ``(x, y)`` pair and log-determinant; ``ZukoToPyro`` keeps
the log-density zuko's ``rsample_and_log_prob`` returns), so no inverse is ever computed.

* :class:`PlanarEncoder` — amortized planar flows (Rezende & Mohamed 2015): the encoder
  outputs the base's :math:`(\mu, \log\sigma)` and every map's :math:`(u_k, w_k, b_k)`.
* :class:`IAFEncoder` — inverse autoregressive flows (Kingma et al. 2016) conditioned on the
  encoder's features.
* :class:`ZukoFlowEncoder` — any conditional zuko flow with the features as context.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro.distributions as dist
import zuko
from pyro.contrib.zuko import ZukoToPyro
from pyro.distributions.transforms import (
    AffineAutoregressive,
    ConditionalAffineAutoregressive,
    ConditionalPlanar,
)
from pyro.nn import ConditionalAutoRegressiveNN
from torch import Tensor, nn
from torch.distributions import Transform
from zuko.distributions import NormalizingFlow
from zuko.transforms import ComposedTransform

from ..devices.precision import network
from .guides import diagonal_normal

__all__ = ["IAFEncoder", "PlanarEncoder", "TransformedGaussianEncoder", "ZukoFlowEncoder"]


class TransformedGaussianEncoder(nn.Module):
    r"""A diagonal Gaussian base :math:`q_0(z_0 \mid x)` pushed through conditional Pyro
    transforms :math:`f_k(\cdot\,; h(x))` that read the encoder's features :math:`h(x)`.

    Args:
        encoder: A network mapping ``(B, *event_shape)`` data to ``(B, H)`` features.
        features: :math:`H`.
        latent_dim: :math:`D`.
        transforms: Conditional transforms of :math:`D`-vectors with context size :math:`H`
            (``pyro.distributions.transforms.ConditionalTransformModule``).

    Example:
        >>> from pyro.distributions.transforms import conditional_planar
        >>> guide = TransformedGaussianEncoder(
        ...     MLP(784, 32, (64,)), 32, 4, [conditional_planar(4, 32) for _ in range(2)]
        ... )
        >>> guide(torch.rand(8, 784)).rsample().shape
        torch.Size([8, 4])
    """

    def __init__(
        self,
        encoder: nn.Module,
        features: int,
        latent_dim: int,
        transforms: Sequence[nn.Module],
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.latent_dim = latent_dim
        self.base = nn.Linear(features, 2 * latent_dim)
        self.transforms = nn.ModuleList(transforms)

    def forward(self, x: Tensor, idx: Tensor | None = None) -> dist.Distribution:
        """Returns :math:`q(z \\mid x)`: batch shape ``(B,)``, event shape ``(D,)``."""
        h = network(self.encoder, x)
        loc, log_scale = self.base(h).chunk(2, dim=-1)
        base = diagonal_normal(loc, log_scale)
        return dist.TransformedDistribution(base, [t.condition(h) for t in self.transforms])


class _PlanarParams(nn.Module):
    """A linear head ``h -> (b, u, w)`` for one planar map."""

    def __init__(self, features: int, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.linear = nn.Linear(features, 1 + 2 * latent_dim)

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        d = self.latent_dim
        out = self.linear(h)
        return out[..., :1], out[..., 1 : 1 + d], out[..., 1 + d :]


class PlanarEncoder(TransformedGaussianEncoder):
    r"""Amortized planar flows (Rezende & Mohamed 2015, "Variational Inference with Normalizing
    Flows"): :math:`f_k(z) = z + \hat u_k \tanh(w_k^\top z + b_k)` with every
    :math:`(u_k, w_k, b_k)` a linear function of the encoder's features, so each data point has
    its own flow.

    Invertibility: :math:`\hat u = u + (m(w^\top u) - w^\top u)\, w / \|w\|^2` with
    :math:`m(a) = -1 + \log(1 + e^a)` guarantees :math:`w^\top \hat u \ge -1`, hence
    :math:`\det \partial f / \partial z = 1 + \hat u^\top \tanh'(\cdot)\, w > 0` for any encoder
    output (Pyro's ``ConditionalPlanar``).

    Args:
        encoder: A network mapping data to ``(B, H)`` features.
        features: :math:`H`.
        latent_dim: :math:`D`.
        flows: :math:`K`, the number of planar maps.

    Example:
        >>> guide = PlanarEncoder(MLP(784, 64, (128,)), 64, 16, flows=4)
        >>> guide(torch.rand(8, 784)).rsample().shape
        torch.Size([8, 16])
    """

    def __init__(self, encoder: nn.Module, features: int, latent_dim: int, *, flows: int) -> None:
        maps = [ConditionalPlanar(_PlanarParams(features, latent_dim)) for _ in range(flows)]
        super().__init__(encoder, features, latent_dim, maps)


class IAFEncoder(TransformedGaussianEncoder):
    r"""Inverse autoregressive flows (Kingma et al. 2016, "Improved Variational Inference with
    Inverse Autoregressive Flow") conditioned on the encoder's features :math:`h`:
    :math:`z_k = \mu_k(z_{k-1}, h) + \sigma_k(z_{k-1}, h) \odot z_{k-1}` with autoregressive
    :math:`\mu_k, \sigma_k` (MADE networks), so sampling takes one pass per map and
    :math:`\log|\det| = \sum_i \log \sigma_{k,i}`. Each map uses another variable order.

    Args:
        encoder: A network mapping data to ``(B, H)`` features.
        features: :math:`H`.
        latent_dim: :math:`D`.
        flows: :math:`K`, the number of autoregressive maps.
        hidden_features: Widths of each MADE network.
        stable: Kingma et al.'s numerically stable (sigmoid-gated) update.

    Example:
        >>> guide = IAFEncoder(MLP(784, 64, (128,)), 64, 16, flows=2, hidden_features=(32,))
        >>> q = guide(torch.rand(8, 784))
        >>> z = q.rsample()
        >>> z.shape, q.log_prob(z).shape
        (torch.Size([8, 16]), torch.Size([8]))
    """

    def __init__(
        self,
        encoder: nn.Module,
        features: int,
        latent_dim: int,
        *,
        flows: int = 2,
        hidden_features: Sequence[int] = (320, 320),
        stable: bool = False,
    ) -> None:
        maps = [
            _ConditionalIAF(
                ConditionalAutoRegressiveNN(latent_dim, features, list(hidden_features)),
                stable=stable,
            )
            for _ in range(flows)
        ]
        super().__init__(encoder, features, latent_dim, maps)


class _Conditioned:
    """An autoregressive network with its context bound: ``arn(z) = nn(z, context=h)``, with
    the network's variable order (what ``AffineAutoregressive`` reads to invert)."""

    def __init__(self, nn: ConditionalAutoRegressiveNN, context: Tensor) -> None:
        self.nn, self.context = nn, context

    def __call__(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return self.nn(z, context=self.context)

    @property
    def permutation(self) -> Tensor:
        return self.nn.permutation

    def get_permutation(self) -> Tensor:
        return self.nn.get_permutation()


class _ConditionalIAF(ConditionalAffineAutoregressive):
    """Pyro's ``ConditionalAffineAutoregressive`` (the same parameters and maps), conditioned
    without setting attributes on a ``functools.partial``, which ``torch.compile`` cannot
    trace (``fit(compile=True)`` compiles an IAF guide)."""

    def condition(self, context: Tensor) -> AffineAutoregressive:
        return AffineAutoregressive(_Conditioned(self.nn, context), **self.kwargs)


class ZukoFlowEncoder(nn.Module):
    r"""Any conditional zuko flow as the guide, :math:`q(z \mid x) = \mathrm{flow}(h(x))`.

    zuko's autoregressive flows (MAF, NSF) evaluate densities in one pass but sample in
    :math:`D` sequential passes; ``inverse=True`` (the default) swaps every transform for its
    inverse (``zuko.lazy.LazyInverse``), which makes *sampling* one pass, as a guide needs
    — the IAF construction. Samples are scored from zuko's ``rsample_and_log_prob`` through
    ``ZukoToPyro``'s cache.

    Args:
        encoder: A network mapping data to ``(B, H)`` features.
        flow: A zuko flow over :math:`D` features with ``context=H``.
        inverse: Invert the flow's transforms for fast sampling.

    Example:
        >>> flow = zuko.flows.NSF(16, context=64, transforms=2, hidden_features=(32, 32))
        >>> guide = ZukoFlowEncoder(MLP(784, 64, (128,)), flow)
        >>> q = guide(torch.rand(8, 784))
        >>> z = q()  # sampled with its log-density, which log_prob reads back
        >>> z.shape, q.log_prob(z).shape
        (torch.Size([8, 16]), torch.Size([8]))
    """

    def __init__(self, encoder: nn.Module, flow: zuko.flows.Flow, *, inverse: bool = True) -> None:
        super().__init__()
        self.encoder = encoder
        if inverse:
            transforms = [t.inv for t in flow.transform.transforms]
            flow = zuko.flows.Flow(transforms, flow.base)
        self.flow = flow
        self.latent_dim = flow.base(None).event_shape[-1]

    def forward(self, x: Tensor, idx: Tensor | None = None) -> dist.Distribution:
        """Returns :math:`q(z \\mid x)`: batch shape ``(B,)``, event shape ``(D,)``."""
        c = network(self.encoder, x)
        # zuko's Flow.forward, with a composed transform that torch.compile can trace
        lazy = self.flow.transform
        if isinstance(lazy, zuko.lazy.LazyComposedTransform):
            transform = _Composed(*(t(c) for t in lazy.transforms))
        else:
            transform = lazy(c)
        base = self.flow.base(c).expand(c.shape[:-1])
        return ZukoToPyro(NormalizingFlow(transform, base))


class _Composed(ComposedTransform):
    """zuko's ``ComposedTransform`` (the same maps and event dimensions) without the
    assertion on its arguments, which ``torch.compile`` cannot trace (``fit(compile=True)``
    compiles a zuko flow guide); it is built from a flow's non-empty list of transforms."""

    def __init__(self, *transforms: Transform) -> None:
        Transform.__init__(self)
        event_dim = 0
        for t in reversed(transforms):
            event_dim = t.domain.event_dim + max(event_dim - t.codomain.event_dim, 0)
        self.domain_dim = event_dim
        for t in transforms:
            event_dim += t.codomain.event_dim - t.domain.event_dim
        self.codomain_dim = event_dim
        self.transforms = transforms
