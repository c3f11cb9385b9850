r"""8-bit values: the discretized logistic likelihood and its mixture (Kingma et al. 2016,
"Improved Variational Inference with Inverse Autoregressive Flow"; Salimans et al. 2017,
"PixelCNN++"), a proper distribution over the 256 values :math:`0, \dots, 255` of each pixel.

A value :math:`x` is mapped to :math:`y = x / 127.5 - 1 \in [-1, 1]`; its bin is
:math:`[y - \delta, y + \delta]` with :math:`\delta = 1/255`, and the edge bins reach to
:math:`\mp\infty`, so that the 256 probabilities sum to one:

.. math::
    p(x) = \sum_k \pi_k \Big[\sigma\Big(\frac{y + \delta - m_k}{s_k}\Big)
           - \sigma\Big(\frac{y - \delta - m_k}{s_k}\Big)\Big]
    \quad (x = 0: \sigma(\cdot)\text{ of the upper edge}; x = 255: 1 - \sigma(\cdot)\text{ of
    the lower edge}).

Log-likelihoods in nats per image convert to bits per dimension by dividing by
:math:`D \ln 2` (:attr:`~pyro_vae.Evaluation.bits_per_dim`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from pyro.distributions import TorchDistribution
from torch import Tensor, nn
from torch.distributions import constraints

from ..devices.precision import network

_SCALAR = torch.Size()

__all__ = ["DiscretizedLogistic", "DiscretizedLogisticLikelihood"]

_HALF_BIN = 1.0 / 255.0


class DiscretizedLogistic(TorchDistribution):
    r"""A mixture of :math:`K` discretized logistics over the values :math:`0, \dots, 255`
    (see the module's formula), independent across the event's values.

    Args:
        loc: Means :math:`m_k` on the :math:`[-1, 1]` scale, shape ``(*batch, *event, K)``.
        log_scale: :math:`\log s_k`, same shape (clamped below at -7, as PixelCNN++).
        logits: Mixture logits :math:`\log \pi_k`, same shape (``None``: one component).
        event_dim: How many of the trailing dimensions (before ``K``) form one data point.

    Example:
        >>> d = DiscretizedLogistic(torch.zeros(1, 1), torch.zeros(1, 1), event_dim=1)
        >>> values = torch.arange(256.0).reshape(256, 1)  # every value of the one pixel
        >>> round(float(d.log_prob(values).exp().sum()), 4)  # the 256 probabilities
        1.0
    """

    arg_constraints: ClassVar[dict] = {}
    support = constraints.integer_interval(0, 255)

    def __init__(
        self,
        loc: Tensor,
        log_scale: Tensor,
        logits: Tensor | None = None,
        *,
        event_dim: int = 1,
        validate_args=None,
    ) -> None:
        self.loc, self.log_scale = loc, log_scale.clamp(min=-7.0)
        self.logits = (logits if logits is not None else torch.zeros_like(loc)).log_softmax(-1)
        shape = loc.shape[:-1]
        cut = len(shape) - event_dim
        super().__init__(shape[:cut], shape[cut:], validate_args=validate_args)

    def _log_probs(self, value: Tensor) -> Tensor:
        """Per value (``value``'s shape), summed over nothing: the mixture's log-probability."""
        x = value.unsqueeze(-1)
        y = x / 127.5 - 1.0
        inv_s = torch.exp(-self.log_scale)
        centred = y - self.loc
        a_plus, a_minus = (centred + _HALF_BIN) * inv_s, (centred - _HALF_BIN) * inv_s
        log_cdf_plus = -F.softplus(-a_plus)  # log σ(a+): the lowest bin (x = 0)
        log_survival_minus = -F.softplus(a_minus)  # log(1 - σ(a-)): the highest bin (x = 255)
        cdf_delta = torch.sigmoid(a_plus) - torch.sigmoid(a_minus)
        mid = centred * inv_s  # where the bin's mass is too small for a difference of CDFs:
        log_mid = mid - self.log_scale - 2.0 * F.softplus(mid) + math.log(2 * _HALF_BIN)
        inner = torch.where(cdf_delta > 1e-5, cdf_delta.clamp(min=1e-12).log(), log_mid)
        log_p = torch.where(x < 0.5, log_cdf_plus,
                            torch.where(x > 254.5, log_survival_minus, inner))  # fmt: skip
        return torch.logsumexp(self.logits + log_p, dim=-1)

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        log_p = self._log_probs(value)
        return log_p.sum(tuple(range(-self.event_dim, 0))) if self.event_dim else log_p

    def sample(self, sample_shape: torch.Size = _SCALAR) -> Tensor:
        with torch.no_grad():
            shape = torch.Size(sample_shape) + self.loc.shape
            k = torch.distributions.Categorical(logits=self.logits).sample(sample_shape)
            pick = F.one_hot(k, self.logits.shape[-1]).to(self.loc.dtype)
            u = torch.rand(shape, dtype=self.loc.dtype, device=self.loc.device)
            u = u.clamp(1e-5, 1 - 1e-5)
            y = self.loc + self.log_scale.exp() * (u.log() - (-u).log1p())  # logistic draws
            y = (y * pick).sum(-1)
            return ((y + 1.0) * 127.5).round().clamp(0, 255)

    @property
    def mean(self) -> Tensor:
        """The mixture's mean on the 0..255 scale (of the continuous logistics, clamped)."""
        y = (self.logits.exp() * self.loc).sum(-1)
        return ((y + 1.0) * 127.5).clamp(0, 255)

    def expand(self, batch_shape, _instance=None) -> DiscretizedLogistic:
        """The same distribution with its parameters broadcast to ``batch_shape``."""
        shape = torch.Size(batch_shape) + self.event_shape + self.loc.shape[-1:]
        loc, log_scale = self.loc.expand(shape), self.log_scale.expand(shape)
        logits, event_dim = self.logits.expand(shape), len(self.event_shape)
        return DiscretizedLogistic(loc, log_scale, logits, event_dim=event_dim)


class DiscretizedLogisticLikelihood(nn.Module):
    r"""8-bit data: :math:`p(x \mid z)` a mixture of ``components`` discretized logistics per
    value (:class:`DiscretizedLogistic`), its parameters from a decoder network.

    Args:
        decoder: A network mapping ``(*batch, D)`` latents to ``prod(event_shape) * P``
            values, ``P = 2`` for one component (mean, log-scale) and ``3 K`` for ``K``
            (means, log-scales, mixture logits), laid out as ``(*event_shape, P)``.
        event_shape: The shape of one data point, e.g. ``784`` or ``(1, 28, 28)``.
        components: :math:`K`.

    Example:
        >>> lik = DiscretizedLogisticLikelihood(MLP(4, 784 * 6), 784, components=2)
        >>> lik(torch.zeros(8, 4)).log_prob(torch.zeros(8, 784)).shape
        torch.Size([8])
    """

    def __init__(
        self, decoder: nn.Module, event_shape: int | Sequence[int], *, components: int = 1
    ) -> None:
        super().__init__()
        if not isinstance(components, int) or components < 1:
            raise ValueError(f"components must be a positive integer; got {components!r}")
        self.decoder, self.components = decoder, components
        self.event_shape = torch.Size(
            (event_shape,) if isinstance(event_shape, int) else tuple(event_shape)
        )

    def in_support(self, x: Tensor) -> Tensor:
        """Whether every value of ``x`` is an integer in 0..255 (a 0-dim bool tensor on
        ``x``'s device; no host read)."""
        return ((x >= 0) & (x <= 255) & (x == x.round())).all()

    def check_support(self, data: Tensor) -> None:
        """Raises a :class:`ValueError` unless every value of ``data`` is an integer in 0..255
        (called once per data set by ``fit`` and ``evaluate``)."""
        if not bool(self.in_support(data)):
            low, high = data.min().item(), data.max().item()
            hint = " (grey values in [0, 1]: multiply by 255)" if high <= 1 else ""
            raise ValueError(
                f"DiscretizedLogisticLikelihood scores 8-bit values, integers 0..255; got "
                f"values in [{low:.3g}, {high:.3g}]{hint}. Pass the images as 0..255 "
                "integers in a floating tensor (e.g. pv.load_mnist(...)[0] * 255, rounded)"
            )

    def forward(self, z: Tensor) -> DiscretizedLogistic:
        """Returns :math:`p(x \\mid z)`, batch shape ``z.shape[:-1]``."""
        k = self.components
        per_value = 2 if k == 1 else 3 * k
        out = network(self.decoder, z).reshape(*z.shape[:-1], *self.event_shape, per_value)
        if k == 1:
            loc, log_scale, logits = out[..., :1], out[..., 1:], None
        else:
            loc, log_scale, logits = out[..., :k], out[..., k : 2 * k], out[..., 2 * k :]
        return DiscretizedLogistic(loc.tanh(), log_scale, logits,
                                   event_dim=len(self.event_shape))  # fmt: skip
