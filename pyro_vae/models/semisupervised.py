r"""The semi-supervised VAE M2 (Kingma, Rezende, Mohamed & Welling 2014), as Pyro's
``examples/vae/ss_vae_M2.py``: a label :math:`y` observed for some points and summed out for
the others, in one minibatch.

.. math::

    \text{model:}\quad y_n \sim \mathrm{Cat}(1/K),\ z_n \sim \mathcal{N}(0, I),\
    x_n \sim p(x \mid z_n, y_n); \qquad
    \text{guide:}\quad y_n \sim q(y \mid x_n)\ \text{(unlabelled)},\
    z_n \sim q(z \mid x_n, y_n)

The labels and the mask of known labels are fields of the batches (``y`` and ``y_mask``). A
known label is observed in the model (and not sampled in the guide); an unknown one is a
guide site enumerated in parallel, so ``TraceEnum_ELBO`` sums it out exactly: the unlabelled
points' bound is :math:`\sum_y q(y \mid x)\,[\mathcal{L}(x, y) - \log q(y \mid x)]`. Kingma et
al.'s auxiliary classification term :math:`\alpha\,\log q(y \mid x)` on the labelled points
trains the classifier on the labels too (a factor in the model, so that it adds to the training
objective). It is marked ``infer={"training_only": True}``: :func:`~pyro_vae.evaluate` leaves
it out, since it is not part of :math:`p(x)`.
"""

from __future__ import annotations

import math
from functools import partial

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import Tensor, nn

from ..devices.precision import network
from ._composition import batch_scale, check_role
from .guides import GaussianEncoder
from .likelihoods import Likelihood
from .nets import MLP, training_modes
from .vae import VAE

__all__ = ["SemiSupervisedVAE"]

_TRAINING_ONLY = {"training_only": True, "is_auxiliary": True}


class SemiSupervisedVAE(VAE):
    r"""The M2 model and guide: ``model(x, idx, num_data=N, y=y, y_mask=known)`` with ``y`` the
    labels (any value where unknown) and ``y_mask`` true where a label is known; train with
    ``pyro.infer.TraceEnum_ELBO(max_plate_nesting=1)``.

    Args:
        classifier: :math:`q(y \mid x)`: a module mapping ``x`` ``(B, *event_shape)`` to
            ``num_classes`` logits.
        likelihood: :math:`p(x \mid z, y)`: a :class:`~pyro_vae.Likelihood` whose decoder reads
            :math:`[z, \mathrm{onehot}(y)]`, ``D + K`` features.
        guide: :math:`q(z \mid x, y)`: a :class:`~pyro_vae.GaussianEncoder` whose encoder reads
            :math:`[x, \mathrm{onehot}(y)]`, ``F + K`` features.
        num_classes: :math:`K`.
        alpha: The weight :math:`\alpha` of the auxiliary term :math:`\alpha \log q(y \mid x)`
            per labelled point (Kingma et al. use :math:`\alpha = 0.1 N`; ``0`` turns it off).
        name: Prefix of the names under which the modules enter Pyro's param store.

    Example:
        >>> m2 = SemiSupervisedVAE(MLP(6, 3), BernoulliLikelihood(MLP(2 + 3, 6), 6),
        ...                        GaussianEncoder(MLP(6 + 3, 2 * 2), 2), num_classes=3)
        >>> x, y = torch.rand(8, 6).round(), torch.randint(0, 3, (8,))
        >>> known = torch.arange(8) < 4  # half of the labels
        >>> elbo = pyro.infer.TraceEnum_ELBO(max_plate_nesting=1)
        >>> loss = elbo.differentiable_loss(m2.model, m2.guide, x, y=y, y_mask=known)
        >>> m2.classify(x).shape
        torch.Size([8])
    """

    def __init__(
        self,
        classifier: nn.Module,
        likelihood: Likelihood,
        guide: GaussianEncoder,
        *,
        num_classes: int,
        alpha: float = 0.0,
        name: str = "m2",
    ) -> None:
        nn.Module.__init__(self)
        check_role("likelihood", likelihood)
        check_role("guide", guide)
        self.classifier, self.likelihood, self.variational = classifier, likelihood, guide
        self.num_classes, self.alpha, self.name = num_classes, alpha, name
        self.latent_dim = guide.latent_dim

    def _onehot(self, y: Tensor, like: Tensor) -> Tensor:
        return nn.functional.one_hot(y, self.num_classes).to(like.dtype)

    def model(
        self,
        x: Tensor,
        idx: Tensor | None = None,
        *,
        num_data: int | None = None,
        y: Tensor,
        y_mask: Tensor,
    ) -> None:
        """:math:`p(y)\\,p(z)\\,p(x \\mid z, y)` for a minibatch, the labels ``y`` observed
        where ``y_mask``; plus the auxiliary term on those."""
        self._register("likelihood", self.likelihood)
        with self._plate(x, idx, num_data):
            uniform = dist.Categorical(logits=x.new_zeros(self.num_classes))
            y = torch.where(y_mask, y, 0)  # (an unknown label may hold any value, e.g. -1)
            with poutine.mask(mask=y_mask):
                pyro.sample("y", uniform, obs=y)
            with poutine.mask(mask=~y_mask):
                hidden = pyro.sample("y_hidden", uniform)
            label = torch.where(y_mask, y, hidden)
            prior = dist.Normal(x.new_zeros(self.latent_dim), 1.0).to_event(1)
            z = pyro.sample("z", prior)
            onehot = self._onehot(label, x).expand(*z.shape[:-1], self.num_classes)
            pyro.sample("x", self.likelihood(torch.cat([z, onehot], -1)), obs=x)
            if self.alpha:
                self._register("classifier", self.classifier)
                log_q = dist.Categorical(logits=network(self.classifier, x)).log_prob(y)
                term = dist.Unit(self.alpha * log_q * y_mask)  # (pyro.factor's site, marked)
                pyro.sample("classification", term, obs=term.sample(), infer=_TRAINING_ONLY)

    def guide(
        self,
        x: Tensor,
        idx: Tensor | None = None,
        *,
        num_data: int | None = None,
        y: Tensor,
        y_mask: Tensor,
    ) -> None:
        """:math:`q(y \\mid x)` (enumerated where the label is unknown) and
        :math:`q(z \\mid x, y)`; same arguments as :meth:`model`."""
        self._register("classifier", self.classifier)
        self._register("guide", self.variational)
        y = torch.where(y_mask, y, 0)  # (as the model reads it)
        with self._plate(x, idx, num_data) as ind:
            q_y = dist.Categorical(logits=network(self.classifier, x))
            with poutine.mask(mask=~y_mask):
                hidden = pyro.sample("y_hidden", q_y, infer={"enumerate": "parallel"})
            label = torch.where(y_mask, y, hidden)  # (K, B) under enumeration
            flat = x.flatten(1).expand(*label.shape, -1)
            inputs = torch.cat([flat, self._onehot(label, x)], -1)
            pyro.sample("z", self.variational(inputs, ind))

    def elbo_loss(
        self,
        x: Tensor,
        idx: Tensor | None = None,
        *,
        num_data: int | None = None,
        beta: float | Tensor = 1.0,
        num_particles: int = 1,
        y: Tensor,
        y_mask: Tensor,
    ) -> Tensor:
        r"""The negative ELBO of a minibatch as ``TraceEnum_ELBO`` computes it from
        :meth:`model` and :meth:`guide`, written in tensors: the label's :math:`K` values are a
        leading batch dimension, as Pyro's parallel enumeration makes them, and summed exactly.

        .. math::

            -\frac{N}{B} \sum_n \Big[ \sum_{k=1}^K q(k \mid x_n)\,\big(\log p(x_n \mid z_{kn}, k_n)
            + \beta\,[\log p(z_{kn}) - \log q(z_{kn} \mid x_n, k_n)
            + u_n (\log \tfrac1K - \log q(k \mid x_n))]\big)
            + (1 - u_n) \log \tfrac1K + \alpha (1 - u_n) \log q(y_n \mid x_n) \Big]

        with :math:`u_n = 1` where the label is unknown, :math:`k_n` the label read (the known
        one where :math:`u_n = 0`, else :math:`k`) and :math:`z_{kn} \sim q(z \mid x_n, k_n)`,
        drawn for every :math:`k` as the enumerated guide draws it. The weights :math:`q(k \mid
        x_n)` are Pyro's Dice weights of the enumerated site, unmasked (they sum to one, so a
        labelled point's terms are an average over its :math:`K` draws of :math:`z`). The
        random numbers are drawn in the order of the guide and the model (the classifier, the
        encoder, :math:`z`, the decoder; the classifier again for the auxiliary term where a
        dropout in it draws, as Pyro's model calls it twice; otherwise its logits are reused,
        the same values), so with the same seed the value is Pyro's; ``fit`` checks that on its
        first batch.

        Args:
            x: The minibatch, ``(B, *event_shape)``.
            idx: Its dataset indices ``(B,)`` (default ``arange(B)``).
            num_data: :math:`N` (default ``B``).
            beta: The weight :math:`\beta` of the latent sites (:class:`~pyro_vae.LatentScale`).
            num_particles: 1 (``TraceEnum_ELBO``'s one particle).
            y: The labels ``(B,)`` (any value where unknown).
            y_mask: ``(B,)``, true where the label is known.

        Returns:
            A 0-dim tensor: the loss, differentiable in every parameter (the weights too).

        Raises:
            NotImplementedError: For ``num_particles > 1``.

        Example:
            >>> m2 = SemiSupervisedVAE(MLP(6, 3), BernoulliLikelihood(MLP(2 + 3, 6), 6),
            ...                        GaussianEncoder(MLP(6 + 3, 2 * 2), 2), num_classes=3)
            >>> x, y = torch.rand(8, 6).round(), torch.randint(0, 3, (8,))
            >>> known = torch.arange(8) < 4
            >>> elbo = pyro.infer.TraceEnum_ELBO(max_plate_nesting=1)
            >>> with torch.random.fork_rng():
            ...     pyro_loss = elbo.differentiable_loss(m2.model, m2.guide, x, y=y, y_mask=known)
            >>> bool(torch.isclose(m2.elbo_loss(x, y=y, y_mask=known), pyro_loss))
            True
        """
        if num_particles != 1:
            raise NotImplementedError(
                "SemiSupervisedVAE's derived estimator is TraceEnum_ELBO's (one particle); "
                "a bound with several particles runs through Pyro's loss"
            )
        idx, scale = batch_scale(x, idx, num_data)
        K, known = self.num_classes, y_mask
        y = torch.where(known, y, 0)
        # the guide: q(y | x) at every value (K, B), then z ~ q(z | x, label) for each
        log_q_y = torch.log_softmax(network(self.classifier, x), -1).T
        label = torch.where(known, y, torch.arange(K, device=x.device)[:, None])  # (K, B)
        onehot = self._onehot(label, x)
        q_z = self._per_class(x, onehot, idx)
        z = q_z()
        log_q_z = q_z.log_prob(z)
        # the model: p(z), p(x | z, label), p(y) = 1/K
        log_p_z = dist.Normal(z.new_zeros(()), 1.0).log_prob(z).sum(-1)
        log_x = self.likelihood(torch.cat([z, onehot], -1)).log_prob(x)
        log_uniform = -math.log(K)
        unknown = (~known).to(log_q_y.dtype)
        latent = log_p_z - log_q_z + unknown * (log_uniform - log_q_y)
        expected = (log_q_y.exp() * (log_x + beta * latent)).sum()
        observed = known.to(log_q_y.dtype).sum() * log_uniform
        if self.alpha:
            logits = log_q_y.T
            if _draws(self.classifier):  # active dropout: the model's own call, as Pyro's
                logits = network(self.classifier, x)
            log_q = torch.log_softmax(logits, -1).gather(-1, y[:, None]).squeeze(-1)
            observed = observed + (self.alpha * log_q * known).sum()
        return -scale * (expected + observed)

    def _per_class(self, x: Tensor, onehot: Tensor, idx: Tensor) -> dist.Distribution:
        r""":math:`q(z \mid x, k)` for the label read at each class, batch ``(K, B)``: the
        guide on :math:`[x, \mathrm{onehot}(k)]`. Where the guide is a
        :class:`~pyro_vae.GaussianEncoder` over a :class:`~pyro_vae.MLP`, the first layer's
        product is split, :math:`W [x; e] + b = W_x x + (W_e e + b)`, so that :math:`W_x x`
        is taken once per point instead of once per point and class (the widest product of
        the step, :math:`K` times fewer multiply-adds; the same function, its sums in another
        order)."""
        K, flat = self.num_classes, x.flatten(1)
        guide, net = self.variational, getattr(self.variational, "encoder", None)
        if type(guide) is not GaussianEncoder or type(net) is not MLP or len(net.in_shape) != 1:
            return guide(torch.cat([flat.expand(K, -1, -1), onehot], -1), idx)
        return guide.distribution(network(partial(_split_first, net, onehot), flat))

    field_names = ("y", "y_mask")
    """The fields of the batches the model and guide read."""

    def check_data(self, data: Tensor, *, num_data: int | None = None) -> None:
        """:meth:`VAE.check_data`, and the classifier's width: ``num_classes`` logits (a
        classifier with fewer outputs trains and never predicts the classes it lacks)."""
        super().check_data(data, num_data=num_data)
        with torch.no_grad(), training_modes(self, train=False):
            width = network(self.classifier, data[:1]).shape[-1]
        if width != self.num_classes:
            raise ValueError(
                f"the classifier q(y | x) gives {width} logits per point but num_classes="
                f"{self.num_classes}: build it with {self.num_classes} outputs (e.g. "
                f"pv.MLP(features, {self.num_classes}, ...))"
            )

    def check_fields(self, fields: dict[str, Tensor]) -> None:
        """Refuses labels and masks M2 cannot read, naming the field and the fix (called once
        per data set by ``fit`` and ``evaluate``): ``y_mask`` booleans, ``y`` integer class
        indices, the known ones in ``0 .. num_classes - 1`` (an unknown one: any value)."""
        y, y_mask = fields.get("y"), fields.get("y_mask")
        if y is None or y_mask is None:
            return  # (the call names what is missing)
        if y_mask.dtype != torch.bool:
            raise ValueError(
                f"the field 'y_mask' must hold booleans (True where the label is known); got "
                f"{y_mask.dtype}: pass y_mask=y_mask.bool()"
            )
        if y.is_floating_point() or y.dtype == torch.bool:
            raise ValueError(
                f"the field 'y' must hold integer class indices; got {y.dtype}: pass y=y.long()"
            )
        known = y[y_mask]
        wrong = known[(known < 0) | (known >= self.num_classes)]
        if len(wrong):
            raise ValueError(
                f"the field 'y' has known labels outside 0..{self.num_classes - 1} (e.g. "
                f"{wrong[:3].tolist()}) for num_classes={self.num_classes}: fix the labels, "
                "or mark them unknown in y_mask"
            )

    no_local_inference = (
        "SemiSupervisedVAE has no per-datapoint guide: q(z | x, y) reads the label, which is "
        "enumerated where unknown; infer_local and amortization_gap do not apply (score M2 "
        "with pv.evaluate)"
    )
    """Why :func:`~pyro_vae.infer_local` and :func:`~pyro_vae.amortization_gap` refuse M2."""

    def with_guide(self, guide: object, *, name: str) -> VAE:
        """Not available: the guide of :math:`z` reads the enumerated label, which a
        per-datapoint guide cannot (local inference and the amortization gap need one)."""
        raise NotImplementedError(self.no_local_inference)

    @torch.no_grad()
    def sample(self, y: Tensor) -> Tensor:
        r"""The mean of :math:`p(x \mid z, y)` at :math:`z \sim \mathcal{N}(0, I)`, one per
        label in ``y`` ``(B,)``: digits of the given classes; in eval mode."""
        with training_modes(self, train=False):
            z = torch.randn(y.shape[0], self.latent_dim, device=y.device)
            z = z.to(next(self.likelihood.parameters()).dtype)
            return self.likelihood(torch.cat([z, self._onehot(y, z)], -1)).mean

    @torch.no_grad()
    def reconstruct(self, x: Tensor, idx: Tensor | None = None, *, y: Tensor) -> Tensor:
        r"""The mean of :math:`p(x \mid z, y)` at the mean of :math:`q(z \mid x, y)`."""
        with training_modes(self, train=False):
            inputs = torch.cat([x.flatten(1), self._onehot(y, x)], -1)
            z = self.variational(inputs, idx).mean
            return self.likelihood(torch.cat([z, self._onehot(y, z)], -1)).mean

    @torch.no_grad()
    def classify(self, x: Tensor) -> Tensor:
        """The most probable label under :math:`q(y \\mid x)`, shape ``(B,)``; in eval mode."""
        with training_modes(self, train=False):
            return network(self.classifier, x).argmax(-1)

    def guide_layers(self) -> list[GaussianEncoder]:
        """M2's continuous latent's guide."""
        return [self.variational]


def _split_first(net: MLP, onehot: Tensor, flat: Tensor) -> Tensor:
    """``net(cat([flat.expand(K, ...), onehot], -1))``, ``(K, B, out)``, with the first layer's
    product of ``flat`` ``(B, F)`` taken once: its weight's first ``F`` columns on ``flat``,
    the others on the one-hot rows ``onehot`` ``(K, B, K)``."""
    first, features = net[0], flat.shape[-1]
    h = nn.functional.linear(flat, first.weight[:, :features], first.bias)  # (B, H)
    h = h + onehot @ first.weight[:, features:].T.to(h.dtype)  # (K, B, H)
    for layer in list(net)[1:]:
        h = layer(h)
    return h.reshape(*h.shape[:-1], *net.out_shape)


def _draws(module: nn.Module) -> bool:
    """Whether ``module`` draws random numbers in its forward pass (an active dropout)."""
    return any(isinstance(m, nn.modules.dropout._DropoutNd) and m.training and m.p > 0
               for m in module.modules())  # fmt: skip
