r"""Early stopping on the validation ELBO (``Validation(patience=k)``), the rule of Pyro's
``examples/cvae``: training stops once ``k`` validations in a row have not raised the
validation ELBO above its best, and the weights go back to the best validation's. The count is
read from the history, so a resumed run goes on counting where its saved run stopped.

At a stop the best weights are put back before the last checkpoint is written (the run is
over: resuming it trains no further and returns them). A run that reaches its last epoch
without stopping saves its last weights (a resumed run with more epochs continues exactly as
one uninterrupted run) and then puts the best ones back in memory, for the caller.
"""

from __future__ import annotations

import warnings

import pyro
import torch
from torch import Tensor, nn

from .checkpoint import History

__all__ = ["EarlyStopping"]


class EarlyStopping:
    """The stopping rule of one run, and the best validation's weights (every parameter of
    Pyro's param store, and the networks' buffers: a BatchNorm's statistics).

    Built after the run has begun (a resumed run's checkpoint loaded): where the history's
    best validation is its last epoch, the weights now are the best's and are kept.

    Args:
        patience: Validations without improvement before the run stops (``None``: never; the
            rule then does nothing).
        history: The run's history (a resumed run's: its validations count).
        modules: The networks.

    Example:
        >>> stopping = EarlyStopping(2, History(), None)
        >>> [stopping.after(epoch, elbo) for epoch, elbo in enumerate([-3.0, -2.0, -2.5, -2.1])]
        [False, False, False, True]
        >>> stopping.best_epoch
        1
    """

    def __init__(self, patience: int | None, history: History, modules: nn.Module | None) -> None:
        self.patience, self.modules = patience if patience else float("inf"), modules
        elbos, self.kept = (history.val_elbo if patience else []), None
        self.best = max(elbos) if elbos else float("-inf")
        self.best_epoch = history.val_epoch[elbos.index(self.best)] if elbos else None
        self.since = len(elbos) - 1 - elbos.index(self.best) if elbos else 0
        if self.best_epoch is not None and self.best_epoch == history.epoch[-1]:
            self.kept = self._snapshot()  # (the resumed checkpoint is the best validation's)
        if self.done:
            warnings.warn(
                f"the saved run stopped early at epoch {history.epoch[-1]} (no better "
                f"validation in {patience} since epoch {self.best_epoch}) with that epoch's "
                "weights: it trains no further",
                stacklevel=4,
            )

    @property
    def done(self) -> bool:
        """Whether the rule had stopped the run already (a resumed run trains no further)."""
        return self.since >= self.patience

    def after(self, epoch: int, val_elbo: float | None) -> bool:
        """Counts a validation (``None``: none this epoch) and keeps the weights at a new best;
        where the run stops here, puts the best weights back. Returns whether to stop."""
        if val_elbo is not None and self.patience < float("inf"):
            if val_elbo > self.best:
                self.best, self.best_epoch, self.since = val_elbo, epoch, 0
                self.kept = self._snapshot()
            else:
                self.since += 1
        if self.done:
            self._restore(epoch)
        return self.done

    def finish(self, epoch: int) -> None:
        """After the last epoch (saved): the best weights back, where they are not the last
        (nothing after a stop, which put them back)."""
        if 0 < self.since < self.patience:
            self._restore(epoch)

    def _snapshot(self) -> list[tuple[Tensor, Tensor]]:
        store = pyro.get_param_store()
        tensors = [p for _, p in store.named_parameters()]
        tensors += list(self.modules.buffers()) if self.modules is not None else []
        return [(t, t.detach().clone()) for t in tensors]

    def _restore(self, epoch: int) -> None:
        if self.kept is None:
            warnings.warn(
                f"early stopping: the best validation (epoch {self.best_epoch}) came before the "
                f"resumed checkpoint, whose weights were not kept; the weights of epoch {epoch} "
                "stay",
                stacklevel=4,
            )
            return
        with torch.no_grad():
            for tensor, value in self.kept:
                tensor.copy_(value)
