r"""Likelihoods of counts: :math:`p(x \mid z)` for non-negative integer data (gene expression
counts, bag-of-words documents), as modules whose ``forward(z)`` returns a Pyro distribution
with batch shape ``z.shape[:-1]`` and event shape ``(G,)`` (``G`` features: genes, words).

* :class:`PoissonLikelihood` and :class:`NegativeBinomialLikelihood` (optionally
  zero-inflated, the ZINB of scVI: Lopez et al. 2018, "Deep generative modeling for
  single-cell transcriptomics", Nature Methods) give each feature a mean
  :math:`\mu_g(z)`; with ``size_factor=True`` the mean is the data point's observed total
  count (its library size) times proportions, :math:`\mu_g = \ell \,\mathrm{softmax}(h(z))_g`
  with :math:`\ell = \sum_g x_g`, so that :math:`z` describes what a point is made of, not how
  much was counted (scVI's observed-library setting; the likelihood is then
  :math:`p(x \mid z, \ell)`); with ``latent_library=True`` :math:`\log\ell` is the latent's
  last coordinate instead (scVI's latent library, :mod:`~pyro_vae.models.library`).
* :class:`MultinomialLikelihood`: the counts of a vocabulary given their total,
  :math:`p(x \mid z, n) = \frac{n!}{\prod_g x_g!} \prod_g \mathrm{softmax}(h(z))_g^{x_g}`
  (ProdLDA's decoder: Srivastava & Sutton 2017).

Counts come as a floating tensor of integers :math:`\ge 0` (checked once per data set); when
sampling, a likelihood with a size factor draws with the mean total of its training data (a
buffer that ``fit`` sets and the weights' state saves).

The log-densities are computed in float64 and returned in the parameters' dtype: at large
counts their terms (:math:`\log x!`, :math:`x \log \mu`) are large and cancel, which float32
does not survive (a Poisson at counts near :math:`10^5` was 1.9 nats per point off, a
multinomial 56).
"""

from __future__ import annotations

import math
from typing import ClassVar

import pyro.distributions as dist
import torch
from pyro.distributions import TorchDistribution
from torch import Tensor, nn
from torch.distributions import constraints

from ..devices.precision import network

_SCALAR = torch.Size()

__all__ = ["MultinomialLikelihood", "NegativeBinomialLikelihood", "PoissonLikelihood"]


class _Poisson(dist.Poisson):
    """``Poisson`` whose log-density is computed in float64 (module docstring)."""

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        rate, v = self.rate.double(), value.double()
        return (torch.xlogy(v, rate) - rate - torch.lgamma(v + 1)).to(self.rate.dtype)


class _NegativeBinomial(dist.NegativeBinomial):
    """``NegativeBinomial`` whose log-density is computed in float64 (module docstring)."""

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        exact = dist.NegativeBinomial(self.total_count.double(), logits=self.logits.double(),
                                      validate_args=False)  # fmt: skip
        return exact.log_prob(value.double()).to(self.logits.dtype)


class _ZeroInflatedNegativeBinomial(dist.ZeroInflatedNegativeBinomial):
    """``ZeroInflatedNegativeBinomial`` whose log-density is computed in float64."""

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        nb = self.base_dist
        exact = dist.ZeroInflatedNegativeBinomial(
            nb.total_count.double(), logits=nb.logits.double(),
            gate_logits=self.gate_logits.double(), validate_args=False,
        )  # fmt: skip
        return exact.log_prob(value.double()).to(nb.logits.dtype)


class _Totals(TorchDistribution):
    """Counts whose base distribution is built from each data point's total: the base is
    ``make(total)`` with ``total`` the observed sum over the last axis when scoring, and the
    mean total when sampling. Batch shape ``logits.shape[:-1]``, event shape ``(G,)``."""

    arg_constraints: ClassVar[dict] = {}
    support = constraints.independent(constraints.nonnegative_integer, 1)

    def __init__(self, make, logits: Tensor, mean_total: Tensor, validate_args=None) -> None:
        self.make, self.logits, self.mean_total = make, logits, mean_total
        super().__init__(logits.shape[:-1], logits.shape[-1:], validate_args=validate_args)

    def log_prob(self, value: Tensor) -> Tensor:
        return self.make(value.sum(-1, keepdim=True)).log_prob(value)

    def sample(self, sample_shape: torch.Size = _SCALAR) -> Tensor:
        return self.make(self.mean_total.expand(self.logits.shape[:-1]).unsqueeze(-1)).sample(
            sample_shape
        )

    @property
    def mean(self) -> Tensor:
        return self.make(self.mean_total.expand(self.logits.shape[:-1]).unsqueeze(-1)).mean

    def expand(self, batch_shape, _instance=None) -> _Totals:
        batch_shape = torch.Size(batch_shape)
        logits = self.logits.expand(batch_shape + self.event_shape)
        return _Totals(lambda total: self.make(total).expand(batch_shape), logits,
                       self.mean_total)  # fmt: skip


class _CountLikelihood(nn.Module):
    """A decoder to one head (or several) of ``features`` values each; the data checks."""

    def __init__(
        self,
        decoder: nn.Module,
        features: int,
        heads: int,
        *,
        size_factor: bool = False,
        latent_library: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(features, int) or features < 1:
            raise ValueError(f"features must be a positive integer; got {features!r}")
        if size_factor and latent_library:
            raise ValueError(
                "size_factor=True reads the library size off the data, latent_library=True "
                "infers it (the latent's last coordinate): pass one"
            )
        self.decoder, self.heads = decoder, heads
        self.size_factor, self.latent_library = size_factor, latent_library
        self.event_shape = torch.Size((features,))
        self.register_buffer("mean_total", torch.tensor(1.0))

    def _decode(self, z: Tensor) -> list[Tensor]:
        """The decoder's heads; with ``latent_library`` the decoder reads ``z[..., :-1]`` and
        the log library size ``z[..., -1:]`` comes last."""
        log_library = z[..., -1:] if self.latent_library else None
        z = z[..., :-1] if self.latent_library else z
        out = network(self.decoder, z).reshape(*z.shape[:-1], self.heads, self.event_shape[0])
        return [*out.unbind(-2), log_library] if self.latent_library else list(out.unbind(-2))

    def in_support(self, x: Tensor) -> Tensor:
        """Whether every value of ``x`` is an integer :math:`\\ge 0`: a 0-dim bool tensor on
        ``x``'s device (no host read; ``fit`` checks a streamed data set's batches with it)."""
        return ((x >= 0) & (x == x.round())).all()

    def check_support(self, data: Tensor) -> None:
        """Raises a :class:`ValueError` unless every value of ``data`` is an integer
        :math:`\\ge 0` (called once per data set by ``fit`` and ``evaluate``; it changes
        nothing: see :meth:`record_mean_total`)."""
        if not bool(self.in_support(data)):
            bad = data[(data < 0) | (data != data.round())][:3].tolist()
            raise ValueError(
                f"{type(self).__name__} scores counts (integers >= 0); got values such as "
                f"{bad}. Pass raw counts (not normalized or log-transformed values), or use "
                "GaussianLikelihood for continuous data"
            )

    def record_mean_total(self, mean_total: Tensor) -> None:
        """Records the training set's mean total count (the buffer ``mean_total``, saved with
        the model), what sampling with a size factor, and the multinomial, draw with.
        :func:`~pyro_vae.fit` calls it once per run with the whole training set's (a streamed
        one's too: one pass over it); scoring never does."""
        with torch.no_grad():
            self.mean_total.copy_(mean_total)


class PoissonLikelihood(_CountLikelihood):
    r"""Poisson counts: :math:`p(x \mid z) = \prod_g \mathrm{Poisson}(x_g; \mu_g(z))`.

    Args:
        decoder: A network mapping ``(*batch, D)`` latents to ``G`` values: log-means, or
            with ``size_factor`` the logits of the proportions.
        features: :math:`G`.
        size_factor: :math:`\mu_g = \ell\, \mathrm{softmax}(h(z))_g` with the observed total
            :math:`\ell = \sum_g x_g` (else :math:`\mu_g = \exp h_g(z)`).
        latent_library: The same with :math:`\log \ell` the latent's last coordinate (see
            :class:`~pyro_vae.models.library.LatentLibraryPrior`; the decoder reads the others).

    Example:
        >>> lik = PoissonLikelihood(MLP(4, 30), 30, size_factor=True)
        >>> lik(torch.zeros(8, 4)).log_prob(torch.ones(8, 30)).shape
        torch.Size([8])
    """

    def __init__(
        self,
        decoder: nn.Module,
        features: int,
        *,
        size_factor: bool = False,
        latent_library: bool = False,
    ) -> None:
        super().__init__(decoder, features, heads=1, size_factor=size_factor,
                         latent_library=latent_library)  # fmt: skip

    def forward(self, z: Tensor) -> dist.Distribution:
        """Returns :math:`p(x \\mid z)`, batch shape ``z.shape[:-1]``."""
        h, *log_library = self._decode(z)
        if self.latent_library:
            return _Poisson((log_library[0] + h.log_softmax(-1)).exp()).to_event(1)
        if not self.size_factor:
            return _Poisson(h.clamp(max=30.0).exp()).to_event(1)
        log_rho = h.log_softmax(-1)

        def make(total: Tensor) -> dist.Distribution:
            # an all-zero row (total 0) has probability 1 whatever the proportions; a rate of
            # exactly 0 would make its gradient 0/0: its total counts as 1e-6 (1e-6 nats)
            return _Poisson(total.clamp_min(1e-6) * log_rho.exp()).to_event(1)

        return _Totals(make, log_rho, self.mean_total)


class NegativeBinomialLikelihood(_CountLikelihood):
    r"""Negative-binomial counts, optionally zero-inflated (scVI's NB and ZINB):

    .. math::
        \mathrm{NB}(x; \mu, \theta) = \frac{\Gamma(x + \theta)}{x!\,\Gamma(\theta)}
        \Big(\frac{\theta}{\theta + \mu}\Big)^{\theta} \Big(\frac{\mu}{\theta + \mu}\Big)^{x},
        \qquad \mathrm{ZINB}(x) = \pi\,[x = 0] + (1 - \pi)\,\mathrm{NB}(x; \mu, \theta)

    with mean :math:`\mu_g(z)` (as :class:`PoissonLikelihood`), variance
    :math:`\mu + \mu^2 / \theta`, inverse dispersion :math:`\theta_g` learned per feature (or
    per data point and feature, from the decoder) and dropout probability
    :math:`\pi_g(z) = \sigma(\cdot)` from the decoder.

    Args:
        decoder: A network mapping latents to ``heads * G`` values: the mean's head, then the
            zero-inflation logits (``zero_inflated``), then :math:`\log\theta`
            (``per_point_dispersion``); ``heads`` is 1 to 3 accordingly.
        features: :math:`G`.
        size_factor: The mean scaled by the observed total count (see
            :class:`PoissonLikelihood`).
        latent_library: The mean scaled by a latent library size, the latent's last
            coordinate (see :class:`PoissonLikelihood`).
        zero_inflated: The ZINB.
        per_point_dispersion: :math:`\theta` from the decoder for each data point (else one
            learned :math:`\theta_g` per feature).
        dispersion: The initial :math:`\theta_g` (per-feature dispersion).

    Example:
        >>> lik = NegativeBinomialLikelihood(MLP(4, 2 * 30), 30, zero_inflated=True)
        >>> lik(torch.zeros(8, 4)).log_prob(torch.zeros(8, 30)).shape
        torch.Size([8])
    """

    def __init__(
        self,
        decoder: nn.Module,
        features: int,
        *,
        size_factor: bool = False,
        latent_library: bool = False,
        zero_inflated: bool = False,
        per_point_dispersion: bool = False,
        dispersion: float = 1.0,
    ) -> None:
        super().__init__(decoder, features, heads=1 + zero_inflated + per_point_dispersion,
                         size_factor=size_factor, latent_library=latent_library)  # fmt: skip
        if not dispersion > 0:
            raise ValueError(f"dispersion must be > 0 (theta); got {dispersion!r}")
        self.zero_inflated = zero_inflated
        self.per_point_dispersion = per_point_dispersion
        if not per_point_dispersion:
            self.log_theta = nn.Parameter(torch.full(self.event_shape, math.log(dispersion)))

    def forward(self, z: Tensor) -> dist.Distribution:
        """Returns :math:`p(x \\mid z)`, batch shape ``z.shape[:-1]``."""
        heads = self._decode(z)
        h = heads.pop(0)
        gate = heads.pop(0) if self.zero_inflated else None
        log_theta = heads.pop(0) if self.per_point_dispersion else self.log_theta
        log_theta = log_theta.clamp(-10.0, 15.0).expand(h.shape)
        theta = log_theta.exp()

        def make_nb(log_mu: Tensor) -> dist.Distribution:
            logits = log_mu - log_theta  # NB(total_count=θ, logits): mean θ e^logits = μ
            if gate is None:
                return _NegativeBinomial(theta, logits=logits).to_event(1)
            return _ZeroInflatedNegativeBinomial(theta, logits=logits,
                                                 gate_logits=gate).to_event(1)  # fmt: skip

        if self.latent_library:
            return make_nb(heads.pop(0) + h.log_softmax(-1))
        if not self.size_factor:
            return make_nb(h.clamp(max=30.0))
        log_rho = h.log_softmax(-1)
        return _Totals(lambda total: make_nb(total.clamp(min=1e-8).log() + log_rho), log_rho,
                       self.mean_total)  # fmt: skip


class _Multinomial(TorchDistribution):
    r"""Counts given their total: :math:`\log p(x) = \log n! - \sum_g \log x_g! + \sum_g x_g
    \log p_g` with :math:`n = \sum_g x_g` read from the value (a total per data point)."""

    arg_constraints: ClassVar[dict] = {}
    support = constraints.independent(constraints.nonnegative_integer, 1)

    def __init__(self, logits: Tensor, mean_total: Tensor, validate_args=None) -> None:
        self.raw, self.logits, self.mean_total = logits, logits.log_softmax(-1), mean_total
        super().__init__(logits.shape[:-1], logits.shape[-1:], validate_args=validate_args)

    def log_prob(self, value: Tensor) -> Tensor:
        v = value.double()  # (float64: the terms of large counts cancel; module docstring)
        coefficient = torch.lgamma(v.sum(-1) + 1) - torch.lgamma(v + 1).sum(-1)
        log_p = self.raw.double().log_softmax(-1)  # (x_g times its rounding: not in float32)
        return (coefficient + (v * log_p).sum(-1)).to(self.logits.dtype)

    def sample(self, sample_shape: torch.Size = _SCALAR) -> Tensor:
        total = round(float(self.mean_total))
        return dist.Multinomial(total, logits=self.logits).sample(sample_shape)

    @property
    def mean(self) -> Tensor:
        return self.mean_total * self.logits.exp()

    def expand(self, batch_shape, _instance=None):
        shape = torch.Size(batch_shape) + self.event_shape
        return _Multinomial(self.raw.expand(shape), self.mean_total)


class MultinomialLikelihood(_CountLikelihood):
    r"""The counts of a vocabulary given their total (a bag of words):
    :math:`p(x \mid z, n) = \mathrm{Multinomial}(x; n, \mathrm{softmax}(h(z)))` with
    :math:`n = \sum_g x_g` the data point's own total.

    Args:
        decoder: A network mapping latents to ``G`` logits.
        features: :math:`G`, the vocabulary's size.

    Example:
        >>> lik = MultinomialLikelihood(MLP(4, 50), 50)
        >>> lik(torch.zeros(8, 4)).log_prob(torch.ones(8, 50)).shape
        torch.Size([8])
    """

    def __init__(self, decoder: nn.Module, features: int) -> None:
        super().__init__(decoder, features, heads=1)

    def forward(self, z: Tensor) -> dist.Distribution:
        """Returns :math:`p(x \\mid z)`, batch shape ``z.shape[:-1]``."""
        (h,) = self._decode(z)
        return _Multinomial(h, self.mean_total)
