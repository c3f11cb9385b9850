"""Reliability: nothing overwritten silently, checkpoints are data, resume restores exactly what
a checkpoint is (model, optimizer state and settings, schedule, RNG) and refuses what it is not."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import helpers
import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_vae as pv
from pyro_vae.train import checkpoint as checkpoint_module
from pyro_vae.train._folder import RunFolder
from pyro_vae.train.checkpoint import CheckpointError


def circle_vae(hidden: int = 8) -> pv.VAE:
    return helpers.circle_vae(hidden=(hidden,))


def data(n: int = 64) -> pv.Batches:
    return pv.Batches(pv.make_circle(n)[0], batch_size=16)


def run(save_dir, epochs, *, hidden=8, seed=0, optim=None, **options):
    pyro.clear_param_store()
    torch.manual_seed(seed)
    vae = circle_vae(hidden)
    pyro.set_rng_seed(0)
    history = pv.fit(
        vae.model,
        vae.guide,
        data(),
        epochs=epochs,
        device="cpu",
        save_dir=save_dir,
        progress=False,
        optim=optim if optim is not None else pv.LazyAdam({"lr": 1e-2}),
        **options,
    )
    return vae, history


# ---- lost runs -------------------------------------------------------------------------------


def test_an_existing_run_is_never_overwritten_silently(tmp_path):
    run(tmp_path, 3)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(FileExistsError, match="resume=True to continue it, overwrite=True"):
        run(tmp_path, 1)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    _, history = run(tmp_path, 1, overwrite=True)
    assert history.epoch == [1]
    assert pv.History.load(tmp_path / "history.json").epoch == [1]


def test_a_run_whose_latest_checkpoint_is_gone_is_resumed_from_the_previous_one(tmp_path):
    """#22.1: with checkpoint.pt deleted, fit used to start over and replace the survivor."""
    _, full = run(tmp_path / "full", 5)
    run(tmp_path / "cut", 5)
    (tmp_path / "cut" / "checkpoint.pt").unlink()  # checkpoint.prev.pt (4 epochs) survives
    survivor = (tmp_path / "cut" / "checkpoint.prev.pt").read_bytes()
    with pytest.raises(FileExistsError, match=r"checkpoint\.prev\.pt, history\.json"):
        run(tmp_path / "cut", 5)  # no flags: refused, nothing replaced
    assert (tmp_path / "cut" / "checkpoint.prev.pt").read_bytes() == survivor
    with pytest.warns(UserWarning, match=r"checkpoint\.pt is missing .*checkpoint\.prev\.pt"):
        _, resumed = run(tmp_path / "cut", 5, resume=True)
    assert resumed.epoch == [1, 2, 3, 4, 5]
    assert resumed.loss == full.loss  # epoch 5 trained again from epoch 4's state, exactly


def test_a_history_without_checkpoints_is_not_started_over(tmp_path):
    run(tmp_path, 2)
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        (tmp_path / name).unlink()
    with pytest.raises(FileExistsError, match=r"holds a run \(history\.json\)"):
        run(tmp_path, 2)
    with pytest.raises(CheckpointError, match=r"holds history\.json but no checkpoint"):
        run(tmp_path, 2, resume=True)
    assert pv.History.load(tmp_path / "history.json").epoch == [1, 2]


def test_a_run_folder_is_held_by_one_run_at_a_time(tmp_path):
    """#22.2: two runs in one folder used to replace each other's checkpoints. The lock is
    the operating system's: it goes with the process that held it."""
    folder = RunFolder(tmp_path)
    folder.hold()
    try:
        for options in ({}, {"overwrite": True}, {"resume": True}):
            with pytest.raises(
                RuntimeError, match=rf"in use by another run \(process {os.getpid()}"
            ):
                run(tmp_path, 1, **options)
        assert not (tmp_path / "checkpoint.pt").exists()
    finally:
        folder.release()
    run(tmp_path, 1)  # free again
    script = f"""
import os
from pyro_vae.train._folder import RunFolder
RunFolder({str(tmp_path)!r}).hold()
os.kill(os.getpid(), 9)
"""
    subprocess.run([sys.executable, "-c", script], check=False)  # killed while holding it
    run(tmp_path, 2, resume=True)  # not stuck


def test_history_is_written_atomically(tmp_path, monkeypatch):
    """#22.3: a process killed while history.json was rewritten left it empty."""
    run(tmp_path, 1)
    before = (tmp_path / "history.json").read_text()

    def killed(self, text, *args, **kwargs):
        open(self, "w").close()  # the file was opened (truncated) ...
        raise KeyboardInterrupt  # ... and the process killed before the text was in it

    monkeypatch.setattr(Path, "write_text", killed)
    with pytest.raises(KeyboardInterrupt):
        pv.History(epoch=[1, 2], loss=[1.0, 0.5], seconds=[1.0, 2.0]).save(
            tmp_path / "history.json"
        )
    monkeypatch.undo()
    assert (tmp_path / "history.json").read_text() == before


def test_a_bad_log_dir_is_found_before_a_run_is_deleted(tmp_path):
    """#22.4: overwrite=True with a bad log_dir deleted the old run, then failed."""
    run(tmp_path / "run", 2)
    before = (tmp_path / "run" / "checkpoint.pt").read_bytes()
    (tmp_path / "not_a_folder").write_text("a file")
    with pytest.raises(Exception, match="not_a_folder"):
        run(tmp_path / "run", 1, overwrite=True, log_dir=tmp_path / "not_a_folder" / "board")
    assert (tmp_path / "run" / "checkpoint.pt").read_bytes() == before


def test_a_save_dir_that_cannot_be_written_is_refused_before_training(tmp_path, monkeypatch):
    """#22.5: a read-only save_dir trained a whole epoch, then failed with no path. (A file in
    the way stands in for a read-only folder, which root, as in CI, could write anyway.)"""
    (tmp_path / "file").write_text("in the way")
    steps = []
    monkeypatch.setattr(pv.train._step.Step, "__call__", lambda *a: steps.append(1))
    with pytest.raises(PermissionError, match=r"cannot write to the run folder .*file/run"):
        run(tmp_path / "file" / "run", 1)
    assert not steps  # refused before the first step


def test_the_previous_checkpoint_is_kept(tmp_path):
    run(tmp_path, 1)
    first = (tmp_path / "checkpoint.pt").read_bytes()
    run(tmp_path, 2, resume=True)
    assert (tmp_path / "checkpoint.prev.pt").read_bytes() == first
    assert (tmp_path / "checkpoint.pt").read_bytes() != first
    # A diverged epoch 3 leaves epoch 2 as the previous checkpoint, from which a run resumes.
    second = (tmp_path / "checkpoint.pt").read_bytes()
    run(tmp_path, 3, resume=True)
    assert (tmp_path / "checkpoint.prev.pt").read_bytes() == second


class NaNAfter:
    """A pair whose loss turns NaN at a given step (counted across calls of the guide)."""

    def __init__(self, bad_step: int) -> None:
        self.bad_step, self.steps = bad_step, 0
        self.net = torch.nn.Linear(2, 2)

    def model(self, x, idx=None, num_data=None):
        pyro.module("net", self.net)
        with pyro.plate("data", num_data, subsample=idx):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.net(z), 0.1).to_event(1), obs=x)
        if self.steps >= self.bad_step:
            pyro.factor("nan", torch.tensor(float("nan")))

    def guide(self, x, idx=None, num_data=None):
        self.steps += 1
        loc = pyro.param("loc", torch.zeros(2))
        with pyro.plate("data", num_data, subsample=idx):
            pyro.sample("z", dist.Normal(loc, 1.0).to_event(1))


def test_a_non_finite_loss_stops_at_the_next_read_and_keeps_the_checkpoint(tmp_path):
    pyro.enable_validation(False)  # a NaN from the parameters, not from validated inputs
    pair = NaNAfter(bad_step=100 + 3)  # 100 steps an epoch: the third step of epoch 2
    batches = pv.Batches(pv.make_circle(1000)[0], batch_size=10)
    kwargs = {"device": "cpu", "progress": False, "save_dir": tmp_path}
    with pytest.raises(FloatingPointError) as info:
        pv.fit(pair.model, pair.guide, batches, epochs=3, log_every=5, **kwargs)
    message = str(info.value)
    assert "in epoch 2 by step 6" in message  # the first read after the NaN (steps 1, 6, ...)
    assert "resume=True" in message and "smaller step size" in message
    assert pair.steps == 1 + 100 + 6  # stopped there, not at the end of the epoch (1: the check)
    assert pv.History.load(tmp_path / "history.json").epoch == [1]
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["history"]["epoch"] == [1]


def test_history_is_never_ahead_of_the_checkpoint_and_stale_tmp_is_removed(tmp_path, monkeypatch):
    run(tmp_path, 1)
    (tmp_path / "checkpoint.tmp").write_bytes(b"left by a killed process")
    calls = []

    def failing_save(*args, **kwargs):
        calls.append(1)
        raise KeyboardInterrupt  # killed while writing epoch 2's checkpoint

    monkeypatch.setattr(checkpoint_module, "save_checkpoint", failing_save)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, 2, resume=True)
    assert calls and not (tmp_path / "checkpoint.tmp").exists()
    assert pv.History.load(tmp_path / "history.json").epoch == [1]


# ---- checkpoints are data ------------------------------------------------------------------


class Payload:
    def __reduce__(self):
        return (os.system, ("touch MARKER_FILE",))


def test_a_checkpoint_with_code_is_refused_without_running_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run(tmp_path, 1)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    state["history"] = Payload()
    torch.save(state, tmp_path / "checkpoint.pt")  # pickles os.system("touch MARKER_FILE")
    with pytest.raises(CheckpointError, match="cannot be read as data"):
        run(tmp_path, 2, resume=True)
    assert not (tmp_path / "MARKER_FILE").exists()


@pytest.mark.parametrize("damage", ["truncated", "random", "empty", "missing-keys"])
def test_a_corrupt_checkpoint_gets_one_clear_error(tmp_path, damage):
    run(tmp_path, 1)
    path = tmp_path / "checkpoint.pt"
    good = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif damage == "random":
        path.write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes())
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        state = torch.load(path, weights_only=True)
        del state["optim"]
        torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        run(tmp_path, 2, resume=True)
    message = str(info.value)
    assert str(path) in message
    assert "overwrite=True" in message and "checkpoint.prev.pt" in message


# ---- resume restores what it should, and only that --------------------------------------------


def test_resume_refuses_another_architecture_naming_the_parameter(tmp_path):
    run(tmp_path, 1, hidden=8)
    with pytest.raises(CheckpointError) as info:
        run(tmp_path, 2, hidden=16, resume=True)
    assert "encoder.0.weight' has shape (8, 2) in the checkpoint" in str(info.value)
    assert "but (16, 2) in this run" in str(info.value)


def test_resume_refuses_another_guide(tmp_path):
    run(tmp_path, 1)
    pyro.clear_param_store()
    vae = circle_vae()
    vae = vae.with_guide(pv.PerDatapointGaussian(64, 1), name="vae")
    with pytest.raises(CheckpointError, match=r"has no parameter 'vae\.guide\$\$\$loc'"):
        pv.fit(vae.model, vae.guide, data(), epochs=2, save_dir=tmp_path, resume=True)


def test_resume_refuses_another_optimizer_type(tmp_path):
    run(tmp_path, 1)
    optimizer = r"trained with the optimizer pyro_vae\.LazyAdam"
    with pytest.raises(CheckpointError, match=optimizer):
        run(tmp_path, 2, resume=True, optim=pyro.optim.ClippedAdam({"lr": 1e-2}))


def test_a_checkpoint_names_the_package_optimizer_by_its_public_name(tmp_path):
    """A checkpoint written when LazyAdam lived in another module (``pyro_vae.optim``) resumes:
    the package's classes are compared by their public name; and it gives the same run."""
    _, straight = run(tmp_path / "straight", 2)
    run(tmp_path / "moved", 1)
    path = tmp_path / "moved" / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    assert state["optim_settings"]["type"] == "pyro_vae.LazyAdam"
    state["optim_settings"]["type"] = "pyro_vae.optim.LazyAdam"
    torch.save(state, path)
    _, resumed = run(tmp_path / "moved", 2, resume=True)
    assert resumed.loss == straight.loss


@pytest.mark.parametrize("as_callable", [False, True], ids=["dict", "callable"])
@pytest.mark.parametrize("make", [pv.LazyAdam, pyro.optim.Adam])
def test_a_new_learning_rate_on_resume_is_used_and_announced(tmp_path, make, as_callable):
    """#22.8: arguments given as a callable used to keep the saved lr, silently."""

    def args(lr):
        return (lambda name: {"lr": lr}) if as_callable else {"lr": lr}

    run(tmp_path, 1, optim=make(args(1e-2)))
    optim = make(args(0.5))
    with pytest.warns(UserWarning, match=r"new optimizer settings \(lr=0\.5\)"):
        run(tmp_path, 2, resume=True, optim=optim)
    lrs = {g["lr"] for o in optim.optim_objs.values() for g in o.param_groups}
    assert lrs == {0.5}


def test_lazy_adam_new_local_lr_on_resume(tmp_path):
    def per_datapoint(save_dir, epochs, optim, **options):
        pyro.clear_param_store()
        vae = circle_vae().with_guide(pv.PerDatapointGaussian(64, 1), name="vae")
        pv.fit(
            vae.model,
            vae.guide,
            data(),
            epochs=epochs,
            optim=optim,
            save_dir=save_dir,
            device="cpu",
            progress=False,
            **options,
        )

    per_datapoint(tmp_path, 1, pv.LazyAdam({"lr": 1e-2}, local_lr=0.1))
    optim = pv.LazyAdam({"lr": 1e-2}, local_lr=0.3)
    with pytest.warns(UserWarning, match=r"local_lr=0\.3"):
        per_datapoint(tmp_path, 2, optim, resume=True)
    lrs = {type(o).__name__: o.param_groups[0]["lr"] for o in optim.optim_objs.values()}
    assert lrs == {"RowSparseAdam": 0.3, "Adam": 1e-2}


@pytest.mark.parametrize("as_callable", [False, True], ids=["dict", "callable"])
@pytest.mark.parametrize("make", [pv.LazyAdam, pyro.optim.Adam])
def test_resume_with_a_learning_rate_schedule_is_exact(tmp_path, make, as_callable):
    """A schedule applied by a callback is part of the optimizer's state: resume continues it
    (unchanged arguments, a dict or a callable, do not replace the scheduled values)."""

    def schedule_run(save_dir, epochs, resume):
        optim = make((lambda name: {"lr": 1e-2}) if as_callable else {"lr": 1e-2})

        def decay(epoch, history):
            for o in optim.optim_objs.values():
                for group in o.param_groups:
                    group["lr"] = 1e-2 * 0.5**epoch

        return run(save_dir, epochs, optim=optim, callback=decay, resume=resume)

    full_vae, full = schedule_run(tmp_path / "a", 4, False)
    schedule_run(tmp_path / "b", 2, False)
    resumed_vae, resumed = schedule_run(tmp_path / "b", 4, True)
    assert resumed.loss == full.loss
    for (name, a), b in zip(
        full_vae.state_dict().items(), resumed_vae.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


# ---- silent wrong answers --------------------------------------------------------------------


def test_import_leaves_torch_validation_as_found_and_fit_checks_the_data_itself():
    """Run in a fresh interpreter: no conftest turns validation on first."""
    code = """
import torch
before = torch.distributions.Distribution._validate_args
import pyro_vae as pv
assert torch.distributions.Distribution._validate_args is before is True, "flag changed"
torch.distributions.Distribution.set_default_validate_args(False)  # even with checks off
vae = pv.VAE(pv.StandardNormalPrior(2), pv.BernoulliLikelihood(pv.MLP(2, 6), 6),
             pv.GaussianEncoder(pv.MLP(6, 4), 2))
for bad in (torch.rand(32, 6) * 2 - 1, torch.rand(32, 6) * 255):
    try:
        pv.fit(vae.model, vae.guide, pv.Batches(bad, batch_size=8), epochs=1, progress=False)
    except ValueError as e:
        assert "expects data in [0, 1]" in str(e), e
    else:
        raise AssertionError("fit trained on data outside [0, 1]")
    try:
        pv.evaluate(vae.model, vae.guide, bad, num_particles=2)
    except ValueError as e:
        assert "expects data in [0, 1]" in str(e), e
    else:
        raise AssertionError("evaluate scored data outside [0, 1]")
print("ok")
"""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_non_finite_data_are_refused_once():
    vae = circle_vae()
    x = pv.make_circle(32)[0]
    x[5, 1] = float("nan")
    with pytest.raises(ValueError, match=r"non-finite values \(e\.g\. nan at index \[5, 1\]\)"):
        pv.fit(vae.model, vae.guide, pv.Batches(x, batch_size=8), epochs=1, progress=False)


def test_a_fresh_vae_trains_from_its_own_weights_whatever_ran_before():
    first = circle_vae(hidden=16)
    pv.fit(first.model, first.guide, data(), epochs=2, device="cpu", progress=False)
    torch.manual_seed(1)
    second = circle_vae(hidden=32)  # the same names in the param store, other shapes
    initial = {k: v.clone() for k, v in second.state_dict().items()}
    own = {k: v for k, v in second.named_parameters()}
    pyro.infer.Trace_ELBO().differentiable_loss(second.model, second.guide, pv.make_circle(4)[0])
    for name, p in second.named_parameters():
        assert p is own[name] and torch.equal(p, initial[name]), name  # not taken over
    pv.fit(second.model, second.guide, data(), epochs=1, device="cpu", progress=False)
    assert second.likelihood.decoder[0].weight.shape == (32, 1)
    # And back: the first VAE again uses its own tensors, not the second's.
    trained = {k: v.clone() for k, v in first.state_dict().items()}
    pyro.infer.Trace_ELBO().differentiable_loss(first.model, first.guide, pv.make_circle(4)[0])
    for name, value in first.state_dict().items():
        assert torch.equal(value, trained[name]), name


def test_a_per_datapoint_vae_refuses_new_data():
    vae = circle_vae().with_guide(pv.PerDatapointGaussian(64, 1), name="vae")
    pv.fit(vae.model, vae.guide, data(64), epochs=1, device="cpu", progress=False)
    new = pv.make_circle(20, seed=1)[0]
    with pytest.raises(ValueError, match=r"N = 64 points but the data set has 20.*infer_local"):
        pv.evaluate(vae.model, vae.guide, new, num_particles=2)
    with pytest.raises(ValueError, match=r"N = 64 points but the data set has 20"):
        pv.fit(vae.model, vae.guide, data(64), epochs=2, validation=new, progress=False)


class MismatchedPair:
    """A hand-written pair whose guide's z has 3 dimensions where the model's has 1."""

    def model(self, x, idx=None, num_data=None):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(1), 1.0).to_event(1))
            logits = torch.zeros(x.shape[-1]) + z.sum(-1, keepdim=True)
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)

    def guide(self, x, idx=None, num_data=None):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(torch.zeros(3), 1.0).to_event(1))


def test_a_guide_and_a_model_of_different_latent_sizes_are_refused():
    """#22.7: VAE accepted them, evaluate returned a plausible ELBO (broadcasting)."""
    with pytest.raises(ValueError, match="the prior has latent_dim 1 but the guide 3"):
        pv.VAE(
            pv.StandardNormalPrior(1),
            pv.BernoulliLikelihood(pv.MLP(1, 6), 6),
            pv.GaussianEncoder(pv.MLP(6, 6), 3),
        )
    pair, x = MismatchedPair(), torch.rand(16, 6).round()
    message = r"the guide samples 'z' with shape \(\d+, 3\) but the model's .* event shape \(1,\)"
    with pytest.raises(ValueError, match=message):
        pv.evaluate(pair.model, pair.guide, x, num_particles=2)
    with pytest.raises(ValueError, match=message):
        pv.fit(pair.model, pair.guide, pv.Batches(x, batch_size=8), epochs=1, progress=False)


def test_evaluate_scores_in_eval_mode_and_leaves_the_statistics_and_the_mode():
    """#22.9: evaluate on a BatchNorm VAE in train mode (as fit used to leave it) changed its
    running statistics, and its ELBO depended on max_rows."""
    encoder = torch.nn.Sequential(
        torch.nn.Linear(6, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 4)
    )
    vae = helpers.bernoulli_vae(encoder=encoder)  # train mode
    x = torch.rand(64, 6).round()
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    for max_rows in (64, 2**12):
        pv.evaluate(vae.model, vae.guide, x, num_particles=16, max_rows=max_rows)
    assert vae.training and all(m.training for m in vae.modules())
    for name, value in vae.state_dict().items():
        assert torch.equal(value, before[name]), name
    # fit leaves each network's mode as it found it, a frozen BatchNorm included
    vae.variational.encoder[1].eval()
    pv.fit(vae.model, vae.guide, pv.Batches(x, batch_size=16), epochs=1, progress=False)
    assert vae.training and not vae.variational.encoder[1].training


@pytest.mark.parametrize(
    ("beta", "message"),
    [
        (-1.0, "beta must be a finite number >= 0 .*got -1.0"),
        (float("nan"), "beta must be a finite number >= 0 .*got nan"),
        (float("inf"), "beta must be a finite number >= 0 .*got inf"),
        ("0.5", "beta must be a finite number >= 0 .*got '0.5'"),
        (lambda epoch: "warm", r"beta\(1\) returned a finite number >= 0 .*got 'warm'"),
        (lambda epoch: -epoch, r"beta\(1\) returned a finite number >= 0 .*got -1"),
    ],
)
def test_beta_is_a_finite_non_negative_number(beta, message):
    """#22.13: beta=-1 trained silently, nan/inf blamed the step size, a string gave a
    TypeError from deep inside."""
    vae = helpers.bernoulli_vae()
    data = pv.Batches(torch.rand(16, 6).round(), batch_size=8)
    with pytest.raises(ValueError, match=message):
        pv.fit(vae.model, vae.guide, data, epochs=1, beta=beta, progress=False)


class ConventionPair:
    """A hand-written pair that follows fit's convention: its plate needs num_data."""

    def __init__(self) -> None:
        self.decoder = torch.nn.Linear(1, 6)

    def model(self, x, idx, num_data=None):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", num_data, subsample=idx):
            z = pyro.sample("z", dist.Normal(torch.zeros(1), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    def guide(self, x, idx, num_data=None):
        with pyro.plate("data", num_data, subsample=idx):
            pyro.sample("z", dist.Normal(torch.zeros(1), 1.0).to_event(1))


def test_a_pair_that_needs_num_data_is_evaluated_and_validated():
    """#22.18: it trained in fit, but evaluate and fit(validation=) raised a bare
    AssertionError (the latter after a whole epoch)."""
    pair, x = ConventionPair(), torch.rand(32, 6).round()
    result = pv.evaluate(pair.model, pair.guide, x, num_particles=4)
    assert result.num_data == 32 and result.elbo < 0
    history = pv.fit(
        pair.model, pair.guide, pv.Batches(x, batch_size=8), epochs=1, validation=x[:8],
        device="cpu", progress=False,
    )  # fmt: skip
    assert history.val_epoch == [1] and history.val_elbo[0] < 0


def test_networks_are_found_through_pyro_wrappers(tmp_path):
    """#22.12: with poutine.scale-wrapped methods, the networks were not found: no checks, no
    network state in the checkpoint, no warning."""
    vae = helpers.bernoulli_vae()
    model, guide = pyro.poutine.scale(vae.model, 1.0), pyro.poutine.scale(vae.guide, 1.0)
    with pytest.raises(ValueError, match=r"expected data of shape \(N, 6\)"):
        pv.fit(model, guide, pv.Batches(torch.rand(8, 5), batch_size=4), epochs=1)
    data = pv.Batches(torch.rand(16, 6).round(), batch_size=8)
    pv.fit(model, guide, data, epochs=1, save_dir=tmp_path, device="cpu", progress=False)
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["modules"]
    assert saved is not None and saved.keys() == vae.state_dict().keys()


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64])
def test_integer_data_get_an_error_with_the_fix(dtype):
    """#22.15: integer data failed deep inside with 'mat1 and mat2 must have the same dtype'."""
    vae = helpers.bernoulli_vae()
    x = torch.rand(16, 6).round().to(dtype)
    message = rf"the data are {dtype}; .*x\.float\(\)"
    with pytest.raises(ValueError, match=message):
        pv.fit(vae.model, vae.guide, pv.Batches(x, batch_size=8), epochs=1, progress=False)
    with pytest.raises(ValueError, match=message):
        pv.evaluate(vae.model, vae.guide, x, num_particles=2)
    with pytest.raises(ValueError, match=message):  # (a sibling: the per-datapoint E-steps)
        pv.infer_local(vae, pv.Batches(x, batch_size=8), epochs=1)


# ---- bad input -------------------------------------------------------------------------------


def test_bad_inputs_get_clear_errors():
    vae = circle_vae()
    with pytest.raises(ValueError, match=r"the data set is empty \(shape \(0, 2\)\)"):
        pv.Batches(torch.zeros(0, 2), batch_size=4)
    with pytest.raises(ValueError, match="drop_last=True with batch_size 64 > N = 10"):
        pv.Batches(torch.zeros(10, 2), batch_size=64, drop_last=True)
    with pytest.raises(TypeError, match=r"Wrap a tensor: pv\.Batches\(x, batch_size=256\)"):
        pv.fit(vae.model, vae.guide, torch.zeros(10, 2), epochs=1)
    per_datapoint = vae.with_guide(pv.PerDatapointGaussian(64, 1), name="vae")
    with pytest.raises(ValueError, match=r"use optim=pv\.LazyAdam"):
        pv.fit(
            per_datapoint.model,
            per_datapoint.guide,
            data(64),
            epochs=1,
            optim=pyro.optim.Adam({"lr": 1e-2}),
            progress=False,
        )


def test_an_index_out_of_range_names_n_and_the_index():
    guide = pv.PerDatapointGaussian(10, 1)
    with pytest.raises(ValueError, match=r"index 12 is out of range .* N = 10 points"):
        guide(torch.zeros(3, 2), torch.tensor([1, 12, 3]))


@pytest.mark.parametrize(
    ("item", "binarize", "message"),
    [
        ({"image": torch.rand(6)}, None, r"item 0 of .* is a dict \(keys \['image'\]\)"),
        ("not data", None, "item 0 of .* is a str, not a tensor"),
        (torch.randint(0, 255, (6,), dtype=torch.uint8), "dynamic", r"item 0 is torch\.uint8"),
        (torch.rand(6) * 255, "dynamic", r"values in \[0, 1\]; item 0 has values in"),
        (torch.rand(6) * 255, "threshold", r"values in \[0, 1\]; item 0 has values in"),
    ],
)
def test_indexed_names_the_item_and_the_fix(item, binarize, message):
    """#22.16: three raw torch errors (a dict, uint8 or values > 1 under binarize)."""

    class Items(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return item, 0  # (x, label)

    with pytest.raises((TypeError, ValueError), match=message):
        pv.Indexed(Items(), binarize=binarize)[0]


def test_a_checkpoint_with_an_unknown_history_is_refused_before_anything_loads(tmp_path):
    """#22.17: a TypeError from History(...) with no file named, after load_checkpoint had
    already changed the module's weights."""
    run(tmp_path, 1)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    state["history"]["learning_rate"] = [0.1]
    torch.save(state, tmp_path / "checkpoint.pt")
    other = circle_vae()
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"checkpoint\.pt holds a history .*learning_rate"):
        pv.load_checkpoint(tmp_path / "checkpoint.pt", other)
    assert all(torch.equal(v, before[k]) for k, v in other.state_dict().items())
    with pytest.raises(CheckpointError, match="learning_rate"):
        run(tmp_path, 2, resume=True)


def test_a_dataloader_without_indices_is_refused():
    """#22.6: over TensorDataset(x, labels), the labels were taken for indices and 3 of 64
    points' local parameters were ever trained."""
    x, labels = torch.rand(64, 6).round(), torch.randint(0, 3, (64,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, labels), batch_size=8)
    vae = helpers.bernoulli_vae(guide=pv.PerDatapointGaussian(64, 2))
    message = r"DataLoader over TensorDataset .* taken for the points' indices: .*pv\.Indexed"
    for call in (
        lambda: pv.fit(vae.model, vae.guide, loader, epochs=1, progress=False),
        lambda: pv.evaluate(vae.model, vae.guide, loader, num_particles=2),
        lambda: pv.infer_local(vae, loader, epochs=1),
    ):
        with pytest.raises(TypeError, match=message):
            call()


@pytest.mark.parametrize("bad", [2.0, float("nan")])
def test_a_bad_value_in_a_later_streamed_batch_is_named(bad):
    """#22.14: a DataLoader's later batch outside [0, 1] trained silently, and a NaN there was
    blamed on the step size. The test is on the device, read with the loss (no extra sync)."""
    x = torch.rand(64, 6).round()
    x[45, 2] = bad  # batch 6 of 8; the checks see batch 1 in full
    dataset = pv.Indexed(torch.utils.data.TensorDataset(x))
    loader = torch.utils.data.DataLoader(dataset, batch_size=8)
    vae = helpers.bernoulli_vae()
    message = r"a batch among steps 2 to 8 of epoch 1 has values that are not finite or not in"
    with pytest.raises(ValueError, match=message):
        pv.fit(vae.model, vae.guide, loader, epochs=1, log_every=50, device="cpu", progress=False)
