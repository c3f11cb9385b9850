"""Every example runs end to end with tiny arguments and writes what its metrics.json lists;
the architectures they share come from ``pyro_vae.models.zoo``."""

from __future__ import annotations

import importlib
import json
import math
import os
from pathlib import Path

import pyro
import pytest
import torch
from helpers import load_example

from pyro_vae.devices import stand_in
from pyro_vae.models import zoo

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


def check_outputs(out, metrics: dict, epochs: int, *, bernoulli: bool = False) -> None:
    """The files an example writes, and figures that can be wrong.

    ``fit``'s training loss (each minibatch's loss scaled to the data set by the subsampled
    plate, then divided by N) and ``evaluate``'s test ELBO (log weights averaged per point) are
    computed by separate code. After a few steps from the initialization they estimate the same
    per-datapoint quantity on two samples of one distribution, so they agree within a factor 2; a
    normalization error (a missing 1/N, a minibatch scale N/B) puts them orders of magnitude
    apart. With a Bernoulli likelihood every pixel's term x log p + (1 - x) log(1 - p) is at most
    0, hence so is log p(x): an estimate above 0 is a bug (a wrong log-determinant or sign).
    """
    assert metrics.keys() >= KEYS
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert metrics["epochs"] == epochs
    for key in ("train_loss", "test_elbo", "test_log_likelihood", "seconds"):
        assert math.isfinite(metrics[key]), key
    history = json.loads((out / "history.json").read_text())
    assert history["epoch"] == list(range(1, epochs + 1))
    assert history["loss"][-1] == metrics["train_loss"]
    assert 0.5 < metrics["train_loss"] / -metrics["test_elbo"] < 2.0, metrics
    if bernoulli:
        assert metrics["test_log_likelihood"] <= 0.0
    assert metrics["images"]
    for image in metrics["images"]:
        assert image.endswith(".png") and (out / image).stat().st_size > 0


def run(name: str, flags: str, out, data_dir=None):
    """Runs an example with ``flags`` plus the shared ones (the CPU, or $PYRO_VAE_TEST_DEVICE
    as set by ``bash .ci/gpu``; ``out``; no progress bar)."""
    example = load_example(name)
    device = os.environ.get("PYRO_VAE_TEST_DEVICE", "cpu")
    device = stand_in.NAME if device == "fake-cuda" else device
    argv = [*flags.split(), "--device", device, "--out", str(out), "--no-progress"]
    if data_dir is not None:
        argv += ["--data-dir", str(data_dir)]
    args = example.parse_args(argv)
    return example, args, example.main(args)


@pytest.mark.mnist
def test_mnist_flow_prior(mnist_dir, tmp_path):
    flags = "--epochs 1 --batch-size 64 --hidden 32 --limit 256 --num-particles 8 --seed 1"
    example, args, metrics = run("mnist_flow_prior", flags, tmp_path, mnist_dir)
    check_outputs(tmp_path, metrics, epochs=1, bernoulli=True)
    assert (tmp_path / "checkpoint.pt").exists() and (tmp_path / "history.json").exists()
    # Resuming a finished run trains nothing more and reports the same training loss.
    args.resume, args.epochs = True, 1
    again = example.main(args)
    assert again["train_loss"] == metrics["train_loss"]


@pytest.mark.long
def test_speed_benchmark_runs(tmp_path):
    speed = importlib.import_module("benchmarks.speed")
    flags = "--device cpu --hidden 16 --steps 2 --warmup 1 --repeats 1 --limit 600"
    args = speed.parse_args(
        [
            *flags.split(),
            "--per-datapoint-sizes",
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
    assert len(result["per_datapoint_sparse"]["step_ms"]) == 2
    assert json.loads((tmp_path / "speed.json").read_text()) == result
    table = speed.markdown(result)
    assert "| MAF prior, MLP 1024, batch 256 |" in table and "sparse rows + LazyAdam" in table


@pytest.mark.long
def test_overhead_benchmark_runs(tmp_path):
    overhead = importlib.import_module("benchmarks.overhead")
    args = overhead.parse_args(
        ["--models", "tiny", "--steps", "2", "--repeats", "1", "--json", str(tmp_path / "o.json")]
    )
    threads = torch.get_num_threads()
    try:
        result = overhead.main(args)
    finally:  # the benchmark turns validation off and sets the threads
        pyro.enable_validation(True)
        torch.set_num_threads(threads)
    rows = result["models"]["tiny"]
    assert set(rows) == {"fit", "fit with Pyro's loss", "SVI.step", "plain", "compiled"}
    assert rows["fit"]["reads"] == 0 and rows["plain"]["reads"] == 0  # no sync in the step
    assert rows["fit with Pyro's loss"]["reads"] == 0
    assert rows["SVI.step"]["reads"] > 0  # SVI.step reads its loss (a float)
    eager = [r for loop, r in rows.items() if loop != "compiled"]
    assert all(0 < r["kernels"] < r["ops"] and r["host_ms"] > 0 for r in eager)
    # the compiled step launches fewer kernels than the plain loop (profiled alike)
    assert 0 < rows["compiled"]["profiled"] < rows["plain"]["profiled"] < rows["fit"]["profiled"]
    # the derived step launches fewer than Pyro's loss (no per-site sums and scalings)
    assert rows["fit"]["profiled"] < rows["fit with Pyro's loss"]["profiled"]
    assert json.loads((tmp_path / "o.json").read_text()) == result
    assert "| tiny (hidden 8, z = 2, batch 16) | fit |" in overhead.markdown(result)


@pytest.mark.mnist
def test_mnist_8bit(mnist_dir, tmp_path):
    flags = "--epochs 1 --limit 256 --hidden 32 --latent-dim 4 --components 2 --num-particles 8"
    _, _, metrics = run("mnist_8bit", flags, tmp_path, mnist_dir)
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    history = json.loads((tmp_path / "8bit" / "history.json").read_text())
    assert history["loss"][-1] == metrics["train_loss"] and metrics["epochs"] == 1
    assert 0.5 < metrics["train_loss"] / -metrics["test_elbo"] < 2.0, metrics
    for image in metrics["images"]:
        assert (tmp_path / image).stat().st_size > 0
    # a proper distribution over 256 values: at most 8 bits per pixel beyond its best guess
    assert 0.0 < metrics["bits_per_dim"] < 8.0 and 0.0 < metrics["binary_bits_per_dim"] < 1.0


@pytest.mark.parametrize("covariate", ["", " --batch-covariate"], ids=["plain", "batch-covariate"])
def test_counts(tmp_path, covariate):
    flags = "--epochs 2 --cells 400 --genes 30 --num-particles 8" + covariate
    _, _, metrics = run("counts", flags, tmp_path)
    check_outputs(tmp_path, metrics, epochs=2)
    assert metrics["test_log_likelihood"] <= 0.0  # counts: a probability mass, at most 1
    assert 0.0 <= metrics["type_neighbour_accuracy"] <= 1.0
    assert metrics["batch_covariate"] is bool(covariate)


@pytest.mark.parametrize("inference", ["amortized", "per-datapoint", "semi-amortized"])
def test_circle(inference, tmp_path):
    flags = (
        f"--inference {inference} --epochs 2 --eval-every 1 --num-data 400 --batch-size 100 "
        "--test-epochs 2 --refine-steps 2 --num-particles 8 --seed 0"
    )
    _, _, metrics = run("circle", flags, tmp_path)
    check_outputs(tmp_path, metrics, epochs=2)
    assert metrics["inference"] == inference and math.isfinite(metrics["train_elbo"])
    assert metrics["test_curve"]["epoch"] == [1, 2]
    if inference != "per-datapoint":  # the curve's last point: the final model's test ELBO
        last = metrics["test_curve"]["elbo"][-1]
        assert last == pytest.approx(metrics["test_elbo"], rel=0.02)


@pytest.mark.mnist
@pytest.mark.parametrize(
    ("flow", "prior"), [("none", "maf"), ("planar", "normal"), ("iaf", "maf"), ("nsf", "normal")]
)
def test_mnist_flow_posterior(flow, prior, mnist_dir, tmp_path):
    flags = (
        f"--posterior {flow} --flows 2 --prior {prior} --latent-dim 4 --hidden 16 --epochs 1 "
        "--batch-size 64 --limit 256 --num-particles 8 --seed 0"
    )
    _, _, metrics = run("mnist_flow_posterior", flags, tmp_path, mnist_dir)
    check_outputs(tmp_path, metrics, epochs=1, bernoulli=True)
    assert metrics["test_nll"] == -metrics["test_log_likelihood"]
    assert (metrics["posterior"], metrics["prior"]) == (flow, prior)


@pytest.mark.mnist
@pytest.mark.parametrize(
    ("layers", "iw", "prior", "activation"), [(1, 3, "vamp", "relu"), (2, 1, "normal", "tanh")]
)
def test_mnist_iwae(layers, iw, prior, activation, mnist_dir, tmp_path):
    flags = (
        f"--layers {layers} --iw {iw} --prior {prior} --activation {activation} --num-pseudo 10 "
        "--epochs 1 --warmup 2 "
        "--batch-size 64 --limit 256 --test-points 100 --num-particles 8 --gap-points 20 "
        "--gap-epochs 2 --seed 0"
    )
    _, _, metrics = run("mnist_iwae", flags, tmp_path, mnist_dir)
    check_outputs(tmp_path, metrics, epochs=1, bernoulli=True)
    assert (metrics["layers"], metrics["iw"], metrics["prior"]) == (layers, iw, prior)
    assert (metrics["activation"], metrics["warmup"]) == (activation, 2)
    assert metrics["test_points"] == 100
    gap = metrics["gap"]  # (the split's values are tested against closed forms elsewhere)
    assert all(math.isfinite(v) for v in gap.values()), gap


@pytest.mark.mnist
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_mnist_latent2d(likelihood, mnist_dir, tmp_path):
    flags = (
        f"--epochs 2 --batch-size 64 --hidden 32 --limit 256 --likelihood {likelihood} "
        "--warmup 2 --num-particles 8 --seed 0"
    )
    _, _, metrics = run("mnist_latent2d", flags, tmp_path, mnist_dir)
    check_outputs(tmp_path, metrics, epochs=2, bernoulli=likelihood == "bernoulli")
    assert len(metrics["images"]) == 6
    history = json.loads((tmp_path / "history.json").read_text())
    assert history["val_epoch"] == [1, 2] and metrics["val_loss"] == -history["val_elbo"][-1]
    # Two estimates (one sample and K samples a point) of the final model's test ELBO.
    assert metrics["val_loss"] == pytest.approx(-metrics["test_elbo"], rel=0.01)


@pytest.mark.mnist
def test_mnist_conv(mnist_dir, tmp_path):
    flags = "--epochs 1 --batch-size 64 --limit 128 --num-particles 4 --seed 0"
    _, _, metrics = run("mnist_conv", flags, tmp_path, mnist_dir)
    check_outputs(tmp_path, metrics, epochs=1, bernoulli=True)


# Parameter counts of the zoo's published configurations: a changed layer or default shows here.
# (Checked by hand for the MLPs, e.g. the IWAE paper's VAE: encoder 784-200-200-100 and decoder
# 50-200-200-784 hold 217,300 + 207,984 parameters.)
ZOO_PARAMETERS = [
    (lambda: zoo.flow_prior_vae(), 3_991_952),
    (lambda: zoo.flow_posterior_vae("none"), 425_284),
    (lambda: zoo.flow_posterior_vae("none", prior="maf"), 738_928),
    (lambda: zoo.flow_posterior_vae("planar"), 506_488),
    (lambda: zoo.flow_posterior_vae("planar", flows=16, prior="maf"), 1_063_744),
    (lambda: zoo.flow_posterior_vae("iaf", flows=2), 1_027_084),
    (lambda: zoo.flow_posterior_vae("nsf"), 3_292_984),
    (lambda: zoo.conv_vae(), 637_777),
    (lambda: zoo.conv_vae(likelihood="gaussian"), 638_561),  # + the learned log-scales
    (lambda: zoo.latent2d_vae(), 951_988),
    (lambda: zoo.circle_vae("amortized"), 1_024),
    (lambda: zoo.circle_vae("semi-amortized"), 1_024),
    (lambda: zoo.circle_vae("per-datapoint", num_data=15_000), 502 + 2 * 15_000),
]


@pytest.mark.parametrize(("build", "count"), ZOO_PARAMETERS)
def test_zoo_parameter_counts(build, count):
    assert sum(p.numel() for p in build().parameters()) == count


def test_zoo_rejects_unknown_choices():
    with pytest.raises(ValueError, match="posterior must be one of"):
        zoo.flow_posterior_vae("maf")
    with pytest.raises(ValueError, match="prior must be one of"):
        zoo.flow_posterior_vae("iaf", prior="nsf")
    with pytest.raises(ValueError, match="likelihood must be one of"):
        zoo.latent2d_vae(likelihood="poisson")
    with pytest.raises(ValueError, match="needs num_data"):
        zoo.circle_vae("per-datapoint")


def test_examples_never_overwrite_a_run_silently(tmp_path):
    flags = "--epochs 1 --num-data 200 --batch-size 100 --test-epochs 1 --num-particles 4"
    _, _, first = run("circle", flags, tmp_path)
    with pytest.raises(FileExistsError, match="resume=True to continue it, overwrite=True"):
        run("circle", flags, tmp_path)
    _, _, resumed = run("circle", flags.replace("--epochs 1", "--epochs 2") + " --resume", tmp_path)
    assert resumed["epochs"] == 2
    _, _, again = run("circle", flags + " --overwrite", tmp_path)
    assert again["epochs"] == 1 and again["train_loss"] == first["train_loss"]


@pytest.mark.long
def test_an_example_rerun_answers_in_its_own_flags(tmp_path):
    """As a command, a second run into the same --out ends with exit status 2 and a message in
    the script's flags (not a traceback naming Python arguments); a run ends by printing where
    its outputs are."""
    import subprocess
    import sys

    flags = ["--epochs", "1", "--num-data", "200", "--batch-size", "100", "--test-epochs", "1",
             "--num-particles", "4", "--device", "cpu", "--no-progress", "--out",
             str(tmp_path)]  # fmt: skip
    command = [sys.executable, "examples/circle.py", *flags]
    root = Path(__file__).resolve().parents[1]
    first = subprocess.run(command, capture_output=True, text=True, cwd=root, timeout=300)
    assert first.returncode == 0, first.stderr
    assert f"outputs in {tmp_path.resolve()}: " in first.stdout and "metrics.json" in first.stdout
    again = subprocess.run(command, capture_output=True, text=True, cwd=root, timeout=300)
    assert again.returncode == 2 and "Traceback" not in again.stderr
    assert f"circle.py: --out {tmp_path} holds a run" in again.stderr
    assert "--resume" in again.stderr and "--overwrite" in again.stderr


@pytest.mark.long
def test_distributed_benchmark_runs(tmp_path):
    bench = importlib.import_module("benchmarks.distributed")
    readme = tmp_path / "README.md"
    readme.write_text("<!-- results:distributed:start -->\n<!-- results:distributed:end -->\n")
    args = bench.parse_args(
        [
            *("--limit", "512", "--hidden", "16", "--epochs", "1", "--threads", "2"),
            *("--data-dir", str(tmp_path / "none"), "--json", str(tmp_path / "d.json")),
            *("--readme", str(readme)),
        ]
    )
    result = bench.main(args)
    assert result["epoch_s_1"] > 0 and result["epoch_s_2"] > 0
    assert json.loads((tmp_path / "d.json").read_text()) == result
    assert "| 2 |" in readme.read_text()


@pytest.mark.long
def test_compiled_zoo_benchmark_runs(tmp_path):
    """The survey's smoke run on a model that stays eager (no inductor compile here)."""
    survey = importlib.import_module("benchmarks.compiled_zoo")
    models = ["circle-semi-amortized"]
    args = survey.parse_args(["--models", *models, "--json", str(tmp_path / "z.json")])
    try:
        result = survey.main(args)
    finally:  # the benchmark turns validation off
        pyro.enable_validation(True)
    rows = result["models"]
    assert all(not r["compiled"] and "torch.compile failed" in r["reason"] for r in rows.values())
    assert all(r["rel_diff"] == 0.0 for r in rows.values())  # the eager step, the same run
    assert "| circle-semi-amortized | eager: " in survey.markdown(result)


@pytest.mark.mnist
@pytest.mark.parametrize("model", ["pyro", "ours", "pyro --lr-decay 0.5"])
def test_mnist_cvae(mnist_dir, tmp_path, model):
    """The image-completion example: one run per number of known quadrants, each scoring only
    the unknown pixels (fewer of them, a smaller NLL), pictures of completions. Pyro's model
    trains its baseline first and both stages stop early on the test set (``--lr-decay``: the
    CVAE stage with a rate lowered on plateaus)."""
    flags = f"--epochs 2 --limit 256 --hidden 32 --latent-dim 4 --num-particles 8 --model {model}"
    _, _, metrics = run("mnist_cvae", flags, tmp_path, mnist_dir)
    label = "pyro, rate x0.5 on a plateau" if "decay" in model else model
    model = model.split()[0]
    for r in metrics["settings"]:
        assert r["model"] == label and 1 <= r["epochs"] <= 2
        assert r["best_epoch"] in (1, 2)  # (early stopping's record: the weights kept)
        if model == "pyro":
            assert 1 <= r["baseline_epochs"] <= 2 and 0 < r["baseline_test_loss"] < math.inf
        else:
            assert r["baseline_epochs"] is None and r["baseline_test_loss"] is None
    assert [r["quadrants"] for r in metrics["settings"]] == [1, 2, 3]
    nll = [r["test_cll"] for r in metrics["settings"]]
    assert all(math.isfinite(v) and v > 0 for v in nll)
    assert nll[0] > nll[1] > nll[2]  # 588, 392 and 196 unknown pixels
    # the negative ELBO (Pyro's table's quantity) bounds the importance-sampled NLL above
    assert all(r["test_neg_elbo"] >= r["test_cll"] for r in metrics["settings"])
    for r in metrics["settings"]:
        assert (tmp_path / f"quadrants{r['quadrants']}" / "history.json").exists()
        assert (tmp_path / r["image"]).stat().st_size > 0


@pytest.mark.mnist
def test_mnist_ssvae(mnist_dir, tmp_path):
    """The semi-supervised example: one run per number of known labels (balanced over the
    classes), a test error in percent, samples of each class."""
    flags = "--epochs 1 --limit 500 --labels 20 100 --hidden 16 --latent-dim 4"
    example, _, metrics = run("mnist_ssvae", flags, tmp_path, mnist_dir)
    assert [r["labels"] for r in metrics["settings"]] == [20, 100]
    for r in metrics["settings"]:
        assert 0.0 <= r["test_error"] <= 100.0 and math.isfinite(r["train_loss"])
        assert r["alpha"] == pytest.approx(0.1 * 500 / r["labels"])
        assert (tmp_path / r["image"]).stat().st_size > 0
    y = torch.arange(500) % 10
    assert torch.bincount(y[example.known_labels(y, 100, seed=0)]).tolist() == [10] * 10
