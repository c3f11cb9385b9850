"""One gradient step of a Pyro pair without reading the loss: what ``SVI.step`` does, through
the differentiable-loss interface, on the parameters of the model, the guide, or both (the
M- and E-steps of variational EM)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from pyro import poutine
from pyro.infer import ELBO
from pyro.optim import PyroOptim

__all__ = ["descend", "gradient_step"]


def gradient_step(
    model: Callable[..., object],
    guide: Callable[..., object],
    loss: ELBO,
    optim: PyroOptim,
    *args: object,
    update_model: bool = True,
    update_guide: bool = True,
    before_step: Callable[[list[torch.Tensor]], None] | None = None,
    **kwargs: object,
) -> torch.Tensor:
    """One gradient step on the parameters of the model, the guide, or both: what
    ``SVI.step`` does, through ``loss.differentiable_loss`` and without reading the loss.

    A side that is not updated has its ``pyro.param`` / ``pyro.module`` sites blocked, so they
    are not collected, and ``backward(inputs=...)`` computes gradients for the others alone
    (an E-step: ``update_model=False``). Gradients are released (set to ``None``) after the
    step.

    Args:
        model: A Pyro model, called as ``model(*args, **kwargs)``.
        guide: The matching guide.
        loss: An ELBO with ``differentiable_loss`` (e.g. :class:`~pyro_vae.TensorTrace_ELBO`).
        optim: A Pyro optimizer.
        update_model: Step the model's parameters.
        update_guide: Step the guide's parameters.
        before_step: Called with the parameters after the backward pass, before the
            optimizer (e.g. to combine gradients across data-parallel processes).

    Returns:
        The loss, a detached 0-dim tensor on the parameters' device (no host sync).

    Example:
        >>> def model(x):
        ...     loc = pyro.param("loc", torch.zeros(()))
        ...     pyro.sample("x", dist.Normal(loc, 1.0), obs=x)
        >>> def guide(x):
        ...     pass
        >>> optim = LazyAdam({"lr": 0.1})
        >>> loss = gradient_step(model, guide, TensorTrace_ELBO(), optim, torch.tensor(3.0))
        >>> round(pyro.param("loc").item(), 3)  # one Adam step of size 0.1 towards x
        0.1
    """
    if not update_model:
        model = poutine.block(model, hide_types=["param"])
    if not update_guide:
        guide = poutine.block(guide, hide_types=["param"])
    with poutine.trace(param_only=True) as capture:
        value = loss.differentiable_loss(model, guide, *args, **kwargs)
    params = [site["value"].unconstrained() for site in capture.trace.nodes.values()]
    return descend(value, params, optim, before_step=before_step)


def descend(
    value: torch.Tensor | float,
    params: list[torch.Tensor],
    optim: PyroOptim,
    *,
    before_step: Callable[[list[torch.Tensor]], None] | None = None,
) -> torch.Tensor:
    """The gradient of ``value`` in ``params``, one step of ``optim`` on them, the gradients
    released: the end of :func:`gradient_step` (and of the compiled step). Returns ``value``
    detached."""
    if params and getattr(value, "requires_grad", False):  # else no parameter reaches the loss
        torch.autograd.backward(value, inputs=params)
        if before_step is not None:
            before_step(params)
        optim(params)
        for p in params:
            p.grad = None
    return value.detach() if isinstance(value, torch.Tensor) else torch.tensor(value)
