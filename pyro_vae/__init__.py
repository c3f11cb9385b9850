"""pyro_vae: variational autoencoders the Pyro way.

A VAE is three distribution-returning modules — a :class:`Prior` :math:`p(z)`, a
:class:`Likelihood` :math:`p(x \\mid z)` and a :class:`Guide` :math:`q(z \\mid x)` — composed by
:class:`VAE` into a Pyro ``model`` and ``guide`` that :class:`pyro.infer.SVI` (or :func:`fit`)
trains.

Modules, from the bottom up: ``nets`` (networks), ``priors``, ``likelihoods``, ``guides`` and
``flows`` (the three roles), ``vae`` and ``hierarchical`` (their composition), ``data``,
``devices``, ``prepare`` (data source, networks, once-only checks), ``elbo`` (objectives),
``optim``, ``steps`` (the training step), ``evaluate`` (scoring), ``checkpoint``, ``runs``
(the run folder), ``train`` (the loop), ``local`` (inference that trains: held-out E-steps,
the amortization gap), ``zoo`` (standard architectures) and ``plots``; ``dispatch`` (host
reads, device mixes and kernels of a step) and ``scripts`` (the examples' and benchmarks'
command-line scaffolding) stand aside.

The names below are flat, as ``pyro.infer`` and ``torch.distributions`` export theirs (one
``import pyro_vae as pv`` reaches them all); their groups are the modules:

* models: :class:`VAE`, :class:`HierarchicalVAE`, :class:`GuideChain`; priors
  (:class:`Prior`, :class:`StandardNormalPrior`, :class:`FlowPrior`, :class:`MAFPrior`,
  :class:`VampPrior`); likelihoods (:class:`Likelihood`, :class:`BernoulliLikelihood`,
  :class:`UnitIntervalBernoulli`, :class:`GaussianLikelihood`); guides (:class:`Guide`,
  :class:`GaussianEncoder`, :class:`PerDatapointGaussian`, :class:`SemiAmortizedGaussian`,
  :func:`diagonal_normal`); flow guides (:class:`PlanarEncoder`, :class:`IAFEncoder`,
  :class:`ZukoFlowEncoder`, :class:`TransformedGaussianEncoder`); networks (:class:`MLP`,
  :class:`ConvEncoder`, :class:`ConvDecoder`); standard architectures: :mod:`zoo`;
* inference: :class:`TensorTrace_ELBO`, :class:`ImportanceWeightedELBO`, :class:`LatentScale`,
  :class:`LazyAdam`, :func:`fit`, :func:`evaluate`, :class:`Evaluation`, :func:`log_weights`,
  :func:`infer_local`, :func:`amortization_gap`, :class:`AmortizationGap`;
* data: :class:`Batches`, :class:`Loader`, :class:`Indexed`, :func:`load_mnist`,
  :func:`make_circle`, :func:`default_data_dir`;
* runs: :class:`History`, :func:`load_checkpoint`, :class:`CheckpointError`,
  :func:`default_device`, :func:`device_name`, :mod:`dispatch`;
* plots: :func:`plot_curves`, :func:`plot_scatter`, :func:`save_grid`,
  :func:`save_reconstructions`.
"""

import torch as _torch

# Importing zuko switches torch's distribution argument checks off for the whole process
# (Distribution.set_default_validate_args(False)); the package leaves the flag as it found it.
_validate_args = _torch.distributions.Distribution._validate_args

from . import dispatch, zoo  # pyro_vae.zoo.flow_prior_vae(), pyro_vae.dispatch.DispatchWatch
from .checkpoint import CheckpointError, History, load_checkpoint
from .data import Batches, default_data_dir, load_mnist, make_circle
from .devices import default_device, device_name
from .elbo import ImportanceWeightedELBO, LatentScale, TensorTrace_ELBO
from .evaluate import Evaluation, evaluate, log_weights
from .flows import IAFEncoder, PlanarEncoder, TransformedGaussianEncoder, ZukoFlowEncoder
from .guides import (
    GaussianEncoder,
    Guide,
    PerDatapointGaussian,
    SemiAmortizedGaussian,
    diagonal_normal,
)
from .hierarchical import GuideChain, HierarchicalVAE
from .likelihoods import BernoulliLikelihood, GaussianLikelihood, Likelihood, UnitIntervalBernoulli
from .loaders import Indexed, Loader
from .local import AmortizationGap, amortization_gap, infer_local
from .nets import MLP, ConvDecoder, ConvEncoder
from .optim import LazyAdam
from .plots import plot_curves, plot_scatter, save_grid, save_reconstructions
from .priors import FlowPrior, MAFPrior, Prior, StandardNormalPrior, VampPrior
from .train import fit
from .vae import VAE

_torch.distributions.Distribution.set_default_validate_args(_validate_args)

__all__ = [
    "MLP",
    "VAE",
    "AmortizationGap",
    "Batches",
    "BernoulliLikelihood",
    "CheckpointError",
    "ConvDecoder",
    "ConvEncoder",
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
    "LatentScale",
    "LazyAdam",
    "Likelihood",
    "Loader",
    "MAFPrior",
    "PerDatapointGaussian",
    "PlanarEncoder",
    "Prior",
    "SemiAmortizedGaussian",
    "StandardNormalPrior",
    "TensorTrace_ELBO",
    "TransformedGaussianEncoder",
    "UnitIntervalBernoulli",
    "VampPrior",
    "ZukoFlowEncoder",
    "amortization_gap",
    "default_data_dir",
    "default_device",
    "device_name",
    "diagonal_normal",
    "dispatch",
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
    "save_reconstructions",
    "zoo",
]

__version__ = "0.1.0"
