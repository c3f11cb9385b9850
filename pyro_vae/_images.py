"""Tensors as a batch of images ``(B, *image_shape)`` in [0, 1] on the CPU: what the image
grids of :mod:`pyro_vae.plots` and of TensorBoard (``train._board``) draw."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor

__all__ = ["as_images"]


def as_images(x: Tensor, image_shape: Sequence[int]) -> Tensor:
    """``x`` ``(B, ...)`` as ``(B, *image_shape)``, detached, float, on the CPU, clamped to
    [0, 1]; a :class:`ValueError` with the shape to pass when the sizes disagree."""
    size = math.prod(image_shape)
    per_image = math.prod(x.shape[1:]) if x.dim() > 1 else x.numel()
    if per_image != size:
        side = math.isqrt(per_image)
        guess = f"(1, {side}, {side})" if side * side == per_image else "(C, H, W)"
        raise ValueError(
            f"images of {per_image} values each cannot be drawn as image_shape="
            f"{tuple(image_shape)} ({size} values): pass image_shape={guess}"
        )
    return x.detach().float().cpu().reshape(-1, *image_shape).clamp(0, 1)
