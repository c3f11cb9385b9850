"""Data sets: the data folder is looked up in one documented order, and a missing one is named
with the fix."""

from __future__ import annotations

import pytest

import pyro_vae as pv


def test_data_folder_lookup_order(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()
    monkeypatch.chdir(repo)
    monkeypatch.delenv("PYRO_VAE_DATA", raising=False)
    assert pv.default_data_dir() == "data"  # nothing else there
    (tmp_path / "shared" / "data" / "MNIST" / "raw").mkdir(parents=True)
    assert pv.default_data_dir() == "../shared/data"  # beside the repository
    monkeypatch.setenv("PYRO_VAE_DATA", str(tmp_path / "elsewhere"))
    assert pv.default_data_dir() == str(tmp_path / "elsewhere")  # the variable wins


def test_missing_data_folder(tmp_path, monkeypatch):
    """A folder given as ``root`` is the only one looked in, and the error says so (it does not
    advise $PYRO_VAE_DATA, which the argument overrides); without ``root`` the error names the
    lookup order and the ways to point elsewhere."""
    missing = tmp_path / "nowhere"
    monkeypatch.setenv("PYRO_VAE_DATA", str(tmp_path / "set"))
    with pytest.raises(FileNotFoundError) as info:
        pv.load_mnist(missing)
    message = str(info.value)
    assert str(missing / "MNIST" / "raw") in message
    assert "looks there only ($PYRO_VAE_DATA applies when root is not given)" in message
    with pytest.raises(FileNotFoundError) as info:
        pv.load_mnist()
    message = str(info.value)
    assert str(tmp_path / "set" / "MNIST" / "raw") in message
    assert "default_data_dir()" in message and "--data-dir" in message
