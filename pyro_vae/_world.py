"""The processes of a data-parallel run (``torch.distributed``, launched by ``torchrun``):
which process this is, and the few collectives that scoring and training share (sums,
agreement on a flag, the same data on every rank).

The gradient arithmetic of data-parallel training is in ``_distributed``.
"""

from __future__ import annotations

import datetime
import os
from typing import NamedTuple

import torch
import torch.distributed as tdist
from torch import Tensor

__all__ = ["World", "get_world"]


class World(NamedTuple):
    """This process's rank and the number of processes."""

    rank: int
    size: int


COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=5)
"""How long a process waits in a collective for the others, when ``fit`` starts the process
group (torch's default is 30 minutes): a stopped or stuck process then ends the run with an
error (:func:`timed_out`) instead of holding the others."""


def timed_out(error: BaseException) -> RuntimeError | None:
    """A clear error for a collective that waited too long, or ``None`` for another error."""
    text = str(error).lower()
    if not isinstance(error, RuntimeError) or ("timed out" not in text and "timeout" not in text):
        return None
    return RuntimeError(
        "a data-parallel process did not answer in time (a collective waited "
        f"{COLLECTIVE_TIMEOUT} or the process group's own timeout): one process is stopped, "
        "stuck (e.g. in its data loading) or gone. The checkpoints of the last finished epoch "
        f"are intact: restart all processes with resume=True. ({str(error).splitlines()[0]})"
    )


def get_world(distributed: bool | None = None) -> World | None:
    """The process group to train in, or ``None`` for one process.

    Args:
        distributed: ``None``: use an initialized process group, or initialize one when the
            torchrun environment says ``WORLD_SIZE > 1`` (NCCL with CUDA, else gloo).
            ``False``: one process. ``True``: as ``None``, but an error without a group.

    Example:
        >>> get_world() is None  # a plain python process
        True
    """
    if distributed is False or not tdist.is_available():
        if distributed:
            raise ValueError("distributed=True needs torch.distributed, which is unavailable")
        return None
    if not tdist.is_initialized():
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            # gloo for CPU tensors, and NCCL for CUDA tensors where there is a GPU
            backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
            if torch.cuda.is_available():
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            tdist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)
        elif distributed:
            raise ValueError(
                "distributed=True but no process group: launch with torchrun (e.g. torchrun "
                "--nproc_per_node 2 script.py) or call torch.distributed.init_process_group"
            )
        else:
            return None
    return World(tdist.get_rank(), tdist.get_world_size())


def host_tensor(values: list[float], device: torch.device) -> Tensor:
    """``values`` (host numbers) as a tensor for a collective: on the CPU when the group has a
    CPU backend (gloo; also in the ``"cpu:gloo,cuda:nccl"`` group of :func:`get_world`), so
    that the device is neither written nor read (no synchronization); else on ``device``."""
    host = device.type == "cpu" or "gloo" in str(tdist.get_backend())
    return torch.tensor(values, dtype=torch.float64, device="cpu" if host else device)


def agree(flag: bool, device: torch.device) -> bool:
    """``True`` on every rank when ``flag`` is ``True`` on any rank (so all raise together)."""
    value = host_tensor([float(flag)], device)
    tdist.all_reduce(value, op=tdist.ReduceOp.MAX)
    return bool(value.item())


def min_max(value: int, device: torch.device) -> tuple[int, int]:
    """The smallest and the largest of ``value`` over the ranks."""
    ends = host_tensor([value, -value], device)
    tdist.all_reduce(ends, op=tdist.ReduceOp.MAX)
    return -int(ends[1]), int(ends[0])


def all_sum(value: Tensor) -> Tensor:
    """The sum of ``value`` over the ranks (a new tensor)."""
    value = value.detach().clone()
    tdist.all_reduce(value)
    return value


def check_same_data(points: Tensor, world: World) -> None:
    """Every process must hold the same data set, in the same order: its size and a
    fingerprint (position-weighted sums of the values and of their squares, in float64, read
    once) are compared across the ranks, with an error that says which rank holds what."""
    flat = points.reshape(points.shape[0], -1).to(torch.float64)
    weight = torch.arange(1, points.shape[0] + 1, dtype=torch.float64, device=points.device)
    mine = torch.stack([(flat.sum(1) * weight).sum(), flat.square().sum()]).tolist()
    size = float(points.shape[0])
    table = [host_tensor([0.0, 0.0, 0.0], points.device) for _ in range(world.size)]
    tdist.all_gather(table, host_tensor([size, *mine], points.device))
    rows = [t.tolist() for t in table]
    sizes = [int(r[0]) for r in rows]
    if len(set(sizes)) > 1:
        held = ", ".join(f"rank {r}: N = {n}" for r, n in enumerate(sizes))
        raise ValueError(
            f"the processes hold data sets of different sizes ({held}); every process must "
            "load the same data set (each trains on its part of every global batch)"
        )
    other = next((r for r, row in enumerate(rows) if row[1:] != rows[0][1:]), None)
    if other is not None:
        raise ValueError(
            f"rank {other} holds other data than rank 0 (the same N = {sizes[0]} points, other "
            "values or another order); every process must load the same data set, in the "
            "same order (shuffle it with the same seed, or not at all)"
        )


def host_sum(values: list[float], device: torch.device) -> list[float]:
    """The sums over the ranks of a few host numbers (see :func:`host_tensor`)."""
    flat = host_tensor(values, device)
    tdist.all_reduce(flat)
    return flat.tolist()


def global_mean(total: Tensor | float, count: int, world: World, device: torch.device) -> float:
    """``sum(total) / sum(count)`` over the ranks, one all-reduce."""
    pair = torch.stack(
        [
            torch.as_tensor(total, dtype=torch.float64, device=device).reshape(()),
            torch.tensor(float(count), dtype=torch.float64, device=device),
        ]
    )
    total, count = all_sum(pair).tolist()
    return total / count
