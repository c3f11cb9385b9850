"""Data sets as tensors: MNIST from its original files and a synthetic 2-D circle.

Each loader returns the whole data set as one tensor (on the training device), ready for
:class:`~pyro_vae.Batches`.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

__all__ = ["default_data_dir", "load_mnist", "make_circle"]

_DATA_ENV = "PYRO_VAE_DATA"


def default_data_dir() -> str:
    """The folder that holds ``MNIST/raw``, looked up in this order (the one place it is
    decided): ``$PYRO_VAE_DATA`` when set; else ``../shared/data`` (relative to the working
    directory) when it holds ``MNIST/raw``; else ``./data`` (where torchvision may download).
    """
    if os.environ.get(_DATA_ENV):
        return os.environ[_DATA_ENV]
    shared = os.path.join("..", "shared", "data")
    if os.path.isdir(os.path.join(shared, "MNIST", "raw")):
        return shared
    return "data"


def load_mnist(
    root: str | os.PathLike | None = None,
    *,
    train: bool = True,
    device: torch.device | str | None = None,
    download: bool = False,
    flatten: bool = True,
) -> tuple[Tensor, Tensor]:
    """Loads MNIST through :class:`torchvision.datasets.MNIST` into tensors on ``device``.

    Args:
        root: The folder that holds ``MNIST/raw`` (torchvision's layout). Default:
            :func:`default_data_dir`.
        train: The 60000 training images, else the 10000 test images.
        device: Where the tensors live (default: torch's default device).
        download: Let torchvision download the files when they are missing.
        flatten: Images as ``(N, 784)`` vectors, else ``(N, 1, 28, 28)``.

    Returns:
        Images ``(N, 784)`` (or ``(N, 1, 28, 28)``) as float32 grey values in ``[0, 1]`` and
        labels ``(N,)`` (int64).

    Raises:
        FileNotFoundError: When the files are neither on disk nor downloadable; the message
            names the folder looked in and how to point elsewhere.

    Example:
        >>> images, labels = load_mnist(train=False)  # doctest: +SKIP
        >>> images.shape, labels.shape  # doctest: +SKIP
        (torch.Size([10000, 784]), torch.Size([10000]))
    """
    from torchvision.datasets import MNIST

    given = root is not None
    root = os.fspath(root if given else default_data_dir())
    try:
        ds = MNIST(root, train=train, download=download)
    except (RuntimeError, OSError) as e:
        if given:  # the argument wins over the environment: say so
            how = (
                f"load_mnist(root={root!r}) looks there only (${_DATA_ENV} applies when root "
                "is not given): pass the folder that holds MNIST/raw, or no root"
            )
        else:
            how = (
                f"looked up by default_data_dir(): ${_DATA_ENV}, else ../shared/data, else "
                f"./data. Set ${_DATA_ENV} to the folder that holds MNIST/raw, pass "
                "load_mnist(root=...) (--data-dir in the examples), or download=True"
            )
        raise FileNotFoundError(
            f"MNIST was not found in {os.path.abspath(os.path.join(root, 'MNIST', 'raw'))}"
            + ("" if download else " and download=False")
            + f" ({str(e).splitlines()[0] if str(e) else type(e).__name__}); {how}"
        ) from e
    device = torch.get_default_device() if device is None else device
    images = ds.data.to(device=device, dtype=torch.float32).div_(255)
    images = images.flatten(1) if flatten else images.unsqueeze(1)
    return images, ds.targets.to(device)


def make_circle(
    num_data: int = 20000,
    *,
    noise: float = 0.1,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """Points on a noisy unit circle: :math:`z_n \\sim \\mathcal{N}(0, 1)`,
    :math:`x_n = (\\cos z_n, \\sin z_n) + \\text{noise} \\cdot \\epsilon_n`.

    Args:
        num_data: :math:`N`.
        noise: The noise's standard deviation.
        seed: Seed of a private generator (the global RNG is untouched). The points are
            drawn on the CPU: the same points on every device.
        device: Where they are returned (default: torch's default device).

    Returns:
        ``x`` ``(N, 2)`` and the true latents ``z`` ``(N, 1)``.

    Example:
        >>> x, z = make_circle(100)
        >>> x.shape, z.shape
        (torch.Size([100, 2]), torch.Size([100, 1]))
    """
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(num_data, 1, generator=g, device="cpu")
    eps = torch.randn(num_data, 2, generator=g, device="cpu")
    x = torch.cat([z.cos(), z.sin()], -1) + noise * eps
    device = torch.get_default_device() if device is None else device
    return x.to(device), z.to(device)
