r"""The conditional VAE (Sohn, Lee & Yan 2015): a prior :math:`p(z \mid c)`, a likelihood
:math:`p(x \mid z, c)` and a guide :math:`q(z \mid x, c)`, with the condition :math:`c` a field
of the batches.

.. math::

    \text{model:}\quad z_n \sim p(z \mid c_n),\ x_n \sim p(x \mid z_n, c_n); \qquad
    \text{guide:}\quad z_n \sim q(z \mid x_n, c_n)

under ``pyro.plate("data", N, subsample=idx)``, as :class:`~pyro_vae.VAE`. The pieces are the
package's own, reading concatenations of flattened tensors: the prior network maps
:math:`c` to a Gaussian (a :class:`~pyro_vae.GaussianEncoder` over :math:`c`), the
likelihood's decoder reads :math:`[z, c]`, the guide's encoder :math:`[x, c]`. A mask field
names the features the likelihood scores (image completion: the pixels the condition does not
show), so the ELBO bounds the conditional log-likelihood :math:`\log p(x_{\text{masked}} \mid
c)`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor, nn

from ._composition import batch_scale, check_role, log_density, negative_bound, particles, takes
from .guides import Guide
from .likelihoods import Likelihood
from .nets import training_modes
from .vae import VAE

__all__ = ["ConditionalVAE"]


class ConditionalVAE(VAE):
    r"""A conditional VAE as a Pyro model/guide pair:
    ``model(x, idx, num_data=N, c=c)``, with the condition ``c`` a field of the batches
    (``pv.Batches(x, c=conditions, batch_size=...)``) and sites ``"z"`` and ``"x"`` in the plate
    ``"data"``, as :class:`~pyro_vae.VAE`.

    Args:
        prior: :math:`p(z \mid c)`: a guide-like module whose ``forward(c)`` returns a
            distribution over :math:`z` with batch shape ``(B,)`` (e.g.
            ``GaussianEncoder(MLP(C, 2 * D), D)``, Pyro's "prior network"), or an unconditional
            :class:`~pyro_vae.Prior` (``forward()``).
        likelihood: :math:`p(x \mid z, c)`: a :class:`~pyro_vae.Likelihood` whose decoder reads
            :math:`[z, c]`, ``D + C`` features (``decode_condition=True``), or :math:`z` alone.
        guide: :math:`q(z \mid x, c)`: a :class:`~pyro_vae.Guide` whose encoder reads
            :math:`[x, c]`, ``F + C`` features.
        condition: The name of the field that holds :math:`c` (one row per data point).
        mask: The name of a field of booleans shaped like the data points: the likelihood
            scores the features where it is true (the others are masked out of the ELBO);
            ``None``: every feature.
        decode_condition: Whether the likelihood's decoder reads :math:`c` beside :math:`z`.
        encode_condition: Whether the guide's encoder reads :math:`c` beside :math:`x`
            (``False``: :math:`q(z \mid x)` on the data point alone, as Pyro's recognition
            network reads the whole image).
        name: Prefix of the names under which the modules enter Pyro's param store.

    Example:
        >>> cvae = ConditionalVAE(
        ...     GaussianEncoder(MLP(3, 2 * 2), 2),  # p(z | c), c of 3 features
        ...     BernoulliLikelihood(MLP(2 + 3, 10), 10),  # p(x | z, c)
        ...     GaussianEncoder(MLP(10 + 3, 2 * 2), 2),  # q(z | x, c)
        ... )
        >>> x, c = torch.rand(8, 10).round(), torch.randn(8, 3)
        >>> loss = TensorTrace_ELBO().differentiable_loss(cvae.model, cvae.guide, x, c=c)
        >>> cvae.sample(c).shape, cvae.reconstruct(x, c=c).shape
        (torch.Size([8, 10]), torch.Size([8, 10]))
    """

    def __init__(
        self,
        prior: nn.Module,
        likelihood: Likelihood,
        guide: Guide,
        *,
        condition: str = "c",
        mask: str | None = None,
        decode_condition: bool = True,
        encode_condition: bool = True,
        name: str = "cvae",
    ) -> None:
        nn.Module.__init__(self)
        self.conditional_prior = not takes(prior.forward, 0)  # (a Prior's forward takes none)
        check_role("guide" if self.conditional_prior else "prior", prior)
        check_role("likelihood", likelihood)
        check_role("guide", guide)
        self._check_latent_dims(prior, guide)
        self.prior, self.likelihood, self.variational = prior, likelihood, guide
        self.condition, self.mask, self.decode_condition = condition, mask, decode_condition
        self.encode_condition = encode_condition
        self.name = name

    @property
    def field_names(self) -> tuple[str, ...]:
        """The fields of the batches the model and guide read."""
        return (self.condition, self.mask) if self.mask else (self.condition,)

    def check_fields(self, fields: dict[str, Tensor]) -> None:
        """Runs each piece once on inputs of the width it will read (called once per data set
        by ``fit`` and ``evaluate``): a network built for another width is named with the
        piece and what it reads, not as a shape error from inside it."""
        if self.condition not in fields:
            return  # (the call names what is missing)
        mask = fields.get(self.mask) if self.mask else None
        if mask is not None and tuple(mask.shape[1:]) != tuple(self.event_shape):
            raise ValueError(
                f"the mask field {self.mask!r} has rows of shape {tuple(mask.shape[1:])}; it "
                f"marks the features the likelihood scores, so its rows take the data points' "
                f"shape {tuple(self.event_shape)}"
            )
        c = fields[self.condition][:1].flatten(1)
        like = next(self.parameters(), c)
        c = c.to(like.dtype)
        features, d = math.prod(self.event_shape), self.variational.latent_dim
        zeros = c.new_zeros
        width = c.shape[1] if self.encode_condition else 0
        pieces = [("guide q(z | x, c)", "[x, c]" if width else "x", features, width,
                   lambda: self.variational(zeros(1, features + width),
                                            torch.zeros(1, dtype=torch.long, device=c.device))),
                  ("likelihood p(x | z, c)", "[z, c]" if self.decode_condition else "z", d,
                   c.shape[1] if self.decode_condition else 0,
                   lambda: self.likelihood(zeros(1, d + (c.shape[1] if self.decode_condition
                                                        else 0))))]  # fmt: skip
        if self.conditional_prior:
            pieces.append(("prior p(z | c)", "c", 0, c.shape[1], lambda: self.prior(c)))
        with torch.no_grad(), training_modes(self, train=False):
            for role, reads, first, second, run in pieces:
                try:
                    run()
                except (ValueError, RuntimeError) as e:
                    width = first + second
                    parts = f" ({first} + {second} of the field {self.condition!r})" if (
                        first and second) else ""  # fmt: skip
                    raise ValueError(
                        f"this ConditionalVAE's {role} reads {reads}: {width} features{parts}; "
                        f"its network does not take that ({e}). Build it for {width} inputs"
                    ) from None

    def with_guide(self, guide: Guide | Sequence[Guide], *, name: str) -> ConditionalVAE:
        """The same prior and likelihood (shared modules) with another guide (e.g. a
        per-datapoint guide for held-out data), registered under another ``name``."""
        if isinstance(guide, Sequence):
            if len(guide) != 1:
                raise ValueError(f"this VAE has one latent layer; got {len(guide)} guides")
            guide = guide[0]
        return ConditionalVAE(self.prior, self.likelihood, guide, condition=self.condition,
                              mask=self.mask, decode_condition=self.decode_condition,
                              encode_condition=self.encode_condition, name=name)  # fmt: skip

    def _fields(self, fields: dict[str, Tensor]) -> tuple[Tensor, Tensor | None]:
        """The condition, flattened to ``(B, C)``, and the mask (or ``None``)."""
        wanted = {self.condition} | ({self.mask} if self.mask else set())
        if set(fields) != wanted:
            raise TypeError(
                f"this ConditionalVAE reads the field(s) {sorted(wanted)} of the batches; got "
                f"{sorted(fields)}: pass e.g. pv.Batches(x, {self.condition}=conditions, ...)"
            )
        return fields[self.condition].flatten(1), fields.get(self.mask) if self.mask else None

    def _prior(self, c: Tensor) -> dist.Distribution:
        return self.prior(c) if self.conditional_prior else self.prior()

    def _likelihood(self, z: Tensor, c: Tensor, mask: Tensor | None) -> dist.Distribution:
        if self.decode_condition:
            z = torch.cat([z, c.expand(*z.shape[:-1], c.shape[-1])], -1)  # (K, B, D + C)
        p = self.likelihood(z)
        if mask is None:
            return p
        if not isinstance(p, dist.Independent):
            raise TypeError(
                f"mask= needs a likelihood whose distribution is Independent over the event "
                f"(one factor per feature); {type(self.likelihood).__name__} gives "
                f"{type(p).__name__}"
            )
        return p.base_dist.mask(mask).to_event(p.reinterpreted_batch_ndims)

    def model(
        self,
        x: Tensor,
        idx: Tensor | None = None,
        *,
        num_data: int | None = None,
        **fields: Tensor,
    ) -> None:
        """The generative model :math:`p(z \\mid c)\\,p(x \\mid z, c)` for a minibatch ``x``
        ``(B, *event_shape)`` and its condition (the field named ``condition``)."""
        c, mask = self._fields(fields)
        self._register("prior", self.prior)
        self._register("likelihood", self.likelihood)
        with self._plate(x, idx, num_data):
            z = pyro.sample("z", self._prior(c))
            pyro.sample("x", self._likelihood(z, c, mask), obs=x)

    def guide(
        self,
        x: Tensor,
        idx: Tensor | None = None,
        *,
        num_data: int | None = None,
        **fields: Tensor,
    ) -> None:
        """The guide :math:`q(z \\mid x, c)`; same arguments as :meth:`model`."""
        self._fields(fields)  # (checked: the condition, and the mask if any)
        self._register("guide", self.variational)
        with self._plate(x, idx, num_data) as ind:
            pyro.sample("z", self.variational(self.guide_input(x, fields), ind))

    def elbo_loss(
        self,
        x: Tensor,
        idx: Tensor | None = None,
        *,
        num_data: int | None = None,
        beta: float | Tensor = 1.0,
        num_particles: int = 1,
        **fields: Tensor,
    ) -> Tensor:
        r"""The negative ELBO of a minibatch (or, with :math:`K` ``num_particles``, the negative
        importance-weighted bound) as :class:`~pyro_vae.TensorTrace_ELBO` (or
        :class:`~pyro_vae.ImportanceWeightedELBO`) computes it from :meth:`model` and
        :meth:`guide`, written in tensors: :meth:`VAE.elbo_loss <pyro_vae.VAE.elbo_loss>` with
        :math:`p(z \mid c)`, :math:`p(x \mid z, c)` (the mask's features only) and
        :math:`q(z \mid x, c)`. The random numbers are drawn in the guide's and the model's
        order, so with the same seed the value is Pyro's (``fit`` checks that on its first
        batch).

        Args:
            x: The minibatch, ``(B, *event_shape)``.
            idx: Its dataset indices ``(B,)`` (default ``arange(B)``).
            num_data: :math:`N` (default ``B``).
            beta: The KL weight :math:`\beta`.
            num_particles: :math:`K`.
            **fields: The condition (and the mask), as :meth:`model` reads them.

        Returns:
            A 0-dim tensor: the loss, differentiable (pathwise) in every parameter.

        Example:
            >>> cvae = ConditionalVAE(GaussianEncoder(MLP(3, 2 * 2), 2),
            ...                       BernoulliLikelihood(MLP(2 + 3, 10), 10),
            ...                       GaussianEncoder(MLP(10 + 3, 2 * 2), 2))
            >>> x, c = torch.rand(8, 10).round(), torch.randn(8, 3)
            >>> with torch.random.fork_rng():
            ...     pyro_loss = TensorTrace_ELBO().differentiable_loss(
            ...         cvae.model, cvae.guide, x, c=c)
            >>> bool(torch.isclose(cvae.elbo_loss(x, c=c), pyro_loss))
            True
        """
        c, mask = self._fields(fields)
        idx, scale = batch_scale(x, idx, num_data)
        q = particles(self.variational(self.guide_input(x, fields), idx), num_particles,
                      x.shape[0])  # fmt: skip
        z = q()
        log_q = q.log_prob(z)
        log_z = self.prior(c).log_prob(z) if self.conditional_prior else log_density(self.prior, z)
        log_x = self._likelihood(z, c, mask).log_prob(x)
        return negative_bound(log_x, log_z, log_q, scale=scale, beta=beta, K=num_particles)

    def guide_input(self, x: Tensor, fields: dict[str, Tensor]) -> Tensor:
        """What the guide's encoder reads: :math:`[x, c]`, flattened, ``(B, F + C)`` (or
        :math:`x` alone, ``encode_condition=False``)."""
        if not self.encode_condition:
            return x.flatten(1)
        return torch.cat([x.flatten(1), fields[self.condition].flatten(1)], -1)

    @torch.no_grad()
    def sample(self, c: Tensor) -> Tensor:
        """The mean of :math:`p(x \\mid z, c)` at :math:`z \\sim p(z \\mid c)`, one per row of
        ``c``: shape ``(B, *event_shape)``; in eval mode."""
        c = c.flatten(1)
        with training_modes(self, train=False):
            prior = self._prior(c)
            z = prior() if self.conditional_prior else prior(torch.Size((c.shape[0],)))
            return self._likelihood(z, c, None).mean

    @torch.no_grad()
    def reconstruct(self, x: Tensor, idx: Tensor | None = None, *, c: Tensor) -> Tensor:
        """The mean of :math:`p(x \\mid z, c)` at the guide's mean; shape of ``x``."""
        if idx is None:
            idx = torch.arange(x.shape[0], device=x.device)
        with training_modes(self, train=False):
            z = self.variational(self.guide_input(x, {self.condition: c}), idx).mean
            c = c.flatten(1)
            return self._likelihood(z, c, None).mean
