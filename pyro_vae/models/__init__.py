"""The model pieces: networks, the three distribution-returning roles (priors :math:`p(z)`,
likelihoods :math:`p(x \\mid z)`, guides :math:`q(z \\mid x)` or :math:`q(z_n)`), flow guides,
and their composition into a Pyro model and guide.

Modules: ``nets`` (MLP and convolutional networks), ``priors``, ``likelihoods``, ``counts``
(likelihoods of counts), ``library`` (latent library sizes of counts), ``discretized`` (8-bit
values), ``guides``, ``flows`` (flow posteriors), ``vae`` (:class:`~pyro_vae.VAE`), ``conditional``
(:class:`~pyro_vae.ConditionalVAE`), ``semisupervised`` (:class:`~pyro_vae.SemiSupervisedVAE`),
``hierarchical`` (two or more stochastic layers), ``completion`` (the pieces of Pyro's
image-completion CVAE) and
:mod:`~pyro_vae.models.zoo` (the standard architectures of the examples).
"""

from . import zoo  # noqa: F401 (the module, an attribute)
from .conditional import ConditionalVAE
from .counts import MultinomialLikelihood, NegativeBinomialLikelihood, PoissonLikelihood
from .discretized import DiscretizedLogistic, DiscretizedLogisticLikelihood
from .flows import IAFEncoder, PlanarEncoder, TransformedGaussianEncoder, ZukoFlowEncoder
from .guides import (
    GaussianEncoder,
    Guide,
    PerDatapointGaussian,
    SemiAmortizedGaussian,
)
from .hierarchical import GuideChain, HierarchicalVAE
from .library import LatentLibraryPrior
from .likelihoods import BernoulliLikelihood, GaussianLikelihood, Likelihood, UnitIntervalBernoulli
from .nets import MLP, ConvDecoder, ConvEncoder
from .priors import FlowPrior, MAFPrior, Prior, StandardNormalPrior, VampPrior
from .semisupervised import SemiSupervisedVAE
from .vae import VAE

__all__ = [
    "MLP",
    "VAE",
    "BernoulliLikelihood",
    "ConditionalVAE",
    "ConvDecoder",
    "ConvEncoder",
    "DiscretizedLogistic",
    "DiscretizedLogisticLikelihood",
    "FlowPrior",
    "GaussianEncoder",
    "GaussianLikelihood",
    "Guide",
    "GuideChain",
    "HierarchicalVAE",
    "IAFEncoder",
    "LatentLibraryPrior",
    "Likelihood",
    "MAFPrior",
    "MultinomialLikelihood",
    "NegativeBinomialLikelihood",
    "PerDatapointGaussian",
    "PlanarEncoder",
    "PoissonLikelihood",
    "Prior",
    "SemiAmortizedGaussian",
    "SemiSupervisedVAE",
    "StandardNormalPrior",
    "TransformedGaussianEncoder",
    "UnitIntervalBernoulli",
    "VampPrior",
    "ZukoFlowEncoder",
]
