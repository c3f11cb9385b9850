r"""The VAE: a prior, a likelihood and a guide composed into a Pyro ``model`` and ``guide``.

.. math::

    \text{model:}\quad z_n \sim p(z),\ x_n \sim p(x \mid z_n); \qquad
    \text{guide:}\quad z_n \sim q(z \mid x_n)\ \text{or}\ q(z_n)

for :math:`n` in the minibatch, under ``pyro.plate("data", N, subsample=idx)`` so that
``Trace_ELBO`` scales the minibatch's terms by :math:`N / B` and estimates the ELBO of all
:math:`N` points without bias.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor, nn

from .._checks import LocalParameters, check_floating
from ._composition import batch_scale, check_role, log_density, negative_bound, particles
from .guides import Guide
from .likelihoods import Likelihood
from .nets import training_modes
from .priors import Prior

__all__ = ["VAE"]


class VAE(nn.Module):
    r"""A variational autoencoder as a Pyro model/guide pair.

    ``model(x, idx, num_data=N)`` and ``guide(x, idx, num_data=N)`` are ordinary Pyro
    programs with sample sites ``"z"`` and ``"x"`` (observed) inside the plate ``"data"``
    (``dim=-1``, so ``max_plate_nesting=1``); hand them to :class:`pyro.infer.SVI` or to
    :func:`pyro_vae.fit`. The prior and likelihood are registered with Pyro in the model and the
    guide's parameters in the guide, so model-only or guide-only updates are possible.

    Args:
        prior: A :class:`~pyro_vae.Prior`: ``forward()`` returns :math:`p(z)` (event shape
            ``(D,)``).
        likelihood: A :class:`~pyro_vae.Likelihood`: ``forward(z)`` returns
            :math:`p(x \mid z)`.
        guide: A :class:`~pyro_vae.Guide`: ``forward(x, idx)`` returns :math:`q(z \mid x)`
            with batch shape ``(B,)``: amortized (:class:`~pyro_vae.GaussianEncoder`, flows,
            :class:`~pyro_vae.SemiAmortizedGaussian`) or per data point
            (:class:`~pyro_vae.PerDatapointGaussian`).
        name: Prefix of the names under which the modules enter Pyro's param store.
        check_reads: Check that a module a piece reads (a :class:`~pyro_vae.VampPrior`'s
            encoder) belongs to this VAE; :meth:`with_guide` turns it off (the model is
            another VAE's, trained there).

    Raises:
        TypeError: When a piece is not an ``nn.Module`` with the attributes its role needs
            (``latent_dim`` for the prior and the guide, ``event_shape`` for the likelihood).
        ValueError: When a piece reads a module that is not this VAE's (``check_reads``).

    Example:
        >>> vae = VAE(
        ...     MAFPrior(16),
        ...     BernoulliLikelihood(MLP(16, 784, (256,)), 784),
        ...     GaussianEncoder(MLP(784, 2 * 16, (256,)), 16),
        ... )
        >>> svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}),
        ...                      pyro.infer.Trace_ELBO())
        >>> x, idx = torch.rand(8, 784).round(), torch.arange(8)
        >>> loss = svi.step(x, idx, num_data=60000)
        >>> vae.sample(4).shape, vae.reconstruct(x).shape
        (torch.Size([4, 784]), torch.Size([8, 784]))
    """

    def __init__(
        self,
        prior: Prior,
        likelihood: Likelihood,
        guide: Guide,
        *,
        name: str = "vae",
        check_reads: bool = True,
    ) -> None:
        super().__init__()
        check_role("prior", prior)
        check_role("likelihood", likelihood)
        check_role("guide", guide)
        self._check_latent_dims(prior, guide)
        self.prior = prior
        self.likelihood = likelihood
        self.variational = guide
        self.name = name
        if check_reads:
            self._check_reads()

    @staticmethod
    def _check_latent_dims(prior: Prior, guide: Guide) -> None:
        if prior.latent_dim != guide.latent_dim:
            raise ValueError(
                f"the prior has latent_dim {prior.latent_dim} but the guide "
                f"{guide.latent_dim}: both describe the same z; build them with one latent_dim"
            )

    def _check_reads(self) -> None:
        """A piece that reads another module (a VampPrior its encoder, a semi-amortized guide
        the model) must read one of this VAE's: otherwise that module is never trained, moved
        or saved with the VAE."""
        owned = {id(p) for p in self.parameters()}
        for role, piece in self._pieces():
            for module in getattr(piece, "reads", ()):
                if any(id(p) not in owned for p in module.parameters()):
                    raise ValueError(
                        f"the {role} ({type(piece).__name__}) reads a {type(module).__name__} "
                        "that is not part of this VAE, so it would never be trained, moved or "
                        "saved with it; pass this VAE's own modules (e.g. VampPrior(guide, ...) "
                        "with the same guide)"
                    )

    def _pieces(self) -> list[tuple[str, nn.Module]]:
        return [("prior", self.prior), ("likelihood", self.likelihood), ("guide", self.variational)]

    def guide_layers(self) -> list[Guide]:
        """The guide of each latent layer, bottom-up: ``[guide]`` for this one-layer VAE."""
        return [self.variational]

    def with_guide(self, guide: Guide | Sequence[Guide], *, name: str) -> VAE:
        """The same prior and likelihood (shared modules) with another guide, registered under
        another ``name`` (e.g. a per-datapoint guide for held-out data). A list holds one guide
        per latent layer (:meth:`guide_layers`)."""
        if isinstance(guide, Sequence):
            if len(guide) != 1:
                raise ValueError(f"this VAE has one latent layer; got {len(guide)} guides")
            guide = guide[0]
        return VAE(self.prior, self.likelihood, guide, name=name, check_reads=False)

    @property
    def event_shape(self) -> torch.Size:
        """The shape of one data point."""
        return self.likelihood.event_shape

    def batch_ok(self, x: Tensor) -> Tensor:
        """Whether a minibatch's values are finite and in the likelihood's support: a 0-dim
        bool tensor on ``x``'s device, read by ``fit`` with the loss every ``log_every``
        steps (the batches of a streamed data set, which ``check_data`` sees the first of)."""
        ok = torch.isfinite(x).all() if x.is_floating_point() else torch.ones((), dtype=bool)
        in_support = getattr(self.likelihood, "in_support", None)
        return ok & in_support(x) if in_support is not None else ok

    def check_data(self, data: Tensor, *, num_data: int | None = None) -> None:
        """Checks a whole data set once (not per step): the shape of its points, finite values,
        the likelihood's support (e.g. ``[0, 1]`` for a Bernoulli) and, for a per-datapoint
        guide, that it has local parameters for exactly these ``N`` points.

        Args:
            data: The data set, ``(N, *event_shape)`` (or the first batch of a streamed one).
            num_data: The data set's size :math:`N`; default ``data.shape[0]``.

        Raises:
            ValueError: Naming the problem, the value seen, and what to do.
        """
        shape = self.event_shape
        if data.dim() != len(shape) + 1 or data.shape[1:] != shape:
            raise ValueError(
                f"expected data of shape (N, {', '.join(map(str, shape))}); got {tuple(data.shape)}"
            )
        check_floating(data)
        if not bool(torch.isfinite(data).all()):
            bad = (~torch.isfinite(data)).nonzero()[0].tolist()
            raise ValueError(
                f"the data hold non-finite values (e.g. {data[tuple(bad)].item()} at index "
                f"{bad}); remove or impute them before training"
            )
        check_support = getattr(self.likelihood, "check_support", None)
        if check_support is not None:
            check_support(data)
        num_data = data.shape[0] if num_data is None else num_data
        for layer in self.guide_layers():
            num_local = layer.num_data if isinstance(layer, LocalParameters) else None
            if num_local is not None and num_local != num_data:
                raise ValueError(
                    f"this VAE's per-datapoint guide has local parameters for N = {num_local} "
                    f"points but the data set has {num_data}: a per-datapoint guide cannot "
                    "score new points; fit local parameters for them with pv.infer_local(vae, "
                    "batches) and evaluate the VAE it returns"
                )

    def _register(self, role: str, module: nn.Module) -> None:
        """``pyro.module`` with this VAE's own tensors: an entry of the param store under the
        same name that is not this module's parameter (left by another VAE of the same
        ``name``) is replaced, so a fresh VAE always trains from its own initial weights."""
        name = f"{self.name}.{role}"
        store = pyro.get_param_store()
        for param_name, p in module.named_parameters():
            full = f"{name}$$${param_name}"
            if full in store and store.get_param(full) is not p:
                del store[full]
        pyro.module(name, module, update_module_params=True)

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
        self._register("prior", self.prior)
        self._register("likelihood", self.likelihood)
        with self._plate(x, idx, num_data):
            z = pyro.sample("z", self.prior())
            pyro.sample("x", self.likelihood(z), obs=x)

    def guide(self, x: Tensor, idx: Tensor | None = None, *, num_data: int | None = None) -> None:
        """The guide :math:`q(z \\mid x)` for a minibatch; same arguments as :meth:`model`."""
        self._register("guide", self.variational)
        with self._plate(x, idx, num_data) as ind:
            pyro.sample("z", self.variational(x, ind))

    def elbo_loss(
        self,
        x: Tensor,
        idx: Tensor | None = None,
        *,
        num_data: int | None = None,
        beta: float | Tensor = 1.0,
        num_particles: int = 1,
        q: dist.Distribution | None = None,
    ) -> Tensor:
        r"""The negative ELBO of a minibatch as :class:`~pyro_vae.TensorTrace_ELBO` estimates it
        from :meth:`model` and :meth:`guide` (one particle), or with ``num_particles`` :math:`K`
        the negative bound of :class:`~pyro_vae.ImportanceWeightedELBO`, written from the three
        pieces without Pyro's handlers: the function ``fit(compile=True)`` compiles.

        .. math::

            -\frac{N}{B} \sum_{n \in \text{batch}} \log \frac1K \sum_{k=1}^K
            \exp\Big[\log p(x_n \mid z_{kn})
            + \beta \big(\log p(z_{kn}) - \log q(z_{kn} \mid x_n)\big)\Big],
            \qquad z_{kn} \sim q(z \mid x_n)\ \text{(reparameterized)}

        which for :math:`K = 1` is the negative ELBO. The random numbers are drawn as Pyro's
        sample statements draw them (the guide's distribution expanded to ``(K, B)`` for
        :math:`K > 1`), so with the same seed the value is Pyro's.

        Args:
            x: The minibatch, ``(B, *event_shape)``.
            idx: Its dataset indices ``(B,)`` (default ``arange(B)``).
            num_data: :math:`N` (default ``B``).
            beta: The KL weight :math:`\beta` (:class:`~pyro_vae.LatentScale`): a number or a
                0-dim tensor (a tensor changes without recompiling a compiled caller).
            num_particles: :math:`K`.
            q: The guide's distribution for the batch when it was made outside (the compiled
                step builds a per-datapoint guide's from rows read outside its graph); default
                ``self.variational(x, idx)``.

        Returns:
            A 0-dim tensor: the loss, differentiable (pathwise) in every parameter.

        Raises:
            NotImplementedError: For a subclass that writes its own ``model`` or ``guide``
                without its own ``elbo_loss``.

        Example:
            >>> vae = VAE(StandardNormalPrior(2), BernoulliLikelihood(MLP(2, 6), 6),
            ...           GaussianEncoder(MLP(6, 4), 2))
            >>> x = torch.rand(8, 6).round()
            >>> with torch.random.fork_rng():
            ...     pyro_loss = TensorTrace_ELBO().differentiable_loss(vae.model, vae.guide, x)
            >>> bool(torch.isclose(vae.elbo_loss(x), pyro_loss))  # the same noise
            True
        """
        if type(self).model is not VAE.model or type(self).guide is not VAE.guide:
            raise NotImplementedError(
                f"{type(self).__name__} writes its own model or guide: its elbo_loss must be "
                "written to match them (see HierarchicalVAE.elbo_loss)"
            )
        idx, scale = batch_scale(x, idx, num_data)
        q = self.variational(x, idx) if q is None else q
        q = particles(q, num_particles, x.shape[0])
        z = q()  # what pyro.sample draws: rsample (zuko's flows: with its log-density)
        log_q = q.log_prob(z)
        log_z = log_density(self.prior, z)
        log_x = self.likelihood(z).log_prob(x)
        return negative_bound(log_x, log_z, log_q, scale=scale, beta=beta, K=num_particles)

    @torch.no_grad()
    def sample(self, num_samples: int) -> Tensor:
        """Draws :math:`z \\sim p(z)` and returns the mean of :math:`p(x \\mid z)`,
        shape ``(num_samples, *event_shape)`` (pixel probabilities for a Bernoulli).

        Runs in eval mode (BatchNorm uses its running statistics) and restores the mode."""
        with training_modes(self, train=False):
            z = self.prior()(torch.Size((num_samples,)))
            return self.likelihood(z).mean

    @torch.no_grad()
    def reconstruct(self, x: Tensor, idx: Tensor | None = None) -> Tensor:
        """Returns the mean of :math:`p(x \\mid z)` at the guide's mean
        :math:`z = \\mathbb{E}_q[z]` (a sample from flow guides), shape of ``x``; in eval mode.
        """
        if idx is None:
            idx = torch.arange(x.shape[0], device=x.device)
        with training_modes(self, train=False):
            q = self.variational(x, idx)
            try:
                z = q.mean
            except NotImplementedError:  # flows have no closed-form mean: use one sample
                z = q()
            return self.likelihood(z).mean
