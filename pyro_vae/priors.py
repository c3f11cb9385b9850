r"""Priors :math:`p(z)`: modules whose ``forward()`` returns a Pyro distribution over ``z``.

A prior has no context: ``prior()`` returns a distribution with ``event_shape == (D,)`` and an
empty batch shape, which ``pyro.plate`` broadcasts over the data points.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import pyro.distributions as dist
import torch
import zuko
from pyro.contrib.zuko import ZukoToPyro
from torch import nn

__all__ = ["FlowPrior", "MAFPrior", "Prior", "StandardNormalPrior"]


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
