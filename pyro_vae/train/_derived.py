r"""The compiled training step: ``fit(compile=True)``.

A small VAE on a GPU is bound by per-step overhead: hundreds of kernel launches and
milliseconds of Python (Pyro's handlers, the optimizer's loops) for microseconds of arithmetic.
``torch.compile`` cannot capture Pyro's ELBO in one graph (its ``Message`` dictionaries,
generators and per-name parameters break it into many), so the compiled step does not compile
the Pyro program: it compiles the estimator that a :class:`~pyro_vae.VAE` derives from its own
prior, likelihood and guide (:meth:`~pyro_vae.VAE.elbo_loss`), which is exactly
:class:`~pyro_vae.TensorTrace_ELBO`'s with one particle (or
:class:`~pyro_vae.ImportanceWeightedELBO`'s with :math:`K`). The forward and backward passes
become one graph each (inductor), and ``LazyAdam``'s Adam step another
(:class:`CompiledAdam`); the optimizer steps the same parameters as the eager step. A
per-datapoint guide's rows are read outside the graph (``PerDatapointGaussian.rows``), so
their gradients stay row-sparse and ``LazyAdam`` moves only the batch's rows.

The estimator is trusted only after a check (``_derivation``): before the first
compiled step, the Pyro loss and the derived one are computed eagerly with the same random
numbers, and their values and the gradients of every parameter must agree. Anything that
cannot be captured (a pair that is not a VAE's, a loss without a derived form, row-sparse
gradients, a trace that disagrees, a graph break) leaves the run on the eager step, with one
warning that says why.

``compile=True`` is ``torch.compile``'s default mode; ``compile="reduce-overhead"`` (any of
its modes is taken, :func:`compile_mode`) records the graphs as CUDA graphs on a GPU, with a
capturable Adam (``tests/devices/test_cuda.py`` checks on a GPU that it follows the eager
run's losses; ``tests/infer/test_compiled.py`` and ``tests/devices/test_fake_cuda.py`` check
on the CPU what can be checked there).
"""

from __future__ import annotations

import inspect
import types
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from pyro.infer import ELBO
from torch import Tensor

from ..infer.elbo import LatentScale
from ..infer.optim import LazyAdam
from ..models.guides import PerDatapointGaussian, diagonal_normal
from ..models.vae import VAE
from ._derivation import check_derivation, num_particles, unsupported

__all__ = [
    "CompiledAdam",
    "CompiledLoss",
    "compile_mode",
    "compiled_loss",
    "fresh",
    "limit_is_an_error",
    "option",
]

# torch.compile's modes whose graphs inductor replays as CUDA graphs on a GPU
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


def compile_mode(compile: bool | str) -> str | None:
    """``torch.compile``'s ``mode`` for ``fit``'s ``compile`` option: ``True`` is
    ``"default"``, a string is one of torch.compile's modes (``"reduce-overhead"``: CUDA
    graphs on a GPU), ``False`` is ``None`` (the eager step).

    Raises:
        ValueError: For anything else, naming the modes.
    """
    if compile is False or compile is True:
        return "default" if compile else None
    from torch._inductor import list_mode_options  # (imported by compiling anyway)

    modes = tuple(list_mode_options())
    if not isinstance(compile, str) or compile not in modes:
        raise ValueError(
            f"compile={compile!r} is not a torch.compile mode: pass True (its default mode), "
            f"False (the eager step) or one of {list(modes)} ('reduce-overhead': CUDA graphs "
            "on a GPU)"
        )
    return compile


def fresh(fn: Callable) -> Callable:
    """``fn`` (a function or a bound method) with a code object of its own. Dynamo keeps its
    compiled graphs, and counts them against its recompile limit (8), per code object: every
    ``fit`` compiling ``VAE.elbo_loss`` or ``Adam.step`` would share one count, and from the
    9th run in a process nothing would compile. A copy per run gives each run its own."""
    func = getattr(fn, "__func__", fn)
    copy = types.FunctionType(func.__code__.replace(), func.__globals__, func.__name__,
                              func.__defaults__, func.__closure__)  # fmt: skip
    copy.__kwdefaults__, copy.__dict__ = func.__kwdefaults__, dict(func.__dict__)
    copy.__qualname__ = func.__qualname__
    return types.MethodType(copy, fn.__self__) if hasattr(fn, "__func__") else copy


@contextmanager
def limit_is_an_error() -> Iterator[None]:
    """Within: dynamo raises when it reaches its recompile limit (instead of running the
    frame eagerly with a log line), so that the compiled step's fallback warns; the flag is
    put back as it was after."""
    config = torch._dynamo.config
    old = config.fail_on_recompile_limit_hit
    config.fail_on_recompile_limit_hit = True
    try:
        yield
    finally:
        config.fail_on_recompile_limit_hit = old


def option(mode: str) -> str:
    """How the user asked for ``mode``, for a warning: ``compile=True`` or
    ``compile='reduce-overhead'``."""
    return "compile=True" if mode == "default" else f"compile={mode!r}"


class CompiledLoss:
    """The compiled negative ELBO of a :class:`~pyro_vae.VAE`: ``loss(x, idx, fields)`` runs
    :meth:`~pyro_vae.VAE.elbo_loss` (a conditional or semi-supervised VAE's own, with the
    batch's fields as keywords) as one graph (``torch.compile(fullgraph=True)``).

    β is passed as a tensor, so a warm-up does not recompile; the last, smaller minibatch of an
    epoch compiles once more (dynamo's automatic dynamic shapes: one graph for the full batches,
    one with a symbolic batch size for the rest).

    In a CUDA-graph mode (``mode="reduce-overhead"`` or ``"max-autotune"``) inductor records
    each graph as a CUDA graph on a GPU and replays it (cudagraph trees: the parameters are
    static inputs, the batch is copied into the graph's static input buffer at each replay);
    every call marks a new step (``torch.compiler.cudagraph_mark_step_begin``). On the CPU
    inductor runs the same graphs without CUDA graphs (``tests/devices/test_cuda.py`` runs
    it on a GPU).

    Args:
        vae: The VAE.
        num_data: :math:`N`.
        params: The parameters of the model (``[0]``) and of the guide (``[1]``), as the eager
            step collects them.
        scale: The run's :class:`~pyro_vae.LatentScale` (β), if any.
        num_particles: :math:`K` of :class:`~pyro_vae.ImportanceWeightedELBO` (1: the ELBO).
        mode: ``torch.compile``'s mode (see :func:`compile_mode`); ``None``: the estimator
            runs eagerly, uncompiled (``fit``'s default step for a VAE's pair).
    """

    def __init__(
        self,
        vae: VAE,
        *,
        num_data: int,
        params: tuple[list[Tensor], list[Tensor]],
        scale: LatentScale | None = None,
        num_particles: int = 1,
        mode: str | None = "default",
    ) -> None:
        self.vae, self.num_data, self.params, self.scale = vae, num_data, params, scale
        self.cuda_graphs = mode in CUDA_GRAPH_MODES
        self.num_particles = num_particles
        model, guide = params
        both = model + [p for p in guide if all(p is not q for q in model)]
        self._stepped = {(True, True): both, (True, False): model, (False, True): guide}
        self.beta: Tensor | None = None
        self._value = 1.0
        # a per-datapoint guide's rows are read outside the graph (row-sparse gradients)
        self.local = vae.variational if isinstance(vae.variational, PerDatapointGaussian) else None
        target = vae.elbo_loss if self.local is None else self._from_rows
        if mode is None:  # the derived estimator, run eagerly (fit's default step for a VAE)
            self.fn = target
        else:
            self.fn = torch.compile(fresh(target), fullgraph=True, dynamic=False, mode=mode)

    def _from_rows(self, x: Tensor, idx: Tensor, loc: Tensor, log_scale: Tensor, **kw) -> Tensor:
        return self.vae.elbo_loss(x, idx, q=diagonal_normal(loc, log_scale), **kw)

    def _beta(self, device: torch.device) -> Tensor:
        value = 1.0 if self.scale is None else float(self.scale.beta)
        if self.beta is None or value != self._value:  # once per change (an epoch's β)
            self.beta = torch.tensor(value, device=device)
            self._value = value
        return self.beta

    def __call__(self, x: Tensor, idx: Tensor, fields: dict[str, Tensor] | None = None) -> Tensor:
        kw = {"num_data": self.num_data, "beta": self._beta(x.device), **(fields or {})}
        kw["num_particles"] = self.num_particles
        if self.cuda_graphs:  # the previous step's graph outputs may be overwritten now
            torch.compiler.cudagraph_mark_step_begin()
        if self.local is None:
            return self.fn(x, idx, **kw)
        with warnings.catch_warnings():  # dynamo looks at the rows' .grad (not leaves: none)
            warnings.filterwarnings("ignore", "The .grad attribute of a Tensor that is not a leaf")
            return self.fn(x, idx, *self.local.rows(idx), **kw)

    def stepped(self, *, update_model: bool = True, update_guide: bool = True) -> list[Tensor]:
        """The parameters a joint, model-only or guide-only step updates."""
        return self._stepped[update_model, update_guide]


class CompiledAdam:
    """:class:`~pyro_vae.LazyAdam` with its dense step as a compiled graph (``torch.compile``
    of its ``torch.optim.Adam.step``), for the compiled training step.

    A call with a parameter the optimizer has not seen yet (the first step, the first E- or
    M-step) runs ``LazyAdam`` eagerly, which registers it and creates its state; later calls
    pass the compiled ``Adam.step`` to ``LazyAdam``, which still steps row-sparse parameters
    with :class:`~pyro_vae.infer.optim.RowSparseAdam` (the batch's rows only). The update is Adam's;
    the graph for each set of stepped parameters is compiled once.

    In a CUDA-graph mode on a GPU the dense Adam is made *capturable* (its step counters
    are tensors on the device and bias corrections are computed there: no host value
    in the graph), so its compiled step can be recorded as a CUDA graph. That is the one
    change to the user's optimizer (``LazyAdam.capturable``; ``LazyAdam`` ignores
    ``capturable`` when it loads a checkpoint, so the run resumes anywhere).

    Args:
        optim: The run's ``LazyAdam``.
        mode: ``torch.compile``'s mode (see :func:`compile_mode`).
    """

    def __init__(self, optim: LazyAdam, *, mode: str = "default") -> None:
        self.optim, self.mode = optim, mode
        self.step: Callable[[], object] | None = None
        if mode in CUDA_GRAPH_MODES:  # (parameters registered from now on: capturable state)
            optim.capturable = True

    def __call__(self, params: list[Tensor]) -> None:
        self.optim.register(params)  # (a resumed run's parameters get their saved state)
        dense, owners = self.optim._dense, self.optim.optim_objs
        # Adam creates a parameter's state at its first step: that step runs eagerly, the
        # others compiled; a resumed run's parameters have state and step compiled at once,
        # as they would have in the uninterrupted run
        eager = dense is None or any(owners[p] is dense and p not in dense.state for p in params)
        if not eager and self.step is None:
            self.step = torch.compile(_own_step(dense), mode=self.mode)
        if dense is not None and self.mode in CUDA_GRAPH_MODES:
            _capturable(dense)
        self.optim(params, dense_step=None if eager else self.step)


def _own_step(adam: torch.optim.Adam) -> Callable[[], object]:
    """``adam.step()`` as a function whose code, and that of the ``Adam.step`` it runs, are
    this run's own (see :func:`fresh`): the step under ``no_grad``, as its decorator runs it,
    without the profiling wrapper (whose graph break would make ``Adam.step`` a frame of its
    own, shared by every run)."""
    raw = inspect.unwrap(type(adam).step)  # (under the profiling and the no_grad wrappers)
    if raw is type(adam).step or adam.defaults.get("differentiable", False):
        return fresh(adam.step)
    raw = fresh(raw)

    def step() -> object:
        with torch.no_grad():
            return raw(adam)

    return fresh(step)


def _capturable(adam: torch.optim.Adam) -> None:
    """Makes ``adam``'s parameter groups on a GPU capturable (``capturable=True``, each step
    counter a tensor on its parameter's device), as a CUDA graph of its step needs:
    groups registered before (a resumed or reused optimizer) have their counters copied to
    the device once. Groups with a parameter elsewhere are left as they are."""
    for group in adam.param_groups:
        if group["capturable"] or any(p.device.type != "cuda" for p in group["params"]):
            continue
        group["capturable"] = True
        for p in group["params"]:
            state = adam.state.get(p, {})
            if "step" in state:
                state["step"] = state["step"].to(p.device)


def compiled_loss(
    model: Callable[..., object],
    guide: Callable[..., object],
    loss: ELBO,
    x: Tensor,
    idx: Tensor,
    *,
    num_data: int,
    scale: LatentScale | None = None,
    mode: str | None = "default",
    fields: dict[str, Tensor] | None = None,
) -> tuple[CompiledLoss | None, str | None]:
    """The compiled loss of a pair, checked against ``loss`` on the batch ``(x, idx)``, and
    ``None``; or ``None`` and why the run cannot take it (the words of
    :func:`~pyro_vae.train._derivation.unsupported` and
    :func:`~pyro_vae.train._derivation.check_derivation`), for the caller's warning.

    Args:
        model: ``vae.model`` of a :class:`~pyro_vae.VAE`.
        guide: ``vae.guide`` of the same VAE.
        loss: The run's Pyro loss (:class:`~pyro_vae.TensorTrace_ELBO` or ``Trace_ELBO``
            with one particle, or :class:`~pyro_vae.ImportanceWeightedELBO`).
        x: A minibatch.
        idx: Its indices.
        num_data: :math:`N`.
        scale: The run's β (:class:`~pyro_vae.LatentScale`), if any.
        mode: ``torch.compile``'s mode (see :func:`compile_mode`), or ``None``: the derived
            estimator uncompiled.
        fields: The batch's fields.
    """
    reason = unsupported(model, guide, loss)
    params = None
    if reason is None:
        params, reason = check_derivation(model, guide, loss, x, idx, num_data=num_data,
                                          scale=scale, fields=fields)  # fmt: skip
    if reason is not None:
        return None, reason
    compiled = CompiledLoss(model.__self__, num_data=num_data, params=params, scale=scale,
                            num_particles=num_particles(loss), mode=mode)  # fmt: skip
    return compiled, None
