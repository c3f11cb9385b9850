"""Shuffled minibatches with their indices, drawn from tensors on the training device.

The whole data set lives in one tensor on the training device (and its other fields, such as
labels, conditions or masks, in tensors beside it); a :class:`~pyro_vae.Batches` iterator draws
shuffled minibatches by indexing them, so no per-item Python or PIL work happens in the
training loop. Each batch comes with its dataset indices, which per-datapoint guides need.

The calling convention of a model and guide: ``model(x, idx, num_data=N)``, and with fields
``model(x, idx, num_data=N, **fields)`` (e.g. ``y=labels``): the data point stays the first
argument, and each further field arrives as the keyword it was given under.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal, Protocol, runtime_checkable

import torch
from torch import Tensor

from .._checks import check_int

__all__ = ["Batches"]

Binarize = Literal["threshold", "dynamic"] | None
Fields = dict[str, Tensor]

# Names a field cannot take: the call's own arguments and Batches' options.
RESERVED = (
    *("x", "idx", "num_data", "batch_size", "shuffle", "binarize", "drop_last"),
    *("update_model", "update_guide", "before_step"),
)


def split_batch(batch: tuple) -> tuple[Tensor, Tensor, Fields]:
    """``(x, idx)`` or ``(x, idx, fields)`` as ``(x, idx, fields)`` (``{}`` without fields)."""
    if len(batch) == 3:
        return batch[0], batch[1], batch[2]
    return batch[0], batch[1], {}


def check_fields(fields: Fields, num_data: int, where: str) -> None:
    """Refuses fields whose name is reserved, that are not tensors, or whose first dimension is
    not ``num_data``, naming the field (``where``: what holds them)."""
    for name, value in fields.items():
        if name in RESERVED or not name.isidentifier():
            raise ValueError(
                f"{where} cannot have a field named {name!r}: a field is passed to the model as "
                f"a keyword, and {', '.join(RESERVED)} are taken; rename it (e.g. y=labels)"
            )
        if not isinstance(value, Tensor):
            raise TypeError(
                f"the field {name!r} of {where} is a {type(value).__name__}; give a tensor with "
                "one row per data point (e.g. torch.as_tensor(labels))"
            )
        if value.dim() == 0 or value.shape[0] != num_data:
            raise ValueError(
                f"the field {name!r} of {where} has shape {tuple(value.shape)}: it needs one "
                f"row per data point, a first dimension of N = {num_data}"
            )


@runtime_checkable
class DataSource(Protocol):
    """What :func:`~pyro_vae.fit`, :func:`~pyro_vae.evaluate` and
    :func:`~pyro_vae.infer_local` read: minibatches ``(x, idx)`` (or ``(x, idx, fields)``, a
    dict of the batch's other fields) of a data set of ``num_data`` points, ``len()`` of them
    per pass, on ``device``. ``points`` (and ``fields``, where a source has them) are what the
    once-per-data-set checks see: the whole set (:class:`~pyro_vae.Batches`), or a stream's
    first batch (:class:`~pyro_vae.Loader`), with their data-set indices ``point_indices``.
    ``to(device)`` gives the same source on another device.
    ``as_source`` turns a tensor or a ``DataLoader`` into one.

    Example:
        >>> isinstance(Batches(torch.zeros(4, 2), batch_size=2), DataSource)
        True
    """

    num_data: int
    batch_size: int | None
    device: torch.device
    points: Tensor
    point_indices: Tensor

    def __iter__(self) -> Iterator[tuple]: ...

    def __len__(self) -> int: ...

    def to(self, device: torch.device | str) -> DataSource: ...


class Batches:
    """Shuffled minibatches of a tensor data set, with their dataset indices.

    Iterating yields ``(x, idx)`` with ``x = data[idx]`` of shape ``(B, *event_shape)`` and
    ``idx`` of shape ``(B,)``, both on the data's device; with fields (labels, conditions,
    masks, covariates), ``(x, idx, {name: field[idx]})``, which :func:`~pyro_vae.fit` passes
    to the model and guide as keywords: ``model(x, idx, num_data=N, y=y_batch)``. One pass is
    one epoch.

    Args:
        data: The data set, shape ``(N, *event_shape)``, on the training device.
        fields: Further tensors with one row per data point, by name (e.g. ``y=labels``);
            moved with the data, indexed with it, never binarized.
        batch_size: The minibatch size :math:`B`.
        shuffle: Draw a new random order every epoch (from torch's global RNG).
        binarize: ``None`` keeps grey values; ``"threshold"`` rounds them once
            (``x.round()``, as in zuko's tutorial); ``"dynamic"`` draws
            :math:`x \\sim \\mathrm{Bernoulli}(x)` afresh for every batch (Salakhutdinov &
            Murray 2008; the usual benchmark protocol).
        drop_last: Drop the last, smaller batch.

    Example:
        >>> batches = Batches(torch.rand(1000, 784), batch_size=256, binarize="dynamic")
        >>> x, idx = next(iter(batches))
        >>> x.shape, idx.shape, len(batches)
        (torch.Size([256, 784]), torch.Size([256]), 4)
        >>> labelled = Batches(torch.rand(1000, 784), y=torch.arange(1000) % 10, batch_size=256)
        >>> x, idx, fields = next(iter(labelled))
        >>> bool((fields["y"] == idx % 10).all())
        True
    """

    def __init__(
        self,
        data: Tensor,
        *,
        batch_size: int,
        shuffle: bool = True,
        binarize: Binarize = None,
        drop_last: bool = False,
        **fields: Tensor,
    ) -> None:
        if binarize not in (None, "threshold", "dynamic"):
            raise ValueError(f"binarize must be None, 'threshold' or 'dynamic'; got {binarize!r}")
        check_int("batch_size", batch_size)
        if data.dim() == 0 or data.shape[0] == 0:
            raise ValueError(f"the data set is empty (shape {tuple(data.shape)})")
        if binarize is not None and not bool(((data >= 0) & (data <= 1)).all()):
            raise ValueError(
                f"binarize={binarize!r} needs values in [0, 1] (probabilities of a pixel being "
                f"on); got values in [{data.min().item():.3g}, {data.max().item():.3g}]. Scale "
                "the data to [0, 1] first (e.g. divide 0..255 images by 255)"
            )
        if drop_last and batch_size > data.shape[0]:
            raise ValueError(
                f"drop_last=True with batch_size {batch_size} > N = {data.shape[0]} leaves no "
                "batch: use a smaller batch_size or drop_last=False"
            )
        check_fields(fields, data.shape[0], "Batches")
        self.data = data.round() if binarize == "threshold" else data
        self.fields = {name: value.to(data.device) for name, value in fields.items()}
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.binarize = binarize
        self.drop_last = drop_last

    @property
    def num_data(self) -> int:
        """The data set's size :math:`N`."""
        return self.data.shape[0]

    @property
    def device(self) -> torch.device:
        return self.data.device

    @property
    def points(self) -> Tensor:
        """The whole data set, ``data``, which the once-per-data-set checks see."""
        return self.data

    @property
    def point_indices(self) -> Tensor:
        """The data-set indices of :attr:`points`: ``0 .. N - 1``."""
        return torch.arange(self.num_data, device=self.data.device)

    def to(self, device: torch.device | str) -> Batches:
        """The same batches with the data on ``device`` (no copy when already there)."""
        new = Batches.__new__(Batches)
        fields = {name: value.to(device) for name, value in self.fields.items()}
        new.__dict__.update(self.__dict__, data=self.data.to(device), fields=fields)
        return new

    def __len__(self) -> int:
        n, b = self.num_data, self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def __iter__(self) -> Iterator[tuple]:
        n = self.num_data
        if self.shuffle:
            order = torch.randperm(n, device=self.data.device)
        else:
            order = torch.arange(n, device=self.data.device)
        for i in range(len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            yield self.batch(idx)

    def batch(self, idx: Tensor) -> tuple:
        """The minibatch of the points ``idx``: ``(x, idx)``, or ``(x, idx, fields)``."""
        if not self.fields:
            return self.take(idx), idx
        return self.take(idx), idx, {name: value[idx] for name, value in self.fields.items()}

    def take(self, idx: Tensor) -> Tensor:
        """The points ``idx`` as a minibatch (dynamic binarization drawn afresh)."""
        x = self.data[idx]
        return torch.bernoulli(x) if self.binarize == "dynamic" else x
