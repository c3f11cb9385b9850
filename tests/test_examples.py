"""Every example runs end to end with tiny arguments and writes what its metrics.json lists."""

from __future__ import annotations

import importlib.util
import json
import math
import sys

import pyro
import pytest
from conftest import REPO

KEYS = {
    "epochs",
    "train_loss",
    "test_elbo",
    "test_log_likelihood",
    "num_particles",
    "device",
    "seconds",
    "images",
}


def load_example(name: str):
    path = REPO / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def check_outputs(out, metrics: dict, epochs: int) -> None:
    assert metrics.keys() >= KEYS
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert metrics["epochs"] == epochs
    for key in ("train_loss", "test_elbo", "test_log_likelihood", "seconds"):
        assert math.isfinite(metrics[key]), key
    assert metrics["test_log_likelihood"] >= metrics["test_elbo"]
    assert metrics["images"]
    for image in metrics["images"]:
        assert image.endswith(".png") and (out / image).stat().st_size > 0


def run(name: str, flags: str, out, data_dir=None):
    """Runs an example with ``flags`` plus the shared ones (CPU, ``out``, no progress bar)."""
    example = load_example(name)
    argv = [*flags.split(), "--device", "cpu", "--out", str(out), "--no-progress"]
    if data_dir is not None:
        argv += ["--data-dir", str(data_dir)]
    args = example.parse_args(argv)
    return example, args, example.main(args)


@pytest.mark.mnist
def test_mnist_flow_prior(mnist_dir, tmp_path):
    flags = "--epochs 1 --batch-size 64 --hidden 32 --limit 256 --num-particles 8 --seed 1"
    example, args, metrics = run("mnist_flow_prior", flags, tmp_path, mnist_dir)
    check_outputs(tmp_path, metrics, epochs=1)
    assert (tmp_path / "checkpoint.pt").exists() and (tmp_path / "history.json").exists()
    # Resuming a finished run trains nothing more and reports the same training loss.
    args.resume, args.epochs = True, 1
    again = example.main(args)
    assert again["train_loss"] == metrics["train_loss"]


def test_speed_benchmark_runs(tmp_path):
    spec = importlib.util.spec_from_file_location("speed", REPO / "benchmarks" / "speed.py")
    speed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(speed)
    flags = "--device cpu --hidden 16 --steps 2 --warmup 1 --repeats 1 --limit 600"
    args = speed.parse_args(
        [
            *flags.split(),
            "--per-point-sizes",
            "300",
            "1000",
            "--data-dir",
            str(tmp_path / "none"),
            "--json",
            str(tmp_path / "speed.json"),
        ]
    )
    try:
        result = speed.main(args)
    finally:
        pyro.enable_validation(True)  # the benchmark turns validation off
    for key in ("flow_prior", "flow_posterior"):
        assert result[key]["pyro_vae_step_ms"] > 0 and result[key]["plain_torch_step_ms"] > 0
        assert result[key]["pyro_vae_epoch_s"] > 0 and result[key]["plain_torch_epoch_s"] > 0
    assert len(result["per_point_sparse"]["step_ms"]) == 2
    assert json.loads((tmp_path / "speed.json").read_text()) == result
    table = speed.markdown(result)
    assert "| MAF prior, MLP 1024, batch 256 |" in table and "sparse rows + LazyAdam" in table


@pytest.mark.parametrize("inference", ["amortized", "per-point", "semi-amortized"])
def test_circle(inference, tmp_path):
    flags = (
        f"--inference {inference} --epochs 2 --eval-every 1 --num-data 400 --batch-size 100 "
        "--test-epochs 2 --refine-steps 2 --num-particles 8 --seed 0"
    )
    _, _, metrics = run("circle", flags, tmp_path)
    check_outputs(tmp_path, metrics, epochs=2)
    assert metrics["inference"] == inference and math.isfinite(metrics["train_elbo"])
    assert metrics["test_curve"]["epoch"] == [1, 2]


@pytest.mark.mnist
@pytest.mark.parametrize(
    ("flow", "prior"), [("none", "maf"), ("planar", "normal"), ("iaf", "maf"), ("nsf", "normal")]
)
def test_mnist_flow_posterior(flow, prior, mnist_dir, tmp_path):
    flags = (
        f"--flow {flow} --flows 2 --prior {prior} --latent-dim 4 --hidden 16 --epochs 1 "
        "--batch-size 64 --limit 256 --num-particles 8 --seed 0"
    )
    _, _, metrics = run("mnist_flow_posterior", flags, tmp_path, mnist_dir)
    check_outputs(tmp_path, metrics, epochs=1)
    assert (metrics["flow"], metrics["prior"]) == (flow, prior)


@pytest.mark.mnist
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_mnist_latent2d(likelihood, mnist_dir, tmp_path):
    flags = (
        f"--epochs 2 --batch-size 64 --hidden 32 --limit 256 --likelihood {likelihood} "
        "--warmup 2 --num-particles 8 --seed 0"
    )
    _, _, metrics = run("mnist_latent2d", flags, tmp_path, mnist_dir)
    check_outputs(tmp_path, metrics, epochs=2)
    assert len(metrics["images"]) == 6 and math.isfinite(metrics["val_loss"])


@pytest.mark.mnist
def test_mnist_conv(mnist_dir, tmp_path):
    flags = "--epochs 1 --batch-size 64 --limit 128 --num-particles 4 --seed 0"
    _, _, metrics = run("mnist_conv", flags, tmp_path, mnist_dir)
    check_outputs(tmp_path, metrics, epochs=1)
