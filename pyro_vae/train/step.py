r"""The training step: what :func:`~pyro_vae.fit` does with one minibatch, chosen once per run,
public for a loop of one's own (the benchmarks time it against a plain PyTorch loop).

A :class:`Step` holds the model, the guide, the loss and the optimizer, and the schedule:

* joint (the default): one gradient step of the model's parameters :math:`\theta` and the
  guide's :math:`\lambda` together;
* variational EM (``e_steps=k``): ``k`` steps of :math:`\lambda` with :math:`\theta` fixed,
  then one step of :math:`\theta` with :math:`\lambda` fixed;
* frozen model (``freeze_model=True``): steps of :math:`\lambda` only;
* ``SVI.step``, when the loss has no ``differentiable_loss`` (e.g. ``RenyiELBO``) or one whose
  gradient is not the loss's (Pyro's ``JitTrace_ELBO`` doubles it): Pyro's own step (joint
  updates only; it reads the loss, a host sync per step).

With ``compile=True`` every step of a :class:`~pyro_vae.VAE`'s pair runs its derived
estimator as a compiled graph (``train._derived``), after a once-only check against
the loss; what cannot be compiled stays on the steps above, with one warning.

The first call runs the pair under a ``DeviceCheck`` (every parameter checked as it is
registered) with validation as the user set it; later calls skip both.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from functools import partial

import pyro
import pyro.optim
import torch
from pyro.infer import ELBO, SVI
from torch import Tensor, nn

from .._checks import check_minibatch_scale, check_pair
from .._placement import DeviceCheck
from ..data.batches import Fields
from ..infer.elbo import LatentScale
from ..infer.optim import LazyAdam
from ..models.nets import training_modes
from ._derived import CompiledAdam, CompiledLoss, compile_mode, compiled_loss, option
from ._gradient import descend, gradient_step

__all__ = ["Step", "gradient_step"]


class Step:
    """One training step of ``model`` and ``guide`` on a minibatch, as ``fit`` takes it.

    Args:
        model: A Pyro model ``model(x, idx, num_data=N)``.
        guide: The matching guide.
        optim: A Pyro optimizer (``SVI``'s order: model, guide, optim, loss).
        loss: A Pyro ELBO.
        num_data: :math:`N`.
        device: Where the parameters must be (checked at the first step).
        dtype: The data's floating dtype (checked at the first step).
        e_steps: Guide-only steps before each model step (variational EM); 0: joint steps.
        freeze_model: Guide-only steps.
        combine: Called as ``combine(params, x)`` after each backward pass, before the
            optimizer (the data-parallel gradient all-reduce).
        modules: The networks behind the pair, in eval mode while the first call checks that
            the guide's samples have the model's shapes (one forward pass that trains nothing).
        scale: A :class:`~pyro_vae.LatentScale` that both run under (the KL weight β).
        compile: Take the compiled step (see ``_compiled``), built at the first
            call: ``True``, or a ``torch.compile`` mode (``"reduce-overhead"``: CUDA graphs
            on a GPU).
        derive: Without ``compile``, take the derived estimator of a
            :class:`~pyro_vae.VAE`'s pair eagerly (the compiled step's estimator, uncompiled:
            no Pyro tracing per step) once it agrees with ``loss`` on the first batch; a pair
            or loss without one takes ``loss`` without a word.

    Raises:
        ValueError: For a schedule the loss cannot run (``e_steps``, ``freeze_model`` or
            ``combine`` with a loss without ``differentiable_loss``).

    Example:
        >>> vae = VAE(StandardNormalPrior(2), BernoulliLikelihood(MLP(2, 6), 6),
        ...           GaussianEncoder(MLP(6, 4), 2))
        >>> step = Step(vae.model, vae.guide, LazyAdam({"lr": 1e-3}), TensorTrace_ELBO(),
        ...             num_data=8, device="cpu", dtype=torch.float32)
        >>> loss = step(torch.rand(8, 6).round(), torch.arange(8))
        >>> step.sync_free, loss.shape, len(step.names) > 0
        (True, torch.Size([]), True)
    """

    def __init__(
        self,
        model: Callable[..., object],
        guide: Callable[..., object],
        optim: pyro.optim.PyroOptim,
        loss: ELBO,
        *,
        num_data: int,
        device: torch.device | str,
        dtype: torch.dtype | None,
        e_steps: int = 0,
        freeze_model: bool = False,
        combine: Callable[[list[Tensor], Tensor], None] | None = None,
        modules: nn.Module | None = None,
        scale: LatentScale | None = None,
        compile: bool | str = False,
        derive: bool = False,
    ) -> None:
        self.raw, self.scale = (model, guide), scale
        self.compiled: CompiledLoss | None = None
        self.compiled_optim: Callable[[list[Tensor]], None] | None = None
        self.compile_mode = compile_mode(compile)  # (checked now; None: eager)
        self.to_compile = self.compile_mode is not None  # (until the first compiled step is built)
        self.derive = derive and self.compile_mode is None
        self.expect_derived = False  # (a resumed run whose saved run took it)
        if scale is not None:  # β on the latent sites of both
            model, guide = scale(model), scale(guide)
        self.check = DeviceCheck(device, dtype)
        self.plain = (model, guide)
        self.checked = (self.check(model), self.check(guide))  # innermost: sees every site
        self.loss, self.optim, self.num_data = loss, optim, num_data
        self.e_steps, self.freeze_model, self.combine = e_steps, freeze_model, combine
        self.first, self.modules = True, modules
        self.svi: dict[bool, SVI] | None = None
        if not _differentiable(loss):  # e.g. RenyiELBO: Pyro's own SVI step
            _refuse_svi_step(loss, e_steps=e_steps, freeze_model=freeze_model, combine=combine)
            checked, plain = SVI(*self.checked, optim, loss), SVI(model, guide, optim, loss)
            self.svi = {True: checked, False: plain}

    @property
    def sync_free(self) -> bool:
        """Whether the step leaves the loss on the device (not ``SVI.step``)."""
        return self.svi is None

    @property
    def derived(self) -> bool:
        """Whether the steps take the VAE's derived estimator eagerly (see ``derive``)."""
        return self.compiled is not None and self.compile_mode is None

    def follow(self, *, derived: bool) -> None:
        """Takes the estimator a resumed run's saved run took (``derived``: the VAE's derived
        one, else Pyro's loss), so that the continuation is the uninterrupted run's; a compiled
        run compiles as before. Before the first step."""
        if self.compile_mode is None and self.first:
            self.derive = self.expect_derived = derived

    @property
    def names(self) -> dict[str, None]:
        """The param-store names the checked passes have seen, in order (add a resumed run's)."""
        return self.check.names

    def __call__(self, x: Tensor, idx: Tensor, fields: Fields | None = None) -> Tensor | float:
        """One step on ``(x, idx)`` and the batch's ``fields`` (passed to the model and guide as
        keywords); returns the loss (a device tensor, or ``SVI.step``'s float)."""
        fields = fields or {}
        first, self.first = self.first, False
        if first:  # validates as the user chose; the data were checked before
            with training_modes(self.modules, train=False):  # (a BatchNorm's statistics stay)
                traced = check_pair(*self.checked, x, idx, self.num_data, fields)  # devices, shapes
            check_minibatch_scale(traced, x.shape[0], self.num_data)
            if self.to_compile:  # every step compiled (the checks draw no random numbers)
                self.to_compile = False
                self.compiled = self._compiled(x, idx, fields)
            elif self.derive and self.svi is None:  # the derived step, eager
                self.compiled, why = compiled_loss(*self.raw, self.loss, x, idx, fields=fields,
                                                   num_data=self.num_data, scale=self.scale,
                                                   mode=None)  # fmt: skip
                if self.compiled is None and self.expect_derived:
                    warnings.warn(
                        "the saved run took the VAE's derived estimator, which disagrees with "
                        f"{type(self.loss).__name__} on this resumed run's first batch ({why}): "
                        "the run goes on with Pyro's loss, and its continuation is not "
                        "bit-exact",
                        stacklevel=3,
                    )
            if self.compiled is None:
                return self._step(x, idx, fields, *self.checked, first=True)
            lazy = isinstance(self.optim, LazyAdam) and self.compile_mode is not None
            optim = self.optim
            self.compiled_optim = CompiledAdam(optim, mode=self.compile_mode) if lazy else optim
        if self.compiled is not None:
            return self._compiled_or_eager(x, idx, fields, first=first)
        with pyro.validation_enabled(False):
            return self._step(x, idx, fields, *self.plain, first=False)

    def _compiled(self, x: Tensor, idx: Tensor, fields: Fields) -> CompiledLoss | None:
        """The compiled loss, or ``None`` after one warning that says why the run stays
        eager."""
        compiled, why = compiled_loss(*self.raw, self.loss, x, idx, num_data=self.num_data,
                                      scale=self.scale, mode=self.compile_mode,
                                      fields=fields)  # fmt: skip
        if why is not None:
            warnings.warn(f"{option(self.compile_mode)}: {why}; this run takes the eager step",
                          stacklevel=2)  # fmt: skip
        return compiled

    def _compiled_or_eager(self, x: Tensor, idx: Tensor, fields: Fields, *, first: bool) -> Tensor:
        """The compiled step. Where compiling fails (a graph break, no C++ compiler, a
        recompile for the last batch or for Adam's M-step that cannot be made; compiling comes
        before the graph runs, so the failed call updated nothing), the run goes on with the
        eager step for this batch and the rest, with a warning (with ``e_steps``, E-steps
        already taken on this batch are taken again). An error that is not the compiler's
        comes back from the eager step. The derived step uncompiled raises its errors."""
        step = partial(self._compiled_step, fields=fields)
        if self.compile_mode is None:
            return self._schedule(step, x, idx)
        try:
            return self._schedule(step, x, idx)
        except Exception as e:
            for p in self.compiled.params[0] + self.compiled.params[1]:
                p.grad = None
            self.compiled = None
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else ""
            if "recompile_limit" in str(e) or "RecompileLimit" in type(e).__name__:
                first_line = (
                    f"dynamo's recompile limit (torch._dynamo.config.recompile_limit = "
                    f"{torch._dynamo.config.recompile_limit}) is reached in this process; raise "
                    "it, or call torch.compiler.reset() between runs"
                )
            warnings.warn(
                f"{option(self.compile_mode)}: torch.compile failed ({type(e).__name__}: "
                f"{first_line}); this run takes the eager step",
                stacklevel=3,
            )
            if first:
                return self._step(x, idx, fields, *self.checked, first=True)
            with pyro.validation_enabled(False):
                return self._step(x, idx, fields, *self.plain, first=False)

    def _compiled_step(
        self,
        x: Tensor,
        idx: Tensor,
        *,
        fields: Fields,
        update_model: bool = True,
        update_guide: bool = True,
    ) -> Tensor:
        params = self.compiled.stepped(update_model=update_model, update_guide=update_guide)
        hook = partial(self.combine, x=x) if self.combine is not None else None
        with pyro.validation_enabled(False):  # (checked once; one graph whatever the flag)
            value = self.compiled(x, idx, fields)
        value = descend(value, params, self.compiled_optim, before_step=hook)
        return value.clone() if self.compiled.cuda_graphs else value  # (not the graph's buffer)

    def _schedule(self, step: Callable[..., Tensor], x: Tensor, idx: Tensor) -> Tensor:
        """Joint, variational-EM or guide-only steps of ``step(x, idx, update_model=...,
        update_guide=...)``."""
        if self.freeze_model:
            return step(x, idx, update_model=False)
        for _ in range(self.e_steps):
            step(x, idx, update_model=False)
        return step(x, idx, update_guide=False) if self.e_steps else step(x, idx)

    def _step(
        self, x: Tensor, idx: Tensor, fields: Fields, model, guide, *, first: bool
    ) -> Tensor | float:
        if self.svi is not None:
            return self.svi[first].step(x, idx, num_data=self.num_data, **fields)
        hook = partial(self.combine, x=x) if self.combine is not None else None

        def step(x: Tensor, idx: Tensor, **update: bool) -> Tensor:
            return gradient_step(model, guide, self.loss, self.optim, x, idx,
                                 num_data=self.num_data, before_step=hook, **update,
                                 **fields)  # fmt: skip

        return self._schedule(step, x, idx)


# Losses whose ``differentiable_loss`` does not give the gradient of ``loss_and_grads``:
# Pyro 1.9's JitTrace_ELBO returns ``loss + (surrogate - surrogate.detach())`` with ``loss``
# not detached, so its gradient is twice the ELBO's (tests/test_conformance.py compares one
# fit step with one SVI.step under plain SGD, for every Pyro loss).
_DOUBLED_GRADIENT = ("JitTrace_ELBO",)


def _differentiable(loss: ELBO) -> bool:
    """Whether ``fit`` may step ``loss`` through its ``differentiable_loss``."""
    names = {cls.__name__ for cls in type(loss).__mro__}
    return hasattr(loss, "differentiable_loss") and not names & set(_DOUBLED_GRADIENT)


def _refuse_svi_step(loss: ELBO, *, e_steps: int, freeze_model: bool, combine: object) -> None:
    name = type(loss).__name__
    if e_steps:
        raise ValueError(
            f"e_steps needs a loss with differentiable_loss; {name} has none. Use e_steps=0 or "
            "a Trace_ELBO-like loss"
        )
    if freeze_model:
        raise ValueError(
            f"freeze_model=True needs a loss with differentiable_loss; {name} has none. Use a "
            "Trace_ELBO-like loss for E-steps"
        )
    if combine is not None:
        raise ValueError(
            f"data-parallel training needs a loss with differentiable_loss; {name} has none"
        )
