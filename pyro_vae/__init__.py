"""pyro_vae: variational autoencoders the Pyro way.

A VAE is three distribution-returning modules — a prior :math:`p(z)`, a likelihood
:math:`p(x \\mid z)` and a guide :math:`q(z \\mid x)` — composed by :class:`VAE` into a Pyro
``model`` and ``guide`` that :class:`pyro.infer.SVI` (or :func:`fit`) trains.
"""

from .data import Batches, default_data_dir, load_mnist, make_circle
from .elbo import TensorTrace_ELBO
from .evaluate import (
    AmortizationGap,
    Evaluation,
    amortization_gap,
    evaluate,
    infer_local,
    log_weights,
)
from .flows import IAFEncoder, PlanarEncoder, TransformedGaussianEncoder, ZukoFlowEncoder
from .guides import GaussianEncoder, PerDatapointGaussian
from .likelihoods import BernoulliLikelihood, GaussianLikelihood, UnitIntervalBernoulli
from .nets import MLP, ConvDecoder, ConvEncoder
from .optim import LazyAdam
from .plots import plot_curves, plot_scatter, save_grid, save_reconstructions
from .priors import FlowPrior, MAFPrior, StandardNormalPrior
from .train import History, LatentScale, default_device, device_name, fit
from .vae import VAE

__all__ = [
    "MLP",
    "VAE",
    "AmortizationGap",
    "Batches",
    "BernoulliLikelihood",
    "ConvDecoder",
    "ConvEncoder",
    "Evaluation",
    "FlowPrior",
    "GaussianEncoder",
    "GaussianLikelihood",
    "History",
    "IAFEncoder",
    "LatentScale",
    "LazyAdam",
    "MAFPrior",
    "PerDatapointGaussian",
    "PlanarEncoder",
    "StandardNormalPrior",
    "TensorTrace_ELBO",
    "TransformedGaussianEncoder",
    "UnitIntervalBernoulli",
    "ZukoFlowEncoder",
    "amortization_gap",
    "default_data_dir",
    "default_device",
    "device_name",
    "evaluate",
    "fit",
    "infer_local",
    "load_mnist",
    "log_weights",
    "make_circle",
    "plot_curves",
    "plot_scatter",
    "save_grid",
    "save_reconstructions",
]

__version__ = "0.1.0"
