"""A run's whole state is gathered into its checkpoint and restored from it: parameters a model
creates after the first step, numpy's random stream, a DataLoader's own generator, a loss that
guesses its plate nesting by running the pair; what cannot be read back is refused when saved;
a failed write names the folder and leaves the previous checkpoint intact.

Each test compares an interrupted-and-resumed run with the uninterrupted one, tensor for tensor.
"""

from __future__ import annotations

import fractions

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from helpers import circle_vae, fit_circle, generator, here
from torch import nn
from torch.distributions import transform_to
from torch.utils.data import DataLoader, TensorDataset

import pyro_vae as pv
from pyro_vae.train._constraints import constraint_from_data, constraint_to_data


def assert_same_state(a: nn.Module, b: nn.Module) -> None:
    for (name, u), v in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(u, v), name


def resumed_equals_uninterrupted(train, tmp_path, *, epochs=4, stop=2):
    """``train(save_dir, epochs, resume)`` -> (module, history), run whole, then stopped after
    ``stop`` epochs and resumed: returns both outcomes, checked equal."""
    full_module, full = train(tmp_path / "full", epochs, False)
    train(tmp_path / "cut", stop, False)
    module, resumed = train(tmp_path / "cut", epochs, True)
    assert resumed.loss == full.loss
    assert_same_state(full_module, module)
    return full, resumed


class LateParams(nn.Module):
    """A hand-written pair whose model creates a positive parameter per data point the first
    time the point is seen (so that some exist only after the first step)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(2, 2)

    def model(self, x, idx, num_data=None):
        scales = [pyro.param(f"scale_{int(i)}", torch.ones(()) * 0.5,
                             constraint=dist.constraints.positive) for i in idx]  # fmt: skip
        with pyro.plate("data", num_data, subsample=idx):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z[:, None], torch.stack(scales)[:, None]).to_event(1),
                        obs=x)  # fmt: skip

    def guide(self, x, idx, num_data=None):
        pyro.module("encoder", self.encoder)
        loc, log_scale = self.encoder(x).unbind(-1)
        with pyro.plate("data", num_data, subsample=idx):
            pyro.sample("z", dist.Normal(loc, log_scale.exp()))


def test_parameters_created_after_the_first_step_are_saved_and_resumed(tmp_path):
    """Before: a parameter first created at step 2 was not in the checkpoint and restarted from
    its initial value after a resume (0.0995 against 0.194)."""
    x = pv.make_circle(32)[0]
    stores = {}

    def train(save_dir, epochs, resume):
        pyro.clear_param_store()
        torch.manual_seed(0)
        pair = LateParams()
        pyro.set_rng_seed(1)
        history = pv.fit(
            pair.model,
            pair.guide,
            pv.Batches(x, batch_size=8),
            epochs=epochs,
            device=here(),
            save=pv.Checkpoints(save_dir, resume=resume),
            log=False,
            optim=pyro.optim.Adam({"lr": 0.05}),
        )
        stores[save_dir, epochs] = {n: v.detach().clone()
                                    for n, v in pyro.get_param_store().items()}  # fmt: skip
        return pair, history

    resumed_equals_uninterrupted(train, tmp_path)
    full, resumed = stores[tmp_path / "full", 4], stores[tmp_path / "cut", 4]
    assert full.keys() == resumed.keys() and len(full) == 32 + 2
    for name in full:
        assert torch.equal(full[name], resumed[name]), name
    assert all(float(v) > 0 for n, v in resumed.items() if n.startswith("scale_"))


def test_numpy_random_stream_is_restored(tmp_path):
    """A β schedule that draws from numpy's global stream: after a resume it draws what the
    uninterrupted run drew (numpy's stream was not in the checkpoint)."""

    def train(save_dir, epochs, resume):
        np.random.seed(0)  # a new process seeds alike; the checkpoint carries the stream on
        return fit_circle(save_dir, epochs, beta=lambda epoch: float(np.random.rand()),
                          resume=resume)  # fmt: skip

    resumed_equals_uninterrupted(train, tmp_path)


@pytest.mark.parametrize("where", ["loader", "sampler"])
def test_a_dataloader_with_its_own_generator_resumes_exactly(tmp_path, where):
    """Before: a DataLoader given ``generator=`` reshuffled from the generator's first state
    after a resume (epoch 3 loss 4.3094 against 4.3407)."""
    points = pv.make_circle(64)[0]

    def train(save_dir, epochs, resume):
        g = generator(7)
        dataset = pv.Indexed(TensorDataset(points))
        if where == "loader":
            loader = DataLoader(dataset, batch_size=16, shuffle=True, generator=g)
        else:
            sampler = torch.utils.data.RandomSampler(dataset, generator=g)
            loader = DataLoader(dataset, batch_size=16, sampler=sampler)
        pyro.clear_param_store()
        torch.manual_seed(0)
        vae = circle_vae()
        pyro.set_rng_seed(0)
        history = pv.fit(
            vae.model,
            vae.guide,
            loader,
            epochs=epochs,
            device=here(),
            save=pv.Checkpoints(save_dir, resume=resume),
            log=False,
            optim=pv.LazyAdam({"lr": 1e-2}),
        )
        return vae, history

    resumed_equals_uninterrupted(train, tmp_path)


@pytest.mark.parametrize(
    "make_loss",
    [
        lambda: pv.ImportanceWeightedELBO(3),
        lambda: pyro.infer.Trace_ELBO(num_particles=2, vectorize_particles=True),
        lambda: pyro.infer.TraceEnum_ELBO(),
    ],
    ids=["iwae", "vectorized-trace", "trace-enum"],
)
@pytest.mark.filterwarnings("ignore:TraceEnum_ELBO found no sample sites")
def test_losses_that_guess_their_plate_nesting_resume_exactly(tmp_path, make_loss):
    """Before: Pyro's guess of ``max_plate_nesting`` ran the pair (drawing random numbers) at
    the resumed run's first step, after the random streams were restored."""

    def train(save_dir, epochs, resume):
        return fit_circle(save_dir, epochs, loss=make_loss(), resume=resume)

    resumed_equals_uninterrupted(train, tmp_path)


def test_a_learning_rate_that_cannot_be_read_back_is_refused_when_saving(tmp_path):
    """An optimizer setting that ``weights_only`` loading refuses (a ``Fraction``) stops the
    run at its first save, naming the setting, instead of writing checkpoints nothing reads."""
    lr = fractions.Fraction(1, 100)
    message = r"\['lr'\] would hold a fractions.Fraction.*weights_only.*float\(lr\)"
    with pytest.raises(TypeError, match=message):
        fit_circle(tmp_path, 2, optim=pv.LazyAdam({"lr": lr}))
    assert not (tmp_path / "checkpoint.pt").exists()
    assert not (tmp_path / "checkpoint.tmp").exists()


def test_a_failed_write_names_the_folder_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    """Before: a full disk gave torch's ``[enforce fail at inline_container.cc:672] unexpected
    pos``, no path, and left ``checkpoint.tmp`` behind."""
    fit_circle(tmp_path, 1)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)  # part of the file is written, then the disk fills
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match=r"checkpoint\.pt .*unexpected pos.*MiB free.*resume=True"):
        fit_circle(tmp_path, 2, resume=True)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    assert not (tmp_path / "checkpoint.tmp").exists()


@pytest.mark.parametrize(
    "constraint",
    [
        dist.constraints.positive,
        dist.constraints.unit_interval,
        dist.constraints.interval(-1.0, 2.5),
        dist.constraints.greater_than(0.3),
        dist.constraints.simplex,
        dist.constraints.independent(dist.constraints.positive, 1),
        dist.constraints.lower_cholesky,
    ],
    ids=str,
)
def test_a_late_parameters_constraint_round_trips_as_data(constraint):
    data = constraint_to_data(constraint, "p")
    back = constraint_from_data(data)
    assert type(back) is type(constraint) and repr(back) == repr(constraint)
    x = torch.randn(3, 3)  # (a matrix for lower_cholesky, a vector of 3 for the others)
    x = x if constraint is dist.constraints.lower_cholesky else x[0]
    assert torch.equal(transform_to(constraint)(x), transform_to(back)(x))


def test_a_late_parameter_with_a_constraint_that_is_not_data_is_refused():
    class Odd(dist.constraints.Constraint):
        def check(self, value):
            return value > 0

    with pytest.raises(TypeError, match=r"'p'.*register the parameter at the first step"):
        constraint_to_data(Odd(), "p")
