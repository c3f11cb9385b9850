"""Inference without a loop: the objectives (ELBO estimators, the IWAE bound, the KL weight),
the optimizer, and scoring (importance-sampled :math:`\\log p(x)`, the ELBO).

Modules: ``elbo`` (objectives), ``optim`` (:class:`~pyro_vae.LazyAdam`), ``scoring``
(:func:`~pyro_vae.evaluate`, :func:`~pyro_vae.log_weights`). The loops that train are in
:mod:`pyro_vae.train`.
"""

from .elbo import BetaELBO, ImportanceWeightedELBO, LatentScale, TensorTrace_ELBO
from .optim import LazyAdam
from .scoring import Evaluation, evaluate, log_weights

__all__ = [
    "BetaELBO",
    "Evaluation",
    "ImportanceWeightedELBO",
    "LatentScale",
    "LazyAdam",
    "TensorTrace_ELBO",
    "evaluate",
    "log_weights",
]
