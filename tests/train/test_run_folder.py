"""The run folder: a saved run is never overwritten silently, is held by one run at a time, and
its files are written so that a stopped process leaves a run that resumes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
from helpers import fit_circle, here

import pyro_vae as pv
from pyro_vae.train import _run_state
from pyro_vae.train._folder import RunFolder
from pyro_vae.train.checkpoint import CheckpointError


def test_an_existing_run_is_never_overwritten_silently(tmp_path):
    fit_circle(tmp_path, 3)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(FileExistsError, match="resume=True to continue it, overwrite=True"):
        fit_circle(tmp_path, 1)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    _, history = fit_circle(tmp_path, 1, overwrite=True)
    assert history.epoch == [1]
    assert pv.History.load(tmp_path / "history.json").epoch == [1]


def test_a_run_whose_latest_checkpoint_is_gone_is_resumed_from_the_previous_one(tmp_path):
    """With checkpoint.pt deleted and checkpoint.prev.pt left, fit without flags refuses the
    folder and replaces nothing; with resume=True it warns that checkpoint.pt is missing and
    resumes from checkpoint.prev.pt, to the uninterrupted run's losses."""
    _, full = fit_circle(tmp_path / "full", 5)
    fit_circle(tmp_path / "cut", 5)
    (tmp_path / "cut" / "checkpoint.pt").unlink()  # checkpoint.prev.pt (4 epochs) survives
    survivor = (tmp_path / "cut" / "checkpoint.prev.pt").read_bytes()
    with pytest.raises(FileExistsError, match=r"checkpoint\.prev\.pt, history\.json"):
        fit_circle(tmp_path / "cut", 5)  # no flags: refused, nothing replaced
    assert (tmp_path / "cut" / "checkpoint.prev.pt").read_bytes() == survivor
    with pytest.warns(UserWarning, match=r"checkpoint\.pt is missing .*checkpoint\.prev\.pt"):
        _, resumed = fit_circle(tmp_path / "cut", 5, resume=True)
    assert resumed.epoch == [1, 2, 3, 4, 5]
    assert resumed.loss == full.loss  # epoch 5 trained again from epoch 4's state, exactly


def test_a_history_without_checkpoints_is_not_started_over(tmp_path):
    fit_circle(tmp_path, 2)
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        (tmp_path / name).unlink()
    with pytest.raises(FileExistsError, match=r"holds a run \(history\.json\)"):
        fit_circle(tmp_path, 2)
    with pytest.raises(CheckpointError, match=r"holds history\.json but no checkpoint"):
        fit_circle(tmp_path, 2, resume=True)
    assert pv.History.load(tmp_path / "history.json").epoch == [1, 2]


def test_a_run_folder_is_held_by_one_run_at_a_time(tmp_path):
    """While a run holds a folder, another fit there (no flags, overwrite=True or resume=True)
    is refused with a RuntimeError naming the holding process, and writes no checkpoint. The
    lock is the operating system's: it goes with the process that held it."""
    folder = RunFolder(tmp_path)
    folder.hold()
    try:
        for options in ({}, {"overwrite": True}, {"resume": True}):
            with pytest.raises(
                RuntimeError, match=rf"in use by another run \(process {os.getpid()}"
            ):
                fit_circle(tmp_path, 1, **options)
        assert not (tmp_path / "checkpoint.pt").exists()
    finally:
        folder.release()
    fit_circle(tmp_path, 1)  # free again
    script = f"""
import os
from pyro_vae.train._folder import RunFolder
RunFolder({str(tmp_path)!r}).hold()
os.kill(os.getpid(), 9)
"""
    subprocess.run([sys.executable, "-c", script], check=False)  # killed while holding it
    fit_circle(tmp_path, 2, resume=True)  # not stuck


def test_history_is_written_atomically(tmp_path, monkeypatch):
    """history.json is replaced atomically: a process killed while the new text is being
    written leaves the previous file intact, not an empty one."""
    fit_circle(tmp_path, 1)
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
    """With overwrite=True, a log_dir that cannot be created is reported (the error names it)
    before anything is deleted: the old run's checkpoint stays as it was."""
    fit_circle(tmp_path / "run", 2)
    before = (tmp_path / "run" / "checkpoint.pt").read_bytes()
    (tmp_path / "not_a_folder").write_text("a file")
    with pytest.raises(Exception, match="not_a_folder"):
        fit_circle(tmp_path / "run", 1, overwrite=True, log_dir=tmp_path / "not_a_folder" / "board")
    assert (tmp_path / "run" / "checkpoint.pt").read_bytes() == before


def test_a_save_dir_that_cannot_be_written_is_refused_before_training(tmp_path, monkeypatch):
    """A save_dir that cannot be written is refused with a PermissionError naming the path,
    before the first training step (the operating system's refusal is simulated: root, as in
    CI, could write to a read-only folder anyway)."""
    steps = []
    monkeypatch.setattr(pv.train.step.Step, "__call__", lambda *a: steps.append(1))
    real_open = os.open

    def refused(path, *args, **kwargs):
        if str(path).startswith(str(tmp_path / "run")):
            raise PermissionError(13, "Permission denied")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refused)
    with pytest.raises(PermissionError, match=r"cannot write to the run folder .*run .*denied"):
        fit_circle(tmp_path / "run", 1)
    assert not steps  # refused before the first step


def test_a_file_in_the_way_is_named_not_called_a_permission_problem(tmp_path):
    """Before: a file as save_dir, or a folder where the lock file goes, was reported as
    ``PermissionError``."""
    (tmp_path / "file").write_text("in the way")
    for save_dir in (tmp_path / "file", tmp_path / "file" / "run"):
        with pytest.raises(NotADirectoryError, match=r"file is a file\. Choose another"):
            fit_circle(save_dir, 1)
    (tmp_path / "run" / ".lock").mkdir(parents=True)
    with pytest.raises(IsADirectoryError, match=r"\.lock is a folder.*remove it"):
        fit_circle(tmp_path / "run", 1)


def test_the_lock_does_not_leak_into_forked_processes(tmp_path):
    """Before: a process forked while a run held its folder (a DataLoader's worker) kept the
    lock after the run ended, and the next fit in the same process was refused as "in use by
    another run (process <its own pid>)"."""
    folder = RunFolder(tmp_path)
    folder.hold()
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # a worker that outlives the run
        os.close(write)
        os.read(read, 1)
        os._exit(0)
    try:
        folder.release()
        fit_circle(tmp_path, 1)  # the child is still alive and holds the descriptor
    finally:
        os.close(write)
        os.waitpid(child, 0)


def test_the_previous_checkpoint_is_kept(tmp_path):
    fit_circle(tmp_path, 1)
    first = (tmp_path / "checkpoint.pt").read_bytes()
    fit_circle(tmp_path, 2, resume=True)
    assert (tmp_path / "checkpoint.prev.pt").read_bytes() == first
    assert (tmp_path / "checkpoint.pt").read_bytes() != first
    # A diverged epoch 3 leaves epoch 2 as the previous checkpoint, from which a run resumes.
    second = (tmp_path / "checkpoint.pt").read_bytes()
    fit_circle(tmp_path, 3, resume=True)
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
    pair = NaNAfter(bad_step=100 + 4)  # 100 steps an epoch: the third step of epoch 2
    batches = pv.Batches(pv.make_circle(1000)[0], batch_size=10)
    options = {"device": here(), "save": tmp_path, "log": pv.Logging(progress=False, every=5)}
    with pytest.raises(FloatingPointError) as info:
        pv.fit(pair.model, pair.guide, batches, epochs=3, **options)
    message = str(info.value)
    assert "in epoch 2 by step 6" in message  # the first read after the NaN (steps 1, 6, ...)
    assert "resume=True" in message and "smaller step size" in message
    # stopped there, not at the end of the epoch (2: the look for enumerated sites that picks
    # the default loss, and the first step's check)
    assert pair.steps == 2 + 100 + 6
    assert pv.History.load(tmp_path / "history.json").epoch == [1]
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["history"]["epoch"] == [1]


def test_history_is_never_ahead_of_the_checkpoint_and_stale_tmp_is_removed(tmp_path, monkeypatch):
    fit_circle(tmp_path, 1)
    (tmp_path / "checkpoint.tmp").write_bytes(b"left by a killed process")
    calls = []

    def failing_save(*args, **kwargs):
        calls.append(1)
        raise KeyboardInterrupt  # killed while writing epoch 2's checkpoint

    monkeypatch.setattr(_run_state.RunState, "save", failing_save)
    with pytest.raises(KeyboardInterrupt):
        fit_circle(tmp_path, 2, resume=True)
    assert calls and not (tmp_path / "checkpoint.tmp").exists()
    assert pv.History.load(tmp_path / "history.json").epoch == [1]


def test_resuming_a_finished_run_says_there_is_nothing_to_train(tmp_path):
    """Before: ``fit(resume=True)`` on a run that had its epochs trained 0 steps without a
    word."""
    fit_circle(tmp_path, 2)
    with pytest.warns(UserWarning, match=r"has done 2 epochs, epochs=2: nothing to train.*> 2"):
        _, history = fit_circle(tmp_path, 2, resume=True)
    assert history.epoch == [1, 2]


# ---- when a run saves --------------------------------------------------------------------


def test_the_save_schedule_keeps_saving_within_a_twentieth_of_training():
    from pyro_vae.train._run import SaveSchedule

    every = SaveSchedule(every=3)
    assert [e for e in range(1, 8) if every.due(e, last=e == 7, training=0.0)] == [3, 6, 7]
    budget = SaveSchedule()  # saves of 1 s after epochs of 2 s: every fifth epoch or so
    saved = []
    for epoch in range(1, 21):
        if budget.due(epoch, last=epoch == 20, training=2.0 * epoch):
            saved.append(epoch)
            budget.saving += 1.0
    assert saved[0] == 1 and saved[-1] == 20
    assert budget.saving <= 0.05 * 2.0 * 20 + 1.0  # within a twentieth, plus the last save
    assert 3 <= len(saved) <= 6


@pytest.mark.parametrize("save_every", [None, 1, 4])
def test_short_epochs_save_on_schedule_and_resume_exactly(tmp_path, monkeypatch, save_every):
    """Epochs far shorter than a save (a save made slow on purpose): by default the run saves
    every few epochs and after the last; ``save_every=k`` every k-th. A run stopped after an
    unsaved epoch resumes from the last saved one and ends where an uninterrupted run ends."""
    import time

    from pyro_vae.train._folder import RunFolder

    slow, saves = RunFolder.save, []

    def save(self, history, state):
        saves.append(history.epoch[-1])
        time.sleep(0.05)  # a save 10x longer than an epoch of this run
        slow(self, history, state)

    monkeypatch.setattr(RunFolder, "save", save)
    whole, _ = fit_circle(tmp_path / "whole", 12, save_every=save_every)
    expected = {"None": None, "1": list(range(1, 13)), "4": [4, 8, 12]}[str(save_every)]
    if expected is None:
        assert saves[0] == 1 and saves[-1] == 12 and len(saves) < 6, saves
    else:
        assert saves == expected
    saves.clear()

    def stop(epoch, history):  # (before that epoch's save, as a crash would)
        if epoch == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit_circle(tmp_path / "parts", 12, save_every=save_every, callback=stop)
    assert saves[-1] < 7  # (epoch 7 was not saved)
    resumed, history = fit_circle(tmp_path / "parts", 12, save_every=save_every, resume=True)
    assert history.epoch == list(range(1, 13))
    for name, value in resumed.state_dict().items():
        assert torch.equal(value, whole.state_dict()[name]), name


def test_overwrite_replaces_the_old_run_only_when_the_new_one_saves(tmp_path):
    """A new run that fails in its first epoch leaves the old run whole (it resumes); one that
    saves replaces it entirely (no checkpoint of the old run left as the previous one)."""
    _, old = fit_circle(tmp_path, 2)

    def stop(epoch, history):
        raise RuntimeError("stopped in the first epoch")

    with pytest.raises(RuntimeError, match="stopped in the first epoch"):
        fit_circle(tmp_path, 3, overwrite=True, callback=stop)
    assert pv.History.load(tmp_path / "history.json") == old
    _, resumed = fit_circle(tmp_path, 3, resume=True)
    assert resumed.loss[:2] == old.loss
    _, new = fit_circle(tmp_path, 1, overwrite=True, seed=1)
    assert pv.History.load(tmp_path / "history.json") == new
    assert not (tmp_path / "checkpoint.prev.pt").exists()


def test_a_file_system_without_locks_is_named(tmp_path, monkeypatch):
    """lockf failing with ENOLCK (an NFS mount without a lock daemon): the message says the
    file system does not support locks, not that another run holds the folder."""
    import errno
    import fcntl

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "lockf", no_locks)
    with pytest.raises(RuntimeError, match=r"does not support file locks \(No locks available\)"):
        fit_circle(tmp_path, 1)


def test_a_folder_the_run_cannot_write_is_named_before_the_first_epoch(tmp_path, monkeypatch):
    """(The tests run as root, who writes anywhere: the write fails by a patch.) The error
    names the folder and says permission, before any epoch is trained."""
    from pathlib import Path

    real = Path.write_bytes

    def read_only(self, data):
        if self.name.startswith(".write-probe"):
            raise PermissionError(13, "Permission denied")
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", read_only)
    calls = []
    with pytest.raises(PermissionError, match=r"cannot write to the run folder .*Permission"):
        fit_circle(tmp_path, 1, callback=lambda epoch, history: calls.append(epoch))
    assert calls == []
