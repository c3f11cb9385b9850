"""The plain-PyTorch loop that the benchmarks measure ``fit`` against (``benchmarks/speed.py``,
``overhead.py``, ``epochs.py``): the same modules and distribution objects, the negative ELBO
written out by hand, ``torch.optim`` and one host read per epoch. Imported through
``benchmarks/_common.py``.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor

from pyro_vae import VAE

__all__ = ["plain_epoch", "plain_loss", "sync"]


def sync(device: torch.device | str) -> None:
    """Waits for ``device``'s queued work (a GPU's); nothing on the CPU."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def plain_loss(vae: VAE, x: Tensor) -> Tensor:
    """The negative ELBO per data point with one reparameterized sample, by hand:
    :math:`-\\frac1B \\sum_n [\\log p(x_n \\mid z_n) + \\log p(z_n) - \\log q(z_n \\mid x_n)]`."""
    q = vae.variational(x, None)
    z = q()  # rsample (ZukoToPyro and Pyro distributions alike)
    return -(vae.likelihood(z).log_prob(x) + vae.prior().log_prob(z) - q.log_prob(z)).mean()


def plain_epoch(vae: VAE, batches, optimizer: torch.optim.Optimizer, device) -> float:
    """Seconds for one pass of the plain loop over ``batches`` (pairs ``(x, _)``), the loss
    summed on the device and read once at the end, as ``fit`` reads it."""
    sync(device)
    t0 = time.perf_counter()
    total = 0.0
    for x, _ in batches:
        x = x.to(device, non_blocking=True)
        loss = plain_loss(vae, x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total = total + loss.detach()
    float(total)  # one sync per epoch, like fit
    sync(device)
    return time.perf_counter() - t0
