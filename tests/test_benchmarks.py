"""The README's results tables come from runs' metrics.json through benchmarks/report.py."""

from __future__ import annotations

import importlib
import json
import math

import pytest
from helpers import here


def load_report():
    return importlib.import_module("benchmarks.report")


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


def load_quality():
    return importlib.import_module("benchmarks.quality")


@pytest.mark.mnist
@pytest.mark.long
def test_quality_runs_resumes_and_tabulates(mnist_dir, tmp_path):
    quality = load_quality()
    common = [
        "--configs",
        "vae",
        "--num-particles",
        "4",
        "--device",
        str(here()),
        "--data-dir",
        str(mnist_dir),
        "--out",
        str(tmp_path),
    ]
    text = quality.main([*common, "--epochs", "1"])
    assert "| `vae` | 1 | N(0, I) | Gaussian | ELBO |" in text and "86.76 (ELBO; tanh" in text
    metrics = json.loads((tmp_path / "vae" / "metrics.json").read_text())
    assert metrics["epochs"] == 1
    quality.main([*common, "--epochs", "1"])  # finished: skipped, same numbers
    assert json.loads((tmp_path / "vae" / "metrics.json").read_text()) == metrics


@pytest.mark.mnist
def test_quality_iwae_rows_have_the_gap_columns(mnist_dir, tmp_path):
    quality = load_quality()
    argv = [
        *("--configs", "vae2", "--epochs", "1", "--limit", "200", "--num-particles", "4"),
        *(
            "--test-points",
            "50",
            "--gap-points",
            "10",
            "--gap-epochs",
            "2",
            "--device",
            str(here()),
        ),
        *("--data-dir", str(mnist_dir), "--out", str(tmp_path)),
    ]
    text = quality.main(argv)
    metrics = json.loads((tmp_path / "vae2" / "metrics.json").read_text())
    gap = metrics["gap"]
    row = next(line for line in text.splitlines() if line.startswith("| `vae2`"))
    assert f"| {gap['approximation_gap']:.2f} | {gap['amortization_gap']:.2f} |" in row
    assert "| 2 | N(0, I) | Gaussian | ELBO |" in row and "first 50 test images" in row
    assert "85.33 (Burda et al. 2016, Table 1)" in row
    quality.main(argv)  # finished with the same settings: skipped
    assert json.loads((tmp_path / "vae2" / "metrics.json").read_text()) == metrics

    # The convergence check of the gap columns reloads that run's two-layer model.
    gaps = importlib.import_module("benchmarks.gap_convergence")
    flags = ["--epochs", "1", "3", "--points", "10", "--num-particles", "4"]
    rows = gaps.main([str(tmp_path / "vae2"), *flags, "--data-dir", str(mnist_dir)])
    assert [r["epochs"] for r in rows] == [1, 3]
    for r in rows:  # (the split's values are tested against closed forms elsewhere)
        assert all(math.isfinite(v) for v in r.values()), r


@pytest.mark.mnist
def test_precision_trains_both_ways_and_tabulates(mnist_dir, tmp_path):
    """benchmarks/precision.py on a few images: both precisions train and score, the float32
    model is scored in bf16-mixed too, and the table has a row each and the difference."""
    precision = importlib.import_module("benchmarks.precision")
    readme = tmp_path / "README.md"
    readme.write_text("<!-- results:precision:start -->\n<!-- results:precision:end -->\n")
    args = ["--epochs", "1", "--limit", "512", "--hidden", "32", "--num-particles", "4",
            "--data-dir", str(mnist_dir), "--no-progress", "--device", str(here()),
            "--readme", str(readme)]  # fmt: skip
    result = precision.main(precision.parse_args(args))
    for key in ("32", "bf16-mixed", "float32_model_scored_in_bf16"):
        assert all(math.isfinite(v) for v in result[key].values()), key
    text = readme.read_text()
    assert "| 32 |" in text and "| bf16-mixed |" in text and "| bf16-mixed − 32 |" in text


def test_epochs_times_every_way_and_tabulates(tmp_path):
    """benchmarks/epochs.py with 2 epochs: five timings, a row each in the table."""
    epochs = importlib.import_module("benchmarks.epochs")
    readme = tmp_path / "README.md"
    readme.write_text("<!-- results:short-epochs:start -->\n<!-- results:short-epochs:end -->\n")
    result = epochs.main(epochs.parse_args(["--epochs", "2", "--repeats", "1",
                                            "--readme", str(readme)]))  # fmt: skip
    assert len(result["seconds"]) == 5 and all(s > 0 for s in result["seconds"].values())
    assert readme.read_text().count("\n| ") == 6  # the header and five rows


def test_settings_table_makes_one_table_of_runs_of_one_budget(tmp_path):
    """Settings run side by side (one folder each) make one table, rows in the order given;
    runs of different budgets are refused."""
    table = importlib.import_module("benchmarks.settings_table")
    budget = {"epochs": 50, "batch_size": 200, "lr": 0.001, "latent_dim": 50, "hidden": 500,
              "device": "cpu"}  # fmt: skip
    for labels, error in ((100, 12.5), (600, 5.25)):
        row = {"labels": labels, "test_error": error, "kingma_m2_error": 1.0, "alpha": 46.0,
               "train_loss": 99.0, "seconds": 60.0, "test_points": 10000}  # fmt: skip
        (tmp_path / str(labels)).mkdir()
        metrics = {**budget, "settings": [row]}
        (tmp_path / str(labels) / "metrics.json").write_text(json.dumps(metrics))
    readme = tmp_path / "README.md"
    readme.write_text("<!-- results:m2:start -->\n<!-- results:m2:end -->\n")
    table.main([str(tmp_path / "100"), str(tmp_path / "600"), "--readme", str(readme),
                "--block", "m2"])  # fmt: skip
    text = readme.read_text()
    assert text.index("| 100 | 12.50 % |") < text.index("| 600 | 5.25 % |")
    assert "50 epochs per setting" in text
    with pytest.raises(ValueError, match="differ in epochs"):
        table.merged([{**budget, "settings": []}, {**budget, "epochs": 5, "settings": []}])
