"""Devices: where training runs, and clear errors when a parameter is somewhere else.

A Pyro program touches three kinds of tensors: the data, the ``nn.Module`` networks it
registers with ``pyro.module`` and plain ``pyro.param`` tensors. When one of them is on another
device (or in another floating dtype) than the data, PyTorch fails deep inside a kernel. The
helpers here find the networks behind a model/guide pair, move them, and check every parameter
and buffer *before* it is used, with an error that names it and both devices.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import pyro
import torch
from pyro.poutine.messenger import Messenger
from torch import Tensor, nn

__all__ = [
    "DeviceCheck",
    "check_module",
    "default_device",
    "device_name",
    "fake_cuda",
    "move_param_store",
    "owner_modules",
]


def default_device() -> torch.device:
    """torch's default device when one other than the CPU is set
    (``torch.set_default_device``), else ``cuda`` when a GPU is available, else ``cpu``; under
    ``torchrun`` with several processes, ``cuda:<LOCAL_RANK>`` (each process its own GPU).

    Example:
        >>> default_device().type in ("cpu", "cuda")
        True
    """
    chosen = torch.get_default_device()
    if chosen.type != "cpu" and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return chosen
    if not torch.cuda.is_available():
        return torch.device("cpu")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cuda")


def device_name(device: torch.device | str) -> str:
    """``"cpu"``, or e.g. ``"cuda (NVIDIA H100 80GB HBM3)"``: for reports.

    Example:
        >>> device_name("cpu")
        'cpu'
    """
    device = torch.device(device)
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def same_device(a: torch.device, b: torch.device) -> bool:
    """Whether ``a`` and ``b`` are the same device (``cuda`` equals ``cuda:<current>``)."""
    if a.type != b.type:
        return False
    if a.index is None or b.index is None:
        current = torch.cuda.current_device() if a.type == "cuda" else None
        return (a.index if a.index is not None else current) == (
            b.index if b.index is not None else current
        )
    return a.index == b.index


def owner_modules(*fns: Callable[..., object]) -> list[nn.Module]:
    """The distinct ``nn.Module`` objects whose bound methods ``fns`` are (e.g. the
    :class:`~pyro_vae.VAE` behind ``vae.model`` and ``vae.guide``), also through wrappers
    that say what they wrap (``poutine.scale(vae.model, 0.5)``, ``functools.wraps``,
    ``functools.partial``).

    Example:
        >>> net = torch.nn.Linear(2, 2)
        >>> owner_modules(net.forward, print) == [net]
        True
    """
    found: list[nn.Module] = []
    for fn in fns:
        for _ in range(100):  # unwrap: __wrapped__ chains and partials
            inner = getattr(fn, "__wrapped__", None) or getattr(fn, "func", None)
            if inner is None or inner is fn:
                break
            fn = inner
        owner = getattr(fn, "__self__", None)
        if isinstance(owner, nn.Module) and not any(owner is m for m in found):
            found.append(owner)
    return found


def _mismatch(
    what: str, tensor: Tensor, device: torch.device, dtype: torch.dtype | None, fix: str
) -> str | None:
    if not same_device(tensor.device, device):
        return f"{what} is on {tensor.device} but the data are on {device}: {fix}"
    floating = dtype is not None and dtype.is_floating_point and tensor.is_floating_point()
    if floating and tensor.dtype != dtype:
        short = {torch.float32: "float", torch.float64: "double", torch.bfloat16: "bfloat16"}
        data, model = short.get(tensor.dtype), short.get(dtype)
        if data is not None and model is not None:  # both ways, the data's first
            fix = (f"convert the data to the networks' dtype (x.{data}()), or the networks "
                   f"to the data's (vae.{model}())")  # fmt: skip
        return f"{what} is {tensor.dtype} but the data are {dtype}: {fix}"
    return None


def check_module(
    module: nn.Module,
    device: torch.device | str,
    dtype: torch.dtype | None = None,
    *,
    fix: str = "move the model and the data to one device (module.to(device))",
) -> None:
    """Raises a :class:`ValueError` naming the first parameter or buffer of ``module`` that is
    not on ``device`` (or, for floating tensors, not of the data's floating ``dtype``).

    Example:
        >>> check_module(torch.nn.Linear(2, 2).double(), "cpu", torch.float32)
        Traceback (most recent call last):
        ...
        ValueError: parameter 'weight' of Linear is torch.float64 but the data are ...
    """
    device = torch.device(device)
    kind = type(module).__name__
    tensors: Iterable[tuple[str, str, Tensor]] = [
        *(("parameter", n, t) for n, t in module.named_parameters()),
        *(("buffer", n, t) for n, t in module.named_buffers()),
    ]
    for what, name, tensor in tensors:
        problem = _mismatch(f"{what} {name!r} of {kind}", tensor, device, dtype, fix)
        if problem is not None:
            raise ValueError(problem)


class DeviceCheck(Messenger):
    """Checks every ``pyro.param`` (and so every ``pyro.module`` parameter) as it is
    registered, before the program uses it: it must be on ``device`` and, when floating, of
    the data's floating ``dtype``; else a :class:`ValueError` names it and both devices.

    Wrap the first step of a loop in it (it costs a little Python per parameter site).

    Example:
        >>> def model():
        ...     pyro.param("w", torch.zeros(2, device="meta"))
        >>> with DeviceCheck("cpu"):
        ...     model()
        Traceback (most recent call last):
        ...
        ValueError: pyro.param 'w' is on meta but the data are on cpu: ...
    """

    def __init__(
        self,
        device: torch.device | str,
        dtype: torch.dtype | None = None,
        *,
        fix: str = "move it there (module.to(device), or pass modules= to fit)",
    ) -> None:
        super().__init__()
        self.device = torch.device(device)
        self.dtype = dtype
        self.fix = fix
        self.names: dict[str, None] = {}  # the parameter names seen, in order

    def _pyro_post_param(self, msg: dict) -> None:
        self.names[msg["name"]] = None
        value = msg["value"]
        if isinstance(value, Tensor):
            what = f"pyro.param {msg['name']!r}"
            problem = _mismatch(what, value, self.device, self.dtype, self.fix)
            if problem is not None:
                raise ValueError(problem)


def move_param_store(device: torch.device | str) -> None:
    """Moves every parameter of Pyro's param store to ``device`` in place (the tensors keep
    their identity, so optimizers and modules holding them see the move)."""
    device = torch.device(device)
    with torch.no_grad():
        for _, unconstrained in pyro.get_param_store().named_parameters():
            if not same_device(unconstrained.device, device):
                unconstrained.data = unconstrained.data.to(device)


@contextmanager
def fake_cuda(*modules: nn.Module) -> Iterator[torch._subclasses.fake_tensor.FakeTensorMode]:
    """Moves ``modules`` (in place: build them for the check) to fake CUDA tensors and runs
    the block under a :class:`~torch._subclasses.fake_tensor.FakeTensorMode`, with Pyro's and
    torch's distribution validation off (it reads values). Inside, ``torch.randn(...,
    device="cuda")`` makes fake CUDA tensors; an op mixing CPU and CUDA tensors, or reading a
    value, raises. Pyro's param store is emptied for the block (it fills with fake tensors) and
    restored after it; torch's and Pyro's validation flags are restored too.

    Example:
        >>> net = torch.nn.Linear(3, 2)
        >>> with fake_cuda(net):
        ...     net(torch.zeros(4, 3, device="cuda")).device
        device(type='cuda', index=0)
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode()
    validate = torch.distributions.Distribution._validate_args
    store = pyro.get_param_store()
    saved = store.get_state()
    store.clear()
    try:
        with mode, pyro.validation_enabled(False):
            torch.distributions.Distribution.set_default_validate_args(False)
            for module in modules:
                module._apply(lambda t: mode.from_tensor(t).to("cuda"))
            yield mode
    finally:
        torch.distributions.Distribution.set_default_validate_args(validate)
        store.clear()
        store.set_state(saved)
