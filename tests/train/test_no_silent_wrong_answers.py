"""No silent wrong answers: global state left as found, data and pieces checked once, and bad
input refused with an error that names the problem and the fix."""

from __future__ import annotations

import subprocess
import sys

import pyro
import pyro.distributions as dist
import pytest
import torch
from helpers import bernoulli_vae, circle_data, circle_vae, fit_circle, here

import pyro_vae as pv


def test_import_leaves_torch_validation_as_found_and_fit_checks_the_data_itself():
    """Run in a fresh interpreter: no conftest turns validation on first."""
    code = """
import torch
before = torch.distributions.Distribution._validate_args
import pyro_vae as pv
assert torch.distributions.Distribution._validate_args is before is True, "flag changed"
torch.distributions.Distribution.set_default_validate_args(False)  # even with checks off
vae = pv.VAE(pv.StandardNormalPrior(2), pv.BernoulliLikelihood(pv.MLP(2, 6), 6),
             pv.GaussianEncoder(pv.MLP(6, 4), 2))
for bad in (torch.rand(32, 6) * 2 - 1, torch.rand(32, 6) * 255):
    try:
        pv.fit(vae.model, vae.guide, pv.Batches(bad, batch_size=8), epochs=1, log=False)
    except ValueError as e:
        assert "expects data in [0, 1]" in str(e), e
    else:
        raise AssertionError("fit trained on data outside [0, 1]")
    try:
        pv.evaluate(vae.model, vae.guide, bad, num_particles=2)
    except ValueError as e:
        assert "expects data in [0, 1]" in str(e), e
    else:
        raise AssertionError("evaluate scored data outside [0, 1]")
print("ok")
"""

    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_non_finite_data_are_refused_once():
    vae = circle_vae()
    x = pv.make_circle(32)[0]
    x[5, 1] = float("nan")
    with pytest.raises(ValueError, match=r"non-finite values \(e\.g\. nan at index \[5, 1\]\)"):
        pv.fit(vae.model, vae.guide, pv.Batches(x, batch_size=8), epochs=1, log=False)


def test_a_fresh_vae_trains_from_its_own_weights_whatever_ran_before():
    first = circle_vae(hidden=(16,))
    pv.fit(
        first.model,
        first.guide,
        circle_data(),
        epochs=2,
        device=here(),
        log=False,
    )
    torch.manual_seed(1)
    second = circle_vae(hidden=(32,))  # the same names in the param store, other shapes
    initial = {k: v.clone() for k, v in second.state_dict().items()}
    own = {k: v for k, v in second.named_parameters()}
    pyro.infer.Trace_ELBO().differentiable_loss(second.model, second.guide, pv.make_circle(4)[0])
    for name, p in second.named_parameters():
        assert p is own[name] and torch.equal(p, initial[name]), name  # not taken over
    pv.fit(
        second.model,
        second.guide,
        circle_data(),
        epochs=1,
        device=here(),
        log=False,
    )
    assert second.likelihood.decoder[0].weight.shape == (32, 1)
    # And back: the first VAE again uses its own tensors, not the second's.
    trained = {k: v.clone() for k, v in first.state_dict().items()}
    pyro.infer.Trace_ELBO().differentiable_loss(first.model, first.guide, pv.make_circle(4)[0])
    for name, value in first.state_dict().items():
        assert torch.equal(value, trained[name]), name


def test_a_per_datapoint_vae_refuses_new_data():
    vae = circle_vae().with_guide(pv.PerDatapointGaussian(64, 1), name="vae")
    pv.fit(
        vae.model,
        vae.guide,
        circle_data(64),
        epochs=1,
        device=here(),
        log=False,
    )
    new = pv.make_circle(20, seed=1)[0]
    with pytest.raises(ValueError, match=r"N = 64 points but the data set has 20.*infer_local"):
        pv.evaluate(vae.model, vae.guide, new, num_particles=2)
    with pytest.raises(ValueError, match=r"validation= scores held-out points"):
        pv.fit(vae.model, vae.guide, circle_data(64), epochs=2, validation=new, log=False)


class MismatchedPair:
    """A hand-written pair whose guide's z has 3 dimensions where the model's has 1."""

    def model(self, x, idx=None, num_data=None):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(1), 1.0).to_event(1))
            logits = torch.zeros(x.shape[-1]) + z.sum(-1, keepdim=True)
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)

    def guide(self, x, idx=None, num_data=None):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(torch.zeros(3), 1.0).to_event(1))


def test_a_guide_and_a_model_of_different_latent_sizes_are_refused():
    """Latent sizes that differ are refused with a ValueError naming both: by VAE, and by
    evaluate and fit for a hand-written pair (whose shapes broadcast to a plausible ELBO)."""
    with pytest.raises(ValueError, match="the prior has latent_dim 1 but the guide 3"):
        pv.VAE(
            pv.StandardNormalPrior(1),
            pv.BernoulliLikelihood(pv.MLP(1, 6), 6),
            pv.GaussianEncoder(pv.MLP(6, 6), 3),
        )
    pair, x = MismatchedPair(), torch.rand(16, 6).round()
    message = r"the guide samples 'z' with shape \(\d+, 3\) but the model's .* event shape \(1,\)"
    with pytest.raises(ValueError, match=message):
        pv.evaluate(pair.model, pair.guide, x, num_particles=2)
    with pytest.raises(ValueError, match=message):
        pv.fit(pair.model, pair.guide, pv.Batches(x, batch_size=8), epochs=1, log=False)


def test_evaluate_scores_in_eval_mode_and_leaves_the_statistics_and_the_mode():
    """evaluate scores a BatchNorm VAE that is in train mode in eval mode, whatever max_rows:
    the running statistics are unchanged and every network is left in train mode. fit too
    leaves each network's mode as it found it."""
    encoder = torch.nn.Sequential(
        torch.nn.Linear(6, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 4)
    )
    vae = bernoulli_vae(encoder=encoder)  # train mode
    x = torch.rand(64, 6).round()
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    for max_rows in (64, 2**12):
        pv.evaluate(vae.model, vae.guide, x, num_particles=16, max_rows=max_rows)
    assert vae.training and all(m.training for m in vae.modules())
    for name, value in vae.state_dict().items():
        assert torch.equal(value, before[name]), name
    # fit leaves each network's mode as it found it, a frozen BatchNorm included
    vae.variational.encoder[1].eval()
    pv.fit(vae.model, vae.guide, pv.Batches(x, batch_size=16), epochs=1, log=False)
    assert vae.training and not vae.variational.encoder[1].training


@pytest.mark.parametrize(
    ("beta", "message"),
    [
        (-1.0, "beta must be a finite number >= 0 .*got -1.0"),
        (float("nan"), "beta must be a finite number >= 0 .*got nan"),
        (float("inf"), "beta must be a finite number >= 0 .*got inf"),
        ("0.5", "beta must be a finite number >= 0 .*got '0.5'"),
        (lambda epoch: "warm", r"beta\(1\) returned a finite number >= 0 .*got 'warm'"),
        (lambda epoch: -epoch, r"beta\(1\) returned a finite number >= 0 .*got -1"),
    ],
)
def test_beta_is_a_finite_non_negative_number(beta, message):
    """beta must be a finite number >= 0 (or a schedule returning one): -1, nan, inf, a string
    and schedules returning a string or a negative number are each refused by fit with a
    ValueError that says so and shows the value."""
    vae = bernoulli_vae()
    data = pv.Batches(torch.rand(16, 6).round(), batch_size=8)
    with pytest.raises(ValueError, match=message):
        pv.fit(vae.model, vae.guide, data, epochs=1, loss=pv.BetaELBO(beta), log=False)


class ConventionPair:
    """A hand-written pair that follows fit's convention: its plate needs num_data."""

    def __init__(self) -> None:
        self.decoder = torch.nn.Linear(1, 6)

    def model(self, x, idx, num_data=None):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", num_data, subsample=idx):
            z = pyro.sample("z", dist.Normal(torch.zeros(1), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    def guide(self, x, idx, num_data=None):
        with pyro.plate("data", num_data, subsample=idx):
            pyro.sample("z", dist.Normal(torch.zeros(1), 1.0).to_event(1))


def test_a_pair_that_needs_num_data_is_evaluated_and_validated():
    """A hand-written pair whose plate needs num_data (fit's convention) is scored by
    evaluate and validated by fit(validation=), as well as trained by fit."""
    pair, x = ConventionPair(), torch.rand(32, 6).round()
    result = pv.evaluate(pair.model, pair.guide, x, num_particles=4)
    assert result.num_data == 32 and result.elbo < 0
    history = pv.fit(
        pair.model,
        pair.guide,
        pv.Batches(x, batch_size=8),
        epochs=1,
        validation=x[:8],
        device=here(),
        log=False,
    )
    assert history.val_epoch == [1] and history.val_elbo[0] < 0


def test_networks_are_found_through_pyro_wrappers(tmp_path):
    """fit finds the networks behind poutine.scale-wrapped methods: the data are checked
    against them (a wrong shape is refused) and their state is saved in the checkpoint."""
    vae = bernoulli_vae()
    model, guide = pyro.poutine.scale(vae.model, 1.0), pyro.poutine.scale(vae.guide, 1.0)
    with pytest.raises(ValueError, match=r"expected data of shape \(N, 6\)"):
        pv.fit(model, guide, pv.Batches(torch.rand(8, 5), batch_size=4), epochs=1)
    data = pv.Batches(torch.rand(16, 6).round(), batch_size=8)
    pv.fit(model, guide, data, epochs=1, save=tmp_path, device=here(), log=False)
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["modules"]
    assert saved is not None and saved.keys() == vae.state_dict().keys()


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64])
def test_integer_data_get_an_error_with_the_fix(dtype):
    """Integer data are refused by fit, evaluate and infer_local with a ValueError that names
    the dtype and the fix, x.float() (not torch's 'mat1 and mat2 must have the same dtype')."""
    vae = bernoulli_vae()
    x = torch.rand(16, 6).round().to(dtype)
    message = rf"the data are {dtype}; .*x\.float\(\)"
    with pytest.raises(ValueError, match=message):
        pv.fit(vae.model, vae.guide, pv.Batches(x, batch_size=8), epochs=1, log=False)
    with pytest.raises(ValueError, match=message):
        pv.evaluate(vae.model, vae.guide, x, num_particles=2)
    with pytest.raises(ValueError, match=message):  # (a sibling: the per-datapoint E-steps)
        pv.infer_local(vae, pv.Batches(x, batch_size=8), epochs=1)


def test_bad_inputs_get_clear_errors():
    vae = circle_vae()
    with pytest.raises(ValueError, match=r"the data set is empty \(shape \(0, 2\)\)"):
        pv.Batches(torch.zeros(0, 2), batch_size=4)
    with pytest.raises(ValueError, match="drop_last=True with batch_size 64 > N = 10"):
        pv.Batches(torch.zeros(10, 2), batch_size=64, drop_last=True)
    with pytest.raises(TypeError, match=r"Wrap a tensor: pv\.Batches\(x, batch_size=256\)"):
        pv.fit(vae.model, vae.guide, [torch.zeros(10, 2)], epochs=1)  # (a tensor is taken)
    per_datapoint = vae.with_guide(pv.PerDatapointGaussian(64, 1), name="vae")
    with pytest.raises(ValueError, match=r"use optim=pv\.LazyAdam"):
        pv.fit(
            per_datapoint.model,
            per_datapoint.guide,
            circle_data(64),
            epochs=1,
            optim=pyro.optim.Adam({"lr": 1e-2}),
            log=False,
        )


@pytest.mark.host_default("on CUDA the bad lookup is a device-side assert that kills the context")
def test_an_index_out_of_range_names_n_and_the_index():
    guide = pv.PerDatapointGaussian(10, 1)
    with pytest.raises(ValueError, match=r"index 12 is out of range .* N = 10 points"):
        guide(torch.zeros(3, 2), torch.tensor([1, 12, 3]))


@pytest.mark.parametrize(
    ("item", "binarize", "message"),
    [
        ({"image": torch.rand(6)}, None, r"item 0 of .* is a dict \(keys \['image'\]\)"),
        ("not data", None, "item 0 of .* is a str, not a tensor"),
        (torch.randint(0, 255, (6,), dtype=torch.uint8), "dynamic", r"item 0 is torch\.uint8"),
        (torch.rand(6) * 255, "dynamic", r"values in \[0, 1\]; item 0 has values in"),
        (torch.rand(6) * 255, "threshold", r"values in \[0, 1\]; item 0 has values in"),
    ],
)
def test_indexed_names_the_item_and_the_fix(item, binarize, message):
    """pv.Indexed names the item and the fix: a dict or a str item is refused with a
    TypeError, and under binarize a uint8 item or values outside [0, 1] with a ValueError."""

    class Items(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return item, 0  # (x, label)

    with pytest.raises((TypeError, ValueError), match=message):
        pv.Indexed(Items(), binarize=binarize)[0]


def test_a_dataloader_without_indices_is_refused():
    """A DataLoader over a dataset that is not pv.Indexed (here TensorDataset(x, labels), whose
    labels would be taken for the points' indices) is refused by fit, evaluate and infer_local
    with a TypeError that points to pv.Indexed."""
    x, labels = torch.rand(64, 6).round(), torch.randint(0, 3, (64,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, labels), batch_size=8)
    vae = bernoulli_vae(guide=pv.PerDatapointGaussian(64, 2))
    message = r"DataLoader over TensorDataset .* taken for the points' indices: .*pv\.Indexed"
    for call in (
        lambda: pv.fit(vae.model, vae.guide, loader, epochs=1, log=False),
        lambda: pv.evaluate(vae.model, vae.guide, loader, num_particles=2),
        lambda: pv.infer_local(vae, loader, epochs=1),
    ):
        with pytest.raises(TypeError, match=message):
            call()


@pytest.mark.parametrize("bad", [2.0, float("nan")])
def test_a_bad_value_in_a_later_streamed_batch_is_named(bad):
    """A value outside [0, 1] or a NaN in a later batch of a DataLoader stops fit with a
    ValueError naming the steps among which that batch lies, not an error about the step size.
    The test is on the device, read with the loss (no extra sync)."""
    x = torch.rand(64, 6).round()
    x[45, 2] = bad  # batch 6 of 8; the checks see batch 1 in full
    dataset = pv.Indexed(torch.utils.data.TensorDataset(x))
    loader = torch.utils.data.DataLoader(dataset, batch_size=8)
    vae = bernoulli_vae()
    message = r"a batch among steps 2 to 8 of epoch 1 has values that are not finite or not in"
    with pytest.raises(ValueError, match=message):
        pv.fit(
            vae.model,
            vae.guide,
            loader,
            epochs=1,
            log=pv.Logging(every=50, progress=False),
            device=here(),
        )


def test_a_numpy_learning_rate_leaves_a_checkpoint_that_loads(tmp_path):
    """A learning rate given as a numpy number is saved as a plain number: the checkpoint
    (and the one before it) reads back with weights_only=True, and the run resumes."""
    import numpy as np

    _, history = fit_circle(tmp_path, 2, optim=pv.LazyAdam({"lr": np.float64(1e-2)}))
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        torch.load(tmp_path / name, weights_only=True)
    _, resumed = fit_circle(tmp_path, 3, resume=True, optim=pv.LazyAdam({"lr": np.float64(1e-2)}))
    assert resumed.loss[:2] == history.loss


def test_options_that_would_be_ignored_or_contradict_are_refused(tmp_path):
    import numpy as np

    vae, data = circle_vae(), circle_data()
    fit = lambda **options: pv.fit(vae.model, vae.guide, data, **{"log": False, **options})
    with pytest.raises(ValueError, match=r"Checkpoints needs the run's folder"):
        fit(epochs=1, save=pv.Checkpoints(None, resume=True))
    with pytest.raises(ValueError, match=r"resume=True continues .* overwrite=True deletes it"):
        fit(epochs=1, save=pv.Checkpoints(tmp_path, resume=True, overwrite=True))
    with pytest.raises(ValueError, match=r"images_every needs tensorboard"):
        fit(epochs=1, log=pv.Logging(images_every=1))
    with pytest.raises(ValueError, match=r"num_particles must be a positive integer"):
        fit(epochs=1, validation=pv.Validation(data, num_particles=0))
    with pytest.raises(TypeError, match=r"log must be a pv.Logging or False"):
        pv.fit(vae.model, vae.guide, data, epochs=1, log="quiet")
    history = fit(
        epochs=np.int64(2), log=pv.Logging(every=np.int32(5))
    )  # numpy integers are integers
    assert history.epoch == [1, 2]
    with pytest.raises(ValueError, match=r"final_lr_ratio must be a number > 0"):
        pv.infer_local(vae, data, epochs=1, final_lr_ratio=-0.5)


def test_validation_with_a_per_datapoint_guide_is_refused():
    """A per-datapoint guide has no latents for held-out points: validation= would score them
    with the training points' rows; it is refused with the fix."""
    vae = circle_vae(pv.PerDatapointGaussian(64, 1))
    data = circle_data()
    with pytest.raises(ValueError, match=r"validation= scores held-out points.*infer_local"):
        pv.fit(vae.model, vae.guide, data, epochs=1, validation=circle_data(), log=False)


def test_a_guide_site_the_model_lacks_is_refused():
    """A guide that samples a site the model has not (a typo in a name) would put its density
    in the weights with no model term: evaluate returned a plausible log p(x) for it; fit and
    evaluate refuse it, naming the site."""

    def model(x, idx=None, num_data=None):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Bernoulli(0.5).expand([x.shape[0], 2]).to_event(1), obs=x)

    def guide(x, idx=None, num_data=None):
        loc = pyro.param("loc", torch.zeros(()))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, 1.0))
            pyro.sample("zz", dist.Normal(0.0, 1.0))  # (a typo: the model has no "zz")

    x = torch.rand(8, 2).round()
    for call in (
        lambda: pv.evaluate(model, guide, x, num_particles=4),
        lambda: pv.fit(model, guide, pv.Batches(x, batch_size=4), epochs=1, log=False),
    ):
        with pytest.raises(ValueError, match=r"the guide samples 'zz', which the model has no"):
            call()


def test_a_dataloader_without_a_batch_is_refused_with_the_fix():
    """drop_last=True with a batch size above N leaves a DataLoader with no batch: a clear
    ValueError at the start, not a bare StopIteration (or a ZeroDivisionError after an empty
    epoch)."""
    vae = circle_vae()
    dataset = pv.Indexed(torch.utils.data.TensorDataset(pv.make_circle(10)[0]))
    loader = torch.utils.data.DataLoader(dataset, batch_size=16, drop_last=True)
    with pytest.raises(ValueError, match=r"the loader yields no batch .*drop_last=True"):
        pv.fit(vae.model, vae.guide, loader, epochs=1, device=here(), log=False)


def test_float16_is_refused_with_the_fix():
    """Before: a float16 model trained to NaN by the second step, and the error advised a
    smaller step size."""
    vae = circle_vae().half()
    with pytest.raises(ValueError, match=r"float16 .*x\.float\(\), vae\.float\(\)"):
        pv.fit(
            vae.model,
            vae.guide,
            pv.Batches(pv.make_circle(32)[0].half(), batch_size=16),
            epochs=1,
            device=here(),
            log=False,
        )
    with pytest.raises(ValueError, match="float16"):
        pv.evaluate(vae.model, vae.guide, pv.make_circle(32)[0].half(), num_particles=2)


def test_a_dataloader_without_a_batch_size_is_refused_with_the_fix():
    """Before: ``DataLoader(batch_size=None)`` (single items) stopped with ``AttributeError:
    'int' object has no attribute 'to'``."""
    from torch.utils.data import DataLoader, TensorDataset

    loader = DataLoader(pv.Indexed(TensorDataset(pv.make_circle(32)[0])), batch_size=None)
    vae = circle_vae()
    with pytest.raises(ValueError, match=r"batch_size=None.*single items.*batch_size=256"):
        pv.fit(vae.model, vae.guide, loader, epochs=1, device=here(), log=False)


class GlobalLatent(torch.nn.Module):
    """A pair that fit trains (a Pyro loss over minibatches) but that has no per-point weight:
    a global latent ``b`` in a plate of features, outside the data plate."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = torch.nn.Linear(2, 2)

    def model(self, x, idx=None, num_data=None):
        with pyro.plate("features", 2, dim=-1):
            b = pyro.sample("b", dist.Normal(0.0, 1.0))
        with pyro.plate("data", num_data or x.shape[0], subsample=idx, dim=-2):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0))
            pyro.sample("x", dist.Normal(z + b, 1.0), obs=x)

    def guide(self, x, idx=None, num_data=None):
        pyro.module("encoder", self.encoder)
        loc = pyro.param("b_loc", torch.zeros(2))
        with pyro.plate("features", 2, dim=-1):
            pyro.sample("b", dist.Normal(loc, 1.0))
        with pyro.plate("data", num_data or x.shape[0], subsample=idx, dim=-2):
            pyro.sample("z", dist.Normal(self.encoder(x), 1.0))


@pytest.mark.parametrize("nesting", [1, 2])
def test_evaluate_refuses_a_pair_without_per_point_weights(nesting):
    """Before: Pyro's "plates collide" (nesting 1) or a shape error (nesting 2), neither
    saying what evaluate needs."""
    pair, x = GlobalLatent(), pv.make_circle(32)[0]
    pv.fit(
        pair.model,
        pair.guide,
        pv.Batches(x, batch_size=16),
        epochs=1,
        device=here(),
        log=False,
    )
    with pytest.raises(ValueError, match=r"one importance weight per data point.*Trace_ELBO"):
        pv.evaluate(pair.model, pair.guide, x, num_particles=3, max_plate_nesting=nesting)


def test_float64_data_are_told_both_fixes():
    """Before: a float64 data set was told to upcast the model only."""
    vae = circle_vae()
    with pytest.raises(ValueError, match=r"float64: convert the data .*x\.float\(\).*vae\.double"):
        pv.fit(
            vae.model,
            vae.guide,
            pv.Batches(pv.make_circle(32)[0].double(), batch_size=16),
            epochs=1,
            device=here(),
            log=False,
        )


def test_save_grid_of_other_images_names_image_shape(tmp_path):
    """Before: 8x8 images gave torch's reshape error, which does not mention image_shape."""
    with pytest.raises(ValueError, match=r"64 values each .*image_shape=\(1, 8, 8\)"):
        pv.save_grid(torch.rand(16, 64), tmp_path / "grid.png")
    pv.save_grid(torch.rand(16, 64), tmp_path / "grid.png", image_shape=(1, 8, 8))
