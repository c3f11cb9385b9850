"""Neural networks used as encoders and decoders.

The networks here are plain :class:`torch.nn.Module` objects that map tensors to tensors. They
know nothing about probability: priors, likelihoods and guides wrap them and return
distributions.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

__all__ = ["MLP", "ConvDecoder", "ConvEncoder"]


class MLP(nn.Sequential):
    r"""A multi-layer perceptron :math:`h_{i+1} = a(W_{i+1} h_i + b_{i+1})`.

    The last layer is linear (no activation). Inputs with several feature dimensions are
    flattened first (``in_shape``) and outputs are reshaped at the end (``out_shape``), so the
    same network can read and write images.

    Args:
        in_features: Number of input features :math:`D_{in}`, or the input event shape.
        out_features: Number of output features :math:`D_{out}`, or the output event shape.
        hidden_features: Widths of the hidden layers.
        activation: Constructor of the activation module put after every hidden layer.

    Example:
        >>> net = MLP(784, 32, (1024, 1024))
        >>> net(torch.zeros(256, 784)).shape
        torch.Size([256, 32])
        >>> MLP(16, (1, 28, 28), (64,))(torch.zeros(5, 16)).shape
        torch.Size([5, 1, 28, 28])
    """

    def __init__(
        self,
        in_features: int | Sequence[int],
        out_features: int | Sequence[int],
        hidden_features: Sequence[int] = (64, 64),
        *,
        activation: Callable[[], nn.Module] = nn.ReLU,
    ) -> None:
        self.in_shape = _as_shape(in_features)
        self.out_shape = _as_shape(out_features)
        sizes = [self.in_shape.numel(), *hidden_features, self.out_shape.numel()]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(itertools.pairwise(sizes)):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(activation())
        super().__init__(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Maps ``(*batch, *in_shape)`` to ``(*batch, *out_shape)``."""
        n = len(self.in_shape)
        if x.shape[x.dim() - n :] != self.in_shape:
            raise ValueError(
                f"MLP expects inputs of shape (*batch, {', '.join(map(str, self.in_shape))}); "
                f"got {tuple(x.shape)}"
            )
        batch = x.shape[: x.dim() - n]
        y = super().forward(x.reshape(*batch, -1))
        return y.reshape(*batch, *self.out_shape)


def _as_shape(size: int | Sequence[int]) -> torch.Size:
    return torch.Size((size,) if isinstance(size, int) else tuple(size))


def _flat_batch(x: Tensor, event_dims: int) -> tuple[Tensor, torch.Size]:
    batch = x.shape[: x.dim() - event_dims]
    return x.reshape(-1, *x.shape[x.dim() - event_dims :]), batch


class ConvEncoder(nn.Module):
    r"""A DCGAN-discriminator-style encoder for 28×28 images (Radford et al. 2016).

    Three stride-2 convolutions (kernel 4, padding 1: 28→14→7→3 pixels) with channels
    ``channels``, BatchNorm and LeakyReLU(0.2) between them and nothing after the last, then a
    linear map of the flattened features to ``out_features`` (e.g. :math:`2D` for a Gaussian
    guide's :math:`(\mu, \log\sigma)`).

    Args:
        out_features: Output size.
        channels: Output channels of the three convolutions.
        in_channels: Image channels.

    Example:
        >>> ConvEncoder(64)(torch.zeros(8, 1, 28, 28)).shape
        torch.Size([8, 64])
    """

    def __init__(
        self, out_features: int, *, channels: Sequence[int] = (16, 32, 64), in_channels: int = 1
    ) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.in_channels = in_channels
        self.convs = nn.Sequential(
            nn.Conv2d(in_channels, c1, 4, 2, 1),
            nn.BatchNorm2d(c1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(c1, c2, 4, 2, 1),
            nn.BatchNorm2d(c2),
            nn.LeakyReLU(0.2),
            nn.Conv2d(c2, c3, 4, 2, 1),
        )
        self.linear = nn.Linear(c3 * 3 * 3, out_features)

    def forward(self, x: Tensor) -> Tensor:
        """Maps ``(*batch, C, 28, 28)`` to ``(*batch, out_features)``."""
        if x.dim() < 3 or x.shape[-3:] != (self.in_channels, 28, 28):
            raise ValueError(
                f"ConvEncoder expects images of shape (*batch, {self.in_channels}, 28, 28); "
                f"got {tuple(x.shape)}"
            )
        flat, batch = _flat_batch(x, 3)
        return self.linear(self.convs(flat).flatten(1)).reshape(*batch, -1)


class ConvDecoder(nn.Module):
    r"""A DCGAN-generator-style decoder from :math:`D` latents to 28×28 images.

    Transposed convolutions :math:`D \to 256 \to 128 \to 64 \to C` channels
    (1→4→7→14→28 pixels) with BatchNorm and ReLU between them; the output is unconstrained
    (Bernoulli logits, or a Gaussian mean).

    Args:
        latent_dim: :math:`D`.
        channels: Channels of the three hidden layers.
        out_channels: Image channels :math:`C`.

    Example:
        >>> ConvDecoder(32)(torch.zeros(5, 8, 32)).shape
        torch.Size([5, 8, 1, 28, 28])
    """

    def __init__(
        self, latent_dim: int, *, channels: Sequence[int] = (256, 128, 64), out_channels: int = 1
    ) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.latent_dim = latent_dim
        self.convs = nn.Sequential(
            nn.ConvTranspose2d(latent_dim, c1, 4, 1, 0),
            nn.BatchNorm2d(c1),
            nn.ReLU(),
            nn.ConvTranspose2d(c1, c2, 3, 2, 1),
            nn.BatchNorm2d(c2),
            nn.ReLU(),
            nn.ConvTranspose2d(c2, c3, 4, 2, 1),
            nn.BatchNorm2d(c3),
            nn.ReLU(),
            nn.ConvTranspose2d(c3, out_channels, 4, 2, 1),
        )

    def forward(self, z: Tensor) -> Tensor:
        """Maps ``(*batch, D)`` to ``(*batch, C, 28, 28)``."""
        flat, batch = _flat_batch(z, 1)
        out = self.convs(flat[:, :, None, None])
        return out.reshape(*batch, *out.shape[1:])


@contextmanager
def training_modes(modules: nn.Module | None, *, train: bool | None) -> Iterator[None]:
    """The block runs with ``modules`` in train (``True``) or eval (``False``) mode, or as they
    are (``None``); after it, every submodule is back in its own mode (a BatchNorm a user froze
    in eval mode inside a training model stays frozen).

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2)).eval()
        >>> with training_modes(net, train=True):
        ...     net[1].training
        True
        >>> net[1].training
        False
    """
    saved = [(m, m.training) for m in modules.modules()] if modules is not None else []
    if modules is not None and train is not None:
        modules.train(train)
    try:
        yield
    finally:
        for module, training in saved:
            module.training = training
