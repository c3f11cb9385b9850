"""The plain-PyTorch loop that the benchmarks measure ``fit`` against (``benchmarks/speed.py``,
``overhead.py``, ``epochs.py``): the same modules and distribution objects, the negative ELBO
written out by hand, ``torch.optim`` and one host read per epoch. Imported through
``benchmarks/_common.py``.
"""

from __future__ import annotations

import math
import time

import torch
from torch import Tensor

from pyro_vae import VAE, ConditionalVAE, SemiSupervisedVAE

__all__ = ["plain_cvae_loss", "plain_epoch", "plain_loss", "plain_m2_loss", "sync"]


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


def plain_cvae_loss(cvae: ConditionalVAE, x: Tensor, c: Tensor, unknown: Tensor) -> Tensor:
    r"""The CVAE's negative ELBO per point (examples/mnist_cvae.py: prior network p(z | c), a
    decoder of z alone, the unknown pixels scored), by hand:
    :math:`-\frac1B \sum_n [\sum_{i \in u_n} \log p(x_{ni} \mid z_n) + \log p(z_n \mid c_n)
    - \log q(z_n \mid x_n, c_n)]`."""
    q = cvae.variational(torch.cat([x, c], -1), None)
    z = q()
    pixels = cvae.likelihood(z).base_dist.log_prob(x)
    log_x = torch.where(unknown, pixels, 0.0).sum(-1)
    return -(log_x + cvae.prior(c).log_prob(z) - q.log_prob(z)).mean()


def plain_m2_loss(m2: SemiSupervisedVAE, x: Tensor, y: Tensor, known: Tensor) -> Tensor:
    r"""M2's negative ELBO per point, by hand, as a PyTorch user batches it on a GPU: the
    :math:`K` classes a leading dimension for every point, :math:`L_k = \log p(x \mid z_k, k)
    + \log p(z_k) - \log q(z_k \mid x, k) - \log K`; an unknown label's bound
    :math:`\sum_k q(k \mid x) (L_k - \log q(k \mid x))`, a known one's :math:`L_y + \alpha
    \log q(y \mid x)` (the same :math:`K \times B` work as ``TraceEnum_ELBO``'s, no boolean
    indexing, which would read the device). A known label's bound takes the draw of :math:`z`
    under its own class; ``TraceEnum_ELBO`` averages the :math:`K` draws weighted by
    :math:`q(k \mid x)` (the same expectation)."""
    K, B = m2.num_classes, x.shape[0]
    log_q_y = torch.log_softmax(m2.classifier(x), -1)  # (B, K)
    onehot = torch.eye(K, dtype=x.dtype, device=x.device)[:, None].expand(K, B, K)
    q = m2.variational(torch.cat([x.expand(K, B, -1), onehot], -1), None)
    z = q()
    prior = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    bound = m2.likelihood(torch.cat([z, onehot], -1)).log_prob(x) + prior - q.log_prob(z)
    bound = bound.T - math.log(K)  # (B, K)
    unknown = (log_q_y.exp() * (bound - log_q_y)).sum(-1)
    labelled = bound.gather(-1, y.clamp_min(0)[:, None]).squeeze(-1)
    labelled = labelled + m2.alpha * log_q_y.gather(-1, y.clamp_min(0)[:, None]).squeeze(-1)
    return -torch.where(known, labelled, unknown).mean()


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
