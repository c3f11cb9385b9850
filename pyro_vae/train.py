"""The training loop: Pyro SVI over shuffled minibatches, with history, checkpoints and resume.

:func:`fit` trains any Pyro model/guide pair that follows one calling convention::

    model(x, idx, num_data=N)   # and the same for guide

where ``x`` is a minibatch, ``idx`` its dataset indices and ``N`` the data set's size (the
package's :class:`~pyro_vae.VAE` does; so can a hand-written pair).
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import pyro
import pyro.optim
import torch
from pyro import poutine
from pyro.infer import ELBO, SVI
from pyro.poutine.messenger import Messenger
from torch import nn
from torch.distributions import transform_to
from tqdm.auto import tqdm

from .data import Batches
from .elbo import TensorTrace_ELBO
from .optim import LazyAdam

__all__ = ["History", "LatentScale", "default_device", "device_name", "fit"]

CHECKPOINT = "checkpoint.pt"
HISTORY = "history.json"


def default_device() -> torch.device:
    """``cuda`` when a GPU is available, else ``cpu``."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_name(device: torch.device | str) -> str:
    """``"cpu"``, or e.g. ``"cuda (NVIDIA H100 80GB HBM3)"``: for reports."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


@dataclass
class History:
    """Per-epoch training record.

    Attributes:
        epoch: Epoch numbers, from 1.
        loss: Mean negative ELBO per data point over the epoch's minibatches (nats).
        seconds: Cumulative training wall-clock at the end of each epoch.
    """

    epoch: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    def save(self, path: str | os.PathLike) -> None:
        """Writes the history as JSON."""
        Path(path).write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike) -> History:
        return cls(**json.loads(Path(path).read_text()))


class LatentScale(Messenger):
    r"""Scales the log-densities of latent (unobserved) sample sites by :math:`\beta`.

    Applied to both the model and the guide, the ELBO becomes
    :math:`\mathbb{E}_q[\log p(x \mid z)] - \beta\,\mathrm{KL}(q(z \mid x) \,\|\, p(z))`:
    the :math:`\beta`-VAE objective (Higgins et al. 2017) and, with :math:`\beta` rising from
    0 to 1, KL warm-up (Bowman et al. 2016; Sønderby et al. 2016). It is ``poutine.scale``
    restricted to latent sites; ``beta`` may be changed between steps.

    Example:
        >>> with LatentScale(0.5):
        ...     loss = Trace_ELBO().differentiable_loss(vae.model, vae.guide, x)
    """

    def __init__(self, beta: float = 1.0) -> None:
        super().__init__()
        self.beta = beta

    def _process_message(self, msg: dict) -> None:
        if msg["type"] == "sample" and not msg["is_observed"] and self.beta != 1.0:
            msg["scale"] = msg["scale"] * self.beta


def fit(
    model: Callable[..., object],
    guide: Callable[..., object],
    data: Batches,
    *,
    epochs: int,
    optim: pyro.optim.PyroOptim | None = None,
    loss: ELBO | None = None,
    device: torch.device | str | None = None,
    modules: nn.Module | None = None,
    save_dir: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    callback: Callable[[int, History], None] | None = None,
    e_steps: int = 0,
    freeze_model: bool = False,
    beta: float | Callable[[int], float] = 1.0,
    log_every: int = 50,
) -> History:
    r"""Trains a Pyro model/guide pair by stochastic variational inference.

    Each step does what ``pyro.infer.SVI(model, guide, optim, loss).step(x, idx,
    num_data=N)`` does — the ELBO's gradient on a minibatch, one step of the Pyro optimizer on
    the parameters the step traced — through the differentiable-loss interface, without the
    host synchronizations of ``SVI.step`` (the loss stays a device tensor; the progress bar
    reads it every ``log_every`` steps). The loss, scaled to the whole data set by the model's
    subsampled plate, is divided by ``N``: the history holds the mean negative ELBO per point.

    Args:
        model: A Pyro model ``model(x, idx, num_data=N)``.
        guide: A Pyro guide with the same signature.
        data: The training minibatches.
        epochs: Train until this many epochs are done (counting those of a resumed run).
        optim: A Pyro optimizer; default :class:`~pyro_vae.LazyAdam` with ``lr=1e-3`` (Adam,
            with sparse updates for per-datapoint parameters).
        loss: A Pyro ELBO; default :class:`~pyro_vae.TensorTrace_ELBO` (``Trace_ELBO``'s
            estimator without per-site syncs). One without ``differentiable_loss`` is run
            through ``SVI.step`` (joint updates only).
        device: Where to train; default :func:`default_device`. ``modules`` and ``data`` are
            moved there.
        modules: The networks behind ``model`` and ``guide`` (e.g. the :class:`VAE`): moved to
            ``device``, put in train mode, and saved in checkpoints with their buffers.
        save_dir: If given, ``history.json`` and ``checkpoint.pt`` (param store, optimizer
            state, module state, epoch, RNG states) are written there after every epoch.
        resume: Continue from ``save_dir/checkpoint.pt`` when it exists.
        progress: Show a tqdm bar with the running loss.
        callback: Called as ``callback(epoch, history)`` after every epoch (e.g. to evaluate).
        e_steps: The schedule. ``0``: joint stochastic updates of the model's parameters
            :math:`\theta` and the guide's :math:`\lambda` (one ``SVI.step`` per batch).
            ``k > 0``: variational EM with alternating steps: per batch, ``k`` updates of the
            guide's parameters with :math:`\theta` fixed (E-step), then one update of
            :math:`\theta` with the guide fixed (M-step).
        freeze_model: Update only the guide's parameters (an E-step over the data), e.g. to
            fit a per-datapoint guide to held-out data under a trained model.
        beta: Weight :math:`\beta` of the KL term (see :class:`LatentScale`), or a function
            of the epoch (from 1) for a warm-up, e.g. ``lambda e: min(1.0, e / 10)``. The
            history then records the :math:`\beta`-weighted loss.
        log_every: Steps between progress-bar updates (each reads the loss: a host sync).

    Returns:
        The :class:`History` of all epochs (those of the resumed run included).
    """
    device = torch.device(device) if device is not None else default_device()
    if e_steps < 0 or (e_steps and freeze_model):
        raise ValueError("e_steps must be >= 0 and cannot be combined with freeze_model")
    optim = optim if optim is not None else LazyAdam({"lr": 1e-3})
    loss = loss if loss is not None else TensorTrace_ELBO()
    data = data.to(device)
    if modules is not None:
        modules.to(device).train()
    kl_scale = LatentScale()
    if beta != 1.0:
        model, guide = kl_scale(model), kl_scale(guide)
    num_data = data.num_data
    svi = None
    if not hasattr(loss, "differentiable_loss"):  # e.g. RenyiELBO: Pyro's own SVI step
        svi = SVI(model, guide, optim, loss)
        if e_steps or freeze_model:
            raise ValueError(f"{type(loss).__name__} has no differentiable_loss for e_steps")

    def train_step(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor | float:
        if svi is not None:
            return svi.step(x, idx, num_data=num_data)
        step = partial(_step, model, guide, x, idx, num_data, optim, loss)
        if freeze_model:
            return step(update_model=False)
        if e_steps:
            for _ in range(e_steps):
                step(update_model=False)
            return step(update_guide=False)
        return step()

    history, start = History(), 0
    ckpt_path = Path(save_dir) / CHECKPOINT if save_dir is not None else None
    if ckpt_path is not None:
        ckpt_path.parent.mkdir(parents=True, exist_ok=True)
        if resume and ckpt_path.exists():
            history = _restore(ckpt_path, model, guide, data, optim, modules, device)
            start = history.epoch[-1] if history.epoch else 0

    elapsed = history.seconds[-1] if history.seconds else 0.0
    bar = tqdm(total=(epochs - start) * len(data), disable=not progress, desc="train", unit="step")
    for epoch in range(start + 1, epochs + 1):
        kl_scale.beta = beta(epoch) if callable(beta) else beta
        t0 = time.perf_counter()
        total, count = 0.0, 0  # the epoch's loss stays on the device: no sync per step
        for step, (x, idx) in enumerate(data):
            total = total + train_step(x, idx) * (x.shape[0] / num_data)
            count += x.shape[0]
            if progress and step % log_every == 0:
                bar.set_postfix(epoch=epoch, loss=f"{float(total) / count:.2f}")
            bar.update()
        epoch_loss = float(total) / count
        elapsed += time.perf_counter() - t0
        if not math.isfinite(epoch_loss):
            raise FloatingPointError(f"the loss is {epoch_loss} in epoch {epoch}")
        history.epoch.append(epoch)
        history.loss.append(epoch_loss)
        history.seconds.append(elapsed)
        bar.set_postfix(epoch=epoch, loss=f"{epoch_loss:.2f}")
        if save_dir is not None:
            history.save(Path(save_dir) / HISTORY)
            _save(ckpt_path, history, optim, modules)
        if callback is not None:
            callback(epoch, history)
    bar.close()
    return history


def _step(
    model, guide, x, idx, num_data, optim, loss, *, update_model=True, update_guide=True
) -> torch.Tensor:
    """One gradient step on the parameters of the model, the guide, or both.

    A side that is not updated has its ``pyro.param`` / ``pyro.module`` sites blocked, so they
    are not collected, and ``backward(inputs=...)`` computes gradients for the others alone.
    Gradients are released (set to ``None``) after the step. Returns the detached loss.
    """
    if not update_model:
        model = poutine.block(model, hide_types=["param"])
    if not update_guide:
        guide = poutine.block(guide, hide_types=["param"])
    with poutine.trace(param_only=True) as capture:
        value = loss.differentiable_loss(model, guide, x, idx, num_data=num_data)
    params = [site["value"].unconstrained() for site in capture.trace.nodes.values()]
    if params:
        torch.autograd.backward(value, inputs=params)
        optim(params)
        for p in params:
            p.grad = None
    return value.detach() if isinstance(value, torch.Tensor) else torch.tensor(value)


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"].cpu())
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _save(path: Path, history: History, optim: pyro.optim.PyroOptim, modules) -> None:
    state = {
        "history": asdict(history),
        "param_store": pyro.get_param_store().get_state(),
        "optim": optim.get_state(),
        "modules": modules.state_dict() if modules is not None else None,
        "rng": _rng_state(),
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _restore(path: Path, model, guide, data: Batches, optim, modules, device) -> History:
    """Loads a checkpoint into the live objects.

    One forward pass of model and guide on a batch first registers every parameter in the param
    store, so that saved values can be copied *into* the tensors the modules use (a resumed run
    then trains the same tensors whether a model registers modules or plain ``pyro.param``s).
    """
    state = torch.load(path, map_location=device, weights_only=False)
    x, idx = next(iter(data))
    with poutine.block(), torch.no_grad():
        model(x, idx, num_data=data.num_data)
        guide(x, idx, num_data=data.num_data)
    store = pyro.get_param_store()
    saved = state["param_store"]
    with torch.no_grad():
        for name, value in saved["params"].items():
            if name in store:
                store.get_param(name).unconstrained().copy_(value)
            else:
                constraint = saved["constraints"][name]
                store.setdefault(name, transform_to(constraint)(value), constraint)
    if modules is not None and state["modules"] is not None:
        modules.load_state_dict(state["modules"])
    optim.set_state(state["optim"])
    _set_rng_state(state["rng"])
    return History(**state["history"])
