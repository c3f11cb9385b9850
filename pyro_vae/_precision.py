"""The precision setting behind :mod:`pyro_vae.devices.precision`: the choices, the one
that the running calls use (set by ``use_precision``, read by ``network``), and its checks,
which ``fit``, ``evaluate`` and the options share."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["PRECISIONS", "Active", "check_bf16_data", "check_precision", "current_precision"]

PRECISIONS = ("32", "bf16-mixed")
"""The precisions that ``fit``, ``evaluate``, ``infer_local`` and ``amortization_gap`` take."""


class Active:
    """The precision of the calls now running (set by ``use_precision``, read by ``network``,
    both in :mod:`pyro_vae.devices.precision`). A plain attribute, so that ``torch.compile``
    guards on it."""

    lower: torch.dtype | None = None


def check_precision(precision: object) -> str:
    """``precision`` if it is one of :data:`PRECISIONS`.

    Raises:
        ValueError: For anything else, naming the choices (and why ``"16-mixed"`` is not one).
    """
    if isinstance(precision, str) and precision in PRECISIONS:
        return precision
    why = ""
    if precision in ("16-mixed", "fp16", "16"):
        why = (
            " (float16 would need a gradient scaler on every optimizer path; bfloat16 has "
            "float32's range and needs none)"
        )
    raise ValueError(
        f"precision={precision!r} is not one of {list(PRECISIONS)}: '32' computes in the "
        f"data's dtype, 'bf16-mixed' runs the networks' products in bfloat16{why}"
    )


def current_precision() -> str:
    """The precision of the calls now running: ``"32"`` or ``"bf16-mixed"``."""
    return "32" if Active.lower is None else "bf16-mixed"


def check_bf16_data(data: Tensor) -> None:
    """Refuses bfloat16-mixed arithmetic for data that are not float32, or on a CUDA device
    without bfloat16."""
    if data.is_floating_point() and data.dtype != torch.float32:
        raise ValueError(
            f"precision='bf16-mixed' mixes bfloat16 into float32 arithmetic; the data are "
            f"{data.dtype}. Convert them with .float() (and the model with .float()), or keep "
            "precision='32'"
        )
    if data.device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(
            f"precision='bf16-mixed' needs bfloat16 arithmetic, which "
            f"{torch.cuda.get_device_name(data.device)} does not have (NVIDIA GPUs have it "
            "from the Ampere generation on): keep precision='32'"
        )
