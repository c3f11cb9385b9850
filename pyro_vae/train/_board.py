"""TensorBoard logging for :func:`~pyro_vae.fit` (``log=pv.Logging(tensorboard=...)``).

Needs the optional extra: ``pip install 'pyro_vae[tensorboard]'``.
"""

from __future__ import annotations

import os
import warnings

import torch
from torch import Tensor, nn

from .._images import as_images

__all__ = ["Board"]

MISSING = "Logging(tensorboard=...) needs TensorBoard: pip install 'pyro_vae[tensorboard]'"


class Board:
    """Writes a training run's scalars (and optionally image grids) as TensorBoard events.

    Scalars: ``train/loss_running`` (the running loss at each loss read, at the global step),
    ``train/loss`` (the epoch's mean negative ELBO per point), ``train/beta`` (the epoch's KL
    weight) and ``validation/elbo``, all but the first at the epoch. Images:
    ``images/samples`` and ``images/reconstructions`` for VAEs of image-shaped data.

    Args:
        log_dir: The folder for the event files (created if missing).

    Raises:
        ImportError: If TensorBoard is not installed (it names the extra to install).

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     board = Board(folder)
        ...     board.running(0, 2.5)
        ...     board.epoch(1, loss=2.0, beta=1.0, val_elbo=-2.1)
        ...     board.close()
        ...     len(os.listdir(folder))
        1
    """

    def __init__(self, log_dir: str | os.PathLike) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise ImportError(MISSING) from e
        self.writer = SummaryWriter(log_dir=os.fspath(log_dir))
        self._told = False  # (that the image grids asked for cannot be drawn)

    def running(self, step: int, value: float) -> None:
        """Logs the running loss ``value`` read at global ``step``."""
        self.writer.add_scalar("train/loss_running", value, step)

    def epoch(self, epoch: int, loss: float, beta: float, val_elbo: float | None = None) -> None:
        """Logs an epoch's loss, its β and (when there is one) its validation ELBO; flushes."""
        self.writer.add_scalar("train/loss", loss, epoch)
        self.writer.add_scalar("train/beta", beta, epoch)
        if val_elbo is not None:
            self.writer.add_scalar("validation/elbo", val_elbo, epoch)
        self.writer.flush()

    def images(self, epoch: int, modules: nn.Module | None, data: Tensor, idx: Tensor) -> None:
        """Logs 16 samples and reconstructions of ``data[:8]`` (their data-set indices
        ``idx[:8]``, which a per-datapoint guide reads) when ``modules`` is a VAE
        (has ``sample`` and ``reconstruct``) of images: ``event_shape`` 784 (shown 1×28×28)
        or ``(C, H, W)``; does nothing otherwise. Draws its own random numbers: the caller's
        RNG stream is unchanged."""
        if not (hasattr(modules, "sample") and hasattr(modules, "reconstruct")):
            return self._skip(f"{type(modules).__name__} has no sample and reconstruct")
        if getattr(modules, "field_names", ()):  # its pictures need the batches' fields
            fields = ", ".join(modules.field_names)
            return self._skip(f"its samples and reconstructions need the fields ({fields})")
        shape = _image_shape(getattr(modules, "event_shape", None))
        if shape is None:
            return self._skip("its data points are not images (784 values or (C, H, W))")
        from torchvision.utils import make_grid

        devices = [data.device] if data.device.type == "cuda" else []
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            samples = modules.sample(16)
            x = data[:8]
            recon = modules.reconstruct(x, idx[:8].to(x.device))
        # 8-bit values (0..255, e.g. a discretized logistic likelihood) shown as grey values
        scale = 255.0 if float(x.max()) > 1.0 else 1.0
        for tag, images, rows in (
            ("images/samples", samples, 4),
            ("images/reconstructions", torch.cat([x.to(recon.dtype), recon]), 8),
        ):
            grid = make_grid(as_images(images / scale, shape), nrow=rows)
            self.writer.add_image(tag, grid, epoch)

    def _skip(self, why: str) -> None:
        """Says once that the image grids asked for are not drawn, and why."""
        if not self._told:
            warnings.warn(f"images_every: no TensorBoard images for this model: {why}",
                          stacklevel=4)  # fmt: skip
            self._told = True

    def close(self) -> None:
        """Flushes and closes the event file."""
        self.writer.close()


def _image_shape(event_shape: torch.Size | None) -> tuple[int, ...] | None:
    if event_shape is None:
        return None
    event_shape = tuple(event_shape)
    if event_shape == (784,):
        return (1, 28, 28)
    if len(event_shape) == 3:
        return event_shape
    return None
