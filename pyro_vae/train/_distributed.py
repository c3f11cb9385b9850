r"""Data-parallel training on PyTorch's own engine (``torch.distributed``, launched by
``torchrun``): each process (rank) trains on its part of every minibatch, and the gradients
are combined with one all-reduce per step.

The ELBO stays the single-process one. A global minibatch of :math:`b` points is split into
parts of :math:`b_r` points, one per rank; rank :math:`r`'s data plate scales its terms by
:math:`N / b_r`, and its gradient :math:`g_r` enters the sum
:math:`\sum_r (b_r / b)\, g_r = (N / b) \sum_{n \in \text{batch}} \nabla \ell_n`: exactly the
gradient one process computes on the whole minibatch (Pyro's distributed example scales each
worker's plate to the full data set for the same reason).

* Amortized models: every epoch rank 0 draws the permutation and broadcasts it, so all ranks
  walk the same global minibatches and each takes its part.
* Per-datapoint guides: the data are partitioned by rank once (contiguous blocks), each rank
  holds the local parameters of its own points only (O(N / world size) memory) and shuffles
  within its block; those parameters are never averaged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.distributed as tdist
from pyro import poutine
from torch import Tensor, nn

from .._checks import LocalParameters
from .._world import World, host_sum
from ..data.batches import Batches

__all__ = ["ShardedBatches"]


def is_local(p: Tensor) -> bool:
    """A parameter that holds this rank's rows only (a sharded per-datapoint guide)."""
    return getattr(p, "local_rows", False)


def broadcast(params: list[Tensor]) -> None:
    """Copies rank 0's values of the shared (non-local) ``params`` to every rank."""
    with torch.no_grad():
        for p in params:
            if not is_local(p):
                tdist.broadcast(p.data, src=0)


def combine_gradients(params: list[Tensor], weight: float) -> None:
    r"""Turns this rank's gradients into its share of the single-process gradient.

    Shared parameters: the gradient becomes :math:`\sum_r w_r g_r` over the ranks
    (``weight`` is this rank's :math:`w_r = b_r / b`), in one all-reduce of a flat buffer
    that also carries, per parameter, whether any rank has a gradient (one that none has stays
    ``None``, as in one process). Local rows (a sharded per-datapoint guide) are this rank's
    alone: their gradient is only weighted, :math:`w_r g_r`, which is the single-process
    gradient of those rows (their plate scale is :math:`N / b_r`, not :math:`N / b`).

    Raises:
        ValueError: For a shared parameter with a sparse gradient (each rank would step its
            own copy): shard it (a per-datapoint guide) or use dense gradients.
    """
    shared = []
    for p in params:
        if is_local(p):
            if p.grad is not None:
                p.grad = _scaled(p.grad, weight)
        elif p.grad is not None and p.grad.is_sparse:
            raise ValueError(
                "a parameter shared by the data-parallel processes has a sparse gradient "
                f"(shape {tuple(p.shape)}); each process would step its own copy. Use a "
                "per-datapoint guide (sharded by rank) or dense gradients (sparse=False)"
            )
        else:
            shared.append(p)
    if not shared:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in shared]
    present = host_sum([float(p.grad is not None) for p in shared], grads[0].device)
    flat = torch.cat([g.reshape(-1) for g in grads]) * weight
    tdist.all_reduce(flat)
    parts = flat.split([g.numel() for g in grads])
    for p, part, any_grad in zip(shared, parts, present, strict=True):
        p.grad = part.view_as(p) if any_grad else None


def _scaled(grad: Tensor, weight: float) -> Tensor:
    """``weight * grad``; a sparse gradient by its values (``meta`` has no sparse product)."""
    if not grad.is_sparse:
        return grad * weight
    values = grad._values() * weight
    return torch.sparse_coo_tensor(
        grad._indices(),
        values,
        grad.shape,
        is_coalesced=grad.is_coalesced(),
        check_invariants=False,  # the gradient's own indices
    )


def average_buffers(modules: nn.Module | None) -> None:
    """Averages every floating buffer (e.g. BatchNorm's running statistics) over the ranks, so
    that all ranks evaluate and save one model (one all-reduce; each rank's BatchNorm still
    normalizes a training batch with the statistics of its own part)."""
    buffers = [
        b for b in (modules.buffers() if modules is not None else ()) if b.is_floating_point()
    ]
    if not buffers:
        return
    flat = torch.cat([b.reshape(-1) for b in buffers]) / tdist.get_world_size()
    tdist.all_reduce(flat)
    with torch.no_grad():
        for b, part in zip(buffers, flat.split([b.numel() for b in buffers]), strict=True):
            b.copy_(part.view_as(b))


def shard_local_guides(
    modules: nn.Module | None, num_data: int, world: World
) -> tuple[int, int] | None:
    """Shards every per-datapoint guide of ``N = num_data`` points in ``modules`` to this
    rank's block of points; returns the block ``(start, stop)``, or ``None`` without one."""
    guides = [
        m
        for m in (modules.modules() if modules is not None else ())
        if isinstance(m, LocalParameters) and m.num_data == num_data
    ]
    if not guides:
        return None
    if num_data % world.size:
        raise ValueError(
            f"a per-datapoint guide is partitioned across {world.size} processes, which needs "
            f"N = {num_data} to be a multiple of {world.size}: drop {num_data % world.size} "
            "points or change the number of processes"
        )
    size = num_data // world.size
    start, stop = world.rank * size, (world.rank + 1) * size
    for m in guides:
        if len(m.loc) == num_data:  # not yet sharded
            m.shard(start, stop)
    return start, stop


def start_ranks(
    model: Callable[..., object],
    guide: Callable[..., object],
    data: ShardedBatches,
    world: World,
) -> None:
    """Before the first step of a new run: registers every parameter (one forward pass on a
    few of this rank's points, with its own randomness), copies rank 0's initial values of
    the shared ones to all ranks, and gives ranks > 0 their own random stream (rank 0 keeps
    the stream a single process would have)."""
    start = data.block[0] if data.block is not None else 0
    idx = torch.arange(start, start + min(2, data.num_data - start), device=data.device)
    own_rng = torch.random.fork_rng(devices=[data.device] if data.device.type == "cuda" else [])
    fields = {name: value[idx] for name, value in data.fields.items()}
    with own_rng, poutine.block(), poutine.trace(param_only=True) as capture, torch.no_grad():
        model(data.data[idx], idx, num_data=data.num_data, **fields)
        guide(data.data[idx], idx, num_data=data.num_data, **fields)
    broadcast([site["value"].unconstrained() for site in capture.trace.nodes.values()])
    if world.rank:
        torch.manual_seed(int(torch.randint(2**62, ())) + world.rank)


class ShardedBatches:
    """This rank's parts of the global minibatches of a :class:`~pyro_vae.Batches`.

    ``batches.batch_size`` is the *global* batch size :math:`b`. Without ``block`` (amortized
    models) rank 0 draws each epoch's permutation and broadcasts it; every global batch is
    split into ``world.size`` parts (``tensor_split``) and this rank yields its part; a last
    batch smaller than the world is dropped. With ``block = (start, stop)`` (per-datapoint
    guides) this rank yields minibatches of :math:`b / W` of its own points, shuffled within
    the block. ``global_size`` is the current global batch's size, for the gradient weight.
    """

    def __init__(
        self, batches: Batches, world: World, *, block: tuple[int, int] | None = None
    ) -> None:
        self.batches, self.world, self.block = batches, world, block
        if block is None and batches.batch_size < world.size:
            raise ValueError(
                f"the global batch size {batches.batch_size} is smaller than the {world.size} "
                "processes: each process needs at least one point of every batch"
            )
        if block is not None and batches.batch_size % world.size:
            raise ValueError(
                f"the global batch size {batches.batch_size} must be a multiple of the "
                f"{world.size} processes for a per-datapoint guide"
            )
        self.global_size = batches.batch_size

    @property
    def num_data(self) -> int:
        return self.batches.num_data

    @property
    def data(self) -> Tensor:
        """The whole data set (every rank holds it)."""
        return self.batches.data

    @property
    def points(self) -> Tensor:
        """The whole set, as ``data``, which the once-per-data-set checks see."""
        return self.data

    @property
    def point_indices(self) -> Tensor:
        """The data-set indices of :attr:`points`: ``0 .. N - 1``."""
        return self.batches.point_indices

    @property
    def fields(self) -> dict[str, Tensor]:
        """The whole set's other fields (every rank holds them)."""
        return self.batches.fields

    @property
    def batch_size(self) -> int:
        """The global batch size."""
        return self.batches.batch_size

    def to(self, device: torch.device | str) -> ShardedBatches:
        return ShardedBatches(self.batches.to(device), self.world, block=self.block)

    @property
    def device(self) -> torch.device:
        return self.batches.device

    def __len__(self) -> int:
        if self.block is not None:
            n, b = self.block[1] - self.block[0], self.batches.batch_size // self.world.size
            return n // b if self.batches.drop_last else -(-n // b)
        n, b = self.num_data, self.batches.batch_size
        full, rest = divmod(n, b)
        return full + (rest > 0 and not self.batches.drop_last and rest >= self.world.size)

    def __iter__(self) -> Iterator[tuple]:
        b = self.batches
        if self.block is not None:
            start, stop = self.block
            n = stop - start
            order = torch.randperm(n, device=b.device) if b.shuffle else torch.arange(n)
            order = order.to(b.device) + start
            local = b.batch_size // self.world.size
            for i in range(len(self)):
                part = order[i * local : (i + 1) * local]
                yield self._take(part, len(part) * self.world.size)
            return
        order = (
            torch.randperm(b.num_data, device=b.device)
            if b.shuffle
            else torch.arange(b.num_data, device=b.device)
        )
        if b.shuffle:
            tdist.broadcast(order, src=0)
        for i in range(len(self)):
            batch = order[i * b.batch_size : (i + 1) * b.batch_size]
            part = batch.tensor_split(self.world.size)[self.world.rank]
            yield self._take(part, len(batch))

    def _take(self, idx: Tensor, global_size: int) -> tuple:
        self.global_size = global_size
        return self.batches.batch(idx)
