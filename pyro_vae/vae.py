r"""The VAE: a prior, a likelihood and a guide composed into a Pyro ``model`` and ``guide``.

.. math::

    \text{model:}\quad z_n \sim p(z),\ x_n \sim p(x \mid z_n); \qquad
    \text{guide:}\quad z_n \sim q(z \mid x_n)\ \text{or}\ q(z_n)

for :math:`n` in the minibatch, under ``pyro.plate("data", N, subsample=idx)`` so that
``Trace_ELBO`` scales the minibatch's terms by :math:`N / B` and estimates the ELBO of all
:math:`N` points without bias.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor, nn

__all__ = ["VAE"]


class VAE(nn.Module):
    r"""A variational autoencoder as a Pyro model/guide pair.

    ``model(x, idx, num_data=N)`` and ``guide(x, idx, num_data=N)`` are ordinary Pyro
    programs with sample sites ``"z"`` and ``"x"`` (observed) inside the plate ``"data"``
    (``dim=-1``, so ``max_plate_nesting=1``); hand them to :class:`pyro.infer.SVI` or to
    :func:`pyro_vae.fit`. The prior and likelihood are registered with Pyro in the model and the
    guide's parameters in the guide, so model-only or guide-only updates are possible.

    Args:
        prior: A module whose ``forward()`` returns :math:`p(z)` (event shape ``(D,)``).
        likelihood: A module whose ``forward(z)`` returns :math:`p(x \mid z)`.
        guide: A module whose ``forward(x, idx)`` returns :math:`q(z \mid x)` with batch shape
            ``(B,)``: amortized (:class:`~pyro_vae.GaussianEncoder`) or per data point.
        name: Prefix of the names under which the modules enter Pyro's param store.
        refine_steps: Semi-amortized inference (Kim et al. 2018, "Semi-Amortized Variational
            Autoencoders"): the guide's Gaussian output :math:`\lambda_0 = (\mu, \log\sigma)`
            is refined by this many gradient-ascent steps
            :math:`\lambda_{k+1} = \lambda_k + \eta \nabla_\lambda \mathrm{ELBO}(x; \lambda_k)`
            (one reparameterized sample each) before ``z`` is drawn. While gradients are
            enabled (training) the steps are differentiated through, so the encoder and the
            model learn through the refinement; under ``torch.no_grad`` they are not.
        refine_lr: :math:`\eta`.

    Example:
        >>> vae = VAE(
        ...     MAFPrior(16),
        ...     BernoulliLikelihood(MLP(16, 784, (1024, 1024)), 784),
        ...     GaussianEncoder(MLP(784, 32, (1024, 1024)), 16),
        ... )
        >>> svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}),
        ...                      pyro.infer.Trace_ELBO())
        >>> loss = svi.step(x, idx, num_data=60000)  # doctest: +SKIP
    """

    def __init__(
        self,
        prior: nn.Module,
        likelihood: nn.Module,
        guide: nn.Module,
        *,
        name: str = "vae",
        refine_steps: int = 0,
        refine_lr: float = 1e-2,
    ) -> None:
        super().__init__()
        self.prior = prior
        self.likelihood = likelihood
        self.variational = guide
        self.name = name
        self.refine_steps = refine_steps
        self.refine_lr = refine_lr

    def with_guide(self, guide: nn.Module, *, name: str, refine_steps: int = 0) -> VAE:
        """The same prior and likelihood (shared modules) with another guide, registered under
        another ``name`` (e.g. a per-datapoint guide for held-out data)."""
        return VAE(
            self.prior,
            self.likelihood,
            guide,
            name=name,
            refine_steps=refine_steps,
            refine_lr=self.refine_lr,
        )

    @property
    def event_shape(self) -> torch.Size:
        """The shape of one data point."""
        return self.likelihood.event_shape

    def _plate(self, x: Tensor, idx: Tensor | None, num_data: int | None) -> pyro.plate:
        shape = self.event_shape
        if x.dim() != len(shape) + 1 or x.shape[1:] != shape:
            raise ValueError(
                f"expected data of shape (batch, {', '.join(map(str, shape))}); "
                f"got {tuple(x.shape)}"
            )
        batch = x.shape[0]
        if idx is None:
            if num_data is None or num_data == batch:
                return pyro.plate("data", batch, dim=-1)
            idx = torch.arange(batch, device=x.device)
        elif idx.shape != (batch,):
            raise ValueError(f"idx must have shape ({batch},); got {tuple(idx.shape)}")
        return pyro.plate("data", batch if num_data is None else num_data, subsample=idx, dim=-1)

    def model(self, x: Tensor, idx: Tensor | None = None, *, num_data: int | None = None) -> None:
        """The generative model :math:`p(z)\\,p(x \\mid z)` for a minibatch ``x`` ``(B, ...)``.

        Args:
            x: The minibatch, shape ``(B, *event_shape)``.
            idx: Its indices in the data set, shape ``(B,)``; required by per-datapoint guides.
            num_data: The data set's size :math:`N`; the ELBO is scaled by :math:`N / B`.
        """
        pyro.module(f"{self.name}.prior", self.prior, update_module_params=True)
        pyro.module(f"{self.name}.likelihood", self.likelihood, update_module_params=True)
        with self._plate(x, idx, num_data):
            z = pyro.sample("z", self.prior())
            pyro.sample("x", self.likelihood(z), obs=x)

    def guide(self, x: Tensor, idx: Tensor | None = None, *, num_data: int | None = None) -> None:
        """The guide :math:`q(z \\mid x)` for a minibatch; same arguments as :meth:`model`."""
        pyro.module(f"{self.name}.guide", self.variational, update_module_params=True)
        with self._plate(x, idx, num_data) as ind:
            q = self.variational(x, ind)
            if self.refine_steps:
                q = self.refine(q, x)
            pyro.sample("z", q)

    def refine(self, q: dist.Distribution, x: Tensor) -> dist.Distribution:
        """Semi-amortized refinement of a diagonal Gaussian ``q`` (batch ``(B,)``) for data
        ``x`` (see ``refine_steps``); returns the refined diagonal Gaussian."""
        base = q.base_dist if isinstance(q, dist.Independent) else q
        if not isinstance(base, dist.Normal):
            raise TypeError(f"refinement needs a diagonal Gaussian guide; got {type(q).__name__}")
        differentiate = torch.is_grad_enabled()
        loc, log_scale = base.loc, base.scale.log()
        with torch.enable_grad():
            if not differentiate:
                loc, log_scale = loc.detach().requires_grad_(), log_scale.detach().requires_grad_()
            for _ in range(self.refine_steps):
                scale = log_scale.exp()
                z = loc + scale * torch.randn_like(loc)
                elbo = (
                    self.prior().log_prob(z)
                    + self.likelihood(z).log_prob(x)
                    - dist.Normal(loc, scale).log_prob(z).sum(-1)
                )
                g_loc, g_log_scale = torch.autograd.grad(
                    elbo.sum(), (loc, log_scale), create_graph=differentiate
                )
                loc = loc + self.refine_lr * g_loc
                log_scale = log_scale + self.refine_lr * g_log_scale
        if not differentiate:
            loc, log_scale = loc.detach(), log_scale.detach()
        return dist.Normal(loc, log_scale.exp()).to_event(1)

    @torch.no_grad()
    def sample(self, num_samples: int) -> Tensor:
        """Draws :math:`z \\sim p(z)` and returns the mean of :math:`p(x \\mid z)`,
        shape ``(num_samples, *event_shape)`` (pixel probabilities for a Bernoulli).

        Runs in eval mode (BatchNorm uses its running statistics) and restores the mode."""
        with _eval_mode(self):
            z = self.prior()(torch.Size((num_samples,)))
            return self.likelihood(z).mean

    @torch.no_grad()
    def reconstruct(self, x: Tensor, idx: Tensor | None = None) -> Tensor:
        """Returns the mean of :math:`p(x \\mid z)` at the guide's mean
        :math:`z = \\mathbb{E}_q[z]` (a sample from flow guides), shape of ``x``; in eval mode.
        """
        if idx is None:
            idx = torch.arange(x.shape[0], device=x.device)
        with _eval_mode(self):
            q = self.variational(x, idx)
            if self.refine_steps:
                q = self.refine(q, x)
            try:
                z = q.mean
            except NotImplementedError:  # flows have no closed-form mean: use one sample
                z = q()
            return self.likelihood(z).mean


@contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(training)
