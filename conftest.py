"""Doctests: the names every ``Example:`` block in ``pyro_vae`` may use without importing.

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
