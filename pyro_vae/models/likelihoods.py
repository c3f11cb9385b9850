r"""Likelihoods :math:`p(x \mid z)`: modules whose ``forward(z)`` returns a Pyro distribution.

Each likelihood wraps a decoder network ``z -> parameters`` and knows the event shape of one
data point (``(784,)`` for flat MNIST, ``(1, 28, 28)`` for images). The distribution it returns
has batch shape ``z.shape[:-1]`` and that event shape, so ``log_prob(x)`` sums over pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import pyro.distributions as dist
import torch
from torch import Tensor, nn
from torch.distributions import constraints

from ..devices.precision import network

__all__ = ["BernoulliLikelihood", "GaussianLikelihood", "Likelihood", "UnitIntervalBernoulli"]


@runtime_checkable
class Likelihood(Protocol):
    r"""What a likelihood is: a module whose ``forward(z)`` returns :math:`p(x \mid z)` with
    batch shape ``z.shape[:-1]`` and event shape ``event_shape`` (the shape of one data point,
    which it knows as ``event_shape``).

    ``isinstance(module, Likelihood)`` checks the attributes.

    Example:
        >>> isinstance(BernoulliLikelihood(MLP(2, 10), 10), Likelihood)
        True
    """

    event_shape: torch.Size

    def __call__(self, z: Tensor) -> dist.Distribution: ...


class UnitIntervalBernoulli(dist.Bernoulli):
    r"""A Bernoulli distribution whose log-density accepts values in :math:`[0, 1]`.

    :math:`\log p(x) = x \log \sigma(l) + (1 - x) \log(1 - \sigma(l))`, i.e. minus the binary
    cross-entropy, which is the usual (improper) "Bernoulli" likelihood of grey-value images.
    On binary data it is exactly the Bernoulli distribution. Values outside :math:`[0, 1]` are
    rejected with a clear error when validation is enabled.
    """

    support = constraints.unit_interval

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args and not bool(((value >= 0) & (value <= 1)).all()):
            raise ValueError(
                "Bernoulli likelihood expects data in [0, 1]; got values in "
                f"[{value.min().item():.3g}, {value.max().item():.3g}]. Scale the data to [0, 1] "
                "or use GaussianLikelihood."
            )
        logits, value = torch.broadcast_tensors(self.logits, value)
        return -nn.functional.binary_cross_entropy_with_logits(logits, value, reduction="none")


class _DecoderLikelihood(nn.Module):
    def __init__(self, decoder: nn.Module, event_shape: int | Sequence[int]) -> None:
        super().__init__()
        self.decoder = decoder
        self.event_shape = torch.Size(
            (event_shape,) if isinstance(event_shape, int) else tuple(event_shape)
        )

    def _decode(self, z: Tensor) -> Tensor:
        out = network(self.decoder, z)
        return out.reshape(*z.shape[:-1], *self.event_shape)


class BernoulliLikelihood(_DecoderLikelihood):
    r"""Bernoulli likelihood :math:`p(x \mid z) = \prod_i \mathrm{Bernoulli}(x_i; \sigma(l_i(z)))`
    with logits :math:`l(z)` from a decoder network.

    Args:
        decoder: A network mapping ``(*batch, D)`` latents to ``prod(event_shape)`` logits (or to
            a tensor of shape ``(*batch, *event_shape)``).
        event_shape: The shape of one data point, e.g. ``784`` or ``(1, 28, 28)``.

    Example:
        >>> lik = BernoulliLikelihood(MLP(16, 784, (256,)), 784)
        >>> lik(torch.zeros(8, 16)).log_prob(torch.zeros(8, 784)).shape
        torch.Size([8])
    """

    def in_support(self, x: Tensor) -> Tensor:
        """Whether every value of ``x`` lies in :math:`[0, 1]`: a 0-dim bool tensor on ``x``'s
        device (no host read; ``fit`` checks a streamed data set's batches with it)."""
        return ((x >= 0) & (x <= 1)).all()

    def check_support(self, data: Tensor) -> None:
        """Raises a :class:`ValueError` unless every value of ``data`` lies in :math:`[0, 1]`
        (called once per data set by :func:`~pyro_vae.fit` and :func:`~pyro_vae.evaluate`)."""
        if not bool(self.in_support(data)):
            low, high = data.min().item(), data.max().item()
            raise ValueError(
                f"the Bernoulli likelihood expects data in [0, 1]; got values in "
                f"[{low:.3g}, {high:.3g}]. Scale the data to [0, 1] (e.g. divide 0..255 "
                "images by 255) or use GaussianLikelihood"
            )

    def forward(self, z: Tensor) -> dist.Distribution:
        """Returns :math:`p(x \\mid z)`, batch shape ``z.shape[:-1]``."""
        return UnitIntervalBernoulli(logits=self._decode(z)).to_event(len(self.event_shape))


class GaussianLikelihood(_DecoderLikelihood):
    r"""Gaussian likelihood :math:`p(x \mid z) = \mathcal{N}(x; \mu(z), \mathrm{diag}(\sigma^2))`
    with the mean from a decoder network and a fixed or learned scale.

    Args:
        decoder: A network mapping ``(*batch, D)`` latents to the mean.
        event_shape: The shape of one data point.
        scale: The standard deviation :math:`\sigma` (the initial one when learned).
        learn_scale: Learn one :math:`\log\sigma` per data feature (a Pyro-registered
            parameter of this module) instead of keeping it fixed.

    Example:
        >>> lik = GaussianLikelihood(MLP(1, 2, (20, 20)), 2, scale=0.1)
        >>> lik(torch.zeros(5, 1)).event_shape
        torch.Size([2])
    """

    def __init__(
        self,
        decoder: nn.Module,
        event_shape: int | Sequence[int],
        *,
        scale: float = 1.0,
        learn_scale: bool = False,
    ) -> None:
        super().__init__(decoder, event_shape)
        if scale <= 0:
            raise ValueError(f"scale must be positive; got {scale}")
        log_scale = torch.full(self.event_shape, math.log(scale))
        if learn_scale:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)

    def forward(self, z: Tensor) -> dist.Distribution:
        """Returns :math:`p(x \\mid z)`, batch shape ``z.shape[:-1]``."""
        loc = self._decode(z)
        scale = self.log_scale.exp().expand(loc.shape)
        return dist.Normal(loc, scale).to_event(len(self.event_shape))
