"""Pictures: image grids (torchvision) and curves and scatter plots (matplotlib), saved as PNG.

Every function writes one file and returns its base name, for the ``images`` list of an
example's ``metrics.json``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from ._images import as_images

__all__ = ["plot_curves", "plot_scatter", "save_grid", "save_reconstructions"]


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

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     save_grid(torch.rand(16, 784), f"{tmp}/samples.png")
        'samples.png'
    """
    from torchvision.utils import save_image

    save_image(as_images(images, image_shape), os.fspath(path), nrow=nrow, padding=2)
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

    Example:
        >>> import tempfile
        >>> x = torch.rand(16, 784)
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     save_reconstructions(x, x.round(), f"{tmp}/reconstructions.png")
        'reconstructions.png'
    """
    a = as_images(originals, image_shape)
    b = as_images(reconstructions, image_shape)
    n = (a.shape[0] // nrow) * nrow or a.shape[0]
    rows = [t for i in range(0, n, nrow) for t in (a[i : i + nrow], b[i : i + nrow])]
    return save_grid(torch.cat(rows), path, image_shape=image_shape, nrow=nrow)


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: str | os.PathLike,
    *,
    xlabel: str = "epoch",
    ylabel: str = "ELBO per data point (nats)",
    title: str | None = None,
    ylim: tuple[float | None, float | None] | None = None,
) -> str:
    """Plots named curves ``{label: (xs, ys)}`` on one set of axes and saves a PNG.

    Args:
        curves: ``{label: (xs, ys)}``.
        path: The PNG file to write.
        xlabel: The x axis's label.
        ylabel: The y axis's label.
        title: The figure's title.
        ylim: ``(bottom, top)`` of the y axis (``None`` for automatic), e.g. to leave out the
            first epochs' losses.

    Returns:
        The file's name.

    Example:
        >>> import tempfile
        >>> curves = {"train": ([1, 2, 3], [-120.0, -110.0, -105.0])}
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     plot_curves(curves, f"{tmp}/elbo.png", title="ELBO")
        'elbo.png'
    """
    plt = _figure()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for label, (xs, ys) in curves.items():
        ax.plot(list(xs), list(ys), label=label, marker="." if len(xs) < 50 else None)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.fspath(path))
    plt.close(fig)
    return os.path.basename(os.fspath(path))


def plot_scatter(
    points: Tensor,
    colors: Tensor,
    path: str | os.PathLike,
    *,
    title: str | None = None,
    colorbar: str | None = None,
    cmap: str = "viridis",
) -> str:
    """A 2-D scatter plot of ``points`` ``(N, 2)`` coloured by ``colors`` ``(N,)``.

    Returns:
        The file's name.

    Example:
        >>> import tempfile
        >>> x, z = make_circle(500)
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     plot_scatter(x, z, f"{tmp}/circle.png", colorbar="true z")
        'circle.png'
    """
    plt = _figure()
    p = points.detach().float().cpu()
    c = colors.detach().float().cpu().reshape(-1)
    fig, ax = plt.subplots(figsize=(5, 5), dpi=120)
    sc = ax.scatter(p[:, 0], p[:, 1], c=c, s=2, cmap=cmap)
    ax.set_aspect("equal")
    if title:
        ax.set_title(title)
    if colorbar:
        fig.colorbar(sc, ax=ax, label=colorbar, shrink=0.8)
    fig.tight_layout()
    fig.savefig(os.fspath(path))
    plt.close(fig)
    return os.path.basename(os.fspath(path))
