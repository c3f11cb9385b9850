"""The folder a training run saves into, and its rules.

A :class:`RunFolder` knows its files (``checkpoint.pt`` and ``history.json`` on rank 0,
``checkpoint.rank<r>.pt`` on the other data-parallel ranks), decides at the start whether
there is a run to continue (``resume``), to replace (``overwrite``) or to protect (neither: a
:class:`FileExistsError`), resumes it, and writes a checkpoint and then the history after
each epoch (the checkpoint first, so ``history.json`` is never ahead of it; both files are
described in :mod:`pyro_vae.checkpoint`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import pyro.optim
import torch
from torch import Tensor, nn

from . import checkpoint
from .checkpoint import CHECKPOINT, HISTORY, CheckpointError, History

__all__ = ["RunFolder"]


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
        self.checkpoint = self.path / (CHECKPOINT if rank == 0 else f"checkpoint.rank{rank}.pt")
        self.history = self.path / HISTORY
        self.writes_history = rank == 0

    def start(
        self,
        *,
        resume: bool,
        overwrite: bool,
        anywhere: Callable[[bool], bool] | None = None,
    ) -> bool:
        """Prepares the folder for a run and returns whether there is one to resume.

        A saved run is resumed with ``resume``, deleted with ``overwrite``, and otherwise
        protected (:class:`FileExistsError`). ``anywhere(flag)`` (data-parallel runs) makes
        every rank decide alike: true when any rank's flag is.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        self.checkpoint.with_suffix(".tmp").unlink(missing_ok=True)  # left by a killed process
        exists = self.checkpoint.exists()
        if anywhere is not None:
            exists = anywhere(exists)
        if exists and not resume:
            if not overwrite:
                raise FileExistsError(
                    f"{self.checkpoint} exists: a run was saved there. Pass resume=True to "
                    "continue it, overwrite=True to start over (its checkpoints are deleted), "
                    "or another save_dir"
                )
            for path in (self.checkpoint, self.checkpoint.with_suffix(".prev.pt")):
                path.unlink(missing_ok=True)
            if self.writes_history:
                self.history.unlink(missing_ok=True)
        return resume and exists

    def resume(
        self,
        model: Callable[..., object],
        guide: Callable[..., object],
        batch: tuple[Tensor, Tensor],
        num_data: int,
        optim: pyro.optim.PyroOptim,
        modules: nn.Module | None,
        device: torch.device,
        *,
        anywhere: Callable[[bool], bool] | None = None,
    ) -> tuple[History, list[str]]:
        """Loads the saved run into the live objects (see
        :func:`~pyro_vae.checkpoint.resume_run`); returns its history and parameter names.
        With ``anywhere``, every rank raises when any rank cannot resume."""
        error = None
        try:
            saved, names = checkpoint.resume_run(
                self.checkpoint,
                model,
                guide,
                batch,
                num_data,
                optim,
                modules,
                device,
                world_size=self.world_size,
            )
        except CheckpointError as e:
            error = e
        if anywhere is not None and anywhere(error is not None) and error is None:
            error = CheckpointError("another process could not resume: see its error")
        if error is not None:
            raise error
        return History(**saved), names

    def save(
        self,
        history: History,
        optim: pyro.optim.PyroOptim,
        modules: nn.Module | None,
        names: list[str],
    ) -> None:
        """Writes this rank's checkpoint, then (rank 0) the history."""
        checkpoint.save_checkpoint(
            self.checkpoint, asdict(history), optim, modules, names, world_size=self.world_size
        )
        if self.writes_history:
            history.save(self.history)

    def hint(self, retry: str) -> str:
        """What to do after a failed epoch: continue from the checkpoint when there is one."""
        if self.checkpoint.exists():
            return f"{self.checkpoint} is untouched: continue from it with resume=True and {retry}"
        return f"train again with {retry}"
