r"""What a training step dispatches, seen without a GPU: host reads, device mixes, kernels.

A GPU runs ahead of the Python that feeds it as long as nothing waits for a result. Three
things make the host wait or fail on CUDA, and all three can be seen on the CPU, op by op, with
a :class:`torch.utils._python_dispatch.TorchDispatchMode`:

- a **host read**: an op whose result the host needs before it can go on (``.item()``,
  ``bool(t)``, ``float(t)`` dispatch ``aten._local_scalar_dense``; ``torch.equal``; ops whose
  output size depends on the data: ``nonzero``, ``unique``, ``masked_select``, boolean-mask
  indexing, ``coalesce`` of a sparse tensor) — on CUDA each is a synchronization;
- a **transfer**: a copy between devices (``x.cpu()``, ``x.to("cuda")`` of a pageable host
  tensor); on CUDA a blocking copy is a synchronization too;
- a **device mix**: an op whose tensor arguments live on different devices (say a prior's
  buffer made without ``device=`` meeting CUDA data) — an error on CUDA, silently fine on the
  CPU. A 0-dim CPU tensor is allowed beside CUDA tensors, as CUDA kernels allow it.

:class:`DispatchWatch` records (or refuses) each of these with the op, the line of code and
the ``nn.Module`` that dispatched it, and counts every op and the ops that would launch a
kernel. :func:`~pyro_vae.devices.fake_cuda` runs code on *fake* CUDA tensors
(:class:`torch._subclasses.fake_tensor.FakeTensorMode`): tensors that say ``device="cuda"``,
carry shapes but no data, and go through PyTorch's own device checks with no GPU. The
autograd engine needs a real CUDA context, so backward passes are checked on the ``meta``
device instead, where :class:`DispatchWatch` supplies the device check that ``meta`` kernels
lack.

Example:
    >>> with DispatchWatch() as watch:
    ...     x = torch.ones(3, device="meta")
    ...     y = (x * 2).sum()
    ...     try:
    ...         value = float(y)  # a host read
    ...     except RuntimeError:
    ...         pass
    >>> [read.op for read in watch.reads], watch.launches
    (['aten._local_scalar_dense.default'], 3)
"""

from __future__ import annotations

import os
import sys
import weakref
from collections import Counter
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = ["DeviceMixError", "DispatchWatch", "HostReadError"]

aten = torch.ops.aten

# Ops whose result the host must wait for (a synchronization on CUDA).
_READS = {
    aten._local_scalar_dense.default,
    aten.equal.default,
    aten.is_nonzero.default,
    aten.nonzero.default,
    aten.masked_select.default,
    aten._unique.default,
    aten._unique2.default,
    aten.unique_consecutive.default,
    aten.unique_dim.default,
    aten._coalesce.default,
    aten.repeat_interleave.Tensor,
}
_COPIES = {aten._to_copy.default, aten.copy_.default, aten._copy_from.default}
# Ops that allocate or describe memory without running a kernel.
_NO_KERNEL = {
    aten.empty.memory_format,
    aten.empty_strided.default,
    aten.empty_like.default,
    aten.new_empty.default,
    aten.new_empty_strided.default,
    aten.lift_fresh.default,
    aten._local_scalar_dense.default,
    aten.set_.source_Tensor,
    aten.resize_.default,
    aten._unsafe_view.default,
    aten._reshape_alias.default,
    aten.sym_size.int,
    aten.sym_stride.int,
    aten.sym_numel.default,
    aten.sym_storage_offset.default,
    aten.is_same_size.default,
    aten._has_compatible_shallow_copy_type.default,
}
_HERE = os.path.abspath(__file__)
# Frames that are machinery, not the code under watch: this module and the CUDA stand-in's.
_MACHINERY = {_HERE, os.path.join(os.path.dirname(_HERE), "stand_in.py")}
_LIBRARIES = (os.sep + "torch" + os.sep, os.sep + "pyro" + os.sep, os.sep + "zuko" + os.sep)


@dataclass(frozen=True)
class Event:
    """One host read, transfer or device mix: the aten op, the call site (``dir/file.py:line
    in function``, the innermost frame outside torch, Pyro, zuko and this module), the
    innermost ``nn.Module`` running (its class, and its name under ``root`` when known), a
    detail, and ``key`` (the function's qualified name, e.g. ``Batches.to``: what ``allow``
    matches)."""

    op: str
    site: str
    module: str
    detail: str = ""
    key: str = ""

    def __str__(self) -> str:
        where = f" in {self.module}" if self.module else ""
        detail = f" ({self.detail})" if self.detail else ""
        return f"{self.op}{detail}{where} at {self.site}"


class HostReadError(RuntimeError):
    """A host read (or a blocking transfer) where none is allowed."""


class DeviceMixError(RuntimeError):
    """An op whose tensor arguments live on different devices."""


def _call_site() -> tuple[str, str]:
    """``(dir/file.py:line in function, the function's qualified name)`` of the innermost
    frame of user code."""
    frame = sys._getframe(1)
    while frame is not None:
        path = os.path.abspath(frame.f_code.co_filename)
        skip = path in _MACHINERY or any(lib in path for lib in _LIBRARIES)
        if not skip and os.sep + "site-packages" + os.sep not in path and not path.startswith("<"):
            code = frame.f_code
            short = os.path.join(*path.split(os.sep)[-2:])
            name = getattr(code, "co_qualname", code.co_name)  # Python 3.10: the plain name
            return f"{short}:{frame.f_lineno} in {code.co_name}", name
        frame = frame.f_back
    return "(unknown)", ""


def _key(site: str | Callable[..., object]) -> str:
    """What ``allow`` matches: a qualified name, or a function's."""
    if callable(site):
        site = getattr(site, "__func__", site)
        return getattr(site, "__qualname__", getattr(site, "__name__", str(site)))
    return site


def _tensors(args: object, kwargs: dict) -> list[Tensor]:
    return [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, Tensor)]


def _devices(args: tuple, kwargs: dict) -> list[tuple[torch.device, tuple[int, ...]]]:
    """Device and shape of every tensor argument, 0-dim CPU tensors left out."""
    flat, _ = tree_flatten((args, kwargs))
    return [
        (t.device, tuple(t.shape))
        for t in flat
        if isinstance(t, Tensor) and not (t.device.type == "cpu" and t.dim() == 0)
    ]


def _copy_ends(func, args: tuple, kwargs: dict) -> tuple[torch.device, torch.device]:
    """``(source, target)`` devices of a copy op."""
    if func is aten._to_copy.default:
        return args[0].device, torch.device(kwargs.get("device") or args[0].device)
    if func is aten._copy_from.default:  # (src, dst)
        return args[0].device, args[1].device
    return args[1].device, args[0].device  # copy_(dst, src)


def launches(func: torch._ops.OpOverload) -> bool:
    """Whether ``func`` would launch a kernel on a GPU (views and allocations don't)."""
    return func.namespace == "aten" and not (func.is_view or func in _NO_KERNEL)


def _stand_in(func: torch._ops.OpOverload, args: tuple) -> object:
    """A value for an allowed read of a tensor without data (fake or meta): true, one."""
    if func is aten._local_scalar_dense.default:
        dtype = args[0].dtype
        return True if dtype == torch.bool else 1 if not dtype.is_floating_point else 1.0
    if func in (aten.equal.default, aten.is_nonzero.default):
        return True
    raise HostReadError(f"{func} has no stand-in value without data")


class DispatchWatch(TorchDispatchMode):
    """Counts the aten ops dispatched in its context and records host reads, transfers and
    device mixes, each as an ``Event``.

    Args:
        allow: The functions whose host reads (and transfers) are expected, as functions or
            their qualified names (``__qualname__``: ``"mean_loss"``, ``"Batches.to"``; the
            same after a function moves to another module): recorded in ``allowed``, not
            refused.
        strict: Raise :class:`HostReadError` / :class:`DeviceMixError` at the first read or
            mix that is not allowed (else only record them).
        root: A module whose submodule names label the events (else class names only).

    Attributes:
        ops: ``Counter`` of op names.
        launches: Ops that would launch a GPU kernel (not views, not allocations).
        reads: Reads of device (non-CPU) tensors and blocking transfers, not allowed;
            ``allowed``: those at allowed sites; ``host_reads``: reads of CPU tensors (no
            synchronization where the computation runs on another device, e.g. the step
            counter of ``torch.optim.Adam``). Run the code on ``meta`` or fake CUDA tensors to
            tell the two apart: on a CPU run every read is a host read.
        mixes: Device mixes.

    On tensors without data (fake CUDA, ``meta``) a read that is allowed (or only recorded)
    returns a stand-in (true, or one) so that the code can go on: the values are
    meaningless there, the check is what counts.
    Installs global ``nn.Module`` forward hooks while active, to know the module running.
    """

    def __init__(
        self,
        *,
        allow: Iterable[str | Callable[..., object]] = (),
        strict: bool = False,
        root: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.allow = {_key(site) for site in allow}
        self.strict = strict
        self.names = {id(m): n or "root" for n, m in root.named_modules()} if root else {}
        self.ops: Counter[str] = Counter()
        self.launches = 0
        self.reads: list[Event] = []
        self.host_reads: list[Event] = []
        self.allowed: list[Event] = []
        self.mixes: list[Event] = []
        self._modules: list[nn.Module] = []
        self._origins: dict[int, tuple[weakref.ref, Event]] = {}  # by id: tensors' == is per item
        self._stack = ExitStack()

    def __enter__(self) -> DispatchWatch:
        def enter(module: nn.Module, inputs: object) -> None:
            self._modules.append(module)

        def leave(module: nn.Module, inputs: object, output: object) -> None:
            if self._modules:
                self._modules.pop()

        pre = nn.modules.module.register_module_forward_pre_hook(enter)
        post = nn.modules.module.register_module_forward_hook(leave)
        self._stack.callback(pre.remove)
        self._stack.callback(post.remove)
        return super().__enter__()

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        self._stack.close()
        self._modules.clear()

    def _event(self, func: torch._ops.OpOverload, detail: str = "") -> tuple[Event, str]:
        site, key = _call_site()
        module = ""
        if self._modules:
            m = self._modules[-1]
            name = self.names.get(id(m))
            module = f"{type(m).__name__} ({name})" if name else type(m).__name__
        return Event(str(func), site, module, detail, key), key

    def _read(self, func: torch._ops.OpOverload, detail: str = "") -> bool:
        """Records a read; whether it is allowed."""
        event, key = self._event(func, detail)
        if key in self.allow:
            self.allowed.append(event)
            return True
        self.reads.append(event)
        if self.strict:
            raise HostReadError(f"host read: {event}")
        return False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.ops[str(func)] += 1
        self.launches += launches(func)
        devices = _devices(args, kwargs)
        if func in _COPIES:
            source, target = _copy_ends(func, args, kwargs)
            if source.type != target.type and not kwargs.get("non_blocking", False):
                self._read(func, f"blocking copy {source.type} -> {target.type}")
                if target.type == "cpu" and _no_data(args[0]):  # e.g. tolist() on meta
                    return torch.ones(args[0].shape, dtype=kwargs.get("dtype") or args[0].dtype)
        elif len({d for d, _ in devices}) > 1:
            shown = ", ".join(f"{d} {list(s)}" for d, s in devices)
            made = {self._origin(t) for t in _tensors(args, kwargs)} - {None}
            if made:  # where the stray CPU tensor came from
                shown += "; the CPU tensor was made by " + "; ".join(sorted(map(str, made)))
            event, _ = self._event(func, f"tensors on {shown}")
            self.mixes.append(event)
            if self.strict:
                raise DeviceMixError(f"device mix: {event}")
        if func in _READS or (func is aten.index.Tensor and _bool_index(args)):
            tensors = [t for t in tree_flatten(args)[0] if isinstance(t, Tensor)]
            if all(t.device.type == "cpu" for t in tensors):  # e.g. Adam's step counter
                self.host_reads.append(self._event(func)[0])
            else:
                self._read(func)  # raises here when strict and not allowed
                if any(_no_data(t) for t in tensors):
                    return _stand_in(func, args)
        out = func(*args, **kwargs)
        self._trace_host_tensors(func, args, kwargs, out)
        return out

    def _trace_host_tensors(self, func, args: tuple, kwargs: dict, out: object) -> None:
        """Remembers where each CPU tensor (not 0-dim) was made, and passes it on to the CPU
        tensors computed from it, so that a device mix can name its origin."""
        host = [t for t in _tensors(out, {}) if t.device.type == "cpu" and t.dim() > 0]
        if not host:
            return
        inputs = _tensors(args, kwargs)
        if func in (aten.lift_fresh.default, aten.lift_fresh_copy.default) or not inputs:
            origin = self._event(func)[0]  # a factory: torch.zeros(...), torch.tensor(...)
        else:
            origin = next((o for o in map(self._origin, inputs) if o is not None), None)
        if origin is None:
            return
        for t in host:
            key = id(t)

            def forget(ref: weakref.ref, key: int = key) -> None:
                if self._origins.get(key, (None,))[0] is ref:
                    del self._origins[key]

            self._origins[key] = (weakref.ref(t, forget), origin)

    def _origin(self, t: Tensor) -> Event | None:
        ref, origin = self._origins.get(id(t), (None, None))
        return origin if ref is not None and ref() is t else None


def _bool_index(args: tuple) -> bool:
    indices = args[1] if len(args) > 1 else []
    return any(isinstance(i, Tensor) and i.dtype == torch.bool for i in indices)


def _no_data(t: Tensor) -> bool:
    return t.device.type == "meta" or isinstance(t, torch._subclasses.fake_tensor.FakeTensor)
