"""How :func:`~pyro_vae.evaluate` draws and adds up its scores: a :class:`Scorer` holds one
evaluation's pair and settings and decides, once, on the first chunk, whether its particles
are drawn under a particle plate (checked against a pass without one, and against Pyro's
``TraceEnum_ELBO``, with the same random numbers); :func:`score` sums a data set's scores on
the device and reads them once."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass

import pyro
import torch
from pyro import poutine
from pyro.infer import TraceEnum_ELBO
from torch import Tensor

from .._checks import check_pair
from .._placement import DeviceCheck
from ..data.batches import Batches, split_batch
from ..data.loaders import Loader
from ._weights import Unscaled, pair_scores, run_pair, training_only_hidden

__all__ = ["Scorer", "score"]


@dataclass
class Scorer:
    """One evaluation's pair and settings, and how its particles are drawn (``vectorized``:
    under a particle plate; else one particle per pass), decided on the first chunk."""

    model: Callable[..., object]
    guide: Callable[..., object]
    num_particles: int
    max_rows: int
    max_plate_nesting: int
    num_data: int | None
    vectorized: bool | None = None

    def kwargs(self, fields: Mapping[str, Tensor]) -> dict[str, object]:
        kwargs: dict[str, object] = {} if self.num_data is None else {"num_data": self.num_data}
        return {**kwargs, **fields}

    def scores(self, x: Tensor, idx: Tensor, fields: dict, particles: int | None) -> tuple:
        """(ELBO terms, log weights, values scored), each ``(particles or 1, B)``."""
        nesting = self.max_plate_nesting
        traces = run_pair(self.model, self.guide, x, idx, self.kwargs(fields),
                          particles=particles, max_plate_nesting=nesting)  # fmt: skip
        return pair_scores(*traces, particles=particles, num_points=x.shape[0],
                           max_plate_nesting=self.max_plate_nesting)  # fmt: skip

    def chunk(self, x: Tensor, idx: Tensor, fields: dict) -> tuple[Tensor, Tensor, Tensor]:
        """The ``num_particles`` scores of a chunk of points, ``(K, B)`` each (the values
        scored: ``(B,)``), in passes of at most ``max_rows`` (point, particle) pairs."""
        if self.vectorized:
            size = max(1, min(self.num_particles, self.max_rows // x.shape[0]))
            sizes = [min(size, self.num_particles - s) for s in range(0, self.num_particles, size)]
        else:
            sizes = [None] * self.num_particles
        parts = [self.scores(x, idx, fields, k) for k in sizes]
        elbo, log_w = (torch.cat([p[i] for p in parts]) for i in (0, 1))
        return elbo, log_w, parts[0][2][0]

    def choose(self, x: Tensor, idx: Tensor, fields: dict) -> None:
        """Decides, on a few points and one particle with common random numbers, whether the
        pair broadcasts over a particle plate (the vectorized pass gives the one-particle
        pass's scores), and checks the one-particle ELBO against ``TraceEnum_ELBO``'s."""
        x, idx, fields = x[:32], idx[:32], {k: v[:32] for k, v in fields.items()}
        devices = [x.device] if x.device.type == "cuda" and torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(0)
            try:
                vectorized, error = self.scores(x, idx, fields, 1)[:2], None
            except (RuntimeError, IndexError) as e:  # shapes that do not broadcast
                vectorized, error = None, e
            torch.manual_seed(0)
            single = self.scores(x, idx, fields, None)[:2]
            if _no_values(x):  # meta or fake tensors: shapes only
                self.vectorized = vectorized is not None
                return
            torch.manual_seed(0)
            reference = _pyro_elbo(self, x, idx, fields)
        if reference is not None and not _close(single[0].sum(), reference):
            raise ValueError(
                f"evaluate's ELBO of this pair, {single[0].sum().item():.6g} on {x.shape[0]} "
                f"points, differs from pyro.infer.TraceEnum_ELBO's, {reference.item():.6g}, "
                "with the same random numbers (scales set to 1 and training-only sites left "
                "out on both sides): the pair scores something evaluate does not see. Score "
                "it with a Pyro loss directly"
            )
        self.vectorized = vectorized is not None and all(
            _close(a, b) for a, b in zip(vectorized, single, strict=True)
        )
        if not self.vectorized:
            why = f" ({type(error).__name__}: {error})" if error is not None else ""
            warnings.warn(
                "evaluate draws this pair's particles one at a time: under a particle plate "
                f"(pyro.plate('particles', K, dim={-1 - self.max_plate_nesting})) it did not "
                f"give the same scores{why}. Its model or guide does not broadcast over a "
                "dimension left of its plates, e.g. torch.cat([z, onehot(y)], -1) with z "
                "(K, B, D) and onehot(y) (B, C): expand the second to z.shape[:-1] first "
                "(onehot(y).expand(*z.shape[:-1], -1)) to score K particles in one pass",
                stacklevel=4,
            )


def _pyro_elbo(scorer: Scorer, x: Tensor, idx: Tensor, fields: dict) -> Tensor | None:
    """``TraceEnum_ELBO``'s one-particle ELBO of the points (scales 1, training-only sites
    hidden), or ``None`` where Pyro's loss cannot score the pair."""
    elbo = TraceEnum_ELBO(max_plate_nesting=scorer.max_plate_nesting)
    model, guide = (Unscaled()(training_only_hidden(f)) for f in (scorer.model, scorer.guide))
    try:
        with poutine.block(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return -elbo.differentiable_loss(model, guide, x, idx, **scorer.kwargs(fields))
    except (RuntimeError, ValueError, NotImplementedError, IndexError):
        return None


def _close(a: Tensor, b: Tensor) -> bool:
    """Equal within float32 rounding of sums over a few points' log-densities (non-finite
    values where both are: a NaN is the caller's to report)."""
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return bool(torch.isclose(a, b, rtol=1e-4, atol=1e-4, equal_nan=True).all())


def _no_values(t: Tensor) -> bool:
    return t.device.type == "meta" or isinstance(t, torch._subclasses.fake_tensor.FakeTensor)


def score(
    scorer: Scorer, data: Batches | Loader | list, offset: int, check: DeviceCheck
) -> tuple[float, float, int, float]:
    """Sums of the ELBO and the log-likelihood estimates over ``data``'s points, their
    number and the values scored, added up on the device and read once at the end. The
    first chunk checks the pair (devices, then the sites' shapes, then how to draw the
    particles) and runs validated as the user chose."""
    sums, count = None, 0
    for batch in data:
        x_batch, local_idx, fields_batch = split_batch(batch)
        idx_batch = local_idx + offset
        step = max(1, scorer.max_rows // scorer.num_particles)
        names = list(fields_batch)
        parts = zip(x_batch.split(step), idx_batch.split(step),
                    *(fields_batch[k].split(step) for k in names), strict=True)  # fmt: skip
        for x, idx, *field_values in parts:
            fields = dict(zip(names, field_values, strict=True))
            if count == 0:  # once: the parameters' devices, the sites' shapes, the particles
                pair = scorer.model, scorer.guide
                scorer.model, scorer.guide = check(scorer.model), check(scorer.guide)
                check_pair(scorer.model, scorer.guide, x, idx, scorer.num_data, fields)
                scorer.choose(x, idx, fields)
            with nullcontext() if count == 0 else pyro.validation_enabled(False):
                elbo, lw, scored = scorer.chunk(x, idx, fields)
            if count == 0:
                scorer.model, scorer.guide = pair
            ll = lw.logsumexp(0) - math.log(scorer.num_particles)
            chunk = torch.stack([elbo.mean(0).sum(), ll.sum(), scored.sum()]).double()
            sums = chunk if sums is None else sums + chunk
            count += x.shape[0]
    if sums is None:
        return 0.0, 0.0, 0, 0.0
    elbo_sum, ll_sum, values = sums.tolist()
    return elbo_sum, ll_sum, count, values
