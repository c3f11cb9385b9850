r"""Guides :math:`q(z \mid x)`: modules whose ``forward(x, idx)`` returns a Pyro distribution.

Every guide takes the minibatch ``x`` (shape ``(B, *event_shape)``) and its dataset indices
``idx`` (shape ``(B,)``). An amortized guide reads ``x`` through an encoder network and ignores
``idx``; a per-datapoint guide reads its own parameters at ``idx``. So a VAE switches between
the two by swapping one object.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from torch import Tensor, nn
from torch.nn.functional import embedding

__all__ = ["GaussianEncoder", "PerDatapointGaussian"]


class GaussianEncoder(nn.Module):
    r"""Amortized diagonal Gaussian guide
    :math:`q(z \mid x) = \mathcal{N}(z; \mu(x), \mathrm{diag}\,\sigma^2(x))`.

    The encoder network outputs :math:`(\mu, \log\sigma)` concatenated along the last axis
    (Kingma & Welling 2014, "Auto-Encoding Variational Bayes"). Samples are reparameterized.

    Args:
        encoder: A network mapping ``(B, *event_shape)`` data to ``(B, 2 D)``.
        latent_dim: The latent dimension :math:`D`.

    Example:
        >>> guide = GaussianEncoder(MLP(784, 2 * 16, (1024, 1024)), 16)
        >>> guide(torch.zeros(8, 784)).rsample().shape
        torch.Size([8, 16])
    """

    def __init__(self, encoder: nn.Module, latent_dim: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.latent_dim = latent_dim

    def forward(self, x: Tensor, idx: Tensor | None = None) -> dist.Distribution:
        """Returns :math:`q(z \\mid x)`, batch shape ``(B,)``, event shape ``(D,)``."""
        out = self.encoder(x)
        if out.shape[-1] != 2 * self.latent_dim:
            raise ValueError(
                f"the encoder must output 2 * latent_dim = {2 * self.latent_dim} features "
                f"(loc and log-scale); got {out.shape[-1]}"
            )
        loc, log_scale = out.chunk(2, dim=-1)
        return dist.Normal(loc, log_scale.exp()).to_event(1)


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
        >>> guide = PerDatapointGaussian(60000, 16)
        >>> guide(x, idx).batch_shape  # x: (B, 784), idx: (B,)
        torch.Size([B])
    """

    def __init__(
        self, num_data: int, latent_dim: int, *, init_scale: float = 1.0, sparse: bool = True
    ) -> None:
        super().__init__()
        self.num_data = num_data
        self.latent_dim = latent_dim
        self.sparse = sparse
        self.loc = nn.Parameter(torch.zeros(num_data, latent_dim))
        self.log_scale = nn.Parameter(torch.full((num_data, latent_dim), math.log(init_scale)))

    def forward(self, x: Tensor | None, idx: Tensor | None = None) -> dist.Distribution:
        """Returns :math:`q(z_n)` for ``n`` in ``idx``: batch shape ``(B,)``, event ``(D,)``."""
        if idx is None:
            raise ValueError(
                "a per-datapoint guide needs the minibatch's dataset indices: call "
                "model/guide as (x, idx, num_data=N)"
            )
        loc = embedding(idx, self.loc, sparse=self.sparse)
        log_scale = embedding(idx, self.log_scale, sparse=self.sparse)
        return dist.Normal(loc, log_scale.exp()).to_event(1)

    @classmethod
    @torch.no_grad()
    def from_guide(
        cls, guide: nn.Module, data: Tensor, *, batch_size: int = 4096, sparse: bool = True
    ) -> PerDatapointGaussian:
        r"""Local parameters initialized at an amortized Gaussian guide's outputs,
        :math:`\lambda_n = \mathrm{enc}(x_n)` (the start of semi-amortized inference).

        Args:
            guide: A guide returning a diagonal Gaussian ``q(z|x)`` (e.g. GaussianEncoder, or
                a per-datapoint guide over the same points, called with their indices).
            data: All ``N`` data points ``(N, *event_shape)``.
        """
        locs, scales = [], []
        idx = torch.arange(data.shape[0], device=data.device)
        for x, i in zip(data.split(batch_size), idx.split(batch_size), strict=True):
            q = guide(x, i)
            locs.append(q.mean)
            scales.append(q.stddev)
        loc, scale = torch.cat(locs), torch.cat(scales)
        new = cls(loc.shape[0], loc.shape[-1], sparse=sparse).to(loc)
        new.loc.copy_(loc)
        new.log_scale.copy_(scale.log())
        return new
