"""Devices: where to train (:func:`~pyro_vae.default_device`, :func:`~pyro_vae.device_name`),
modules on fake CUDA tensors without a GPU (:func:`~pyro_vae.devices.fake_cuda`), and
:mod:`~pyro_vae.devices.dispatch`, which watches what a step dispatches (host reads, device
mixes, kernel launches).
"""

from . import dispatch
from ._placement import default_device, device_name, fake_cuda

__all__ = ["default_device", "device_name", "dispatch", "fake_cuda"]
