r"""Guides :math:`q(z \mid x)`: modules whose ``forward(x, idx)`` returns a Pyro distribution.

Every guide takes the minibatch ``x`` (shape ``(B, *event_shape)``) and its dataset indices
``idx`` (shape ``(B,)``). An amortized guide reads ``x`` through an encoder network and ignores
``idx``; a per-datapoint guide reads its own parameters at ``idx``. So a VAE switches between
the two by swapping one object.
"""

from __future__ import annotations

import pyro.distributions as dist
from torch import Tensor, nn

__all__ = ["GaussianEncoder"]


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
