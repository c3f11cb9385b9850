r"""Guides :math:`q(z \mid x)`: modules whose ``forward(x, idx)`` returns a Pyro distribution.

Every guide takes the minibatch ``x`` (shape ``(B, *event_shape)``) and its dataset indices
``idx`` (shape ``(B,)``). An amortized guide reads ``x`` through an encoder network and ignores
``idx``; a per-datapoint guide reads its own parameters at ``idx``. So a VAE switches between
the two by swapping one object.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Protocol, runtime_checkable

import pyro.distributions as dist
import torch
from torch import Tensor, nn
from torch.nn.functional import embedding

from .._checks import check_int
from ..devices.precision import network
from .likelihoods import Likelihood
from .priors import Prior

__all__ = [
    "GaussianEncoder",
    "Guide",
    "PerDatapointGaussian",
    "SemiAmortizedGaussian",
]


@runtime_checkable
class Guide(Protocol):
    r"""What a guide is: a module whose ``forward(x, idx)`` returns :math:`q(z \mid x)` for a
    minibatch ``x`` ``(B, *event_shape)`` with dataset indices ``idx`` ``(B,)``, with batch
    shape ``(B,)`` and event shape ``(D,)``, and that knows :math:`D` as ``latent_dim``.

    Amortized guides read ``x`` and may ignore ``idx``; per-datapoint guides read their
    parameters at ``idx``. ``isinstance(module, Guide)`` checks the attributes.

    Example:
        >>> isinstance(PerDatapointGaussian(100, 2), Guide)
        True
    """

    latent_dim: int

    def __call__(self, x: Tensor, idx: Tensor | None = None) -> dist.Distribution: ...


def diagonal_normal(loc: Tensor, log_scale: Tensor) -> dist.Distribution:
    r"""The diagonal Gaussian :math:`\mathcal{N}(\mu, \mathrm{diag}\,\sigma^2)` with
    :math:`\sigma = \exp(\log\sigma)`, event shape ``loc.shape[-1:]``.

    Example:
        >>> diagonal_normal(torch.zeros(8, 3), torch.zeros(8, 3)).batch_shape
        torch.Size([8])
    """
    return dist.Normal(loc, log_scale.exp()).to_event(1)


class GaussianEncoder(nn.Module):
    r"""Amortized diagonal Gaussian guide
    :math:`q(z \mid x) = \mathcal{N}(z; \mu(x), \mathrm{diag}\,\sigma^2(x))`.

    The encoder network outputs :math:`(\mu, \log\sigma)` concatenated along the last axis
    (Kingma & Welling 2014, "Auto-Encoding Variational Bayes"). Samples are reparameterized.

    Args:
        encoder: A network mapping ``(B, *event_shape)`` data to ``(B, 2 D)``.
        latent_dim: The latent dimension :math:`D`.

    Example:
        >>> guide = GaussianEncoder(MLP(784, 2 * 16, (256,)), 16)
        >>> guide(torch.zeros(8, 784)).rsample().shape
        torch.Size([8, 16])
    """

    def __init__(self, encoder: nn.Module, latent_dim: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.latent_dim = latent_dim

    def forward(self, x: Tensor, idx: Tensor | None = None) -> dist.Distribution:
        """Returns :math:`q(z \\mid x)`, batch shape ``(B,)``, event shape ``(D,)``."""
        return self.distribution(network(self.encoder, x))

    def distribution(self, out: Tensor) -> dist.Distribution:
        r"""The Gaussian of the encoder's output ``out`` ``(*batch, 2 D)``: :math:`\mu` and
        :math:`\log \sigma` concatenated (for a caller that runs the encoder its own way)."""
        if out.shape[-1] != 2 * self.latent_dim:
            raise ValueError(
                f"the encoder must output 2 * latent_dim = {2 * self.latent_dim} features "
                f"(loc and log-scale); got {out.shape[-1]}"
            )
        loc, log_scale = out.chunk(2, dim=-1)
        return diagonal_normal(loc, log_scale)


class PerDatapointGaussian(nn.Module):
    r"""Per-datapoint diagonal Gaussian guide :math:`q(z_n) = \mathcal{N}(z_n; \mu_n,
    \mathrm{diag}\,\sigma_n^2)`, with local parameters :math:`\lambda_n = (\mu_n, \log\sigma_n)`
    for each of the :math:`N` data points and no encoder (variational EM; e.g. Hoffman et al.
    2013, "Stochastic Variational Inference").

    ``forward(x, idx)`` reads rows ``idx`` of the ``(N, D)`` parameters ``loc`` and
    ``log_scale``; with ``sparse=True`` (the default) their gradients are row-sparse, so
    :class:`~pyro_vae.LazyAdam` moves only the minibatch's rows and a step costs O(B), not O(N).

    Args:
        num_data: :math:`N`, the number of data points.
        latent_dim: :math:`D`.
        init_scale: Initial :math:`\sigma_n` (all :math:`\mu_n` start at 0).
        sparse: Produce row-sparse gradients.

    Example:
        >>> guide = PerDatapointGaussian(1000, 16)
        >>> x, idx = torch.rand(8, 784), torch.randint(1000, (8,))
        >>> guide(x, idx).batch_shape
        torch.Size([8])
    """

    def __init__(
        self, num_data: int, latent_dim: int, *, init_scale: float = 1.0, sparse: bool = True
    ) -> None:
        super().__init__()
        if not init_scale > 0 or not math.isfinite(init_scale):
            raise ValueError(f"init_scale must be a positive number; got {init_scale!r}")
        self.num_data = num_data
        self.latent_dim = latent_dim
        self.sparse = sparse
        self.loc = nn.Parameter(torch.zeros(num_data, latent_dim))
        self.log_scale = nn.Parameter(torch.full((num_data, latent_dim), math.log(init_scale)))
        self.offset = 0  # the first row held: > 0 on a shard (see shard)

    def shard(self, start: int, stop: int) -> None:
        """Keeps only the rows of the points ``start <= n < stop`` (in place): a data-parallel
        rank holds the local parameters of its own points, O(N / world size) memory. Indices
        stay global; the parameters are marked local (never averaged across ranks)."""
        if not 0 <= start < stop <= self.num_data or self.offset or len(self.loc) < self.num_data:
            raise ValueError(f"cannot shard rows [{start}, {stop}) of {self.num_data} points")
        self.offset = start
        with torch.no_grad():
            self.loc = nn.Parameter(self.loc[start:stop].clone())
            self.log_scale = nn.Parameter(self.log_scale[start:stop].clone())
        self.loc.local_rows = self.log_scale.local_rows = True

    def forward(self, x: Tensor | None, idx: Tensor | None = None) -> dist.Distribution:
        """Returns :math:`q(z_n)` for ``n`` in ``idx``: batch shape ``(B,)``, event ``(D,)``."""
        if idx is None:
            raise ValueError(
                "a per-datapoint guide needs the minibatch's dataset indices: call "
                "model/guide as (x, idx, num_data=N)"
            )
        return diagonal_normal(*self.rows(idx))

    def rows(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        r"""The local parameters :math:`(\mu_n, \log\sigma_n)` of the points ``idx``, each
        ``(B, D)`` (row-sparse gradients with ``sparse=True``): what :meth:`forward` reads, and
        what the compiled step reads outside its graph."""
        try:  # no check on the hot path: the lookup itself fails on a bad index
            rows = idx - self.offset if self.offset else idx
            loc = embedding(rows, self.loc, sparse=self.sparse)
        except IndexError:
            low, high = self.offset, self.offset + len(self.loc)
            bad = idx[(idx < low) | (idx >= high)]
            raise ValueError(
                f"index {bad[0].item()} is out of range for a per-datapoint guide of N = "
                f"{self.num_data} points (this one holds indices [{low}, {high})); new data "
                "points need their own local parameters: pv.infer_local(vae, batches)"
            ) from None
        return loc, embedding(rows, self.log_scale, sparse=self.sparse)

    @classmethod
    @torch.no_grad()
    def from_guide(
        cls,
        guide: nn.Module,
        data: Tensor | Iterable[tuple[Tensor, Tensor]],
        *,
        num_data: int | None = None,
        batch_size: int = 4096,
        sparse: bool = True,
    ) -> PerDatapointGaussian:
        r"""Local parameters initialized at an amortized Gaussian guide's outputs,
        :math:`\lambda_n = \mathrm{enc}(x_n)` (the start of semi-amortized inference).

        Args:
            guide: A guide returning a diagonal Gaussian ``q(z|x)`` (e.g. GaussianEncoder, or
                a per-datapoint guide over the same points, called with their indices).
            data: All ``N`` data points ``(N, *event_shape)``, or minibatches ``(x, idx)``
                that visit them (e.g. a :class:`~pyro_vae.Loader`; rows never visited keep
                :math:`\mu_n = 0, \sigma_n = 1`).
            num_data: :math:`N` for minibatches (default ``data.num_data``).

        Example:
            >>> encoder = GaussianEncoder(MLP(784, 2 * 16, (256,)), 16)
            >>> local = PerDatapointGaussian.from_guide(encoder, torch.rand(100, 784))
            >>> local.loc.shape
            torch.Size([100, 16])
        """
        if isinstance(data, Tensor):
            num_data = data.shape[0]
            idx = torch.arange(num_data, device=data.device)
            data = zip(data.split(batch_size), idx.split(batch_size), strict=True)
        elif num_data is None:
            num_data = data.num_data
        new = None
        for x, i in data:
            q = guide(x, i)
            if new is None:
                new = cls(num_data, q.mean.shape[-1], sparse=sparse).to(q.mean)
            new.loc[i] = q.mean
            new.log_scale[i] = q.stddev.log()
        if new is None:
            raise ValueError("from_guide got no data points")
        return new


class SemiAmortizedGaussian(nn.Module):
    r"""Semi-amortized inference (Kim et al. 2018, "Semi-Amortized Variational Autoencoders"):
    a diagonal Gaussian guide's output :math:`\lambda_0 = (\mu, \log\sigma)` refined by
    ``steps`` gradient-ascent steps on the data point's ELBO,

    .. math::

        \lambda_{k+1} = \lambda_k + \eta \nabla_\lambda \big[\log p(z_k) + \log p(x \mid z_k)
            - \log q_{\lambda_k}(z_k)\big], \qquad z_k = \mu_k + \sigma_k \epsilon_k,

    one reparameterized sample each, before ``z`` is drawn. While gradients are enabled
    (training) the steps are differentiated through, so the encoder and the model learn through
    the refinement; under ``torch.no_grad`` they are not.

    The prior and likelihood are the model's: they are read, not owned (they are not
    submodules, so the guide's parameters are the encoder's alone).

    Args:
        guide: An amortized guide returning a diagonal Gaussian (e.g. :class:`GaussianEncoder`).
        prior: The model's prior :math:`p(z)`.
        likelihood: The model's likelihood :math:`p(x \mid z)`.
        steps: :math:`K \ge 1`, the refinement steps.
        lr: :math:`\eta`.

    Example:
        >>> prior = StandardNormalPrior(2)
        >>> likelihood = GaussianLikelihood(MLP(2, 5, (8,)), 5)
        >>> guide = SemiAmortizedGaussian(
        ...     GaussianEncoder(MLP(5, 4, (8,)), 2), prior, likelihood, steps=3, lr=1e-2
        ... )
        >>> guide(torch.zeros(7, 5)).batch_shape
        torch.Size([7])
    """

    def __init__(
        self,
        guide: Guide,
        prior: Prior,
        likelihood: Likelihood,
        *,
        steps: int = 5,
        lr: float = 1e-3,
    ) -> None:
        super().__init__()
        check_int("steps", steps)
        self.guide = guide
        self.latent_dim = guide.latent_dim
        self.reads = (prior, likelihood)  # a tuple: read, not registered as submodules
        self.steps = steps
        self.lr = lr

    def forward(self, x: Tensor, idx: Tensor | None = None) -> dist.Distribution:
        """Returns the refined :math:`q(z \\mid x)`: batch shape ``(B,)``, event ``(D,)``."""
        q = self.guide(x, idx)
        base = q.base_dist if isinstance(q, dist.Independent) else q
        if not isinstance(base, dist.Normal):
            raise TypeError(f"refinement needs a diagonal Gaussian guide; got {type(q).__name__}")
        prior, likelihood = self.reads
        differentiate = torch.is_grad_enabled()
        loc, log_scale = base.loc, base.scale.log()
        with torch.enable_grad():
            if not differentiate:
                loc, log_scale = loc.detach().requires_grad_(), log_scale.detach().requires_grad_()
            for _ in range(self.steps):
                z = loc + log_scale.exp() * torch.randn_like(loc)
                elbo = (
                    prior().log_prob(z)
                    + likelihood(z).log_prob(x)
                    - diagonal_normal(loc, log_scale).log_prob(z)
                )
                g_loc, g_log_scale = torch.autograd.grad(
                    elbo.sum(), (loc, log_scale), create_graph=differentiate
                )
                loc = loc + self.lr * g_loc
                log_scale = log_scale + self.lr * g_log_scale
        if not differentiate:
            loc, log_scale = loc.detach(), log_scale.detach()
        return diagonal_normal(loc, log_scale)
