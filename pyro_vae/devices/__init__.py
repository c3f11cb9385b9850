"""Devices: where to train (:func:`~pyro_vae.default_device`, :func:`~pyro_vae.device_name`),
modules on fake CUDA tensors without a GPU (:func:`~pyro_vae.devices.fake_cuda`), and
:mod:`~pyro_vae.devices.dispatch`, which watches what a step dispatches (host reads, device
mixes, kernel launches), and :mod:`~pyro_vae.devices.precision`, the networks' arithmetic in
bfloat16 (``precision="bf16-mixed"``).
"""

from .._placement import default_device, device_name, fake_cuda
from . import dispatch, precision  # noqa: F401 (the modules, attributes)

__all__ = ["default_device", "device_name", "fake_cuda"]  # (and the modules dispatch, precision)
