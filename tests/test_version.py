"""The version is written once (pyro_vae.__version__) and the installed metadata agrees."""

from __future__ import annotations

import importlib.metadata

import pyro_vae as pv


def test_version_has_one_source():
    assert importlib.metadata.version("pyro_vae") == pv.__version__
