"""CUDA without a GPU: every model, loss, optimizer and loop on fake CUDA or ``meta`` tensors.

No machine this project runs on has a GPU, so these tests prove on the CPU what CUDA would
refuse or wait for (see :mod:`pyro_vae.devices.dispatch`):

- forward passes (losses, importance weights, samples, reconstructions, :func:`~pyro_vae.
  evaluate`) run on *fake* CUDA tensors, which go through PyTorch's own device checks and
  refuse to read a value;
- backward passes, optimizer steps and the loops (:func:`~pyro_vae.fit`,
  :func:`~pyro_vae.infer_local`) run on ``meta`` tensors, because the autograd engine needs a
  real CUDA context (pytorch/pytorch#92627); there :class:`~pyro_vae.devices.dispatch.DispatchWatch`
  checks that every op's tensors share a device (``meta`` kernels do not always check);
- both under a strict :class:`~pyro_vae.devices.dispatch.DispatchWatch`: a host read outside the
  sites allowed by name, or a device mix, fails the test with the op, the line and the module.

The semi-amortized guide differentiates inside its forward pass (``autograd.grad``), so it
runs on ``meta`` only. Values are never checked here (there are none): the other tests do.
"""

from __future__ import annotations

import math
import sys
from collections import Counter

import pyro
import pyro.distributions as dist
import pytest
import torch
from helpers import (
    COMBINATIONS,
    GUIDES,
    LATER_LIKELIHOODS,
    LIKELIHOODS,
    PRIORS,
    ZOO,
    B,
    F,
    N,
    bernoulli_vae,
    build,
    grouped,
)
from pyro.infer.util import is_validation_enabled

import pyro_vae as pv
from conftest import FAKE_TENSORS
from pyro_vae._placement import fake_cuda
from pyro_vae.devices.dispatch import DeviceMixError, DispatchWatch, HostReadError
from pyro_vae.models.guides import diagonal_normal
from pyro_vae.train._gradient import gradient_step
from pyro_vae.train.loop import train

# Fake CUDA tensors find their device through the accelerator that PyTorch sees; with the
# stand-in's PrivateUse1 device registered in the process, they look for it and fail.
pytestmark = pytest.mark.not_on_stand_in(FAKE_TENSORS)

# A device bug lives in a piece, whatever it is combined with: every prior, likelihood and
# guide of the contract matrix appears (each guide once, priors and the first likelihoods in
# turn, the flow priors with flow guides too; the later likelihoods with an encoder; the
# library prior with its likelihood), in 18 of its combinations.
_FLAT = [p for p in PRIORS if p not in ("vamp", "library")]
_FIRST = [lik for lik in LIKELIHOODS if lik not in LATER_LIKELIHOODS]
COVER = (
    [(_FLAT[i % len(_FLAT)], _FIRST[(i // len(_FLAT)) % len(_FIRST)], g)
     for i, g in enumerate(GUIDES)]
    + [("vamp", "bernoulli", "gaussian-encoder"), ("vamp", "gaussian-learned", "semi-amortized")]
    + [("normal", lik, "gaussian-encoder") for lik in LATER_LIKELIHOODS]
    + [("library", "zinb-latent-library", "gaussian-encoder")]
)  # fmt: skip
assert set(COVER) <= set(COMBINATIONS)
assert {c[0] for c in COVER} == set(PRIORS) and {c[2] for c in COVER} == set(GUIDES)
assert {c[1] for c in COVER} == set(LIKELIHOODS)
FAKE = [c for c in COVER if c[2] != "semi-amortized"]
ZOO_FAKE = [name for name in ZOO if name != "circle-semi-amortized"]


def batch(vae: pv.VAE, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.rand(B, *vae.event_shape, device=device)
    return x, torch.randperm(N, device=device)[:B]


def forward(vae: pv.VAE, x: torch.Tensor, idx: torch.Tensor) -> list[torch.Tensor]:
    """What a user computes without a backward pass: both losses, the importance weights and
    their log-mean-exp, samples and reconstructions, and the derived estimators that
    ``fit(compile=True)`` compiles."""
    elbo = pv.TensorTrace_ELBO().differentiable_loss(vae.model, vae.guide, x, idx, num_data=N)
    iwae = pv.ImportanceWeightedELBO(3, max_plate_nesting=1).differentiable_loss(
        vae.model, vae.guide, x, idx, num_data=N
    )
    lw = pv.log_weights(vae.model, vae.guide, x, idx, num_particles=4)
    log_px = lw.logsumexp(0) - math.log(4)
    derived = [vae.elbo_loss(x, idx, num_data=N, num_particles=k) for k in (1, 3)]  # compiled
    return [elbo, iwae, lw, log_px, vae.sample(3), vae.reconstruct(x, idx), *derived]


def check_forward_on_fake_cuda(vae: pv.VAE) -> None:
    with fake_cuda(vae), DispatchWatch(strict=True, root=vae) as watch:
        x, idx = batch(vae, "cuda")
        outputs = forward(vae, x, idx)
    assert all(out.device.type == "cuda" for out in outputs)
    assert not watch.reads and not watch.mixes


def steps_on_meta(vae: pv.VAE, sides: tuple[dict, ...] = ({},)) -> DispatchWatch:
    """Gradient steps (``sides``: joint, E- or M-steps) with both losses on ``meta``
    (validation off, as in ``fit``'s steady state), under a strict watch."""
    vae.to("meta")
    x, idx = batch(vae, "meta")
    optim = pv.LazyAdam({"lr": 1e-3})
    with pyro.validation_enabled(False), DispatchWatch(strict=True, root=vae) as watch:
        for loss in (pv.TensorTrace_ELBO(), pv.ImportanceWeightedELBO(3, max_plate_nesting=1)):
            for side in sides:
                value = gradient_step(vae.model, vae.guide, loss, optim, x, idx, num_data=N, **side)
                assert value.device.type == "meta"
        forward(vae, x, idx)
    assert all(p.device.type == "meta" for p in vae.parameters())
    return watch


@pytest.mark.parametrize("prior_name,likelihood_name,guide_name", FAKE)
def test_contract_forward_on_fake_cuda(prior_name, likelihood_name, guide_name):
    check_forward_on_fake_cuda(build(prior_name, likelihood_name, guide_name))


@pytest.mark.parametrize("name", ZOO_FAKE)
def test_zoo_forward_on_fake_cuda(name):
    check_forward_on_fake_cuda(ZOO[name]())


@pytest.mark.parametrize("prior_name,likelihood_name,guide_name", COVER)
def test_contract_training_steps_on_meta(prior_name, likelihood_name, guide_name):
    sides = ({}, {"update_model": False}, {"update_guide": False})
    watch = steps_on_meta(build(prior_name, likelihood_name, guide_name), sides)
    assert watch.launches > 0


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_training_steps_on_meta(name):
    steps_on_meta(ZOO[name]())


# --- Optimizers on fake CUDA -------------------------------------------------------------


def test_lazy_adam_steps_dense_and_row_sparse_gradients_on_fake_cuda():
    """LazyAdam's two paths (torch's Adam for networks, RowSparseAdam for per-datapoint rows)
    with fake CUDA gradients: no read, no mix, state on the device."""
    local, net = pv.PerDatapointGaussian(N, 3), pv.MLP(3, 4, (8,))
    # foreach=True: the path Adam takes on real CUDA tensors (fake ones default to a loop)
    optim = pv.LazyAdam({"lr": 1e-3, "foreach": True}, local_lr=1e-2)
    with fake_cuda(local, net), DispatchWatch(strict=True) as watch:
        idx = torch.randperm(N, device="cuda")[:B]
        for _ in range(2):
            for p in (local.loc, local.log_scale):
                rows = torch.randn(B, 3, device="cuda")
                p.grad = torch.sparse_coo_tensor(idx[None], rows, p.shape, check_invariants=False)
            for p in net.parameters():
                p.grad = torch.randn_like(p)
            optim([local.loc, local.log_scale, *net.parameters()])
    assert not watch.reads and not watch.mixes
    assert watch.ops["aten.index_add_.default"] == 4  # the row-sparse update ran, twice each
    assert any(op.startswith("aten._foreach_") for op in watch.ops)  # Adam's CUDA path
    states = [s for o in optim.optim_objs.values() for s in o.state.values()]
    tensors = [v for s in states for v in s.values() if isinstance(v, torch.Tensor)]
    assert {t.device.type for t in tensors if t.dim() > 0} == {"cuda"}


def test_the_cuda_graph_mode_makes_adam_capturable_on_fake_cuda():
    """``fit(compile="reduce-overhead")``'s Adam: after the eager step that registers the
    parameters, the dense Adam is capturable (its step counters on the
    device), and its step (what a CUDA graph records) reads nothing from the device."""
    from pyro_vae.train._derived import CompiledAdam

    net = pv.MLP(3, 4, (8,))
    optim = pv.LazyAdam({"lr": 1e-3, "foreach": True})
    compiled = CompiledAdam(optim, mode="reduce-overhead")
    with fake_cuda(net), DispatchWatch(strict=True) as watch:
        for p in net.parameters():
            p.grad = torch.randn_like(p)
        compiled(list(net.parameters()))  # registers (eager), then capturable
        assert all(g["capturable"] for g in optim._dense.param_groups)
        steps = [optim._dense.state[p]["step"] for p in net.parameters()]
        assert {s.device.type for s in steps} == {"cuda"}
        optim._dense.step()  # the capturable update, eagerly (the graph's content)
    assert not watch.reads and not watch.mixes
    assert any(op.startswith("aten._foreach_") for op in watch.ops)


# --- The loops --------------------------------------------------------------------------

# The reads fit may make, by name: the progress bar's loss every log_every steps and the
# epoch's loss (epoch.py), the finite-parameter check after each epoch, and the checks of a
# whole data set before the first step.
FIT_READS = {"mean_loss", "check_finite_params"}
DATA_CHECKS = {"VAE.check_data", "BernoulliLikelihood.check_support"}
# Copies to the device once per call: the data set, a new per-datapoint guide.
MOVES = {"Batches.to", "prepare", "PerDatapointGaussian.from_guide", "infer_local"}
EVALUATE_READS = {"score"}


def small_vae(guide: str = "encoder", num_data: int = 32) -> pv.VAE:
    local = pv.PerDatapointGaussian(num_data, 2) if guide == "per-datapoint" else None
    return bernoulli_vae(F, guide=local)


def reads_of_fit(epochs: int, guide: str = "encoder", **options) -> DispatchWatch:
    """``fit`` on ``meta`` (32 points, batches of 8, log_every=3), from a fresh model, with
    the first step validated (Pyro's checks read values: allowed in the first epoch)."""
    pyro.clear_param_store()
    torch.manual_seed(0)
    vae = small_vae(guide)
    data = pv.Batches(torch.rand(32, F).round(), batch_size=8)
    with DispatchWatch(root=vae) as watch:
        if options.pop("freeze_model", False):  # infer_local's loop: E-steps only
            train(vae.model, vae.guide, data, epochs=epochs, device="meta", progress=False,
                  log_every=3, freeze_model=True, **options)  # fmt: skip
        else:
            pv.fit(vae.model, vae.guide, data, epochs=epochs,
                   **grouped(device="meta", progress=False, log_every=3, **options))  # fmt: skip
    assert not watch.mixes, watch.mixes
    return watch


# Pyro's first-step validation sees stand-in values on meta (true for "any NaN?"): it warns.
QUIET = pytest.mark.filterwarnings("ignore:Encountered")


@QUIET
@pytest.mark.parametrize(
    "guide,options",
    [
        ("encoder", dict),
        ("per-datapoint", dict),
        ("encoder", lambda: {"loss": pv.ImportanceWeightedELBO(3)}),
        ("per-datapoint", lambda: {"e_steps": 2}),
        ("per-datapoint", lambda: {"freeze_model": True}),
        ("encoder", lambda: {"beta": lambda epoch: epoch / 3}),
    ],
    ids=["elbo", "per-datapoint", "iwae", "e-steps", "frozen-model", "beta"],
)
def test_a_steady_state_fit_epoch_reads_only_its_loss_and_its_finite_check(guide, options):
    """A second epoch (4 steps) adds ceil(4 / 3) = 2 loss reads, the epoch's loss and the
    finite-parameter check: the steps themselves read nothing."""
    extra = reads(reads_of_fit(2, guide, **options())) - reads(reads_of_fit(1, guide, **options()))
    assert sum(extra.values()) == 2 + 1 + 1, extra
    assert set(extra) <= FIT_READS, extra


def is_read(event) -> bool:
    """A value the host waits for (not a copy to the device)."""
    return not event.detail.startswith("blocking copy cpu ->")


def reads(watch: DispatchWatch) -> Counter:
    """The reads of device values, by the function's qualified name."""
    return Counter(event.key for event in watch.reads)


def strict_fit(vae: pv.VAE, data: pv.Batches, **options) -> DispatchWatch:
    """``fit`` on ``meta`` with validation off, under a strict watch that allows the reads of
    ``FIT_READS``, ``DATA_CHECKS`` and ``MOVES`` by name: any other read or mix raises."""
    with (
        pyro.validation_enabled(False),
        DispatchWatch(strict=True, allow=FIT_READS | DATA_CHECKS | MOVES, root=vae) as watch,
    ):
        pv.fit(vae.model, vae.guide, data, **grouped(device="meta", progress=False, **options))
    return watch


def test_fit_runs_on_meta_reading_only_what_it_names():
    vae = small_vae("per-datapoint")
    data = pv.Batches(torch.rand(32, F).round(), batch_size=8)
    validation = torch.rand(16, F).round()
    watch = strict_fit(vae, data, epochs=2, e_steps=1, log_every=2)
    assert all(p.device.type == "meta" for p in vae.parameters())
    # per epoch: 2 loss reads (steps 0 and 2 of 4), the epoch's loss, the finite check
    scalars = [e for e in watch.allowed if is_read(e)]
    assert Counter(e.key for e in scalars if e.key in FIT_READS) == {
        "mean_loss": 2 * 3,
        "check_finite_params": 2,
    }
    amortized = small_vae()
    with pytest.raises(HostReadError, match=r"in score\b"):  # evaluate's reads: not fit's
        strict_fit(amortized, data, epochs=1, validation=validation)


def test_evaluate_runs_on_fake_cuda_reading_its_sums_once():
    vae = small_vae()
    allow = EVALUATE_READS | DATA_CHECKS
    with fake_cuda(vae), DispatchWatch(strict=True, allow=allow, root=vae) as watch:
        x = torch.rand(B, F, device="cuda")
        result = pv.evaluate(vae.model, vae.guide, x, num_particles=4, max_rows=16)
    assert result.num_data == B
    assert B // (16 // 4) > 1  # several chunks, summed on the device
    # the three sums (ELBO, log-likelihood, values scored) are read once, after every chunk
    assert Counter(e.key for e in watch.allowed)["score"] == 3
    assert not watch.reads and not watch.mixes


def test_infer_local_and_the_amortization_gap_run_on_meta():
    vae = small_vae().to("meta")
    data = pv.Batches(torch.rand(16, F, device="meta"), batch_size=8)
    allow = FIT_READS | DATA_CHECKS | EVALUATE_READS | MOVES
    with pyro.validation_enabled(False), DispatchWatch(strict=True, allow=allow, root=vae):
        local = pv.infer_local(vae, data, epochs=2, init=vae.variational)
        assert local.variational.loc.device.type == "meta"
        gap = pv.amortization_gap(vae, data, epochs=1, num_particles=3)
    assert gap.amortization_gap == 0.0  # stand-in values: the check is that it ran


# --- Positive controls: the layer catches what it is for -----------------------------------


class HostPrior(pv.StandardNormalPrior):
    def forward(self):
        return dist.Normal(torch.zeros(self.latent_dim), 1.0).to_event(1)  # planted: no device=


class HostLikelihood(pv.GaussianLikelihood):
    def forward(self, z):
        loc = self._decode(z) + torch.zeros(self.event_shape)  # planted: no device=
        return dist.Normal(loc, 0.5).to_event(1)


class HostEncoder(pv.GaussianEncoder):
    def forward(self, x, idx=None):
        q = super().forward(x, idx)
        return diagonal_normal(q.mean, torch.zeros(self.latent_dim))  # planted: no device=


class PeekingEncoder(pv.GaussianEncoder):
    def forward(self, x, idx=None):
        if float(x.mean()) > 2:  # planted: a value read in the step
            x = x / 2
        return super().forward(x, idx)


def planted(piece: str) -> pv.VAE:
    prior, likelihood, guide = (
        pv.StandardNormalPrior(2),
        pv.GaussianLikelihood(pv.MLP(2, F, (8,)), F, scale=0.5),
        pv.GaussianEncoder(pv.MLP(F, 4, (8,)), 2),
    )
    if piece == "prior":
        prior = HostPrior(2)
    elif piece == "likelihood":
        likelihood = HostLikelihood(pv.MLP(2, F, (8,)), F, scale=0.5)
    else:
        guide = HostEncoder(pv.MLP(F, 4, (8,)), 2)
    return pv.VAE(prior, likelihood, guide)


@pytest.mark.parametrize("piece", ["prior", "likelihood", "guide"])
def test_a_tensor_made_on_the_host_is_caught_on_fake_cuda_and_on_meta(piece):
    """A piece that makes a tensor without ``device=`` passes every CPU test; here the mix is
    refused, naming the op, the line where the CPU tensor was made and the module."""
    made_by = f"made by aten.zeros.default in Host{piece.title()} "
    if piece == "guide":
        made_by = "made by aten.zeros.default in HostEncoder "
    with pytest.raises(DeviceMixError, match=r"device mix: aten\.\w+") as info:
        check_forward_on_fake_cuda(planted(piece))
    assert made_by in str(info.value) and "test_fake_cuda.py:" in str(info.value)
    with pytest.raises(DeviceMixError, match="meta"):
        strict_fit(planted(piece), pv.Batches(torch.rand(16, F), batch_size=8), epochs=1)


def test_a_value_read_in_the_step_is_caught():
    vae = pv.VAE(
        pv.StandardNormalPrior(2),
        pv.BernoulliLikelihood(pv.MLP(2, F, (8,)), F),
        PeekingEncoder(pv.MLP(F, 4, (8,)), 2),
    )
    data = pv.Batches(torch.rand(16, F).round(), batch_size=8)
    with pytest.raises(HostReadError, match=r"PeekingEncoder \(variational\) at .*in forward"):
        strict_fit(vae, data, epochs=1)


@pytest.mark.parametrize("loss", [None, pv.TensorTrace_ELBO()], ids=["derived", "pyro-loss"])
def test_a_value_read_by_the_loop_is_caught(monkeypatch, loss):
    """Planted in the step's descent: the default step (the VAE's derived estimator) and the
    step through Pyro's loss both end there."""
    steps = sys.modules["pyro_vae.train.step"]
    gradients = sys.modules["pyro_vae.train._gradient"]
    descend = gradients.descend

    def reading_step(*args, **kwargs):
        value = descend(*args, **kwargs)
        if float(value) > 1e9:  # planted: the kind of check that syncs every step
            raise FloatingPointError
        return value

    monkeypatch.setattr(steps, "descend", reading_step)  # (the derived step's)
    monkeypatch.setattr(gradients, "descend", reading_step)  # (gradient_step's)
    data = pv.Batches(torch.rand(16, F).round(), batch_size=8)
    with pytest.raises(HostReadError, match=r"test_fake_cuda\.py:\d+ in reading_step"):
        strict_fit(small_vae(), data, epochs=1, loss=loss)


# --- Data-parallel ------------------------------------------------------------------------


@pytest.fixture
def one_process_group(monkeypatch):
    """A real 1-process gloo group whose collectives on device (``meta``) tensors are recorded
    and left as they are (the sum over one process): gloo cannot reduce ``meta`` tensors, so
    this checks everything around the collectives, not NCCL. Host tensors go through gloo."""
    import torch.distributed as tdist

    tdist.init_process_group("gloo", store=tdist.HashStore(), rank=0, world_size=1)
    calls = Counter()
    for name in ("all_reduce", "broadcast"):
        real = getattr(tdist, name)

        def collective(tensor, *args, _real=real, _name=name, **kwargs):
            if tensor.device.type == "cpu":
                return _real(tensor, *args, **kwargs)
            calls[_name] += 1

        monkeypatch.setattr(tdist, name, collective)
    yield calls
    tdist.destroy_process_group()


DISTRIBUTED_READS = {"global_mean", "check_same_data"}


@pytest.mark.parametrize("guide", ["encoder", "per-datapoint"])
def test_the_data_parallel_step_adds_no_read(one_process_group, guide):
    vae = small_vae(guide)
    data = pv.Batches(torch.rand(32, F).round(), batch_size=8)
    with (
        pyro.validation_enabled(False),
        DispatchWatch(
            strict=True, allow=FIT_READS | DATA_CHECKS | MOVES | DISTRIBUTED_READS, root=vae
        ) as watch,
    ):
        pv.fit(
            vae.model,
            vae.guide,
            data,
            epochs=2,
            device=pv.Compute("meta", distributed=True),
            log=pv.Logging(progress=False, every=3),
        )
    once = DATA_CHECKS | {"check_same_data"}
    scalars = Counter(e.key for e in watch.allowed if is_read(e) and e.key not in once)
    # per epoch: 2 global loss reads (steps 0 and 3 of 4), the epoch's, the finite check
    # (whose agreement across processes is a host collective: gloo, no device read)
    assert scalars == {"global_mean": 2 * 3, "check_finite_params": 2}
    # one all-reduce of the gradients per step (4 steps, 2 epochs), one per global mean
    assert one_process_group["all_reduce"] >= 8


def test_the_checks_leave_global_state_as_they_found_it():
    pyro.param("kept", torch.ones(2))
    validate = torch.distributions.Distribution._validate_args
    hooks = dict(torch.nn.modules.module._global_forward_pre_hooks)
    with fake_cuda(torch.nn.Linear(2, 2)), DispatchWatch():
        assert "kept" not in pyro.get_param_store() and not is_validation_enabled()
        assert len(torch.nn.modules.module._global_forward_pre_hooks) == len(hooks) + 1
    assert torch.equal(pyro.param("kept"), torch.ones(2)) and is_validation_enabled()
    assert torch.distributions.Distribution._validate_args == validate
    assert dict(torch.nn.modules.module._global_forward_pre_hooks) == hooks
    assert not torch.nn.modules.module._global_forward_hooks
