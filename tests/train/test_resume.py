"""Resume restores exactly what a checkpoint is (model, optimizer state and settings, schedule,
RNG) and refuses what it is not; checkpoints are read as data, never as code."""

from __future__ import annotations

import os
import warnings

import pyro
import pytest
import torch
from helpers import circle_data, circle_vae, fit_circle, grouped, here
from pyro.infer import TraceEnum_ELBO

import pyro_vae as pv
from pyro_vae.train.checkpoint import CheckpointError


class Payload:
    def __reduce__(self):
        return (os.system, ("touch MARKER_FILE",))


def test_a_checkpoint_with_code_is_refused_without_running_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fit_circle(tmp_path, 1)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    state["history"] = Payload()
    torch.save(state, tmp_path / "checkpoint.pt")  # pickles os.system("touch MARKER_FILE")
    with pytest.raises(CheckpointError, match="cannot be read as data"):
        fit_circle(tmp_path, 2, resume=True)
    assert not (tmp_path / "MARKER_FILE").exists()


@pytest.mark.parametrize("damage", ["truncated", "random", "empty", "missing-keys"])
def test_a_corrupt_checkpoint_gets_one_clear_error(tmp_path, damage):
    fit_circle(tmp_path, 1)
    path = tmp_path / "checkpoint.pt"
    good = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif damage == "random":
        noise = torch.randint(0, 256, (4096,), dtype=torch.uint8, device="cpu")
        path.write_bytes(noise.numpy().tobytes())
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        state = torch.load(path, weights_only=True)
        del state["optim"]
        torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        fit_circle(tmp_path, 2, resume=True)
    message = str(info.value)
    assert str(path) in message
    assert "overwrite=True" in message and "checkpoint.prev.pt" in message


# ---- resume restores what it should, and only that --------------------------------------------


def test_resume_refuses_another_architecture_naming_the_parameter(tmp_path):
    fit_circle(tmp_path, 1, hidden=8)
    with pytest.raises(CheckpointError) as info:
        fit_circle(tmp_path, 2, hidden=16, resume=True)
    assert "encoder.0.weight' has shape (8, 2) in the checkpoint" in str(info.value)
    assert "but (16, 2) in this run" in str(info.value)


def test_resume_refuses_another_guide(tmp_path):
    fit_circle(tmp_path, 1)
    pyro.clear_param_store()
    vae = circle_vae()
    vae = vae.with_guide(pv.PerDatapointGaussian(64, 1), name="vae")
    with pytest.raises(CheckpointError, match=r"has no parameter 'vae\.guide\$\$\$loc'"):
        pv.fit(
            vae.model,
            vae.guide,
            circle_data(),
            epochs=2,
            save=pv.Checkpoints(tmp_path, resume=True),
        )


def test_resume_refuses_another_optimizer_type(tmp_path):
    fit_circle(tmp_path, 1)
    optimizer = r"trained with the optimizer pyro_vae\.LazyAdam"
    with pytest.raises(CheckpointError, match=optimizer):
        fit_circle(tmp_path, 2, resume=True, optim=pyro.optim.ClippedAdam({"lr": 1e-2}))


def test_a_checkpoint_names_the_package_optimizer_by_its_public_name(tmp_path):
    """A checkpoint written when LazyAdam lived in another module (``pyro_vae.optim``) resumes:
    the package's classes are compared by their public name; and it gives the same run."""
    _, straight = fit_circle(tmp_path / "straight", 2)
    fit_circle(tmp_path / "moved", 1)
    path = tmp_path / "moved" / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    assert state["optim_settings"]["type"] == "pyro_vae.LazyAdam"
    state["optim_settings"]["type"] = "pyro_vae.optim.LazyAdam"
    torch.save(state, path)
    _, resumed = fit_circle(tmp_path / "moved", 2, resume=True)
    assert resumed.loss == straight.loss


@pytest.mark.parametrize("as_callable", [False, True], ids=["dict", "callable"])
@pytest.mark.parametrize("make", [pv.LazyAdam, pyro.optim.Adam])
def test_a_new_learning_rate_on_resume_is_used_and_announced(tmp_path, make, as_callable):
    """New optimizer arguments on resume, given as a dict or as a callable, replace the saved
    learning rate, with a UserWarning that names the new settings."""

    def args(lr):
        return (lambda name: {"lr": lr}) if as_callable else {"lr": lr}

    fit_circle(tmp_path, 1, optim=make(args(1e-2)))
    optim = make(args(0.5))
    with pytest.warns(UserWarning, match=r"new optimizer settings \(lr=0\.5\)"):
        fit_circle(tmp_path, 2, resume=True, optim=optim)
    lrs = {g["lr"] for o in optim.optim_objs.values() for g in o.param_groups}
    assert lrs == {0.5}


def test_lazy_adam_new_local_lr_on_resume(tmp_path):
    def per_datapoint(save_dir, epochs, optim, **options):
        pyro.clear_param_store()
        vae = circle_vae().with_guide(pv.PerDatapointGaussian(64, 1), name="vae")
        pv.fit(
            vae.model,
            vae.guide,
            circle_data(),
            epochs=epochs,
            optim=optim,
            **grouped(save_dir=save_dir, device=here(), progress=False, **options),
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

        return fit_circle(save_dir, epochs, optim=optim, callback=decay, resume=resume)

    full_vae, full = schedule_run(tmp_path / "a", 4, False)
    schedule_run(tmp_path / "b", 2, False)
    resumed_vae, resumed = schedule_run(tmp_path / "b", 4, True)
    assert resumed.loss == full.loss
    for (name, a), b in zip(
        full_vae.state_dict().items(), resumed_vae.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_a_checkpoint_with_an_unknown_history_is_refused_before_anything_loads(tmp_path):
    """A checkpoint whose history has an unknown field is refused with a CheckpointError that
    names the file and the field, before load_checkpoint changes any of the module's weights;
    fit(resume=True) refuses it too."""
    fit_circle(tmp_path, 1)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    state["history"]["learning_rate"] = [0.1]
    torch.save(state, tmp_path / "checkpoint.pt")
    other = circle_vae()
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"checkpoint\.pt holds a history .*learning_rate"):
        pv.load_checkpoint(tmp_path / "checkpoint.pt", other)
    assert all(torch.equal(v, before[k]) for k, v in other.state_dict().items())
    with pytest.raises(CheckpointError, match="learning_rate"):
        fit_circle(tmp_path, 2, resume=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_loading_onto_cuda_without_cuda_names_the_fix_and_not_the_file(tmp_path):
    vae, _ = fit_circle(tmp_path, 1)
    with pytest.raises(ValueError, match=r"torch sees no CUDA device here; load it with "):
        pv.load_checkpoint(tmp_path / "checkpoint.pt", vae, map_location="cuda")


def test_a_bad_previous_checkpoint_does_not_point_to_an_older_one(tmp_path):
    fit_circle(tmp_path, 2)
    (tmp_path / "checkpoint.prev.pt").write_bytes(b"not a checkpoint")
    vae, _ = fit_circle(tmp_path / "other", 1)
    with pytest.raises(CheckpointError, match=r"cannot be read as data.*start over") as info:
        pv.load_checkpoint(tmp_path / "checkpoint.prev.pt", vae)
    assert "prev.prev" not in str(info.value)


def test_a_changed_fixed_value_is_refused_on_resume(tmp_path):
    """A Gaussian likelihood's fixed scale 0.5 resumed as 0.1: the checkpoint would put 0.5
    back without a word; the resume is refused, naming the value."""

    def run(scale, **options):
        pyro.clear_param_store()
        vae = pv.VAE(pv.StandardNormalPrior(1), pv.GaussianLikelihood(pv.MLP(1, 2), 2, scale=scale),
                     pv.GaussianEncoder(pv.MLP(2, 2), 1))  # fmt: skip
        return pv.fit(vae.model, vae.guide, circle_data(), epochs=2, device=here(), log=False,
                      **options)  # fmt: skip

    run(0.5, save=tmp_path)
    message = r"likelihood.log_scale = \[-0.6931, -0.6931\].*\[-2.303, -2.303\]"
    with pytest.raises(pv.CheckpointError, match=message):
        run(0.1, save=pv.Checkpoints(tmp_path, resume=True))


def test_changed_settings_are_listed_on_resume(tmp_path):
    """M2's alpha 0 → 5: the run continues with 5, and says so (its history mixes both)."""
    x, y = torch.rand(32, 6).round(), torch.randint(0, 3, (32,))

    def run(alpha, epochs, **options):
        pyro.clear_param_store()
        torch.manual_seed(0)
        m2 = pv.SemiSupervisedVAE(pv.MLP(6, 3), pv.BernoulliLikelihood(pv.MLP(2 + 3, 6), 6),
                                  pv.GaussianEncoder(pv.MLP(6 + 3, 4), 2), num_classes=3,
                                  alpha=alpha)  # fmt: skip
        data = pv.Batches(x, y=y, y_mask=torch.arange(32) < 8, batch_size=16)
        return pv.fit(m2.model, m2.guide, data, epochs=epochs, device=here(), log=False,
                      loss=TraceEnum_ELBO(max_plate_nesting=1), **options)  # fmt: skip

    run(0.0, 1, save=tmp_path)
    with pytest.warns(UserWarning, match=r"alpha=5\.0 \(saved: 0\.0\)"):
        run(5.0, 2, save=pv.Checkpoints(tmp_path, resume=True))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same settings: not a word
        run(5.0, 3, save=pv.Checkpoints(tmp_path, resume=True))


def test_a_changed_kl_weight_is_told_on_resume(tmp_path):
    fit_circle(tmp_path, 1)
    with pytest.warns(UserWarning, match=r"beta=0\.2 \(saved: 1\.0\)"):
        fit_circle(tmp_path, 2, resume=True, beta=0.2)
