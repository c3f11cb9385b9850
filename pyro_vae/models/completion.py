r"""Image completion as Pyro's ``examples/cvae`` builds it: a deterministic *baseline* network
completes the unknown pixels of a condition, and the CVAE's prior network reads the condition
with those pixels filled in (Sohn, Lee & Yan 2015, section 4.2: the "recurrent connection"
through a baseline's initial guess).

The condition :math:`c` is the image with its unknown pixels marked by a value (``-1``, as in
``examples/mnist_cvae.py`` and Pyro's data). :class:`CompletionPrior` is the prior
:math:`p(z \mid c) = \mathcal{N}(\mu(\tilde c), \sigma^2(\tilde c))` with :math:`\tilde c` the
condition completed by the frozen baseline; :func:`completion_loss` is the baseline's training
loss, the Bernoulli negative log-likelihood of its completion of the unknown pixels (the loss of
Pyro's ``MaskedBCELoss``, summed over the pixels).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .guides import Guide

__all__ = ["CompletionPrior", "completion_loss"]


class CompletionPrior(nn.Module):
    r"""A conditional prior that reads its condition completed by a frozen baseline:
    :math:`\tilde c = c` where known, :math:`\sigma(b(c))` where :math:`c` holds ``unknown``,
    then ``prior(c̃)``. Train the baseline first (:func:`completion_loss`), as Pyro's example
    does, then build this prior with it: its parameters become buffers here, so that they are
    saved, moved and loaded with the prior and never trained (Pyro's runs the baseline under
    ``torch.no_grad``; a parameter with ``requires_grad=False`` would not be saved by Pyro's
    param store, and ``pyro.module`` warns about it in training).

    Args:
        baseline: A network mapping conditions ``(B, F)`` to ``F`` logits of the pixels.
        prior: A guide-like module (e.g. ``GaussianEncoder(MLP(F, 2 * D), D)``) whose
            ``forward(c̃)`` returns :math:`p(z \mid c)` with batch shape ``(B,)``.
        unknown: The value that marks an unknown pixel in the condition.

    Example:
        >>> prior = CompletionPrior(MLP(6, 6, (8,)), GaussianEncoder(MLP(6, 2 * 2), 2))
        >>> c = torch.tensor([[0.0, 1.0, -1.0, -1.0, 1.0, 0.0]])
        >>> prior(c).batch_shape, prior.latent_dim
        (torch.Size([1]), 2)
    """

    def __init__(self, baseline: nn.Module, prior: Guide, *, unknown: float = -1.0) -> None:
        super().__init__()
        self.baseline, self.prior, self.unknown = _frozen(baseline), prior, unknown
        self.latent_dim = prior.latent_dim

    def complete(self, c: Tensor) -> Tensor:
        """The condition with its unknown pixels replaced by the baseline's probabilities."""
        with torch.no_grad():
            guess = torch.sigmoid(self.baseline(c))
        return torch.where(c == self.unknown, guess, c)

    def forward(self, c: Tensor, idx: Tensor | None = None):
        """:math:`p(z \\mid c)`, batch shape ``(B,)``."""
        return self.prior(self.complete(c), idx)


def _frozen(module: nn.Module) -> nn.Module:
    """``module`` with each parameter turned into a buffer of the same name (the same tensor,
    detached): a network that is run but not trained."""
    for part in module.modules():
        for name, param in list(part._parameters.items()):
            if param is not None:
                del part._parameters[name]
                part.register_buffer(name, param.detach())
    return module


def completion_loss(logits: Tensor, x: Tensor, unknown: Tensor) -> Tensor:
    r"""The baseline's loss per image: :math:`-\sum_{i \in u} [x_i \log \sigma(l_i) + (1 - x_i)
    \log(1 - \sigma(l_i))]` over the unknown pixels :math:`u`, shape ``(B,)`` (Pyro's
    ``MaskedBCELoss``, in nats; its tutorial reports it per image as the baseline's score).

    Args:
        logits: The baseline's output ``(B, F)``.
        x: The images ``(B, F)`` in ``[0, 1]``.
        unknown: ``(B, F)`` booleans, true at the pixels to complete.

    Example:
        >>> unknown = torch.tensor([[True, True, False, False]])
        >>> completion_loss(torch.zeros(1, 4), torch.ones(1, 4), unknown)  # 2 log 2
        tensor([1.3863])
    """
    nll = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
    return torch.where(unknown, nll, 0.0).sum(-1)
