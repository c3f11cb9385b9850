r"""VAEs with several stochastic layers, written as one Pyro model/guide pair.

.. math::

    \text{model:}\quad z_L \sim p(z_L),\ z_l \sim p(z_l \mid z_{l+1})\ (l = L-1, \dots, 1),\
        x \sim p(x \mid z_1); \qquad
    \text{guide:}\quad z_1 \sim q(z_1 \mid x),\ z_{l+1} \sim q(z_{l+1} \mid z_l)

with sample sites ``"z1"``, ..., ``"zL"`` and ``"x"`` under the data plate: the two-layer
architecture of Burda, Grosse & Salakhutdinov (2016, "Importance Weighted Autoencoders") for
:math:`L = 2`. Everything that takes a model/guide pair (:class:`pyro.infer.SVI`,
:func:`~pyro_vae.fit`, :func:`~pyro_vae.evaluate`, checkpoints) takes it unchanged; the guide of
each layer may be amortized or per data point, and :func:`~pyro_vae.infer_local` and
:func:`~pyro_vae.amortization_gap` fit one per-datapoint Gaussian per layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor, nn

from ._composition import batch_scale, check_role, log_density, negative_bound, particles
from .guides import Guide
from .likelihoods import Likelihood
from .nets import training_modes
from .priors import Prior
from .vae import VAE

__all__ = ["GuideChain", "HierarchicalVAE"]


class GuideChain(nn.Module):
    r"""The top layer's posterior along the means of the layers below:
    :math:`q(z_L \mid \bar z_{L-1})` with :math:`\bar z_0 = x`, :math:`\bar z_l =
    \mathbb{E}[q(z_l \mid \bar z_{l-1})]`.

    A deterministic path from ``x`` to the top layer's distribution: the encoder a
    :class:`~pyro_vae.VampPrior` over :math:`z_L` applies to its pseudo-inputs. It owns the
    guides it chains (pass the VAE's own, so the weights are shared).

    Args:
        guides: Guides :math:`q(z_1 \mid x), q(z_2 \mid z_1), \dots`, bottom-up, each with a
            diagonal Gaussian (any distribution with a ``mean``) below the top.

    Example:
        >>> q1 = GaussianEncoder(MLP(784, 2 * 100, (100,)), 100)
        >>> q2 = GaussianEncoder(MLP(100, 2 * 50, (50,)), 50)
        >>> GuideChain([q1, q2])(torch.zeros(8, 784)).batch_shape
        torch.Size([8])
    """

    def __init__(self, guides: Sequence[Guide]) -> None:
        super().__init__()
        for guide in guides:
            check_role("guide", guide)
        self.guides = nn.ModuleList(guides)
        self.latent_dim = guides[-1].latent_dim

    def forward(self, x: Tensor, idx: Tensor | None = None) -> dist.Distribution:
        """Returns :math:`q(z_L \\mid \\bar z_{L-1})`, batch shape ``(B,)``."""
        h = x
        for guide in self.guides[:-1]:
            h = guide(h, idx).mean
        return self.guides[-1](h, idx)


class HierarchicalVAE(VAE):
    r"""A VAE with :math:`L` stochastic layers (a Markov chain of latents, top-down).

    Args:
        prior: :math:`p(z_L)`, a :class:`~pyro_vae.Prior` (e.g. standard normal, a flow or a
            :class:`~pyro_vae.VampPrior` over a :class:`GuideChain`).
        conditionals: :math:`L - 1` modules, top-down: ``conditionals[l - 1](z_{l+1})``
            returns :math:`p(z_l \mid z_{l+1})` with event shape ``(D_l,)`` and knows
            ``latent_dim`` :math:`D_l` (e.g. :class:`~pyro_vae.GaussianEncoder` over
            :math:`z_{l+1}`: a diagonal Gaussian whose mean and log-scale come from a network).
        likelihood: :math:`p(x \mid z_1)`.
        guides: :math:`L` guides, bottom-up: ``guides[0](x, idx)`` returns
            :math:`q(z_1 \mid x)` and ``guides[l](z_l, idx)`` returns
            :math:`q(z_{l+1} \mid z_l)`; amortized or per data point.
        name: Prefix of the names under which the modules enter Pyro's param store.
        check_reads: See :class:`~pyro_vae.VAE`.

    Raises:
        TypeError: When a piece does not satisfy its role's protocol.
        ValueError: When the number of layers or their dimensions do not match.

    Example:
        >>> q1 = GaussianEncoder(MLP(784, 2 * 100, (100, 100)), 100)
        >>> q2 = GaussianEncoder(MLP(100, 2 * 50, (50, 50)), 50)
        >>> vae = HierarchicalVAE(
        ...     StandardNormalPrior(50),
        ...     [GaussianEncoder(MLP(50, 2 * 100, (50, 50)), 100)],  # p(z1 | z2)
        ...     BernoulliLikelihood(MLP(100, 784, (100, 100)), 784),  # p(x | z1)
        ...     [q1, q2],
        ... )
        >>> x = torch.rand(8, 784).round()
        >>> trace = pyro.poutine.trace(vae.guide).get_trace(x)
        >>> trace.nodes["z1"]["value"].shape, trace.nodes["z2"]["value"].shape
        (torch.Size([8, 100]), torch.Size([8, 50]))
        >>> evaluate(vae.model, vae.guide, x, num_particles=10).num_data
        8
    """

    @staticmethod
    def _check_latent_dims(prior: Prior, guide: Guide) -> None:
        """(The layers' dimensions are checked against each other in ``__init__``.)"""

    def __init__(
        self,
        prior: Prior,
        conditionals: Sequence[nn.Module],
        likelihood: Likelihood,
        guides: Sequence[Guide],
        *,
        name: str = "vae",
        check_reads: bool = True,
    ) -> None:
        if len(guides) != len(conditionals) + 1:
            raise ValueError(
                f"L stochastic layers need L guides and L - 1 conditionals; got "
                f"{len(guides)} guides and {len(conditionals)} conditionals"
            )
        for guide in guides:
            check_role("guide", guide)
        super().__init__(prior, likelihood, guides[0], name=name, check_reads=False)
        self.variational = nn.ModuleList(guides)
        self.conditionals = nn.ModuleList(conditionals)
        dims = [guide.latent_dim for guide in guides]
        below = [getattr(c, "latent_dim", None) for c in conditionals]
        if below != dims[:-1] or prior.latent_dim != dims[-1]:
            raise ValueError(
                f"the guides' latent dimensions are {dims} (bottom-up) but the conditionals "
                f"give {below} and the prior {prior.latent_dim}: p(z_l | z_(l+1)) must have "
                "the dimension of q(z_l | ...), and p(z_L) that of the top layer"
            )
        if check_reads:
            self._check_reads()

    def _pieces(self) -> list[tuple[str, nn.Module]]:
        pieces = [("prior", self.prior), ("likelihood", self.likelihood)]
        pieces += [("conditional", c) for c in self.conditionals]
        return pieces + [("guide", g) for g in self.variational]

    def guide_layers(self) -> list[Guide]:
        """The guides of the layers, bottom-up."""
        return list(self.variational)

    def with_guide(self, guide: Sequence[Guide], *, name: str) -> HierarchicalVAE:
        """The same model (shared modules) with other guides, one per layer, bottom-up."""
        if not isinstance(guide, Sequence) or len(guide) != len(self.variational):
            raise ValueError(
                f"this VAE has {len(self.variational)} latent layers: pass a guide each"
            )
        return HierarchicalVAE(
            self.prior,
            list(self.conditionals),
            self.likelihood,
            guide,
            name=name,
            check_reads=False,
        )

    def model(self, x: Tensor, idx: Tensor | None = None, *, num_data: int | None = None) -> None:
        """The generative model for a minibatch ``x`` ``(B, *event_shape)``; as
        :meth:`VAE.model`, with sites ``"zL"``, ..., ``"z1"``, ``"x"``."""
        self._register("prior", self.prior)
        self._register("conditionals", self.conditionals)
        self._register("likelihood", self.likelihood)
        with self._plate(x, idx, num_data):
            z = pyro.sample(f"z{len(self.variational)}", self.prior())
            for layer in range(len(self.conditionals), 0, -1):
                z = pyro.sample(f"z{layer}", self.conditionals[layer - 1](z))
            pyro.sample("x", self.likelihood(z), obs=x)

    def guide(self, x: Tensor, idx: Tensor | None = None, *, num_data: int | None = None) -> None:
        """The guide, bottom-up; same arguments as :meth:`model`."""
        self._register("guide", self.variational)
        with self._plate(x, idx, num_data) as ind:
            h = x
            for layer, guide in enumerate(self.variational, 1):
                h = pyro.sample(f"z{layer}", guide(h, ind))

    def elbo_loss(
        self,
        x: Tensor,
        idx: Tensor | None = None,
        *,
        num_data: int | None = None,
        beta: float | Tensor = 1.0,
        num_particles: int = 1,
    ) -> Tensor:
        r"""The negative ELBO (or, with ``num_particles`` :math:`K`, importance-weighted bound)
        of a minibatch as Pyro estimates it from :meth:`model` and :meth:`guide`; see
        :meth:`VAE.elbo_loss`. The log-weight of a particle is

        .. math::

            \log p(x_n \mid z_1) + \beta \Big(\log p(z_L) + \sum_{l < L} \log p(z_l \mid
            z_{l+1}) - \sum_l \log q(z_l \mid z_{l-1})\Big)

        with :math:`z_0 = x_n` and the :math:`z_l` drawn bottom-up from the guide.
        """
        idx, scale = batch_scale(x, idx, num_data)
        h, zs, log_q = x, [], 0.0
        for guide in self.variational:
            q = particles(guide(h, idx), num_particles, x.shape[0])
            h = q()
            zs.append(h)
            log_q = log_q + q.log_prob(h)
        log_z = log_density(self.prior, zs[-1])
        for layer in range(len(self.conditionals), 0, -1):
            log_z = log_z + self.conditionals[layer - 1](zs[layer]).log_prob(zs[layer - 1])
        log_x = self.likelihood(zs[0]).log_prob(x)
        return negative_bound(log_x, log_z, log_q, scale=scale, beta=beta, K=num_particles)

    @torch.no_grad()
    def sample(self, num_samples: int) -> Tensor:
        """Ancestral samples of the latents; returns the mean of :math:`p(x \\mid z_1)`."""
        with training_modes(self, train=False):
            z = self.prior()(torch.Size((num_samples,)))
            for conditional in reversed(self.conditionals):
                z = conditional(z).sample()
            return self.likelihood(z).mean

    @torch.no_grad()
    def reconstruct(self, x: Tensor, idx: Tensor | None = None) -> Tensor:
        """The mean of :math:`p(x \\mid z_1)` at :math:`z_1 = \\mathbb{E}[q(z_1 \\mid x)]`."""
        if idx is None:
            idx = torch.arange(x.shape[0], device=x.device)
        with training_modes(self, train=False):
            return self.likelihood(self.variational[0](x, idx).mean).mean
