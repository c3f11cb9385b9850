"""Every test (``tests/``'s and the doctests): a test marked ``host_default(reason)`` runs with
the CPU as torch's default device in a run whose default is another (``PYRO_VAE_TEST_DEVICE``).

Doctests: the names every ``Example:`` block in ``pyro_vae`` may use without importing.

``pytest`` (``--doctest-modules``, see ``pyproject.toml``) runs the docstring examples of
``pyro_vae/*.py`` with ``torch``, ``pyro``, ``dist`` (``pyro.distributions``), ``zuko``,
``pv`` (``pyro_vae``), every name in ``pyro_vae.__all__`` and ``Trace_ELBO`` in scope, each
from an empty param store with validation on and fixed seeds. The tests in ``tests/`` have
their own fixtures (``tests/conftest.py``).
"""

from __future__ import annotations

import pyro
import pyro.distributions
import pytest
import torch
import zuko
from _pytest.doctest import DoctestItem
from pyro.infer import Trace_ELBO

import pyro_vae
from pyro_vae.devices import stand_in


@pytest.fixture(autouse=True)
def _host_default(request: pytest.FixtureRequest):
    """A test marked ``host_default(reason)`` runs with the CPU as torch's default device when
    the run's is another (``PYRO_VAE_TEST_DEVICE=cuda``, or ``fake-cuda``: the stand-in)."""
    default = torch.get_default_device()
    if request.node.get_closest_marker("host_default") is None or default.type == "cpu":
        yield
        return
    torch.set_default_device(None)  # (as a CPU run has it: no default-device mode)
    try:
        yield
    finally:
        if stand_in.is_stand_in(default):
            stand_in.install()
        else:
            torch.set_default_device(default)


@pytest.fixture(autouse=True)
def _doctest_namespace(request: pytest.FixtureRequest) -> None:
    if not isinstance(request.node, DoctestItem):
        return
    namespace = request.getfixturevalue("doctest_namespace")
    namespace.update(torch=torch, pyro=pyro, dist=pyro.distributions, zuko=zuko, pv=pyro_vae)
    namespace.update({name: getattr(pyro_vae, name) for name in pyro_vae.__all__})
    namespace["Trace_ELBO"] = Trace_ELBO
    pyro.clear_param_store()
    pyro.enable_validation(True)
    pyro.set_rng_seed(0)
