"""Optimizers for models with per-datapoint (local) parameters.

With a per-datapoint guide only the minibatch's rows of the local parameters get a gradient.
Pyro's stock ``Adam``/``ClippedAdam`` keep stepping *every* row with its old momentum, so rows
of data points that are not in the batch move anyway (pyro-ppl/pyro#2386), and each step
costs O(N). :class:`LazyAdam` gives such parameters row-sparse gradients' own optimizer.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from pyro.optim import PyroOptim

__all__ = ["LazyAdam"]

_SPARSE_ARGS = ("lr", "betas", "eps", "maximize")


class LazyAdam(PyroOptim):
    r"""Adam that updates only the rows present in a sparse gradient ("lazy Adam").

    Parameters whose gradient is sparse (per-datapoint guides index their parameters with
    ``torch.nn.functional.embedding(..., sparse=True)``) get :class:`torch.optim.SparseAdam`:
    its moments and values change only at the minibatch's rows, so untouched rows stay
    bit-identical and a step costs O(B), not O(N). Every other parameter gets
    :class:`torch.optim.Adam`, i.e. this behaves as ``pyro.optim.Adam`` for ordinary models.

    Args:
        optim_args: Adam's keyword arguments (``lr``, ``betas``, ``eps``, ...), or a callable
            ``f(param_name) -> dict`` for per-parameter settings (as in ``pyro.optim``; names
            are normalized, e.g. ``"vae.guide.loc"``). Sparse parameters use ``lr``,
            ``betas``, ``eps`` and ``maximize``.
        local_lr: Step size for the parameters with sparse gradients (the local ones), which
            each move only when their data point is drawn: typically larger than ``lr``.

    Example:
        >>> optim = LazyAdam({"lr": 3e-4}, local_lr=1e-2)
        >>> svi = pyro.infer.SVI(vae.model, vae.guide, optim, pyro.infer.Trace_ELBO())
    """

    def __init__(
        self, optim_args: dict | Callable[[str], dict], *, local_lr: float | None = None
    ) -> None:
        super().__init__(torch.optim.Adam, optim_args)
        self.local_lr = local_lr

    def _get_optim(self, param: torch.Tensor) -> torch.optim.Optimizer:
        args = self._get_optim_args(param)
        if param.grad is not None and param.grad.is_sparse:
            sparse_args = {k: v for k, v in args.items() if k in _SPARSE_ARGS}
            if self.local_lr is not None:
                sparse_args["lr"] = self.local_lr
            return torch.optim.SparseAdam([param], **sparse_args)
        return torch.optim.Adam([param], **args)
