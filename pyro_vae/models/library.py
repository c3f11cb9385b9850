r"""Latent library sizes (scVI's second setting): a cell's total count :math:`\ell` as a latent
variable, not read off the data.

In scVI (Lopez et al. 2018, "Deep generative modeling for single-cell transcriptomics",
Nature Methods) a cell's counts are :math:`x_g \sim \mathrm{ZINB}(\ell\,\rho_g(z), \theta_g,
\pi_g(z))` with :math:`\log \ell \sim \mathcal{N}(\mu_\ell, \sigma_\ell^2)`, the mean and
variance of the data's log totals, and a guide over :math:`\ell` too. Here :math:`\log \ell`
is one more coordinate of the latent, the last: :class:`LatentLibraryPrior` is
:math:`p(z, \log\ell) = \mathcal{N}(z; 0, I_D)\,\mathcal{N}(\log\ell; \mu_\ell,
\sigma_\ell^2)` over ``D + 1`` coordinates, a guide over ``D + 1`` coordinates (e.g.
``GaussianEncoder(..., D + 1)``) infers both, and a count likelihood with
``latent_library=True`` decodes :math:`z` and scales its proportions by
:math:`\exp(\log\ell)`. The importance-sampled log-likelihood is then that of the counts
themselves, totals included (with an observed library, ``size_factor=True``, it is
:math:`\log p(x \mid \ell = \sum_g x_g)`).

Example:
    >>> x = torch.poisson(torch.full((16, 30), 20.0))
    >>> prior = LatentLibraryPrior.from_counts(4, x)
    >>> prior.latent_dim, prior().event_shape
    (5, torch.Size([5]))
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import Tensor, nn

__all__ = ["LatentLibraryPrior"]


class LatentLibraryPrior(nn.Module):
    r"""The prior :math:`p(z, \log\ell) = \mathcal{N}(z; 0, I_D)\, \mathcal{N}(\log\ell;
    \mu_\ell, \sigma_\ell^2)` over ``D + 1`` coordinates, :math:`\log\ell` the last.

    Args:
        latent_dim: :math:`D`, the dimension of :math:`z` (the prior's ``latent_dim`` is
            ``D + 1``).
        loc: :math:`\mu_\ell`, the mean of the log library size.
        scale: :math:`\sigma_\ell > 0`, its standard deviation.

    Example:
        >>> prior = LatentLibraryPrior(10, loc=6.9, scale=0.4)
        >>> prior().sample((3,)).shape
        torch.Size([3, 11])
    """

    def __init__(self, latent_dim: int, *, loc: float, scale: float) -> None:
        super().__init__()
        if not scale > 0:
            raise ValueError(f"scale must be > 0 (the log library size's spread); got {scale!r}")
        self.latent_dim = latent_dim + 1
        self.register_buffer("loc", torch.cat([torch.zeros(latent_dim), torch.tensor([loc])]))
        self.register_buffer("scale", torch.cat([torch.ones(latent_dim), torch.tensor([scale])]))

    @classmethod
    def from_counts(cls, latent_dim: int, counts: Tensor) -> LatentLibraryPrior:
        r"""The prior with :math:`\mu_\ell, \sigma_\ell` the mean and standard deviation of the
        data's log total counts (scVI's choice; ``counts``: ``(N, G)``, each total > 0)."""
        log_totals = counts.reshape(len(counts), -1).sum(-1).double().log()
        if not torch.isfinite(log_totals).all() or len(counts) < 2:
            raise ValueError(
                "the library prior needs at least two data points, each with a total count "
                "> 0 (a cell without counts has no library size to learn): drop empty rows"
            )
        return cls(latent_dim, loc=float(log_totals.mean()), scale=float(log_totals.std()))

    def forward(self) -> dist.Distribution:
        """Returns :math:`p(z, \\log\\ell)`, event shape ``(D + 1,)``."""
        return dist.Normal(self.loc, self.scale).to_event(1)
