"""pyro_vae: variational autoencoders the Pyro way.

A VAE is three distribution-returning modules — a prior :math:`p(z)`, a likelihood
:math:`p(x \\mid z)` and a guide :math:`q(z \\mid x)` — composed by :class:`VAE` into a Pyro
``model`` and ``guide`` that :class:`pyro.infer.SVI` (or :func:`fit`) trains.
"""

from .data import Batches, default_data_dir, load_mnist
from .evaluate import Evaluation, evaluate, log_weights
from .guides import GaussianEncoder
from .likelihoods import BernoulliLikelihood, GaussianLikelihood, UnitIntervalBernoulli
from .nets import MLP
from .plots import save_grid, save_reconstructions
from .priors import FlowPrior, MAFPrior, StandardNormalPrior
from .train import History, default_device, fit
from .vae import VAE

__all__ = [
    "MLP",
    "VAE",
    "Batches",
    "BernoulliLikelihood",
    "Evaluation",
    "FlowPrior",
    "GaussianEncoder",
    "GaussianLikelihood",
    "History",
    "MAFPrior",
    "StandardNormalPrior",
    "UnitIntervalBernoulli",
    "default_data_dir",
    "default_device",
    "evaluate",
    "fit",
    "load_mnist",
    "log_weights",
    "save_grid",
    "save_reconstructions",
]

__version__ = "0.1.0"
