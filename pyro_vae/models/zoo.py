r"""The standard architectures of the examples and benchmarks, importable.

Each function returns a fresh, untrained :class:`~pyro_vae.VAE`. The examples, the benchmarks
and the tests build their models here, so a notebook gets the same model by
``from pyro_vae.models import zoo``. Layers, defaults and the order in which the modules are created
(and so the initial weights under a seed) are those of the runs reported in the README: change
them and those results no longer reproduce.

=============================  ==========================================================
function                       model (source)
=============================  ==========================================================
:func:`flow_prior_vae`         MLP 1024-1024, z = 16, MAF prior (zuko's VAE tutorial)
:func:`flow_posterior_vae`     MLP 200-200, z = 50, flow posteriors (Burda et al. 2016)
:func:`iwae_vae`               1 or 2 stochastic layers, tanh MLPs (Burda et al. 2016)
:func:`conv_vae`               DCGAN-style convolutions, z = 32
:func:`latent2d_vae`           MLP 400-400, z = 2 (MXNet Gluon VAE tutorial)
:func:`circle_vae`             MLP 20-20, z = 1, three inference schemes (Linderman 2023)
=============================  ==========================================================
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, get_args

import zuko
from torch import nn

from .completion import CompletionPrior
from .conditional import ConditionalVAE
from .flows import IAFEncoder, PlanarEncoder, ZukoFlowEncoder
from .guides import GaussianEncoder, PerDatapointGaussian, SemiAmortizedGaussian
from .hierarchical import GuideChain, HierarchicalVAE
from .likelihoods import BernoulliLikelihood, GaussianLikelihood
from .nets import MLP, ConvDecoder, ConvEncoder
from .priors import MAFPrior, StandardNormalPrior, VampPrior
from .semisupervised import SemiSupervisedVAE
from .vae import VAE

__all__ = [
    "circle_vae",
    "completion_cvae",
    "conv_vae",
    "flow_posterior_vae",
    "flow_prior_vae",
    "iwae_vae",
    "latent2d_vae",
    "m2_vae",
    "pyro_cvae",
]

MNIST_SHAPE = (1, 28, 28)
"""The shape of one MNIST image for the convolutional model (the MLPs read 784 pixels)."""
# Each choice is written once, as a Literal type; the tuples (for the examples' flags and the
# checks) are read from it.
PosteriorName = Literal["none", "planar", "iaf", "nsf"]
PriorName = Literal["normal", "maf"]
LikelihoodName = Literal["bernoulli", "gaussian"]
InferenceName = Literal["amortized", "per-datapoint", "semi-amortized"]
IWAEPriorName = Literal["normal", "vamp"]
POSTERIORS: tuple[str, ...] = get_args(PosteriorName)
"""The posteriors of :func:`flow_posterior_vae`."""
PRIORS: tuple[str, ...] = get_args(PriorName)
"""The priors of :func:`flow_posterior_vae`."""
LIKELIHOODS: tuple[str, ...] = get_args(LikelihoodName)
"""The likelihoods of :func:`conv_vae` and :func:`latent2d_vae`."""
INFERENCE: tuple[str, ...] = get_args(InferenceName)
"""The guides of :func:`circle_vae`."""
IWAE_PRIORS: tuple[str, ...] = get_args(IWAEPriorName)
"""The priors of :func:`iwae_vae`."""

_PIXELS = 784


def _check(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")


def _image_likelihood(
    likelihood: str, decoder: nn.Module, shape: int | tuple[int, ...]
) -> BernoulliLikelihood | GaussianLikelihood:
    """Bernoulli (summed binary cross-entropy) or Gaussian with a learned scale (from 0.1)."""
    _check("likelihood", likelihood, LIKELIHOODS)
    if likelihood == "gaussian":
        return GaussianLikelihood(decoder, shape, scale=0.1, learn_scale=True)
    return BernoulliLikelihood(decoder, shape)


def flow_prior_vae(*, latent_dim: int = 16, hidden: int = 1024) -> VAE:
    """The MNIST VAE with a masked autoregressive flow prior of zuko's tutorial.

    Gaussian encoder 784→H→H→2·z (ReLU), Bernoulli decoder z→H→H→784, and a MAF prior with 3
    transforms of hidden features (256, 256); the tutorial ("Variational autoencoders", zuko's
    documentation, also Pyro's "Variational Autoencoder with a Normalizing Flow prior") trains
    it with Adam 1e-3, batch 256 on thresholded MNIST and reports a training loss of 65.8 nats
    per image after 64 epochs.

    Args:
        latent_dim: z, the latent dimension.
        hidden: H, the width of both hidden layers of the encoder and of the decoder.

    Returns:
        The VAE (data: flat images of 784 binary pixels).

    Example:
        >>> from pyro_vae.models import zoo
        >>> vae = zoo.flow_prior_vae(latent_dim=4, hidden=32)
        >>> vae.sample(3).shape
        torch.Size([3, 784])
    """
    return VAE(
        prior=MAFPrior(latent_dim, transforms=3, hidden_features=(256, 256)),
        likelihood=BernoulliLikelihood(MLP(latent_dim, _PIXELS, (hidden, hidden)), _PIXELS),
        guide=GaussianEncoder(MLP(_PIXELS, 2 * latent_dim, (hidden, hidden)), latent_dim),
    )


def flow_posterior_vae(
    posterior: PosteriorName,
    *,
    flows: int = 4,
    prior: PriorName = "normal",
    latent_dim: int = 50,
    hidden: int = 200,
) -> VAE:
    """The benchmark MLP VAE of Burda, Grosse & Salakhutdinov (2016, "Importance Weighted
    Autoencoders", one stochastic layer) with a flow posterior and optionally a flow prior.

    Bernoulli decoder z→H→H→784 (ReLU). The guide by ``posterior``:

    * ``"none"``: diagonal Gaussian from an encoder 784→H→H→2·z;
    * ``"planar"``: ``flows`` amortized planar maps (Rezende & Mohamed 2015) on features
      h(x) = ReLU(784→H→H);
    * ``"iaf"``: ``flows`` inverse autoregressive maps (Kingma et al. 2016) conditioned on
      h(x), autoregressive networks of hidden features (2H, 2H);
    * ``"nsf"``: a zuko neural spline flow with ``flows`` transforms and context h(x).

    Args:
        posterior: The posterior, one of ``zoo.POSTERIORS`` (``"none"``, ``"planar"``,
            ``"iaf"``, ``"nsf"``).
        flows: K, the number of flow maps (unused for ``"none"``).
        prior: ``"normal"`` (N(0, I)) or ``"maf"`` (:class:`~pyro_vae.MAFPrior`, defaults).
        latent_dim: z.
        hidden: H.

    Returns:
        The VAE (data: flat images of 784 binary pixels).

    Example:
        >>> import torch
        >>> from pyro_vae.models import zoo
        >>> vae = zoo.flow_posterior_vae("iaf", flows=2, latent_dim=4, hidden=16)
        >>> vae.reconstruct(torch.rand(3, 784).round()).shape
        torch.Size([3, 784])
    """
    _check("posterior", posterior, POSTERIORS)
    _check("prior", prior, PRIORS)
    z_prior = MAFPrior(latent_dim) if prior == "maf" else StandardNormalPrior(latent_dim)
    decoder = MLP(latent_dim, _PIXELS, (hidden, hidden))
    # Created for every posterior, "none" included, so that the initial weights stay those of the
    # published runs (the random draws happen in this order).
    features = nn.Sequential(MLP(_PIXELS, hidden, (hidden,)), nn.ReLU())  # x -> h(x)
    if posterior == "none":
        guide = GaussianEncoder(MLP(_PIXELS, 2 * latent_dim, (hidden, hidden)), latent_dim)
    elif posterior == "planar":
        guide = PlanarEncoder(features, hidden, latent_dim, flows=flows)
    elif posterior == "iaf":
        guide = IAFEncoder(
            features, hidden, latent_dim, flows=flows, hidden_features=(2 * hidden, 2 * hidden)
        )
    else:
        nsf = zuko.flows.NSF(
            latent_dim, context=hidden, transforms=flows, hidden_features=(2 * hidden, 2 * hidden)
        )
        guide = ZukoFlowEncoder(features, nsf)
    return VAE(z_prior, BernoulliLikelihood(decoder, _PIXELS), guide)


def iwae_vae(
    *,
    layers: Literal[1, 2] = 1,
    prior: IWAEPriorName = "normal",
    num_pseudo: int = 500,
    activation: Callable[[], nn.Module] = nn.Tanh,
) -> VAE | HierarchicalVAE:
    """The MNIST architectures of Burda, Grosse & Salakhutdinov (2016, "Importance Weighted
    Autoencoders", section 5), Gaussian guides, Bernoulli decoder, tanh hidden units:

    * 1 stochastic layer: x → 200 → 200 → z (50) and back;
    * 2 stochastic layers: x → 100 → 100 → z1 (100) → 50 → 50 → z2 (50), the generative
      side the mirror image (:class:`~pyro_vae.HierarchicalVAE`).

    The paper's test NLL (Table 1, K = 5000, after 3280 passes over the data): one layer
    86.76 (ELBO), 85.54 (IWAE, k = 5), 84.78 (k = 50); two layers 85.33, 83.89, 82.90.

    Train with :class:`~pyro_vae.ImportanceWeightedELBO` for the IWAE rows. ``prior="vamp"``
    puts a :class:`~pyro_vae.VampPrior` on the top layer (Tomczak & Welling 2018): the mixture
    of the guide's posteriors at ``num_pseudo`` pseudo-inputs (through
    :class:`~pyro_vae.GuideChain` for two layers).

    Args:
        layers: Stochastic layers, 1 or 2.
        prior: ``"normal"`` (N(0, I)) or ``"vamp"``.
        num_pseudo: Pseudo-inputs of the VampPrior.
        activation: The hidden units (the paper's ``nn.Tanh``). With tanh units a VampPrior
            run stays at the data-independent solution (~206 nats) for the ten epochs
            measured (with or without KL warm-up); with ``nn.ReLU`` it trains.

    Returns:
        The VAE (data: flat images of 784 binary pixels); sites ``z`` (1 layer) or ``z1``,
        ``z2`` (2 layers).

    Example:
        >>> import torch
        >>> from pyro_vae.models import zoo
        >>> vae = zoo.iwae_vae(layers=2, prior="vamp", num_pseudo=10)
        >>> vae.sample(3).shape
        torch.Size([3, 784])
    """
    _check("prior", prior, IWAE_PRIORS)
    if layers not in (1, 2):
        raise ValueError(f"layers must be 1 or 2; got {layers!r}")
    act = activation
    if layers == 1:
        guide = GaussianEncoder(MLP(_PIXELS, 2 * 50, (200, 200), activation=act), 50)
        likelihood = BernoulliLikelihood(MLP(50, _PIXELS, (200, 200), activation=act), _PIXELS)
        top = VampPrior(guide, num_pseudo, (_PIXELS,)) if prior == "vamp" else None
        return VAE(top or StandardNormalPrior(50), likelihood, guide)
    q1 = GaussianEncoder(MLP(_PIXELS, 2 * 100, (100, 100), activation=act), 100)
    q2 = GaussianEncoder(MLP(100, 2 * 50, (50, 50), activation=act), 50)
    p1 = GaussianEncoder(MLP(50, 2 * 100, (50, 50), activation=act), 100)  # p(z1 | z2)
    likelihood = BernoulliLikelihood(MLP(100, _PIXELS, (100, 100), activation=act), _PIXELS)
    chain = GuideChain([q1, q2])
    top = VampPrior(chain, num_pseudo, (_PIXELS,)) if prior == "vamp" else None
    return HierarchicalVAE(top or StandardNormalPrior(50), [p1], likelihood, [q1, q2])


def conv_vae(*, likelihood: LikelihoodName = "bernoulli", latent_dim: int = 32) -> VAE:
    """A DCGAN-style convolutional VAE for 28×28 images.

    Encoder (:class:`~pyro_vae.ConvEncoder`): stride-2 convolutions 1→16→32→64 (kernel 4,
    BatchNorm + LeakyReLU(0.2)) and a linear map to (μ, log σ). Decoder
    (:class:`~pyro_vae.ConvDecoder`): transposed convolutions z→256→128→64→1 with BatchNorm +
    ReLU, producing 28×28 logits (or means). Standard normal prior. Call ``vae.eval()`` before
    evaluating: BatchNorm then uses its running statistics.

    Args:
        likelihood: ``"bernoulli"`` (summed binary cross-entropy, also on grey values) or
            ``"gaussian"`` (learned scale, starting at 0.1).
        latent_dim: z.

    Returns:
        The VAE (data: images of shape ``(1, 28, 28)``, ``zoo.MNIST_SHAPE``).

    Example:
        >>> import torch
        >>> from pyro_vae.models import zoo
        >>> vae = zoo.conv_vae(latent_dim=8)
        >>> vae.reconstruct(torch.rand(2, *zoo.MNIST_SHAPE)).shape
        torch.Size([2, 1, 28, 28])
    """
    lik = _image_likelihood(likelihood, ConvDecoder(latent_dim), MNIST_SHAPE)
    guide = GaussianEncoder(ConvEncoder(2 * latent_dim), latent_dim)
    return VAE(StandardNormalPrior(latent_dim), lik, guide)


def completion_cvae(*, latent_dim: int = 200, hidden: int = 500) -> ConditionalVAE:
    r"""The conditional VAE of Pyro's image-completion example (``examples/cvae``, after Sohn,
    Lee & Yan 2015) on MNIST: the condition ``c`` is the image with the unknown pixels set to
    :math:`-1`, the field ``unknown`` marks the pixels the likelihood scores. A prior network
    :math:`p(z \mid c)` and a recognition network :math:`q(z \mid x, c)` (MLPs
    784-500-500 and 1568-500-500 to a Gaussian over 200 latents), and a generation network
    :math:`p(x \mid z)` (200-500-500-784, Bernoulli logits; it reads :math:`z` alone, as
    Pyro's).

    Where it differs from Pyro's model (:func:`pyro_cvae` is Pyro's): Pyro's prior network
    reads the completion of a deterministic baseline network (trained first, then frozen)
    where the image is unknown, here the condition itself; Pyro's recognition network reads
    the whole image, here :math:`[x, c]`.

    Example:
        >>> cvae = completion_cvae(latent_dim=4, hidden=16)
        >>> cvae.sample(-torch.ones(2, 784)).shape
        torch.Size([2, 784])
    """
    pixels, layers = 784, (hidden, hidden)
    return ConditionalVAE(
        GaussianEncoder(MLP(pixels, 2 * latent_dim, layers), latent_dim),
        BernoulliLikelihood(MLP(latent_dim, pixels, layers), pixels),
        GaussianEncoder(MLP(2 * pixels, 2 * latent_dim, layers), latent_dim),
        mask="unknown",
        decode_condition=False,
    )


def pyro_cvae(
    *, latent_dim: int = 200, hidden: int = 500, baseline: nn.Module | None = None
) -> ConditionalVAE:
    r"""Pyro's image-completion CVAE (``examples/cvae``) as it is: the prior network
    :math:`p(z \mid c)` reads the condition completed by a deterministic baseline network
    (:class:`~pyro_vae.models.completion.CompletionPrior`; ``baseline``, an MLP 784-500-500-784
    trained first with :func:`~pyro_vae.models.completion.completion_loss`, frozen here;
    default: an untrained one, for loading a saved model), the recognition network
    :math:`q(z \mid x)` reads the whole image, the generation network :math:`p(x \mid z)`
    reads :math:`z`; MLPs 784-500-500 to a Gaussian over 200 latents and 200-500-500-784, ReLU.
    Pyro's networks end in a sigmoid (the probabilities of its Bernoulli) and an exponential
    (its scale): the same distributions as the logits and log-scales here.

    Example:
        >>> cvae = pyro_cvae(latent_dim=4, hidden=16)
        >>> cvae.sample(-torch.ones(2, 784)).shape
        torch.Size([2, 784])
    """
    pixels, layers = 784, (hidden, hidden)
    prior = GaussianEncoder(MLP(pixels, 2 * latent_dim, layers), latent_dim)
    return ConditionalVAE(
        CompletionPrior(baseline if baseline is not None else MLP(pixels, pixels, layers), prior),
        BernoulliLikelihood(MLP(latent_dim, pixels, layers), pixels),
        GaussianEncoder(MLP(pixels, 2 * latent_dim, layers), latent_dim),
        mask="unknown",
        decode_condition=False,
        encode_condition=False,
    )


def m2_vae(
    *, num_classes: int = 10, latent_dim: int = 50, hidden: int = 500, alpha: float = 0.0
) -> SemiSupervisedVAE:
    r"""The semi-supervised M2 model on MNIST (Kingma, Rezende, Mohamed & Welling 2014; the
    networks of Pyro's ``ss_vae_M2.py``): a classifier :math:`q(y \mid x)` (784-500-10), an
    encoder :math:`q(z \mid x, y)` (794-500 to a Gaussian over 50 latents) and a decoder
    :math:`p(x \mid z, y)` (60-500-784, Bernoulli logits); ``alpha`` weighs the auxiliary
    classification term per labelled point.

    Where it differs from Pyro's model and its training: ReLU after the hidden layers (Pyro's:
    softplus), logits into the categorical and Bernoulli distributions (Pyro's: probabilities
    through an epsilon-clipped softmax and sigmoid), PyTorch's default initialisation (the
    same), and, in ``examples/mnist_ssvae.py``, Adam at 1e-3 (Pyro's: 4.2e-4), the auxiliary
    term inside the ELBO's step (Pyro's: a second SVI objective on the labelled batches),
    labelled and unlabelled points mixed in every minibatch (Pyro's: a labelled batch every
    N / labels batches) and all 60000 training images for training, no validation set (Pyro's:
    10000 held out, the test error reported at the best validation accuracy).

    Example:
        >>> m2 = m2_vae(latent_dim=4, hidden=16)
        >>> m2.classify(torch.rand(3, 784)).shape
        torch.Size([3])
    """
    pixels, layers = 784, (hidden,)
    return SemiSupervisedVAE(
        MLP(pixels, num_classes, layers),
        BernoulliLikelihood(MLP(latent_dim + num_classes, pixels, layers), pixels),
        GaussianEncoder(MLP(pixels + num_classes, 2 * latent_dim, layers), latent_dim),
        num_classes=num_classes,
        alpha=alpha,
    )


def latent2d_vae(
    *,
    likelihood: LikelihoodName = "bernoulli",
    hidden: int = 400,
    latent_dim: int = 2,
) -> VAE:
    """The MLP VAE with a 2-D latent space of the MXNet Gluon VAE tutorial.

    Encoder 784→H→H→2·z and decoder z→H→H→784 (ReLU), standard normal prior. The tutorial
    trains it with Adam 1e-3, batch 100 on grey-value MNIST and reports a training loss of
    137.45 and a validation loss of 141.13 nats per image after 50 epochs.

    Args:
        likelihood: ``"bernoulli"`` (summed binary cross-entropy, also on grey values) or
            ``"gaussian"`` (learned scale, starting at 0.1).
        hidden: H.
        latent_dim: z (2, so that the latent space can be drawn).

    Returns:
        The VAE (data: flat images of 784 pixels in [0, 1]).

    Example:
        >>> import torch
        >>> from pyro_vae.models import zoo
        >>> vae = zoo.latent2d_vae(hidden=32)
        >>> vae.variational(torch.rand(5, 784)).mean.shape  # posterior means, to plot
        torch.Size([5, 2])
    """
    decoder = MLP(latent_dim, _PIXELS, (hidden, hidden))
    lik = _image_likelihood(likelihood, decoder, _PIXELS)
    guide = GaussianEncoder(MLP(_PIXELS, 2 * latent_dim, (hidden, hidden)), latent_dim)
    return VAE(StandardNormalPrior(latent_dim), lik, guide)


def circle_vae(
    inference: InferenceName,
    *,
    num_data: int | None = None,
    init_scale: float = 0.1,
    refine_steps: int = 5,
    refine_lr: float = 1e-3,
) -> VAE:
    """The VAE with a 1-D latent of Linderman's noisy-circle example (Stanford STATS 305C
    lecture notes, "Variational Autoencoders", 2023), with one of three guides.

    Standard normal prior on z ∈ R, decoder 1→20→20→2 (ReLU) and a Gaussian likelihood with a
    fixed σ = 0.1 (data: :func:`~pyro_vae.make_circle`). The guide by ``inference``:

    * ``"amortized"``: a diagonal Gaussian from an encoder 2→20→20→(μ, log σ);
    * ``"per-datapoint"``: :class:`~pyro_vae.PerDatapointGaussian`, local (μ_n, log σ_n) for each
      of ``num_data`` points (variational EM, no encoder);
    * ``"semi-amortized"``: the amortized encoder's output refined by ``refine_steps``
      gradient steps of size ``refine_lr`` (:class:`~pyro_vae.SemiAmortizedGaussian`).

    Args:
        inference: One of ``zoo.INFERENCE`` (``"amortized"``, ``"per-datapoint"``,
            ``"semi-amortized"``).
        num_data: N, the number of training points (needed for ``"per-datapoint"``).
        init_scale: Initial σ_n of the per-datapoint guide.
        refine_steps: Refinement steps of the semi-amortized guide.
        refine_lr: Their step size.

    Returns:
        The VAE (data: points of shape ``(2,)``).

    Example:
        >>> import torch
        >>> from pyro_vae.models import zoo
        >>> vae = zoo.circle_vae("per-datapoint", num_data=100)
        >>> vae.variational(None, torch.arange(3)).mean.shape  # rows 0, 1, 2 of the guide
        torch.Size([3, 1])
    """
    _check("inference", inference, INFERENCE)
    if inference == "per-datapoint" and num_data is None:
        raise ValueError("per-datapoint inference needs num_data, the number of training points")
    prior = StandardNormalPrior(1)
    likelihood = GaussianLikelihood(MLP(1, 2, (20, 20)), 2, scale=0.1)
    if inference == "per-datapoint":
        guide = PerDatapointGaussian(num_data, 1, init_scale=init_scale)
    else:
        guide = GaussianEncoder(MLP(2, 2, (20, 20)), 1)
    if inference == "semi-amortized":
        guide = SemiAmortizedGaussian(guide, prior, likelihood, steps=refine_steps, lr=refine_lr)
    return VAE(prior, likelihood, guide)
