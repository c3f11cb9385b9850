"""The data folder is looked up in one documented order."""

from __future__ import annotations

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
