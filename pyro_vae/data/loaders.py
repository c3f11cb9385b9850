"""Any data pipeline: a map-style dataset made to yield ``(x, index)`` (:class:`Indexed`) and
minibatches from any re-iterable, such as a :class:`torch.utils.data.DataLoader`, moved to the
training device as they come (:class:`Loader`). :class:`~pyro_vae.Batches` stays the fast path
for data sets that fit on the device.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from .batches import RESERVED, Binarize, Fields, split_batch

__all__ = ["Indexed", "Loader"]


class Indexed(torch.utils.data.Dataset):
    """A map-style dataset whose items are ``(x, index)``, or ``(x, index, fields)``: what
    :func:`~pyro_vae.fit` reads through a :class:`torch.utils.data.DataLoader` (per-datapoint
    guides need the indices).

    Args:
        dataset: Any map-style dataset; an item is ``x`` or a tuple whose first element is
            ``x`` (e.g. torchvision's ``(image, label)`` after ``transform=ToTensor()``).
        binarize: ``None``, ``"threshold"`` (``x.round()``) or ``"dynamic"``
            (:math:`x \\sim \\mathrm{Bernoulli}(x)` afresh each time an item is read, in the
            loader's worker), as in :class:`Batches`.
        fields: Names for the item's further elements, in order (``("y",)`` keeps
            torchvision's label as the field ``y``, passed to the model as ``y=``); the
            elements without a name are dropped. Default: none (``x`` alone).

    Example:
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> data = Indexed(TensorDataset(torch.rand(10, 3)), binarize="dynamic")
        >>> x, idx = next(iter(DataLoader(data, batch_size=4)))
        >>> x.shape, idx.tolist()
        (torch.Size([4, 3]), [0, 1, 2, 3])
        >>> labelled = Indexed(TensorDataset(torch.rand(10, 3), torch.arange(10)), fields=("y",))
        >>> x, idx, fields = next(iter(DataLoader(labelled, batch_size=4)))
        >>> fields["y"].tolist()
        [0, 1, 2, 3]
    """

    def __init__(
        self,
        dataset: torch.utils.data.Dataset,
        *,
        binarize: Binarize = None,
        fields: Sequence[str] = (),
    ) -> None:
        if binarize not in (None, "threshold", "dynamic"):
            raise ValueError(f"binarize must be None, 'threshold' or 'dynamic'; got {binarize!r}")
        if isinstance(fields, str):
            raise TypeError(f"fields must be a sequence of names, e.g. ({fields!r},)")
        for name in fields:
            if name in RESERVED or not name.isidentifier():
                raise ValueError(
                    f"Indexed cannot have a field named {name!r}: a field is passed to the model "
                    f"as a keyword, and {', '.join(RESERVED)} are taken"
                )
        self.dataset, self.binarize, self.fields = dataset, binarize, tuple(fields)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple:
        item = self.dataset[index]
        x = item[0] if isinstance(item, (tuple, list)) else item
        if isinstance(x, dict):
            raise TypeError(
                f"item {index} of {type(self.dataset).__name__} is a dict (keys "
                f"{sorted(x)}); Indexed needs the data point first: a tensor, or a tuple whose "
                "first element is one (wrap the dataset to return e.g. item['image'])"
            )
        try:
            x = torch.as_tensor(x)
        except (TypeError, RuntimeError, ValueError) as e:
            raise TypeError(
                f"item {index} of {type(self.dataset).__name__} is a {type(x).__name__}, not "
                f"a tensor ({e}); convert it in the dataset, e.g. transform=ToTensor() for "
                "images"
            ) from None
        if self.binarize is not None:
            x = self._binarized(x, index)
        if not self.fields:
            return x, index
        rest = list(item[1:]) if isinstance(item, (tuple, list)) else []
        if len(rest) < len(self.fields):
            raise ValueError(
                f"item {index} of {type(self.dataset).__name__} has {len(rest)} element(s) "
                f"after x, but Indexed names {len(self.fields)} fields {self.fields}: name only "
                "the elements the dataset's items hold"
            )
        named = zip(self.fields, rest[: len(self.fields)], strict=True)
        return x, index, {name: self._field(name, v, index) for name, v in named}

    def _field(self, name: str, value: object, index: int) -> Tensor:
        """A field's value as a tensor, or a :class:`TypeError` naming the field and item."""
        try:
            if value is None or isinstance(value, str):
                raise TypeError(f"{type(value).__name__} values are not numbers")
            return torch.as_tensor(value)
        except (TypeError, RuntimeError, ValueError) as e:
            raise TypeError(
                f"the field {name!r} of item {index} of {type(self.dataset).__name__} is "
                f"{value!r} ({e}): fields are numbers (a label, a condition, a mask); encode "
                "it as one in the dataset (e.g. a class index for a name, a mask for a missing "
                "value)"
            ) from None

    def _binarized(self, x: Tensor, index: int) -> Tensor:
        """``x`` thresholded or drawn, once its values are checked to be probabilities."""
        if not x.is_floating_point():
            raise ValueError(
                f"binarize={self.binarize!r} needs probabilities, floating-point values in "
                f"[0, 1]; item {index} is {x.dtype}: convert it (e.g. ToTensor() scales images "
                "to [0, 1], or x.float() / 255)"
            )
        low, high = x.min().item(), x.max().item()  # (in the loader's worker, on the CPU)
        if low < 0 or high > 1:
            raise ValueError(
                f"binarize={self.binarize!r} needs values in [0, 1]; item {index} has values "
                f"in [{low:.3g}, {high:.3g}]: scale it first (e.g. x / 255)"
            )
        return x.round() if self.binarize == "threshold" else torch.bernoulli(x)


class Loader:
    """Minibatches ``(x, idx)`` or ``(x, idx, fields)`` from any re-iterable (e.g. a DataLoader over
    :class:`Indexed`), moved to the training device as they come (``non_blocking``: pair it
    with ``pin_memory=True``). :func:`~pyro_vae.fit` and :func:`~pyro_vae.evaluate` wrap a
    DataLoader in it themselves.

    Args:
        batches: The minibatches; one pass is one epoch.
        num_data: The data set's size :math:`N`; default ``len(batches.dataset)``.
        device: Where the batches go; default: where they come from.

    Example:
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> loader = Loader(DataLoader(Indexed(TensorDataset(torch.rand(10, 3))), batch_size=4))
        >>> loader.num_data, len(loader), loader.points.shape  # the first batch's points
        (10, 3, torch.Size([4, 3]))
    """

    binarize = None  # applied by the dataset (Indexed), not here

    def __init__(
        self,
        batches: Iterable[tuple[Tensor, Tensor]],
        *,
        num_data: int | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        if num_data is None:
            dataset = getattr(batches, "dataset", None)
            if dataset is None:
                raise ValueError("Loader needs num_data (the data set's size N)")
            num_data = len(dataset)
        if num_data < 1:
            raise ValueError("the data set is empty")
        if isinstance(batches, DataLoader) and batches.batch_sampler is None:
            raise ValueError(
                "the DataLoader has batch_size=None: it yields single items, not minibatches; "
                "give it a batch size (DataLoader(dataset, batch_size=256, ...))"
            )
        self.batches, self.num_data = batches, num_data
        self._device = torch.device(device) if device is not None else None
        self._first: tuple | None = None

    @property
    def batch_size(self) -> int | None:
        return getattr(self.batches, "batch_size", None)

    @property
    def device(self) -> torch.device:
        return self._device if self._device is not None else self.points.device

    def to(self, device: torch.device | str) -> Loader:
        """The same batches, moved to ``device`` as they come."""
        new = Loader(self.batches, num_data=self.num_data, device=device)
        if self._first is not None:  # the probe is not read again
            x, fields, idx = self._first
            new._first = x.to(device), {k: v.to(device) for k, v in fields.items()}, idx.to(device)
        return new

    def __len__(self) -> int:
        return len(self.batches)

    @property
    def points(self) -> Tensor:
        """The first batch's points, read once with their own randomness, which is what the
        checks that need a look at the data (dtype, shape, support) see of a streamed set."""
        return self._probe()[0]

    @property
    def fields(self) -> Fields:
        """The first batch's fields (``{}`` without), as :attr:`points`."""
        return self._probe()[1]

    @property
    def point_indices(self) -> Tensor:
        """The data-set indices of :attr:`points` (a shuffled loader's first batch: not
        ``0, 1, ...``)."""
        return self._probe()[2]

    def _probe(self) -> tuple[Tensor, Fields]:
        if self._first is None:
            with torch.random.fork_rng():
                first = next(iter(self), None)
            if first is None:
                raise ValueError(
                    f"the loader yields no batch ({len(self.batches)} per pass; e.g. "
                    "drop_last=True with a batch_size larger than the data set): use a smaller "
                    "batch_size or drop_last=False"
                )
            x, idx, fields = split_batch(first)
            self._first = x, fields, idx
        return self._first

    def __iter__(self) -> Iterator[tuple]:
        for item in self.batches:
            fielded = isinstance(item, (tuple, list)) and len(item) == 3
            if not isinstance(item, (tuple, list)) or len(item) not in (2, 3):
                raise ValueError(
                    "a loader must yield (x, idx) pairs or (x, idx, fields) triples: wrap the "
                    "dataset in pv.Indexed(dataset) (fields=(...) names its other elements)"
                )
            if fielded and not isinstance(item[2], dict):
                raise ValueError(
                    "a loader's third element must be a dict of fields by name, as "
                    f"pv.Indexed(dataset, fields=(...)) yields; got {type(item[2]).__name__}"
                )
            x, idx, fields = split_batch(item)
            if self._device is not None:
                x = x.to(self._device, non_blocking=True)
                idx = idx.to(self._device, non_blocking=True)
                fields = {k: v.to(self._device, non_blocking=True) for k, v in fields.items()}
            yield (x, idx, fields) if fielded else (x, idx)
