r"""A CUDA stand-in: a device that is not the CPU, holds real data, and runs on the CPU.

Code written for one device often runs everywhere but on CUDA: a tensor made without
``device=`` meets CUDA data, a ``torch.Generator()`` (a CPU one) draws CUDA numbers, a
``.numpy()`` of a result. On the CPU all of these pass. :func:`enable` registers a second
device, ``"fakecuda"`` (PyTorch's ``PrivateUse1`` slot, run from Python), whose tensors keep
their values in CPU tensors and compute with CPU kernels, but refuse what CUDA refuses:

- an op whose tensor arguments live on the CPU and on ``fakecuda`` (0-dim CPU tensors and
  index tensors allowed, as CUDA kernels allow them; copies are transfers, not mixes) raises
  :class:`~pyro_vae.devices.dispatch.DeviceMixError`;
- once :func:`install` made it torch's default device, a random op drawing on ``fakecuda``
  with a CPU generator raises, as CUDA does; a generator for the stand-in comes from
  :func:`generator` (``torch.Generator(device=...)`` needs a C++ backend);
- ``.numpy()`` and ``data_ptr()`` fail, as on CUDA.

With :func:`install` a whole test suite runs "on CUDA" with its values
(``PYRO_VAE_TEST_DEVICE=fake-cuda``, see ``tests/conftest.py``). What it does not see:
code that branches on ``device.type == "cuda"`` (autocast, pinned memory, CUDA graphs) takes
its other branch, and host reads are allowed (``DispatchWatch`` counts those). Every op goes
through Python: several times slower than the CPU.

Registering the device changes how PyTorch finds its accelerator for the rest of the process
(:func:`~pyro_vae.devices.fake_cuda`'s fake CUDA tensors stop working there), so the stand-in
is for a process of its own, such as a test session:

.. code-block:: bash

    PYRO_VAE_TEST_DEVICE=fake-cuda bash .ci/test    # tests/conftest.py calls install()

In such a process ``torch.ones(3) + torch.ones(3, device="cpu")`` raises
:class:`~pyro_vae.devices.dispatch.DeviceMixError`, ``torch.randn(3,
generator=torch.Generator())`` a ``RuntimeError``, as on CUDA
(``tests/devices/test_stand_in.py``).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch
from torch import Tensor
from torch.utils._device import DeviceContext
from torch.utils._pytree import tree_flatten, tree_map

from .dispatch import DeviceMixError

__all__ = ["NAME", "StandInTensor", "enable", "generator", "install", "is_stand_in"]

NAME = "fakecuda"
_DEVICE: torch.device | None = None  # set by enable (the name must exist first)
_library: torch.library.Library | None = None
_kernels: torch.library.Library | None = None
aten = torch.ops.aten

# Copies move data between devices: not a mix.
_COPIES = {
    aten._to_copy.default,
    aten.copy_.default,
    aten._copy_from.default,
    aten._copy_from_and_resize.default,
}
# CUDA kernels take CPU index tensors (they are copied over).
_INDEXING = {
    aten.index.Tensor,
    aten.index_put.default,
    aten.index_put_.default,
    aten._index_put_impl_.default,
}
_generators: weakref.WeakSet[torch.Generator] = weakref.WeakSet()
_enabled = False


def enable() -> torch.device:
    """Registers the ``fakecuda`` device (once per process; the ``PrivateUse1`` slot is
    renamed) and returns it.

    Returns:
        ``torch.device("fakecuda", 0)``.
    """
    global _enabled, _DEVICE, _library, _kernels
    if not _enabled:
        from torch.utils.backend_registration import _setup_privateuseone_for_python_backend

        name = torch._C._get_privateuse1_backend_name()
        if name not in ("privateuseone", NAME):
            raise RuntimeError(
                f"PyTorch's PrivateUse1 device is already {name!r} in this process: the "
                f"{NAME!r} stand-in needs it (start a fresh process)"
            )
        if name == "privateuseone":
            _setup_privateuseone_for_python_backend(NAME, backend_module=_Module())
        _DEVICE = torch.device(NAME, 0)
        _library = torch.library.Library("_", "IMPL")
        _library.fallback(_factory, "PrivateUse1")
        _kernels = torch.library.Library("aten", "IMPL")
        for op in _OWN_KERNELS:  # (reached with the Python key off, e.g. by torch.tensor)
            _kernels.impl(op, _kernel(op), "PrivateUse1")
        _enabled = True
    return _DEVICE


def install() -> torch.device:
    """Makes the stand-in torch's default device (a test session's:
    ``PYRO_VAE_TEST_DEVICE=fake-cuda``), with the check that refuses CPU generators drawing
    on it; ``torch.set_default_device`` undoes it.

    Returns:
        The stand-in device.
    """
    device = enable()
    torch.set_default_device(None)
    context = _DefaultDevice(device)
    context.__enter__()
    torch._GLOBAL_DEVICE_CONTEXT.device_context = context  # (where set_default_device keeps it)
    return device


class _Module:
    """``torch.fakecuda``: what torch asks of a device's module. Random numbers on the stand-in
    come from the CPU's generator, so its state is the CPU's."""

    def is_available(self) -> bool:
        return True

    def is_initialized(self) -> bool:
        return True

    def _is_in_bad_fork(self) -> bool:
        return False

    def device_count(self) -> int:
        return 1

    def current_device(self) -> int:
        return 0

    def manual_seed_all(self, seed: int) -> None:
        pass  # (torch.manual_seed seeds the CPU's generator, which is the stand-in's)

    def get_rng_state(self, device: object = None) -> Tensor:
        return torch.get_rng_state()

    def set_rng_state(self, state: Tensor, device: object = None) -> None:
        torch.set_rng_state(state)

    def synchronize(self, device: object = None) -> None:
        pass


def is_stand_in(device: torch.device | str | None) -> bool:
    """Whether ``device`` is the stand-in."""
    return device is not None and torch.device(device).type == NAME


def generator(seed: int | None = None) -> torch.Generator:
    """A generator for random numbers drawn on the stand-in device (a CPU generator it
    accepts; CUDA's refuse CPU ones).

    Args:
        seed: Its seed (else the default one).
    """
    g = torch.Generator()
    if seed is not None:
        g.manual_seed(seed)
    _generators.add(g)
    return g


class _DefaultDevice(DeviceContext):
    """torch's default-device mode (what ``torch.set_default_device`` pushes), which also
    refuses a CPU generator drawing numbers on the stand-in, as CUDA does. (At the torch
    function level: below it, generators reach Python as new objects.)"""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        g = kwargs.get("generator")
        cpu = isinstance(g, torch.Generator) and g.device.type == "cpu"
        if cpu and g not in _generators and _draws_here(args, kwargs):
            raise RuntimeError(
                f"Expected a '{NAME}' device type for generator but found 'cpu' "
                f"({getattr(func, '__name__', func)}: a CPU torch.Generator() drawing "
                f"numbers on {NAME}, which CUDA refuses; make it with "
                f"torch.Generator(device=...), on the stand-in "
                f"pyro_vae.devices.stand_in.generator())"
            )
        return super().__torch_function__(func, types, args, kwargs)


def _draws_here(args: tuple, kwargs: dict) -> bool:
    """Whether a random op draws on the stand-in: its ``device=``, a tensor argument, else
    torch's default device."""
    if kwargs.get("device") is not None:
        return is_stand_in(kwargs["device"])
    tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, Tensor)]
    if tensors:
        return any(isinstance(t, StandInTensor) for t in tensors)
    return is_stand_in(torch.get_default_device())


class StandInTensor(Tensor):
    """A tensor on the stand-in device: its values in ``raw``, a CPU tensor of the same shape
    and strides (views share ``raw``'s storage, so in-place writes reach their base)."""

    raw: Tensor
    __torch_function__ = torch._C._disabled_torch_function_impl

    @staticmethod
    def __new__(cls, raw: Tensor) -> StandInTensor:
        out = Tensor._make_wrapper_subclass(
            cls,
            raw.shape,
            strides=raw.stride(),
            storage_offset=raw.storage_offset(),
            dtype=raw.dtype,
            layout=raw.layout,
            device=_DEVICE,
            requires_grad=False,
            dispatch_sizes_strides_policy="sizes",  # read from raw: out= and resize_ change them
        )
        out.raw = raw
        return out

    def __repr__(self, *, tensor_contents: object = None) -> str:
        body = repr(self.raw.detach())
        extra = f", device='{self.device}'"
        if self.requires_grad:
            extra += ", requires_grad=True"
        return body[:-1] + extra + ")" if body.endswith(")") else body

    @property
    def data(self) -> Tensor:
        """The tensor without its autograd history (setting it takes another stand-in
        tensor's values: the C++ side swaps its storage, ``raw`` follows)."""
        return Tensor.data.__get__(self)

    @data.setter
    def data(self, new: Tensor) -> None:
        if not isinstance(new, StandInTensor):
            raise RuntimeError(f"a {NAME} tensor's .data set to a {new.device} tensor")
        Tensor.data.__set__(self, new)
        self.raw = new.raw

    def tolist(self) -> object:
        """The values as (nested) Python numbers: a host read, as on CUDA."""
        return self.raw.tolist()

    def __reduce_ex__(self, protocol: int) -> tuple:
        """Saved as CUDA tensors are: their values on the CPU, rebuilt on the device (or
        where ``map_location`` says)."""
        rebuild = torch._utils._rebuild_device_tensor_from_cpu_tensor
        return rebuild, (self.raw.detach(), self.dtype, str(self.device), self.requires_grad)

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return _run(func, args, kwargs or {})


def _to_cpu(value: object) -> object:
    if isinstance(value, StandInTensor):
        return value.raw
    if isinstance(value, torch.device) and value.type == NAME:
        return torch.device("cpu")
    return value


def _target(func: Callable, args: tuple, kwargs: dict) -> torch.device:
    """Where the op's results live: its ``device=``, else the stand-in."""
    device = kwargs.get("device")
    if device is not None and (func not in _COPIES or func is aten._to_copy.default):
        return torch.device(device)
    return _DEVICE


def _check(func: Callable, flat: list) -> None:
    """Refuses what CUDA refuses: CPU tensors beside stand-in ones (``flat``: the op's
    arguments, flattened)."""
    if func not in _COPIES and func not in _INDEXING:
        host = [t for t in flat if isinstance(t, Tensor) and t.device.type == "cpu" and t.dim()]
        here = [t for t in flat if isinstance(t, StandInTensor)]
        if host and here:
            raise DeviceMixError(
                f"Expected all tensors to be on the same device, but found at least two "
                f"devices, {NAME}:0 and cpu! ({func}: a CPU tensor of shape "
                f"{list(host[0].shape)} beside {NAME} ones; make it on the data's device)"
            )


def _run(func: Callable, args: tuple, kwargs: dict) -> object:
    if func is aten._has_compatible_shallow_copy_type.default:  # (x.data = y: same device)
        return isinstance(args[0], StandInTensor) == isinstance(args[1], StandInTensor)
    target = _target(func, args, kwargs)
    flat = tree_flatten((args, kwargs))[0]
    _check(func, flat)
    wrappers = {id(t.raw): t for t in flat if isinstance(t, StandInTensor)}
    cpu_args, cpu_kwargs = tree_map(_to_cpu, args), tree_map(_to_cpu, kwargs)
    if func in (aten._copy_from.default, aten._copy_from_and_resize.default):
        src, dst = cpu_args[:2]  # (no CPU kernel: the copy itself)
        out = dst.copy_(src)
    else:
        out = func(*cpu_args, **cpu_kwargs)

    def wrap(value: object) -> object:
        if not isinstance(value, Tensor) or isinstance(value, StandInTensor):
            return value
        same = wrappers.get(id(value))
        if same is not None:  # an in-place op or out=: the argument itself
            return same
        if target.type != NAME:
            return value
        if value._is_zerotensor():  # no memory behind it, and the key that knows is off here
            value = torch.zeros(value.shape, dtype=value.dtype, device="cpu")
        if value.is_neg() or value.is_conj():  # (bits that the keys above us would read)
            value = value.resolve_neg().resolve_conj()
        return StandInTensor(value)

    return tree_map(wrap, out)


_OWN_KERNELS = ("_copy_from", "_copy_from_and_resize")


def _kernel(name: str) -> Callable[..., object]:
    packet = getattr(aten, name)
    return lambda *args, **kwargs: _run(packet.default, args, kwargs)


def _factory(func: Callable, *args: object, **kwargs: object) -> object:
    """Ops that reach the stand-in by their ``device=`` (factories): made on the CPU, wrapped."""
    return _run(func, args, kwargs)
