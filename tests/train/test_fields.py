"""Models that take more than ``x``: batches with fields (labels, conditions, masks) reach the
model and guide as keywords through ``fit``, ``evaluate``, resume and the DataLoader path; a
partially observed label is enumerated exactly; what does not fit is refused with the fix."""

from __future__ import annotations

import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from helpers import SHUFFLING_LOADER, generator, grouped, here
from pyro import poutine
from pyro.infer import TraceEnum_ELBO
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import pyro_vae as pv

N, F = 48, 3


def labelled_data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``N`` points in ``F`` dimensions whose mean depends on a binary label."""
    g = generator(seed)
    y = (torch.rand(N, generator=g) < 0.4).long()
    x = torch.randn(N, F, generator=g) + 2.0 * y[:, None]
    return x, y


class Conditional(nn.Module):
    """A conditional VAE written in Pyro: p(z) p(x | z, y) and q(z | x, y), with the label
    ``y`` a field of the batches."""

    def __init__(self) -> None:
        super().__init__()
        self.decoder = nn.Linear(1 + 2, F)
        self.encoder = nn.Linear(F + 2, 2)

    def model(self, x, idx=None, num_data=None, *, y):
        pyro.module("decoder", self.decoder)
        onehot = nn.functional.one_hot(y, 2).to(x.dtype)
        with pyro.plate("data", num_data, subsample=idx):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 1), 1.0).to_event(1))
            onehot = onehot.expand(*z.shape[:-1], 2)  # (under a particle plate: (K, B, 2))
            loc = self.decoder(torch.cat([z, onehot], -1))
            pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)

    def guide(self, x, idx=None, num_data=None, *, y):
        pyro.module("encoder", self.encoder)
        onehot = nn.functional.one_hot(y, 2).to(x.dtype)
        loc, log_scale = self.encoder(torch.cat([x, onehot], -1)).chunk(2, -1)
        with pyro.plate("data", num_data, subsample=idx):
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))


def fit(pair, data, epochs, **options):
    return pv.fit(pair.model, pair.guide, data, epochs=epochs,
                  **grouped(device=here(), progress=False, **options))  # fmt: skip


def test_fields_reach_the_model_and_guide_through_fit_and_evaluate():
    """The label reaches both as ``y=``: a model that reads the label scores the data better
    than one whose labels are shuffled, and evaluate of Batches with the field equals evaluate
    of the same pair closing over the labels by index (the workaround fields replace)."""
    x, y = labelled_data()
    torch.manual_seed(0)
    pair = Conditional()
    optim = pv.LazyAdam({"lr": 0.05})
    history = fit(pair, pv.Batches(x, y=y, batch_size=16), epochs=30, optim=optim)
    assert history.loss[-1] < history.loss[0]

    def model(x, idx, num_data=None):
        return pair.model(x, idx, num_data, y=y[idx])

    def guide(x, idx, num_data=None):
        return pair.guide(x, idx, num_data, y=y[idx])

    pyro.set_rng_seed(0)
    with_fields = pv.evaluate(
        pair.model, pair.guide, pv.Batches(x, y=y, batch_size=20, shuffle=False), num_particles=8
    )
    pyro.set_rng_seed(0)
    by_index = pv.evaluate(model, guide, pv.Batches(x, batch_size=20, shuffle=False),
                           num_particles=8)  # fmt: skip
    assert with_fields.elbo == pytest.approx(by_index.elbo, rel=1e-6)
    assert with_fields.log_likelihood == pytest.approx(by_index.log_likelihood, rel=1e-6)
    pyro.set_rng_seed(0)
    shuffled = pv.evaluate(pair.model, pair.guide, pv.Batches(x, y=1 - y, batch_size=20),
                           num_particles=8)  # fmt: skip
    assert shuffled.log_likelihood < with_fields.log_likelihood - 0.5


def test_a_run_with_fields_resumes_exactly(tmp_path):
    x, y = labelled_data()

    def run(epochs, resume=False, seed=0):
        pyro.clear_param_store()
        torch.manual_seed(seed)
        pair = Conditional()
        pyro.set_rng_seed(0)
        data, optim = pv.Batches(x, y=y, batch_size=16), pv.LazyAdam({"lr": 0.02})
        folder = {"save_dir": tmp_path / "run", "resume": resume, "overwrite": not resume}
        return fit(pair, data, epochs, optim=optim, **folder)

    straight = run(3).loss
    run(1)
    resumed = run(3, resume=True, seed=7).loss  # other initial weights: all restored
    assert resumed == straight


@SHUFFLING_LOADER
def test_a_dataloader_over_a_labelled_dataset_passes_the_named_fields():
    """Through a shuffled DataLoader over ``Indexed(..., fields=("y",))`` each batch's labels
    are its points' labels (checked in the model against ``idx``), in fit and in evaluate."""
    x, y = labelled_data()

    class Aligned(Conditional):
        def model(self, x, idx=None, num_data=None, *, y):
            assert torch.equal(y, labels[idx]), "a batch's labels are not its points' labels"
            return super().model(x, idx, num_data, y=y)

    labels = y
    dataset = pv.Indexed(TensorDataset(x, y), fields=("y",))
    torch.manual_seed(0)
    pair = Aligned()
    history = fit(pair, DataLoader(dataset, batch_size=16, shuffle=True), epochs=5)
    assert len(history.loss) == 5 and all(math.isfinite(v) for v in history.loss)
    result = pv.evaluate(
        pair.model, pair.guide, DataLoader(dataset, batch_size=20), num_particles=4
    )
    assert result.num_data == N and math.isfinite(result.log_likelihood)
    with pytest.raises(ValueError, match=r"has 1 element\(s\) after x, but Indexed names 2"):
        pv.Indexed(TensorDataset(x, y), fields=("y", "mask"))[0]


def test_a_partially_observed_label_is_enumerated_exactly():
    """A two-component mixture whose label is observed for some points (the field ``y_mask``)
    and summed out for the others (TraceEnum_ELBO, parallel enumeration; two sample sites under
    ``poutine.mask``): fit's loss on one full batch, with a step of size 0, is the negative
    log-likelihood computed by hand (float32: Pyro's enumerated ELBO multiplies float64 costs
    by float32 factors)."""
    g = generator(1)
    x = torch.randn(12, generator=g) * 2.0
    y = (x > 0).long()
    mask = torch.tensor([True, False] * 6)
    locs0 = torch.tensor([-1.5, 1.0])

    def model(x, idx=None, num_data=None, *, y, y_mask):
        simplex = dist.constraints.simplex
        weights = pyro.param("weights", torch.tensor([0.3, 0.7]), constraint=simplex)
        locs = pyro.param("locs", locs0)
        with pyro.plate("data", num_data, subsample=idx):
            with poutine.mask(mask=y_mask):
                pyro.sample("y", dist.Categorical(weights), obs=y)
            with poutine.mask(mask=~y_mask):
                enumerate_ = {"enumerate": "parallel"}
                hidden = pyro.sample("y_hidden", dist.Categorical(weights), infer=enumerate_)
            label = torch.where(y_mask, y, hidden)
            pyro.sample("x", dist.Normal(locs[label], 1.0), obs=x)

    def guide(x, idx=None, num_data=None, *, y, y_mask):
        pass

    data = pv.Batches(x, y=y, y_mask=mask, batch_size=12, shuffle=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # (Pyro: the guide has no site)
        loss, optim = TraceEnum_ELBO(max_plate_nesting=1), pyro.optim.SGD({"lr": 0.0})
        history = pv.fit(
            model,
            guide,
            data,
            epochs=1,
            loss=loss,
            optim=optim,
            device=here(),
            log=False,
        )
    w = torch.tensor([0.3, 0.7], dtype=torch.float64)
    joint = w.log() + dist.Normal(locs0.double(), 1.0).log_prob(x.double()[:, None])  # (12, 2)
    observed = joint.gather(1, y[:, None]).squeeze(1)
    log_px = torch.where(mask, observed, joint.logsumexp(1))
    assert history.loss[0] == pytest.approx(-log_px.mean().item(), rel=1e-6)
    assert -log_px.mean().item() != pytest.approx(-observed.mean().item(), rel=1e-3)  # (not moot)


def test_compile_of_a_hand_written_pair_with_fields_stays_eager_with_one_warning():
    """(A pv.ConditionalVAE or SemiSupervisedVAE compiles with its fields:
    tests/train/test_derived_fields.py.)"""
    x, y = labelled_data()
    torch.manual_seed(0)
    pair = Conditional()
    with pytest.warns(UserWarning, match=r"compile=True: the model and guide are not") as caught:
        fit(pair, pv.Batches(x, y=y, batch_size=16), epochs=2, compile=True)
    assert len([w for w in caught if "compile=True" in str(w.message)]) == 1


def test_fields_that_do_not_fit_are_refused_with_the_fix():
    x, y = labelled_data()
    vae = pv.VAE(pv.StandardNormalPrior(1), pv.GaussianLikelihood(pv.MLP(1, F), F),
                 pv.GaussianEncoder(pv.MLP(F, 2), 1))  # fmt: skip
    with pytest.raises(TypeError, match=r"the field\(s\) 'y'.*takes no such argument: add it"):
        fit(vae, pv.Batches(x, y=y, batch_size=16), epochs=1)
    with pytest.raises(ValueError, match=r"field 'y' has values that are not finite.*mask field"):
        fit(Conditional(), pv.Batches(x, y=torch.full((N,), math.nan), batch_size=16), epochs=1)
    with pytest.raises(ValueError, match=r"field 'y' of Batches has shape \(47,\)"):
        pv.Batches(x, y=y[:-1], batch_size=16)
    with pytest.raises(ValueError, match=r"cannot have a field named 'num_data'"):
        pv.Batches(x, num_data=y, batch_size=16)


def test_a_float64_condition_is_refused_by_name():
    """A condition from numpy (float64) beside float32 data: the field is named, with the fix
    (not torch's "mat1 and mat2 must have the same dtype" from inside an MLP)."""
    x, y = labelled_data()
    cvae = pv.ConditionalVAE(pv.GaussianEncoder(pv.MLP(3, 2), 1),
                             pv.GaussianLikelihood(pv.MLP(1 + 3, F), F),
                             pv.GaussianEncoder(pv.MLP(F + 3, 2), 1))  # fmt: skip
    c = torch.nn.functional.one_hot(y, 3).double()
    with pytest.raises(
        ValueError, match=r"field 'c' holds torch.float64 .*c=c.to\(torch.float32\)"
    ):
        pv.fit(cvae.model, cvae.guide, pv.Batches(x, c=c, batch_size=16), epochs=1, device=here(),
               log=False)  # fmt: skip
