"""The README's results tables come from runs' metrics.json through benchmarks/report.py."""

from __future__ import annotations

import importlib.util
import json

import pytest

from conftest import REPO


def load_report():
    spec = importlib.util.spec_from_file_location("report", REPO / "benchmarks" / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_report_fills_the_readme_block(tmp_path):
    run = tmp_path / "run_a"
    run.mkdir()
    metrics = {
        "epochs": 3,
        "train_loss": 1.234,
        "train_elbo": -1.5,
        "test_elbo": -2.0,
        "test_log_likelihood": -1.75,
        "num_particles": 10,
        "seconds": 120.0,
        "device": "cpu",
        "images": [],
    }
    (run / "metrics.json").write_text(json.dumps(metrics))
    readme = tmp_path / "README.md"
    readme.write_text("a\n<!-- results:x:start -->\nold\n<!-- results:x:end -->\nb\n")
    report = load_report()
    report.main([str(run), "--reference", "run_a=ref", "--readme", str(readme), "--block", "x"])
    text = readme.read_text()
    assert "old" not in text and text.startswith("a\n") and text.endswith("b\n")
    assert "| `run_a` | 3 | 1.23 | -1.50 | -2.00 | -1.75 (10) | ref | 2.0 min | cpu |" in text
    with pytest.raises(SystemExit, match="no <!-- results:y:start -->"):
        report.main([str(run), "--readme", str(readme), "--block", "y"])


@pytest.mark.mnist
def test_quality_runs_resumes_and_tabulates(mnist_dir, tmp_path):
    spec = importlib.util.spec_from_file_location("quality", REPO / "benchmarks" / "quality.py")
    quality = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quality)
    common = [
        "--configs",
        "vae",
        "--num-particles",
        "4",
        "--device",
        "cpu",
        "--data-dir",
        str(mnist_dir),
        "--out",
        str(tmp_path),
    ]
    quality.CONFIGS = {"vae": ("none", 0, "normal")}
    text = quality.main([*common, "--epochs", "1"])
    assert "| `vae` | N(0, I) | Gaussian |" in text and "86.76 (5000)" in text
    metrics = json.loads((tmp_path / "vae" / "metrics.json").read_text())
    assert metrics["epochs"] == 1
    quality.main([*common, "--epochs", "1"])  # finished: skipped, same numbers
    assert json.loads((tmp_path / "vae" / "metrics.json").read_text()) == metrics
