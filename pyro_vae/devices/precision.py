r"""Mixed precision: the networks' arithmetic in bfloat16, the probabilities in float32.

``fit``, ``evaluate``, ``infer_local`` and ``amortization_gap`` take ``precision=``:

* ``"32"`` (the default): everything in the data's floating dtype;
* ``"bf16-mixed"``: the matrix products and convolutions of the *networks* — the decoders that
  likelihoods call, the encoders that guides call, a semi-supervised VAE's classifier — run
  in bfloat16 under :func:`torch.autocast` (``"cpu"`` or ``"cuda"``, by the inputs' device),
  and each network's output is cast back to float32 before it becomes a distribution's
  parameter (:func:`network`).

What stays in float32, site by site, and why:

* **log-densities and the ELBO's sums.** A data point's :math:`\log p(x \mid z)` is a sum of
  hundreds of terms of a fraction of a nat each; bfloat16 (8 bits of mantissa) holds a value
  near 100 to the nearest 0.5, so a binarized MNIST image's ~100-nat term would be off by up
  to 0.25 nats from rounding alone, each of its terms by :math:`2^{-9}` of itself. The
  distributions are built from float32 parameters, so every log-density and every sum
  over them runs in float32 (nothing outside :func:`network` is autocast).
* **flows.** The transforms of flow priors (MAF) and flow posteriors (IAF, planar, zuko's)
  feed their log-determinants directly, which add up over transforms; their hyper-networks
  are small beside the encoder and decoder. They are not autocast.
* **the importance-sampled log-likelihood.** A log-sum-exp of thousands of log-weights, each
  a float32 log-density: as above.
* **per-datapoint parameters, all parameters, gradients and the optimizer's state**: float32
  (autocast casts a weight to bfloat16 for each product; its gradient comes back and
  accumulates in float32).

A network's *output* is rounded to bfloat16 once (its last product), like any mixed-precision
classifier's logits: a relative rounding of :math:`2^{-9}` per parameter, unbiased, whose
effect on the mean ELBO and log-likelihood is measured in ``docs/guide/speed.md``.

``"16-mixed"`` (float16 with a gradient scaler) is not offered: float16's range (largest
65504, smallest normal :math:`6 \cdot 10^{-5}`) needs the loss scaled and every step checked
for overflow and skipped, through every optimizer path (Pyro's per-parameter optimizers,
:class:`~pyro_vae.LazyAdam`'s sparse rows, the compiled Adam), for GPUs that lack bfloat16
(before NVIDIA's Ampere); bfloat16 has float32's range and needs none of it.

Example:
    >>> net = torch.nn.Linear(4, 3)
    >>> with use_precision("bf16-mixed"):
    ...     out = network(net, torch.zeros(2, 4))
    >>> out.dtype
    torch.float32
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from .. import _precision
from .._precision import Active, check_bf16_data, check_precision

__all__ = ["PRECISIONS", "network", "use_precision"]

PRECISIONS = _precision.PRECISIONS
"""The precisions that ``fit``, ``evaluate``, ``infer_local`` and ``amortization_gap`` take."""


@contextmanager
def use_precision(precision: str, data: Tensor | None = None) -> Iterator[None]:
    """Within: :func:`network` calls run at ``precision``; the previous one is put back after.
    The setting is the process's (not one thread's): run one precision at a time.

    Args:
        precision: One of :data:`PRECISIONS`.
        data: A tensor of the data (optional): ``"bf16-mixed"`` is refused for data that are
            not float32 (float64 data ask for float64 arithmetic) and on a CUDA device
            without bfloat16.

    Raises:
        ValueError: For an unknown precision, or ``"bf16-mixed"`` with such data.
    """
    check_precision(precision)
    if precision == "bf16-mixed" and data is not None:
        check_bf16_data(data)
    old = Active.lower
    Active.lower = torch.bfloat16 if precision == "bf16-mixed" else None
    try:
        yield
    finally:
        Active.lower = old


def network(net: nn.Module, *inputs: Tensor) -> Tensor:
    """``net(*inputs)`` at the current precision: under ``"bf16-mixed"`` with its products
    in bfloat16 (:func:`torch.autocast` on the inputs' device) and its output cast back to the
    first input's dtype; else ``net(*inputs)`` as it is.

    Likelihoods and guides call their networks through it; a hand-written likelihood or guide
    that does the same gets the mixed precision of ``fit(precision="bf16-mixed")``.

    Args:
        net: A network.
        *inputs: Its inputs; the first one's device picks the autocast device and its
            floating dtype the output's (float32 for integer inputs; ``meta`` tensors have no
            autocast and float64 ones stay float64: the call runs as it is).

    Returns:
        The network's output (a tensor, or a tuple of them, each cast back).
    """
    lower, first = Active.lower, inputs[0]
    kind = first.device.type
    if lower is None or first.dtype == torch.float64 or kind not in ("cpu", "cuda"):
        return net(*inputs)
    with torch.autocast(kind, dtype=lower):
        out = net(*inputs)
    dtype = first.dtype if first.is_floating_point() else torch.float32
    if isinstance(out, tuple):
        return tuple(o.to(dtype) if o.is_floating_point() else o for o in out)
    return out.to(dtype)
