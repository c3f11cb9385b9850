"""Devices: where to train (:func:`~pyro_vae.default_device`, :func:`~pyro_vae.device_name`),
modules on fake CUDA tensors without a GPU (:func:`~pyro_vae.devices.fake_cuda`),
:mod:`~pyro_vae.devices.dispatch`, which watches what a step dispatches (host reads, device
mixes, kernel launches), :mod:`~pyro_vae.devices.precision`, the networks' arithmetic in
bfloat16 (``precision="bf16-mixed"``), and :mod:`~pyro_vae.devices.stand_in`, a CUDA stand-in
that holds data on the CPU (the test suite's ``PYRO_VAE_TEST_DEVICE=fake-cuda``).
"""

from .._placement import default_device, device_name, fake_cuda
from . import dispatch, precision, stand_in  # noqa: F401 (the modules, attributes)

# (and the modules dispatch, precision and stand_in)
__all__ = ["default_device", "device_name", "fake_cuda"]
