"""Optimizers for models with per-datapoint (local) parameters.

With a per-datapoint guide only the minibatch's rows of the local parameters get a gradient.
Pyro's stock ``Adam``/``ClippedAdam`` keep stepping *every* row with its old momentum, so rows
of data points that are not in the batch move anyway (pyro-ppl/pyro#2386), and each step
costs O(N). :class:`LazyAdam` gives such parameters row-sparse gradients' own optimizer.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pyro
import torch
from pyro.optim import PyroOptim

__all__ = ["LazyAdam"]

_SPARSE_ARGS = ("lr", "betas", "eps", "maximize")


def is_row_sparse_group(group: dict) -> bool:
    """Whether a saved parameter group (of :meth:`~pyro_vae.LazyAdam.get_state`) is a
    :class:`~pyro_vae.infer.optim.RowSparseAdam`'s (settings ``lr``, ``betas``, ``eps``,
    ``maximize`` only, as ``SparseAdam``'s) rather than Adam's (which adds ``weight_decay``,
    ``amsgrad``, ...).

    Example:
        >>> is_row_sparse_group({"lr": 0.1, "betas": (0.9, 0.999), "eps": 1e-8, "params": [0]})
        True
    """
    return set(group) - {"params"} <= set(_SPARSE_ARGS)


class LazyAdam(PyroOptim):
    r"""Adam that updates only the rows present in a sparse gradient ("lazy Adam").

    Parameters whose gradient is sparse (per-datapoint guides index their parameters with
    ``torch.nn.functional.embedding(..., sparse=True)``) get ``RowSparseAdam``
    (:class:`torch.optim.SparseAdam`'s update, without its host synchronization): its moments
    and values change only at the minibatch's rows, so untouched rows stay bit-identical and a
    step costs O(B), not O(N). Every other parameter is updated by Adam exactly as
    ``pyro.optim.Adam`` would, but all of them by *one* :class:`torch.optim.Adam` (parameters
    with equal settings share a parameter group), in one call per step instead of one
    optimizer call per parameter, which is most of Pyro's per-step overhead on small models.
    That Adam is torch's multi-tensor (``foreach``) implementation on every device unless
    ``optim_args`` say otherwise (torch picks it by default only on CUDA): the same update,
    and on the CPU the same code path as on a GPU.
    Checkpoints (``get_state``/``set_state``) keep ``pyro.optim``'s per-parameter format.

    Args:
        optim_args: Adam's keyword arguments (``lr``, ``betas``, ``eps``, ...), or a callable
            ``f(param_name) -> dict`` for per-parameter settings (as in ``pyro.optim``; names
            are normalized, e.g. ``"vae.guide.loc"``). Sparse parameters use ``lr``,
            ``betas``, ``eps`` and ``maximize``.
        local_lr: Step size for the parameters with sparse gradients (the local ones), which
            each move only when their data point is drawn: typically larger than ``lr``.

    Example:
        >>> vae = VAE(StandardNormalPrior(2), BernoulliLikelihood(MLP(2, 10), 10),
        ...           PerDatapointGaussian(100, 2))
        >>> optim = LazyAdam({"lr": 3e-4}, local_lr=1e-2)
        >>> svi = pyro.infer.SVI(vae.model, vae.guide, optim, pyro.infer.Trace_ELBO())
        >>> x, idx = torch.rand(8, 10).round(), torch.arange(8)
        >>> loss = svi.step(x, idx, num_data=100)
        >>> loc = vae.variational.loc
        >>> bool((loc[:8] != 0).all()), bool((loc[8:] == 0).all())  # only the batch's rows move
        (True, True)
    """

    def __init__(
        self, optim_args: dict | Callable[[str], dict], *, local_lr: float | None = None
    ) -> None:
        super().__init__(torch.optim.Adam, optim_args)
        self.local_lr = local_lr
        self._dense: torch.optim.Adam | None = None  # one Adam for all dense parameters
        # dense parameters on a GPU registered from now on get capturable=True (CUDA graphs)
        self.capturable = False

    def _get_optim(self, param: torch.Tensor) -> torch.optim.Optimizer:
        args = self._get_optim_args(param)
        if param.grad is not None and param.grad.is_sparse:
            sparse_args = {k: v for k, v in args.items() if k in _SPARSE_ARGS}
            if self.local_lr is not None:
                sparse_args["lr"] = self.local_lr
            return RowSparseAdam([param], **sparse_args)
        if "foreach" not in args and not args.get("fused"):  # (torch's default on CUDA only)
            args = {**args, "foreach": True}
        if self.capturable and param.device.type == "cuda":  # (its step counter on the GPU)
            args = {**args, "capturable": True}
        if self._dense is None:
            self._dense = torch.optim.Adam([{"params": [param], **args}])
            return self._dense
        defaults = torch.optim.Adam([torch.zeros(1)], **args).defaults
        for group in self._dense.param_groups:
            if all(group[k] == v for k, v in defaults.items()):
                group["params"].append(param)
                return self._dense
        self._dense.add_param_group({"params": [param], **args})
        return self._dense

    def __call__(
        self, params, *args, dense_step: Callable[[], object] | None = None, **kwargs
    ) -> None:
        """One step for each of ``params``: sparse ones one by one, dense ones together (by
        ``dense_step`` when given: the compiled step's compiled ``Adam.step``)."""
        params = list(params)
        self.register(params)
        for p in params:
            if self.optim_objs[p] is not self._dense and p.grad is not None:
                self.optim_objs[p].step()
        if self._dense is not None:
            # Step only this call's dense parameters: others keep their gradient for later.
            current = set(params)
            hidden = [
                (q, q.grad)
                for group in self._dense.param_groups
                for q in group["params"]
                if q not in current and q.grad is not None
            ]
            for q, _ in hidden:
                q.grad = None
            (dense_step or self._dense.step)()
            for q, grad in hidden:
                q.grad = grad

    def register(self, params: list[torch.Tensor]) -> None:
        """Gives each of ``params`` not seen before its optimizer (by its gradient's layout:
        a row-sparse one or the shared dense Adam) and the state a checkpoint holds for it,
        if any; steps nothing."""
        store = pyro.get_param_store()
        for p in params:
            if p not in self.optim_objs:
                optimizer = self.optim_objs[p] = self._get_optim(p)
                state = self._state_waiting_to_be_consumed.pop(store.param_name(p), None)
                if state is not None:
                    self._load(p, optimizer, state)

    def _load(self, param, optimizer, state: dict) -> None:
        if optimizer is not self._dense:
            optimizer.load_state_dict(state)
            return
        saved = state["state"].get(0, {})
        optimizer.state[param] = {
            k: v if k == "step" else v.to(device=param.device, dtype=param.dtype)
            for k, v in saved.items()
        }
        # The saved hyperparameters (e.g. a scheduled lr) apply to the parameter's group.
        group = next(g for g in optimizer.param_groups if any(q is param for q in g["params"]))
        for k, v in state["param_groups"][0].items():
            if k not in ("params", "capturable") and k in group:  # (capturable: the device's)
                group[k] = v
        step = optimizer.state[param].get("step")  # where this run's Adam keeps it
        if step is not None:
            home = param.device if group["capturable"] else torch.device("cpu")
            optimizer.state[param]["step"] = step.to(home)

    def get_state(self) -> dict:
        """``{param name: optimizer state}`` in ``pyro.optim``'s per-parameter format."""
        store = pyro.get_param_store()
        state = {}
        for p, optimizer in self.optim_objs.items():
            if optimizer is self._dense:
                group = next(g for g in optimizer.param_groups if any(q is p for q in g["params"]))
                entry = {k: v for k, v in group.items() if k != "params"}
                saved = {0: dict(optimizer.state[p])} if p in optimizer.state else {}
                state[store.param_name(p)] = {
                    "state": saved,
                    "param_groups": [{**entry, "params": [0]}],
                }
            else:
                state[store.param_name(p)] = optimizer.state_dict()
        return state


class RowSparseAdam(torch.optim.Optimizer):
    r"""Adam for row-sparse gradients: :class:`torch.optim.SparseAdam`'s update, bit for bit
    on the rows of a gradient without repeated indices, with no host synchronization.

    ``SparseAdam`` coalesces each gradient first, whose output size (the number of distinct
    rows) the host must read: on CUDA a synchronization per parameter per step. Here the rows
    are sorted and repeated rows summed into segments of a buffer of the gradient's own size,
    so every size is known in advance; each entry then updates its row
    (:math:`m \leftarrow m + (1 - \beta_1)(g - m)`, :math:`v \leftarrow v + (1 - \beta_2)
    (g^2 - v)`, :math:`\theta \leftarrow \theta - \eta_t\, m / (\sqrt v + \epsilon)`
    with :math:`\eta_t = \eta \sqrt{1 - \beta_2^t} / (1 - \beta_1^t)`), entries of one row
    writing the same values. Rows outside the gradient are untouched. State and settings
    have ``SparseAdam``'s layout (``step`` a host integer, ``exp_avg``, ``exp_avg_sq``), so
    either loads the other's ``state_dict``.

    Args:
        params: Parameters whose gradients are sparse COO tensors with one sparse dimension
            (rows), e.g. from ``torch.nn.functional.embedding(..., sparse=True)``.
        lr: :math:`\eta`.
        betas: :math:`(\beta_1, \beta_2)`.
        eps: :math:`\epsilon`.
        maximize: Ascend instead of descend.

    Example:
        >>> table = torch.nn.Parameter(torch.zeros(5, 2))
        >>> optim = RowSparseAdam([table], lr=0.1)
        >>> torch.nn.functional.embedding(torch.tensor([1, 3]), table, sparse=True).sum().backward()
        >>> optim.step()
        >>> [round(v, 4) for v in table[:, 0].tolist()]  # rows 1 and 3 moved by about lr
        [0.0, -0.1, 0.0, -0.1, 0.0]
    """

    def __init__(
        self,
        params: object,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        maximize: bool = False,
    ) -> None:
        defaults = {"lr": lr, "betas": betas, "eps": eps, "maximize": maximize}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], object] | None = None) -> object:
        """One update of the rows present in each parameter's sparse gradient; returns
        ``closure()`` (evaluated first, with gradients on) when given, as ``SparseAdam``."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if not grad.is_sparse or grad.sparse_dim() != 1:
                    raise RuntimeError(
                        "RowSparseAdam needs row-sparse gradients (one sparse dimension); "
                        "use torch.optim.Adam for dense ones"
                    )
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                rows, values = _rows(-grad if group["maximize"] else grad)
                if rows.numel() == 0:  # a shape, known on the host
                    continue
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                old_m, old_v = exp_avg[rows], exp_avg_sq[rows]
                m = old_m + values.sub(old_m).mul_(1 - beta1)
                v = old_v + values.pow(2).sub_(old_v).mul_(1 - beta2)
                exp_avg[rows], exp_avg_sq[rows] = m, v
                step = state["step"]
                step_size = group["lr"] * math.sqrt(1 - beta2**step) / (1 - beta1**step)
                p[rows] = p[rows] + -step_size * m.div_(v.sqrt_().add_(group["eps"]))
        return loss


def _rows(grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows of a row-sparse gradient, sorted, each entry with its row's summed gradient
    (what ``coalesce`` gives, without reading the number of distinct rows)."""
    rows, values = grad._indices()[0], grad._values()
    rows, order = rows.sort()
    values = values[order]
    first = torch.ones_like(rows, dtype=torch.bool)
    first[1:] = rows[1:] != rows[:-1]
    segment = first.cumsum(0) - 1  # the entry's row among the distinct ones
    totals = torch.zeros_like(values).index_add_(0, segment, values)
    return rows, totals[segment]
