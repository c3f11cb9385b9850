"""pyro_vae: variational autoencoders the Pyro way.

A VAE is three distribution-returning modules — a :class:`Prior` :math:`p(z)`, a
:class:`Likelihood` :math:`p(x \\mid z)` and a :class:`Guide` :math:`q(z \\mid x)` — composed by
:class:`VAE` into a Pyro ``model`` and ``guide`` that :class:`pyro.infer.SVI` (or :func:`fit`)
trains.

The names below are flat, as ``pyro.infer`` and ``torch.distributions`` export theirs (one
``import pyro_vae as pv`` reaches them all); each lives in one of the subpackages, listed from
the bottom up (each imports only those before it):

* :mod:`pyro_vae.devices`: :func:`default_device`, :func:`device_name`, ``fake_cuda``, the
  dispatch watch (:mod:`pyro_vae.devices.dispatch`) and the networks' precision
  (:mod:`pyro_vae.devices.precision`);
* :mod:`pyro_vae.data`: :class:`Batches`, :class:`Loader`, :class:`Indexed`,
  :func:`load_mnist`, :func:`make_circle`, :func:`default_data_dir`;
* :mod:`pyro_vae.models`: :class:`VAE`, :class:`ConditionalVAE`, :class:`SemiSupervisedVAE`,
  :class:`HierarchicalVAE`, :class:`GuideChain`; priors
  (:class:`Prior`, :class:`StandardNormalPrior`, :class:`FlowPrior`, :class:`MAFPrior`,
  :class:`VampPrior`, :class:`LatentLibraryPrior`); likelihoods (:class:`Likelihood`,
  :class:`BernoulliLikelihood`,
  :class:`UnitIntervalBernoulli`, :class:`GaussianLikelihood`, :class:`PoissonLikelihood`,
  :class:`NegativeBinomialLikelihood`, :class:`MultinomialLikelihood`,
  :class:`DiscretizedLogisticLikelihood`, :class:`DiscretizedLogistic`); guides (:class:`Guide`,
  :class:`GaussianEncoder`, :class:`PerDatapointGaussian`, :class:`SemiAmortizedGaussian`);
  flow guides (:class:`PlanarEncoder`, :class:`IAFEncoder`,
  :class:`ZukoFlowEncoder`, :class:`TransformedGaussianEncoder`); networks (:class:`MLP`,
  :class:`ConvEncoder`, :class:`ConvDecoder`); standard architectures:
  :mod:`pyro_vae.models.zoo`;
* :mod:`pyro_vae.infer`: :class:`TensorTrace_ELBO`, :class:`ImportanceWeightedELBO`,
  :class:`BetaELBO`, :class:`LatentScale`, :class:`LazyAdam`, :func:`evaluate`, :class:`Evaluation`,
  :func:`log_weights`;
* :mod:`pyro_vae.plots`: :func:`plot_curves`, :func:`plot_scatter`, :func:`save_grid`,
  :func:`save_reconstructions`;
* :mod:`pyro_vae.train`: :func:`fit` and its options (:class:`Compute`, :class:`Checkpoints`,
  :class:`Validation`, :class:`Logging`), :class:`History`, :func:`load_checkpoint`,
  :func:`save_model`, :class:`CheckpointError`, :func:`infer_local`,
  :func:`amortization_gap`, :class:`AmortizationGap`.

Modules whose names begin with an underscore are the machinery behind these names.
"""

import torch as _torch

# Importing zuko switches torch's distribution argument checks off for the whole process
# (Distribution.set_default_validate_args(False)); the package leaves the flag as it found it.
_validate_args = _torch.distributions.Distribution._validate_args

from . import data, devices, infer, models, plots, train  # noqa: F401 (the subpackages)
from .data import Batches, Indexed, Loader, default_data_dir, load_mnist, make_circle
from .devices import default_device, device_name
from .infer import (
    BetaELBO,
    Evaluation,
    ImportanceWeightedELBO,
    LatentScale,
    LazyAdam,
    TensorTrace_ELBO,
    evaluate,
    log_weights,
)
from .models import (
    MLP,
    VAE,
    BernoulliLikelihood,
    ConditionalVAE,
    ConvDecoder,
    ConvEncoder,
    DiscretizedLogistic,
    DiscretizedLogisticLikelihood,
    FlowPrior,
    GaussianEncoder,
    GaussianLikelihood,
    Guide,
    GuideChain,
    HierarchicalVAE,
    IAFEncoder,
    LatentLibraryPrior,
    Likelihood,
    MAFPrior,
    MultinomialLikelihood,
    NegativeBinomialLikelihood,
    PerDatapointGaussian,
    PlanarEncoder,
    PoissonLikelihood,
    Prior,
    SemiAmortizedGaussian,
    SemiSupervisedVAE,
    StandardNormalPrior,
    TransformedGaussianEncoder,
    UnitIntervalBernoulli,
    VampPrior,
    ZukoFlowEncoder,
)
from .plots import plot_curves, plot_scatter, save_grid, save_reconstructions
from .train import (
    AmortizationGap,
    CheckpointError,
    Checkpoints,
    Compute,
    History,
    Logging,
    Validation,
    amortization_gap,
    fit,
    infer_local,
    load_checkpoint,
    save_model,
)

_torch.distributions.Distribution.set_default_validate_args(_validate_args)

__all__ = [
    "MLP",
    "VAE",
    "AmortizationGap",
    "Batches",
    "BernoulliLikelihood",
    "BetaELBO",
    "CheckpointError",
    "Checkpoints",
    "Compute",
    "ConditionalVAE",
    "ConvDecoder",
    "ConvEncoder",
    "DiscretizedLogistic",
    "DiscretizedLogisticLikelihood",
    "Evaluation",
    "FlowPrior",
    "GaussianEncoder",
    "GaussianLikelihood",
    "Guide",
    "GuideChain",
    "HierarchicalVAE",
    "History",
    "IAFEncoder",
    "ImportanceWeightedELBO",
    "Indexed",
    "LatentLibraryPrior",
    "LatentScale",
    "LazyAdam",
    "Likelihood",
    "Loader",
    "Logging",
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
    "TensorTrace_ELBO",
    "TransformedGaussianEncoder",
    "UnitIntervalBernoulli",
    "Validation",
    "VampPrior",
    "ZukoFlowEncoder",
    "amortization_gap",
    "default_data_dir",
    "default_device",
    "device_name",
    "evaluate",
    "fit",
    "infer_local",
    "load_checkpoint",
    "load_mnist",
    "log_weights",
    "make_circle",
    "plot_curves",
    "plot_scatter",
    "save_grid",
    "save_model",
    "save_reconstructions",
]

__version__ = "0.1.0"
