"""The folder a training run saves into, and its rules.

A :class:`RunFolder` knows its files (``checkpoint.pt`` and ``history.json`` on rank 0,
``checkpoint.rank<r>.pt`` on the other data-parallel ranks), holds the folder for one run at a
time (a lock file that the operating system releases when the process ends, however it ends),
decides at the start whether there is a run to continue (``resume``), to replace
(``overwrite``) or to protect (neither: a :class:`FileExistsError`) — a run whose latest
checkpoint is gone but whose previous one survives counts as a run — resumes it, and writes a
checkpoint and then the history after each epoch (the checkpoint first, so ``history.json`` is
never ahead of it; both are written atomically; see :mod:`pyro_vae.train.checkpoint`).
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import warnings
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

try:  # POSIX advisory locks; elsewhere a folder is not locked
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

from . import _run_state
from .checkpoint import _CHECKPOINT, _HISTORY, CheckpointError, History

__all__ = ["RunFolder"]

_HELD: dict[str, str] = {}  # the lock files this process holds -> the holder, as shown


class RunFolder:
    """A run's folder, as seen by one data-parallel rank (``rank=0`` alone in one process).

    Args:
        path: The folder (created when missing).
        rank: This process's rank.
        world_size: The number of data-parallel processes.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as path:
        ...     folder = RunFolder(path)
        ...     folder.start(resume=True, overwrite=False)  # nothing saved yet: a new run
        False
    """

    def __init__(self, path: str | os.PathLike, *, rank: int = 0, world_size: int = 1) -> None:
        self.path = Path(path)
        self.rank, self.world_size = rank, world_size
        self.checkpoint = self.path / (_CHECKPOINT if rank == 0 else f"checkpoint.rank{rank}.pt")
        self.history = self.path / _HISTORY
        self.previous = self.checkpoint.with_suffix(".prev.pt")
        self.writes_history = rank == 0
        self.lock = self.path / (".lock" if rank == 0 else f".lock.rank{rank}")
        self._held: int | None = None  # the lock file's descriptor while held
        self._replaces = False  # overwrite: the old run's files go at the new run's first save

    def hold(self) -> None:
        """Creates the folder, checks that it is writable and holds it for this run: a second
        run (another process, or another ``fit`` in this one) gets a :class:`RuntimeError`
        naming the holder. The lock goes when :meth:`release` is called or the process ends;
        it is a POSIX record lock, which processes forked from this one (a DataLoader's
        workers) do not inherit, so a worker that outlives the run does not keep it."""
        self._check_in_the_way()
        key = os.path.realpath(self.lock)
        if key in _HELD:
            raise RuntimeError(
                f"the run folder {self.path} is in use by another run ({_HELD[key]}: another "
                "fit in this process); wait for it to end or use another run folder"
            )
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise PermissionError(
                f"cannot write to the run folder {self.path} ({e.strerror}): choose a writable "
                "run folder"
            ) from None
        if fcntl is not None:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno not in (errno.EACCES, errno.EAGAIN):  # not held: not supported
                    os.close(fd)
                    raise RuntimeError(
                        f"the file system of {self.path} does not support file locks "
                        f"({e.strerror}), which keep two runs out of one folder: use a run "
                        "folder on a local disk (and copy it where you want it afterwards)"
                    ) from None
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise RuntimeError(
                    f"the run folder {self.path} is in use by another run ({holder}); wait for "
                    "it to end or use another run folder (overwrite=True does not take it over)"
                ) from None
        os.ftruncate(fd, 0)
        me = f"process {os.getpid()} on {socket.gethostname()}"
        os.pwrite(fd, me.encode(), 0)
        self._held, _HELD[key] = fd, me

    def _check_writable(self) -> None:
        """Writes and removes a file in the folder before the first epoch, so that a folder
        the run cannot save in (read-only, or full) is named now, not after an epoch."""
        probe = self.path / f".write-probe-{os.getpid()}"
        try:
            probe.write_bytes(b"probe")
            probe.unlink()
        except OSError as e:
            raise PermissionError(
                f"cannot write to the run folder {self.path} ({e.strerror}): the run could "
                "not save its checkpoints there. Choose a folder you can write to"
            ) from None

    def _check_in_the_way(self) -> None:
        """A file where the folder (or a folder above it) should be, or a folder where the
        lock file should be: errors that say so (not a permission problem)."""
        for folder in (self.path, *self.path.parents):
            if folder.exists() and not folder.is_dir():
                raise NotADirectoryError(
                    f"the run folder {self.path} cannot be a folder: {folder} is a file. Choose "
                    "another run folder"
                )
        if self.lock.is_dir():
            raise IsADirectoryError(
                f"{self.lock} is a folder, where the run folder's lock file goes: remove it "
                "(fit keeps nothing of a run in it) or choose another run folder"
            )

    def release(self) -> None:
        """Lets the folder go (the lock file stays, empty of meaning, for the next run)."""
        if self._held is not None:
            _HELD.pop(os.path.realpath(self.lock), None)
            os.close(self._held)  # closing the descriptor releases the lock
            self._held = None

    def start(
        self,
        *,
        resume: bool,
        overwrite: bool,
        anywhere: Callable[[bool], bool] | None = None,
    ) -> bool:
        """Prepares the folder for a run and returns whether there is one to resume.

        A saved run — a checkpoint, or only the previous one, or only a history — is resumed
        with ``resume``, replaced with ``overwrite`` (when the new run first saves: a new run
        that fails before that leaves the old one whole), and otherwise protected
        (:class:`FileExistsError`); it is never started over silently. When the latest
        checkpoint is gone and the previous one survives, ``resume`` continues from the
        previous one, with a warning. ``anywhere(flag)`` (data-parallel runs) makes every rank
        decide alike: true when any rank's flag is.
        """
        if self._held is None:
            self.hold()
        self._check_writable()
        for tmp in (self.checkpoint.with_suffix(".tmp"), self.checkpoint.with_suffix(".link")):
            tmp.unlink(missing_ok=True)  # left by a killed process
        saved = [p for p in (self.checkpoint, self.previous) if p.exists()]
        if self.writes_history and self.history.exists():
            saved.append(self.history)
        exists = bool(saved)
        if anywhere is not None:
            exists = anywhere(exists)
        if exists and not resume:
            if not overwrite:
                what = ", ".join(p.name for p in saved) or "another process's checkpoint"
                raise FileExistsError(
                    f"{self.path} holds a run ({what}). Pass resume=True to continue it, "
                    "overwrite=True to start over (its files are replaced when the new run "
                    "first saves), or another run folder"
                )
            self._replaces = True
            return False
        if resume and self.writes_history and self.history.exists() and len(saved) == 1:
            raise CheckpointError(
                f"{self.path} holds {_HISTORY} but no checkpoint: that run cannot be continued. "
                "Start over with overwrite=True, or use another run folder"
            )
        if exists and not self.checkpoint.exists() and self.previous.exists():
            warnings.warn(
                f"{self.checkpoint.name} is missing in {self.path}: resuming from "
                f"{self.previous.name}, the checkpoint before it",
                stacklevel=4,
            )
            shutil.copyfile(self.previous, self.checkpoint)
        return resume and exists

    def resume(
        self,
        state: _run_state.RunState,
        batch: tuple,
        num_data: int,
        *,
        anywhere: Callable[[bool], bool] | None = None,
    ) -> History:
        """Restores the saved run into ``state``'s live objects (see
        :meth:`~pyro_vae.train._run_state.RunState.restore`); returns its history. With
        ``anywhere``, every rank raises when any rank cannot resume."""
        error = None
        try:
            saved = state.restore(self.checkpoint, batch, num_data)
        except CheckpointError as e:
            error = e
        if anywhere is not None and anywhere(error is not None) and error is None:
            error = CheckpointError("another process could not resume: see its error")
        if error is not None:
            raise error
        return History(**saved)

    def save(self, history: History, state: _run_state.RunState) -> None:
        """Writes this rank's checkpoint (``state`` gathered), then (rank 0) the history."""
        state.save(self.checkpoint, asdict(history))
        if self._replaces:  # the new run's checkpoint is in place: the old run's files go
            self.previous.unlink(missing_ok=True)
            self._replaces = False
        if self.writes_history:
            history.save(self.history)

    def hint(self, retry: str) -> str:
        """What to do after a failed epoch: continue from the checkpoint when there is one."""
        if self.checkpoint.exists() and not self._replaces:
            return f"{self.checkpoint} is untouched: continue from it with resume=True and {retry}"
        return f"train again with {retry}"
