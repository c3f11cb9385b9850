"""Training: :func:`~pyro_vae.fit` (SVI over minibatches, with history, checkpoints, resume,
validation, TensorBoard and data-parallel processes), the saved run (:class:`~pyro_vae.History`,
:func:`~pyro_vae.load_checkpoint`, :func:`~pyro_vae.save_model`), and the inference that
trains local parameters under a trained model (:func:`~pyro_vae.infer_local`,
:func:`~pyro_vae.amortization_gap`).

Modules: ``loop`` (:func:`~pyro_vae.fit`), ``options`` (what ``fit`` takes beside Pyro's
arguments), ``checkpoint`` (what a run saves and how it is read
back) and ``local`` (E-steps on new data, the amortization gap).
"""

from .checkpoint import CheckpointError, History, load_checkpoint, save_model
from .local import AmortizationGap, amortization_gap, infer_local
from .loop import fit
from .options import Checkpoints, Compute, Logging, Validation

__all__ = [
    "AmortizationGap",
    "CheckpointError",
    "Checkpoints",
    "Compute",
    "History",
    "Logging",
    "Validation",
    "amortization_gap",
    "fit",
    "infer_local",
    "load_checkpoint",
    "save_model",
]
