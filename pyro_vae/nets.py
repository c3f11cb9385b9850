"""Neural networks used as encoders and decoders.

The networks here are plain :class:`torch.nn.Module` objects that map tensors to tensors. They
know nothing about probability: priors, likelihoods and guides wrap them and return
distributions.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

__all__ = ["MLP"]


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
