"""A fuzz test of :func:`pyro_vae.fit`: random small models and settings, and an interruption.

One property, over random data (size ``N`` from 1 to 40, features, values binary, grey, real or
huge), VAEs (latent dimension, hidden layers, Bernoulli or Gaussian likelihood, per-datapoint,
amortized or planar-flow guide), data paths (``pv.Batches``; a DataLoader over ``pv.Indexed``,
with its own generator, or with a worker process) and settings (batch sizes from 1 to beyond
``N``, ``drop_last``, shuffling, threshold or dynamic binarization, ``e_steps``,
``freeze_model``, a constant ``beta`` or a warm-up, optimizer and step size, loss —
``TensorTrace_ELBO``, Pyro's ``Trace_ELBO``, ``RenyiELBO`` through ``SVI.step``, the
importance-weighted bound and ``TraceEnum_ELBO``, both guessing their plate nesting —
``log_every``, a validation set):

* training either completes with a finite loss (and validation ELBO) for every epoch, or stops
  with a :class:`ValueError` or :class:`FloatingPointError` whose message is not empty, never
  with any other exception (``ZeroDivisionError``, ``StopIteration``, ``IndexError``, ...);
  when ``drop_last`` leaves no batch at all, with a :class:`ValueError`;
* a run interrupted after a random epoch ``k`` (stopped there, or killed in the middle of epoch
  ``k + 1``: after any step, during validation) and resumed from its checkpoint by a fresh
  model with other weights, from another RNG state, has the uninterrupted run's history, final
  parameters and optimizer state, bit for bit; or, where that run stopped with an error, stops
  too, after the same epochs.

Profiles: by default (CI) 25 derandomized examples, a few seconds; for a longer, random search::

    HYPOTHESIS_PROFILE=long python -m pytest tests/train/test_random_settings.py   # 500 examples

The regular tests at the end check single cases of the property in small, deterministic form.
Compiled runs resume bit for bit too (``tests/infer/test_compiled.py``: compiling takes seconds
per example, too slow to draw here); a process killed by SIGKILL is resumed in
``test_a_run_killed_by_sigkill_resumes_exactly`` below.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pyro
import pyro.distributions as dist
import pyro.infer
import pyro.optim
import pytest
import torch
from helpers import SHUFFLING_LOADER, circle_vae, generator, grouped, here
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, TensorDataset

import pyro_vae as pv
from pyro_vae.train.loop import train

CI = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("long", CI, max_examples=500, derandomize=False)
_profile = os.environ.get("HYPOTHESIS_PROFILE")
FUZZ = settings.get_profile(_profile) if _profile else CI

ALLOWED = (ValueError, FloatingPointError)

pytestmark = [
    pytest.mark.filterwarnings("ignore:Encountered NaN:UserWarning"),  # diverged runs
    pytest.mark.filterwarnings("ignore:TraceEnum_ELBO found no sample sites"),  # (nothing to sum)
]


@dataclass(frozen=True)
class Config:
    """One example: the data, the VAE and the settings of ``fit``."""

    num_data: int = 8
    features: int = 3
    latent_dim: int = 1
    hidden: tuple[int, ...] = (4,)
    values: str = "unit"  # "binary", "unit" (grey values in [0, 1]), "real" or "huge"
    likelihood: str = "bernoulli"  # or "gaussian", "gaussian-learned" (a learned scale)
    per_datapoint: bool = False
    flow: bool = False  # an amortized guide with planar flows (not per-datapoint)
    batch_size: int = 4
    drop_last: bool = False
    shuffle: bool = True
    binarize: str | None = None
    e_steps: int = 0
    freeze_model: bool = False
    beta: float | None = 1.0  # None: the warm-up min(1, (epoch - 1) / warmup)
    warmup: int = 2
    lr: float = 1e-2
    optim: str = "lazy"  # pv.LazyAdam; "lazy-local" with local_lr=0.1; "adam": pyro.optim.Adam
    loss: str = "default"  # or "trace" (pyro's Trace_ELBO), "renyi" (no differentiable_loss),
    # "iwae" (vectorized particles, Pyro's nesting guess), "enum" (TraceEnum_ELBO)
    data: str = "batches"  # or "loader", "loader-generator", "loader-workers" (a DataLoader)
    log_every: int = 1
    validation: int = 0  # validation points (amortized guides only); 0: none
    validate_every: int = 1
    epochs: int = 2
    stop_after: int = 1  # k: the epochs the interrupted run completes
    kill_at: float | None = None  # None: stopped after epoch k; else killed this far into k + 1
    seed: int = 0

    def beta_arg(self):
        if self.beta is not None:
            return self.beta
        warmup = self.warmup
        return lambda epoch: min(1.0, (epoch - 1) / warmup)


@st.composite
def configs(draw) -> Config:
    n = draw(st.integers(1, 40))
    likelihood = draw(st.sampled_from(["bernoulli", "gaussian", "gaussian-learned"]))
    binarize = draw(st.sampled_from([None, None, "threshold", "dynamic"]))
    # Values outside [0, 1] mostly where they are valid: Gaussian likelihood, no binarization.
    valid = likelihood != "bernoulli" and binarize is None
    outside = ["real"] * 4 + ["huge"] if valid else ["real"]
    values = draw(st.sampled_from(["binary"] * 3 + ["unit"] * 4 + outside))
    batch_kind = draw(st.sampled_from(["one", "some", "some", "some", "all", "more"]))
    batch_size = {
        "one": lambda: 1,
        "some": lambda: draw(st.integers(1, n)),
        "all": lambda: n,
        "more": lambda: draw(st.integers(n + 1, n + 8)),
    }[batch_kind]()
    drop_last = draw(st.booleans())
    e_steps = draw(st.integers(0, 2))
    # At most 4 epochs and about 60 steps a run: a few seconds for the CI profile.
    steps = (n // batch_size if drop_last else -(-n // batch_size)) * (e_steps + 1)
    most = max(1, min(4, 60 // max(steps, 1)))
    epochs = draw(st.integers(min(2, most), most))
    per_datapoint = draw(st.booleans())
    data = draw(st.sampled_from(["batches"] * 4 + ["loader", "loader-generator"] * 2
                                + ["loader-workers"]))  # fmt: skip
    warmup = draw(st.booleans())
    return Config(
        num_data=n,
        features=draw(st.integers(1, 6)),
        latent_dim=draw(st.integers(1, 3)),
        hidden=draw(st.sampled_from([(), (1,), (4,), (8,), (4, 4)])),
        values=values,
        likelihood=likelihood,
        per_datapoint=per_datapoint,
        flow=not per_datapoint and draw(st.sampled_from([False, False, True])),
        data=data,
        batch_size=batch_size,
        drop_last=drop_last,
        shuffle=draw(st.booleans()),
        binarize=binarize,
        e_steps=e_steps,
        freeze_model=draw(st.sampled_from([False] * 7 + [True])),
        beta=None if warmup else draw(st.sampled_from([0.0, 0.5, 1.0, 2.0])),
        warmup=draw(st.integers(1, 3)),
        lr=draw(st.sampled_from([1e-3, 1e-2, 1e-1, 10.0])),
        optim=draw(st.sampled_from(["lazy", "lazy", "lazy-local", "adam"])),
        loss=draw(st.sampled_from(["default"] * 4 + ["trace", "renyi", "iwae", "enum"])),
        log_every=draw(st.sampled_from([1, 2, 3, 50])),
        validation=0 if per_datapoint else draw(st.sampled_from([0, 0, 1, 5])),
        validate_every=draw(st.integers(1, 3)),
        epochs=epochs,
        stop_after=draw(st.integers(1, epochs)),
        kill_at=draw(st.none() | st.floats(0, 1, exclude_max=True) | st.sampled_from([0.0, 0.5])),
        seed=draw(st.integers(0, 2**16)),
    )


# ---- one run ---------------------------------------------------------------------------------


class Killed(BaseException):
    """The process was killed (not an error of the code under test)."""


class Counted:
    """A transparent wrapper of the model that counts its calls and is killed at one of them."""

    def __init__(self, fn, kill_at: int | None = None) -> None:
        self.fn, self.kill_at, self.calls = fn, kill_at, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.kill_at is not None and self.calls >= self.kill_at:
            raise Killed
        return self.fn(*args, **kwargs)


@dataclass
class Outcome:
    vae: pv.VAE
    optim: pyro.optim.PyroOptim
    history: pv.History | None
    error: BaseException | None
    losses: list[float] = field(default_factory=list)  # as the callback last saw them
    calls: list[int] = field(default_factory=list)  # model calls at the end of each epoch
    optim_state: dict | None = None


def make_data(cfg: Config, n: int, seed: int) -> torch.Tensor:
    g = generator(seed)
    shape = (n, cfg.features)
    if cfg.values == "binary":
        return torch.rand(shape, generator=g).round()
    if cfg.values == "unit":
        return torch.rand(shape, generator=g)
    return torch.randn(shape, generator=g) * (1e20 if cfg.values == "huge" else 2.0)


def make_vae(cfg: Config) -> pv.VAE:
    f, d = cfg.features, cfg.latent_dim
    decoder = pv.MLP(d, f, cfg.hidden)
    if cfg.likelihood == "bernoulli":
        likelihood = pv.BernoulliLikelihood(decoder, f)
    else:
        likelihood = pv.GaussianLikelihood(
            decoder, f, scale=0.5, learn_scale=cfg.likelihood == "gaussian-learned"
        )
    if cfg.per_datapoint:
        guide = pv.PerDatapointGaussian(cfg.num_data, d, init_scale=0.5)
    elif cfg.flow:
        guide = pv.PlanarEncoder(pv.MLP(f, 4, cfg.hidden), 4, d, flows=2)
    else:
        guide = pv.GaussianEncoder(pv.MLP(f, 2 * d, cfg.hidden), d)
    return pv.VAE(pv.StandardNormalPrior(d), likelihood, guide)


def make_loss(cfg: Config):
    if cfg.loss == "trace":
        return pyro.infer.Trace_ELBO()
    if cfg.loss == "renyi":
        return pyro.infer.RenyiELBO(alpha=0.5, num_particles=2)
    if cfg.loss == "iwae":
        return pv.ImportanceWeightedELBO(2)  # (its plate nesting guessed at the first step)
    if cfg.loss == "enum":
        return pyro.infer.TraceEnum_ELBO()
    return None


def make_batches(cfg: Config) -> pv.Batches | DataLoader:
    x = make_data(cfg, cfg.num_data, cfg.seed)
    if cfg.data == "batches":
        return pv.Batches(x, batch_size=cfg.batch_size, shuffle=cfg.shuffle,
                          binarize=cfg.binarize, drop_last=cfg.drop_last)  # fmt: skip
    generator = torch.Generator().manual_seed(cfg.seed) if cfg.data == "loader-generator" else None
    return DataLoader(
        pv.Indexed(TensorDataset(x), binarize=cfg.binarize),
        batch_size=cfg.batch_size,
        shuffle=cfg.shuffle,
        drop_last=cfg.drop_last,
        generator=generator,
        num_workers=1 if cfg.data == "loader-workers" else 0,
    )


def run(
    cfg: Config,
    *,
    epochs: int,
    save_dir=None,
    resume: bool = False,
    fresh: bool = False,
    kill_at: int | None = None,
) -> Outcome:
    """Trains ``cfg``'s VAE from a fixed initialization and RNG state, or (``fresh``) as a new
    process would: another initialization, another RNG state, ``vae.model`` itself."""
    pyro.clear_param_store()
    pyro.enable_validation(True)
    torch.manual_seed(cfg.seed + fresh)
    vae = make_vae(cfg)
    if fresh:
        with torch.no_grad():
            for p in vae.parameters():
                p.add_(torch.randn_like(p))
    model = vae.model if fresh else Counted(vae.model, kill_at)
    if cfg.optim == "adam":
        optim = pyro.optim.Adam({"lr": cfg.lr})
    else:
        optim = pv.LazyAdam({"lr": cfg.lr}, local_lr=0.1 if cfg.optim == "lazy-local" else None)
    outcome = Outcome(vae, optim, None, None)

    def callback(epoch: int, history: pv.History) -> None:
        assert history.epoch[-1] == epoch
        outcome.losses = list(history.loss)
        if not fresh:
            outcome.calls.append(model.calls)

    pyro.set_rng_seed(cfg.seed + 12345 * fresh)
    try:  # Batches, too, may raise a ValueError
        validation = None
        if cfg.validation:
            data = make_data(cfg, cfg.validation, cfg.seed + 1)
            validation = pv.Batches(data, batch_size=2, binarize=cfg.binarize)
        flat = dict(
            epochs=epochs,
            optim=optim,
            loss=make_loss(cfg),
            device=here(),
            modules=None if fresh else vae,
            save_dir=save_dir,
            resume=resume,
            progress=False,
            callback=callback,
            e_steps=cfg.e_steps,
            beta=cfg.beta_arg(),
            log_every=cfg.log_every,
            validation=validation,
            validate_every=cfg.validate_every,
        )
        if cfg.freeze_model:  # E-steps only: infer_local's loop
            outcome.history = train(model, vae.guide, make_batches(cfg), freeze_model=True, **flat)
        else:
            outcome.history = pv.fit(model, vae.guide, make_batches(cfg), **grouped(**flat))
    except ALLOWED as e:  # anything else is a bug and fails the test
        outcome.error = e
    else:  # the optimizer's state names parameters by the param store: read it now
        outcome.optim_state = optim.get_state()
    return outcome


# ---- the property ----------------------------------------------------------------------------


def check_outcome(cfg: Config, outcome: Outcome, extra_validation: int | None = None) -> None:
    """Finite losses for every epoch, or an allowed error with a message.

    ``extra_validation``: an epoch that was validated as the last epoch of a stopped run.
    """
    if outcome.error is not None:
        assert str(outcome.error).strip(), f"{type(outcome.error).__name__} without a message"
        return
    history = outcome.history
    assert history.epoch == list(range(1, cfg.epochs + 1))
    assert len(history.loss) == len(history.seconds) == cfg.epochs
    assert all(math.isfinite(v) for v in history.loss), history.loss
    assert all(math.isfinite(v) for v in history.val_elbo), history.val_elbo
    for name, value in outcome.vae.named_parameters():
        assert bool(value.isfinite().all()), f"{name} is not finite after a successful fit"
    if cfg.validation:
        expected = [
            e
            for e in history.epoch
            if e % cfg.validate_every == 0 or e in (cfg.epochs, extra_validation)
        ]
        assert history.val_epoch == expected
        assert len(history.val_elbo) == len(expected)
    else:
        assert history.val_epoch == history.val_elbo == []


def assert_identical(a, b, where: str = "") -> None:
    """Equal nested containers of tensors: same shapes, dtypes and bits."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True, msg=where)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            assert_identical(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (u, v) in enumerate(zip(a, b, strict=True)):
            assert_identical(u, v, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@SHUFFLING_LOADER
@FUZZ
@given(cfg=configs())
@example(cfg=Config())
@example(cfg=Config(per_datapoint=True, e_steps=2, batch_size=3, stop_after=1, kill_at=0.5))
@example(cfg=Config(num_data=1, batch_size=1, epochs=3, stop_after=2, kill_at=0.0))
@example(cfg=Config(beta=None, validation=5, validate_every=2, epochs=4, stop_after=2))
def test_fit_fails_cleanly_or_trains_and_resumes_exactly(cfg: Config) -> None:
    full = run(cfg, epochs=cfg.epochs)
    event(f"fit: {type(full.error).__name__}" if full.error else f"fit: {cfg.epochs} epochs")
    if cfg.drop_last and cfg.batch_size > cfg.num_data:  # no batch at all
        assert isinstance(full.error, ValueError), f"no batches: {full.error!r}"
    if cfg.per_datapoint and cfg.optim == "adam":  # sparse gradients need LazyAdam
        assert isinstance(full.error, ValueError), f"per-datapoint guide, Adam: {full.error!r}"
    check_outcome(cfg, full)

    # Interrupted after epoch k (stopped there, or killed during epoch k + 1), then resumed.
    done = len(full.calls)  # epochs the uninterrupted run completed
    k = min(cfg.stop_after, done)
    if k == 0:
        return
    killed = cfg.kill_at is not None and k < done
    # A run stopped by epochs=k validates after epoch k, as its last one: an extra validation
    # where k is not a multiple of validate_every.
    extra = k if not killed and cfg.validation and k < cfg.epochs else None
    extra = extra if extra is not None and extra % cfg.validate_every else None
    event("resumed after a kill" if killed else "resumed after a stop")
    with tempfile.TemporaryDirectory() as save_dir:
        if killed:
            first, last = full.calls[k - 1], full.calls[k]
            kill_at = first + 1 + int(cfg.kill_at * (last - first))
            with pytest.raises(Killed):
                run(cfg, epochs=cfg.epochs, save_dir=save_dir, kill_at=kill_at)
        else:
            stopped = run(cfg, epochs=k, save_dir=save_dir)
            if stopped.error is not None and extra is not None:
                return  # the extra validation failed (e.g. diverged): an allowed error
            assert stopped.error is None, stopped.error
            assert stopped.history.loss == full.losses[:k]
        with pytest.raises(FileExistsError, match="resume=True"):  # never overwritten silently
            run(cfg, epochs=cfg.epochs, save_dir=save_dir)
        resumed = run(cfg, epochs=cfg.epochs, save_dir=save_dir, resume=True, fresh=True)
        saved = pv.History.load(Path(save_dir) / "history.json")

    if full.error is not None:
        # The same epochs, then an error: the same one, or a ValueError from the validation
        # of the resumed run's first step where the uninterrupted run, which validates its
        # first step only, found a NaN loss (FloatingPointError).
        assert resumed.error is not None, full.error
        assert saved.loss == full.losses
        return
    assert resumed.error is None, resumed.error
    check_outcome(cfg, resumed, extra)
    assert resumed.history.loss == full.history.loss
    validated = dict(zip(resumed.history.val_epoch, resumed.history.val_elbo, strict=True))
    validated.pop(extra, None)
    assert validated == dict(zip(full.history.val_epoch, full.history.val_elbo, strict=True))
    assert_identical(full.vae.state_dict(), resumed.vae.state_dict(), "state_dict")
    if k < cfg.epochs:  # the resumed run stepped every parameter (it has optimizer state)
        assert_identical(full.optim_state, resumed.optim_state, "optim")


# ---- single cases the property covers ------------------------------------------------------------


def test_dynamic_binarization_of_values_outside_the_unit_interval_is_a_value_error():
    """Dynamic binarization of values outside [0, 1] is refused with a ValueError that names
    binarize, not a RuntimeError from torch.bernoulli inside fit."""
    vae = pv.VAE(
        pv.StandardNormalPrior(1),
        pv.GaussianLikelihood(pv.MLP(1, 2), 2),
        pv.GaussianEncoder(pv.MLP(2, 2), 1),
    )
    with pytest.raises(ValueError, match="binarize"):
        data = pv.Batches(torch.tensor([[2.0, -1.0]]), batch_size=1, binarize="dynamic")
        pv.fit(vae.model, vae.guide, data, epochs=1, device=here(), log=False)


def infinite_gradient_model(x, idx, num_data):
    w = pyro.param("w", torch.zeros(()))
    pyro.factor("f", -w.sqrt())  # a finite loss (0 at w = 0) with an infinite gradient


def empty_guide(x, idx, num_data):
    pass


def test_a_step_that_makes_parameters_nan_is_neither_returned_nor_saved():
    """A finite loss with an infinite gradient (e.g. lr=10 on a small VAE) lets Adam write NaN
    parameters: fit checks the parameters, not only the loss, and stops with a
    FloatingPointError naming the parameter, so the NaN parameters are neither returned as a
    success nor saved in the checkpoint from which the error says to resume."""
    data = pv.Batches(torch.zeros(4, 1), batch_size=4)
    with tempfile.TemporaryDirectory() as save_dir:
        with pytest.raises(FloatingPointError, match="'w'"):
            pv.fit(infinite_gradient_model, empty_guide, data, epochs=2, device=here(),
                   save=save_dir, log=False)  # fmt: skip
        path = Path(save_dir) / "checkpoint.pt"
        if path.exists():
            saved = torch.load(path, weights_only=True)["params"]
            assert all(bool(v.isfinite().all()) for v in saved.values()), saved
    pyro.clear_param_store()
    with pytest.raises(FloatingPointError, match="'w'"):
        pv.fit(
            infinite_gradient_model,
            empty_guide,
            data,
            epochs=1,
            device=here(),
            log=False,
        )


def test_a_nan_validation_elbo_is_an_error():
    """A non-finite validation ELBO stops fit with a FloatingPointError: it is not recorded in
    the history (or checkpoint) of a run returned as a success. Here one step sets a guide's
    log-scale to 100: exp(100) = inf."""

    def model(x, idx, num_data=None):
        with pyro.plate("data", num_data or x.shape[0], subsample=idx):
            pyro.sample("z", dist.Normal(0.0, 1e6))  # flat: the gradient is the entropy's

    def guide(x, idx, num_data=None):
        log_scale = pyro.param("log_scale", torch.zeros(()))
        with pyro.plate("data", num_data or x.shape[0], subsample=idx):
            pyro.sample("z", dist.Normal(0.0, log_scale.exp()))

    data = pv.Batches(torch.zeros(4, 1), batch_size=4)
    optim = pv.LazyAdam({"lr": 100.0})
    with pytest.raises(FloatingPointError, match="validation ELBO"):
        pv.fit(
            model,
            guide,
            data,
            epochs=1,
            optim=optim,
            validation=data,
            device=here(),
            log=False,
        )


def small_vae() -> pv.VAE:
    return circle_vae()


def test_a_run_stopped_by_epochs_resumes_exactly_with_validation():
    """Validation draws its own random numbers, not the training RNG's: the validation that a
    run stopped by ``epochs=k`` does after its last epoch leaves the RNG state it saves as it
    was, so resumed, its losses are the uninterrupted run's."""
    x = pv.make_circle(32)[0]
    data, validation = pv.Batches(x[:24], batch_size=8), pv.Batches(x[24:], batch_size=8)

    def losses(epochs, save_dir, resume=False):
        pyro.clear_param_store()
        torch.manual_seed(0)
        vae = small_vae()
        pyro.set_rng_seed(0)
        return pv.fit(
            vae.model,
            vae.guide,
            data,
            epochs=epochs,
            optim=pv.LazyAdam({"lr": 1e-2}),
            validation=pv.Validation(validation, every=3),
            save=pv.Checkpoints(save_dir, resume=resume),
            device=here(),
            log=False,
        ).loss

    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        full = losses(3, a)
        losses(1, b)  # validates after epoch 1, as its last
        assert losses(3, b, resume=True) == full


KILLED_RUN = """
import os, signal, sys
import pyro, torch
from torch.utils.data import DataLoader, TensorDataset
import pyro_vae as pv

save_dir, kill_at, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
pyro.set_rng_seed(int(sys.argv[4]))  # the resumed process: another RNG state, other weights
vae = pv.VAE(pv.StandardNormalPrior(1), pv.GaussianLikelihood(pv.MLP(1, 2, (8,)), 2),
             pv.GaussianEncoder(pv.MLP(2, 2, (8,)), 1))
calls = 0

def model(*args, **kwargs):
    global calls
    calls += 1
    if calls == kill_at:  # in the middle of epoch 3 (4 steps an epoch, +1: the first check)
        os.kill(os.getpid(), signal.SIGKILL)
    return vae.model(*args, **kwargs)

g = torch.Generator().manual_seed(3)
loader = DataLoader(pv.Indexed(TensorDataset(pv.make_circle(64)[0])), batch_size=16,
                    shuffle=True, generator=g, num_workers=1)
history = pv.fit(model, vae.guide, loader, epochs=4, device="cpu", modules=vae,
                 save=pv.Checkpoints(save_dir, resume=True), log=False,
                 loss=pv.ImportanceWeightedELBO(2))
torch.save({"loss": history.loss, "state": vae.state_dict()}, out)
"""


@pytest.mark.long
def test_a_run_killed_by_sigkill_resumes_exactly(tmp_path):
    """A process killed by SIGKILL in the middle of an epoch (a DataLoader with its own
    generator and a worker, a loss that guesses its plate nesting), resumed by a new process
    with another RNG state, ends with the uninterrupted run's losses and weights, bit for bit;
    and its run folder is not left locked."""
    import subprocess
    import sys

    script = tmp_path / "run.py"
    script.write_text(KILLED_RUN)

    def launch(save_dir, kill_at, out, seed):
        args = [sys.executable, str(script), str(save_dir), str(kill_at), str(out), str(seed)]
        return subprocess.run(args, capture_output=True, text=True, timeout=300)

    full = launch(tmp_path / "full", 0, tmp_path / "full.pt", 0)
    assert full.returncode == 0, full.stderr
    killed = launch(tmp_path / "cut", 1 + 2 * 4 + 2, tmp_path / "never.pt", 0)
    assert killed.returncode == -9, killed.stderr
    assert pv.History.load(tmp_path / "cut" / "history.json").epoch == [1, 2]
    resumed = launch(tmp_path / "cut", 0, tmp_path / "resumed.pt", 1)
    assert resumed.returncode == 0, resumed.stderr
    a = torch.load(tmp_path / "full.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed.pt", weights_only=True)
    assert a["loss"] == b["loss"]
    for name, value in a["state"].items():
        assert torch.equal(value, b["state"][name]), name
