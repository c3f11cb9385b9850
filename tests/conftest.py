from __future__ import annotations

import os
from pathlib import Path

import pyro
import pytest
import torch
from _pytest.doctest import DoctestItem
from helpers import FAKE_TENSORS

import pyro_vae as pv
from pyro_vae.devices import stand_in

REPO = Path(__file__).resolve().parents[1]


def mnist_root() -> Path:
    """The package's own lookup (:func:`pyro_vae.default_data_dir`), from the repository root."""
    cwd = os.getcwd()
    try:
        os.chdir(REPO)
        return Path(pv.default_data_dir()).resolve()
    finally:
        os.chdir(cwd)


def has_mnist() -> bool:
    return (mnist_root() / "MNIST" / "raw" / "t10k-images-idx3-ubyte").exists()


@pytest.fixture(autouse=True)
def _pyro_state():
    """Every test starts from an empty param store, validation on and fixed seeds."""
    pyro.clear_param_store()
    pyro.enable_validation(True)
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


@pytest.fixture
def mnist_dir() -> Path:
    if not has_mnist():
        pytest.skip(f"MNIST files not found under {mnist_root()} (set PYRO_VAE_DATA)")
    return mnist_root()


def pytest_configure(config):
    """``PYRO_VAE_TEST_DEVICE=cuda`` (``bash .ci/gpu``): torch's default device for the run;
    ``fake-cuda``: the CUDA stand-in (:mod:`pyro_vae.devices.stand_in`), CI's run on the CPU."""
    device = os.environ.get("PYRO_VAE_TEST_DEVICE")
    if device == "fake-cuda":
        stand_in.install()
    elif device:
        if torch.device(device).type == "cuda" and not torch.cuda.is_available():
            raise pytest.UsageError(f"PYRO_VAE_TEST_DEVICE={device} but torch sees no CUDA device")
        torch.set_default_device(device)


@pytest.hookimpl(tryfirst=True)  # (before -m selects by the markers added here)
def pytest_collection_modifyitems(config, items):
    """The long tier: every ``slow_compile`` test and every test of a module listed in
    ``LONG`` is also marked ``long`` (``bash .ci/test`` leaves them out; CI runs them with
    ``-m long``). On the CUDA stand-in, the doctests run with the CPU as default device
    (``host_default``), ``not_on_stand_in`` tests (and the doctests of fake CUDA tensors) are
    skipped; without CUDA, ``cuda`` tests are."""
    for item in items:
        if "slow_compile" in item.keywords or item.path.name in LONG:
            item.add_marker(pytest.mark.long)
    if stand_in.is_stand_in(torch.get_default_device()):
        for item in items:
            if isinstance(item, DoctestItem):  # (they show CPU tensors and devices)
                item.add_marker(pytest.mark.host_default("the examples print CPU outputs"))
                if any("fake_cuda(" in example.source for example in item.dtest.examples):
                    item.add_marker(pytest.mark.not_on_stand_in(FAKE_TENSORS))
            marker = item.get_closest_marker("not_on_stand_in")
            if marker is not None:
                item.add_marker(pytest.mark.skip(reason=f"not on the stand-in: {marker.args[0]}"))
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


LONG = {"test_distributed.py"}  # processes that start torch: seconds each
