"""A Pyro learning-rate scheduler passed to ``fit`` steps once an epoch (as Pyro's docs step it
after each epoch), ``ReduceLROnPlateau`` on the validation loss where there is one; its state
and settings resume as the optimizer's do."""

from __future__ import annotations

import pyro.optim
import pytest
import torch
from helpers import circle_data, fit_circle

from pyro_vae.train.checkpoint import CheckpointError


def exponential(gamma: float = 0.5, lr: float = 1e-2) -> pyro.optim.PyroLRScheduler:
    return pyro.optim.ExponentialLR(
        {"optimizer": torch.optim.Adam, "optim_args": {"lr": lr}, "gamma": gamma}
    )


def plateau(**settings: object) -> pyro.optim.PyroLRScheduler:
    return pyro.optim.ReduceLROnPlateau(
        {"optimizer": torch.optim.Adam, "optim_args": {"lr": 1e-2}, **settings}
    )


def learning_rate(sched: pyro.optim.PyroLRScheduler) -> float:
    """The one learning rate of every parameter's optimizer."""
    rates = {g["lr"] for s in sched.optim_objs.values() for g in s.optimizer.param_groups}
    assert len(rates) == 1, rates
    return rates.pop()


def test_an_exponential_schedule_steps_once_an_epoch(tmp_path):
    sched = exponential(gamma=0.5)
    fit_circle(tmp_path, 3, optim=sched)
    assert learning_rate(sched) == pytest.approx(1e-2 * 0.5**3, rel=1e-12)
    assert {s.last_epoch for s in sched.optim_objs.values()} == {3}


def test_reduce_on_plateau_reads_the_training_loss_without_a_validation_set(tmp_path):
    sched = plateau(patience=100)
    _, history = fit_circle(tmp_path, 4, optim=sched)
    assert {s.best for s in sched.optim_objs.values()} == {min(history.loss)}


def test_reduce_on_plateau_reads_the_validation_loss_after_the_epochs_it_validates(tmp_path):
    sched = plateau(patience=100)
    _, history = fit_circle(tmp_path, 5, optim=sched, validation=circle_data(32),
                            validate_every=2)  # fmt: skip
    assert history.val_epoch == [2, 4, 5]
    assert {s.best for s in sched.optim_objs.values()} == {-max(history.val_elbo)}
    assert {s.last_epoch for s in sched.optim_objs.values()} == {3}


def test_reduce_on_plateau_lowers_the_rate_on_a_plateau(tmp_path):
    """threshold=1 (relative): no epoch counts as better than the first, so after patience=1
    bad epochs the rate is multiplied by the factor."""
    sched = plateau(patience=1, factor=0.1, threshold=1.0)
    fit_circle(tmp_path, 3, optim=sched)
    assert learning_rate(sched) == pytest.approx(1e-3, rel=1e-12)


def test_a_scheduled_run_resumes_exactly(tmp_path):
    _, straight = fit_circle(tmp_path / "straight", 4, optim=(s1 := exponential(0.7)))
    fit_circle(tmp_path / "cut", 2, optim=exponential(0.7))
    _, resumed = fit_circle(tmp_path / "cut", 4, optim=(s2 := exponential(0.7)), resume=True)
    assert resumed.loss == straight.loss
    assert learning_rate(s2) == learning_rate(s1) == pytest.approx(1e-2 * 0.7**4)


def test_a_new_scheduler_setting_on_resume_is_used_and_announced(tmp_path):
    fit_circle(tmp_path, 2, optim=exponential(0.5))
    sched = exponential(0.9)
    with pytest.warns(UserWarning, match=r"new optimizer settings \(gamma=0\.9\)"):
        fit_circle(tmp_path, 3, optim=sched, resume=True)
    assert learning_rate(sched) == pytest.approx(1e-2 * 0.5**2 * 0.9)


def test_a_new_learning_rate_on_resume_reaches_the_scheduled_optimizer(tmp_path):
    fit_circle(tmp_path, 1, optim=exponential(0.5))
    sched = exponential(0.5, lr=0.2)
    with pytest.warns(UserWarning, match=r"new optimizer settings \(lr=0\.2\)"):
        fit_circle(tmp_path, 2, optim=sched, resume=True)
    assert learning_rate(sched) == pytest.approx(0.2 * 0.5)


def test_another_scheduler_or_an_unsaved_setting_on_resume_is_refused(tmp_path):
    fit_circle(tmp_path / "a", 1, optim=exponential(0.5))
    step = pyro.optim.StepLR(
        {"optimizer": torch.optim.Adam, "optim_args": {"lr": 1e-2}, "step_size": 1}
    )
    with pytest.raises(CheckpointError, match=r"ExponentialLR.*this run uses.*StepLR"):
        fit_circle(tmp_path / "a", 2, optim=step, resume=True)
    fit_circle(tmp_path / "b", 1, optim=plateau(min_lr=0.0))
    with pytest.raises(CheckpointError, match=r"scheduler setting min_lr=0\.001.*Resume with"):
        fit_circle(tmp_path / "b", 2, optim=plateau(min_lr=1e-3), resume=True)
