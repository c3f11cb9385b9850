"""Pictures: grids of samples and reconstructions saved as PNG."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["save_grid", "save_reconstructions"]


def _as_images(x: Tensor, image_shape: Sequence[int]) -> Tensor:
    return x.detach().float().cpu().reshape(-1, *image_shape).clamp(0, 1)


def save_grid(
    images: Tensor,
    path: str | os.PathLike,
    *,
    image_shape: Sequence[int] = (1, 28, 28),
    nrow: int = 8,
) -> str:
    """Saves images ``(N, *)`` with values in ``[0, 1]`` as one PNG grid.

    Args:
        images: ``N`` images, each reshaped to ``image_shape`` (``C, H, W``).
        path: The PNG file to write.
        image_shape: The shape of one image.
        nrow: Images per row.

    Returns:
        The file's name (for ``metrics.json``).
    """
    from torchvision.utils import save_image

    save_image(_as_images(images, image_shape), os.fspath(path), nrow=nrow, padding=2)
    return os.path.basename(os.fspath(path))


def save_reconstructions(
    originals: Tensor,
    reconstructions: Tensor,
    path: str | os.PathLike,
    *,
    image_shape: Sequence[int] = (1, 28, 28),
    nrow: int = 8,
) -> str:
    """Saves data and their reconstructions as alternating rows of one PNG grid.

    Rows ``0, 2, 4, ...`` hold ``nrow`` originals and the row under each holds their
    reconstructions.

    Returns:
        The file's name.
    """
    a = _as_images(originals, image_shape)
    b = _as_images(reconstructions, image_shape)
    n = (a.shape[0] // nrow) * nrow or a.shape[0]
    rows = [t for i in range(0, n, nrow) for t in (a[i : i + nrow], b[i : i + nrow])]
    return save_grid(torch.cat(rows), path, image_shape=image_shape, nrow=nrow)
