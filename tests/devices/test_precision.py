"""``precision="bf16-mixed"``: the networks' products in bfloat16, every log-density in float32.

The site test: each prior, likelihood and guide scores a value under ``bf16-mixed`` with its
networks' outputs recorded; the same piece in float64, its networks replaced by those recorded
outputs, scores it again. Everything after the networks must be float32 arithmetic, so the two
agree to float32's rounding (relative 1e-5); a log-density computed in bfloat16 misses by
about 1e-3 (positive controls below, for both ways of getting it wrong).
"""

from __future__ import annotations

import copy
import warnings

import pyro
import pytest
import torch
from helpers import (
    GUIDES,
    LIKELIHOODS,
    PRIORS,
    B,
    D,
    F,
    assert_bf16_scoring_agrees,
    circle_data,
    data_for,
    fit_circle,
    here,
)
from torch import nn

import pyro_vae as pv
from conftest import FAKE_TENSORS
from pyro_vae._precision import check_precision, current_precision
from pyro_vae.devices import precision as mp

# torch.autocast acts on CPU and CUDA tensors: the stand-in's have none, and these tests are
# about the arithmetic it changes.
pytestmark = pytest.mark.host_default("autocast has no kernels for the stand-in's tensors")

TOLERANCE = 1e-5  # relative: float32 against float64 on a few dozen terms


class Record(nn.Module):
    """Calls ``net`` and keeps each output (bfloat16 under autocast) in float64."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.outputs = net, []

    def forward(self, x):
        out = self.net(x)
        self.outputs.append(out.detach().double())
        return out


class Replay(nn.Module):
    """Gives back recorded outputs, in order."""

    def __init__(self, outputs: list[torch.Tensor]) -> None:
        super().__init__()
        self.outputs = list(outputs)

    def forward(self, x):
        return self.outputs.pop(0)


def networks(piece: nn.Module) -> list[tuple[nn.Module, str]]:
    """The (owner, attribute) of every network a piece calls through ``network``."""
    return [
        (m, name)
        for m in piece.modules()
        for name in ("encoder", "decoder")
        if isinstance(getattr(m, name, None), nn.Module)
        and not isinstance(getattr(m, name), pv.Guide)  # (a guide that wraps a guide)
    ]


def score_both(piece: nn.Module, score) -> tuple[torch.Tensor, torch.Tensor]:
    """``score(piece)`` under bf16-mixed (networks recorded) and in float64 (replayed)."""
    reference = copy.deepcopy(piece).double()
    records = []
    for owner, name in networks(piece):
        records.append(Record(getattr(owner, name)))
        setattr(owner, name, records[-1])
    with mp.use_precision("bf16-mixed"):
        mixed = score(piece, torch.float32)
    for (owner, name), record in zip(networks(reference), records, strict=True):
        setattr(owner, name, Replay(record.outputs))
    return mixed, score(reference, torch.float64)


def assert_float32_after_the_networks(mixed: torch.Tensor, exact: torch.Tensor) -> None:
    assert mixed.dtype == torch.float32
    error = ((mixed.double() - exact).abs() / exact.abs().clamp_min(1.0)).max().item()
    assert error < TOLERANCE, f"relative error {error:.2e}: a log-density left in bfloat16?"


@pytest.mark.parametrize("name", list(LIKELIHOODS))
def test_likelihoods_score_in_float32(name):
    torch.manual_seed(0)
    z, x = torch.randn(B, D), data_for(name, B, F)

    def score(lik, dtype):
        return lik(z.to(dtype)).log_prob(x.to(dtype))

    assert_float32_after_the_networks(*score_both(LIKELIHOODS[name](), score))


SCORED_GUIDES = ("gaussian-encoder", "planar", "iaf", "iaf-stable", "transformed-gaussian",
                 "nsf", "maf-forward", "chain")  # fmt: skip


@pytest.mark.parametrize("name", SCORED_GUIDES)
def test_guides_score_in_float32(name):
    torch.manual_seed(0)
    x, z = torch.rand(B, F), torch.randn(B, D)
    guide = GUIDES[name](PRIORS["normal"](), LIKELIHOODS["gaussian"]())

    def score(g, dtype):
        q = g(x.to(dtype))
        if isinstance(q, pyro.distributions.TransformedDistribution):  # (planar: no inverse)
            w = q.base_dist.mean + q.base_dist.stddev * z.to(dtype)  # a base sample, pushed
            for t in q.transforms:  # forward (the transforms keep it for log_prob)
                w = t(w)
            return q.log_prob(w)
        return q.log_prob(z.to(dtype))

    assert_float32_after_the_networks(*score_both(guide, score))


@pytest.mark.parametrize("name", ["maf", "nsf"])
def test_flow_priors_are_not_autocast(name):
    torch.manual_seed(0)
    z = torch.randn(B, D)
    mixed, exact = score_both(PRIORS[name](), lambda p, dtype: p().log_prob(z.to(dtype)))
    assert_float32_after_the_networks(mixed, exact)


def test_positive_control_a_flow_under_autocast_is_caught():
    """Autocasting the whole step (not the networks alone) puts a MAF's log-determinant in
    bfloat16: the comparison catches it."""
    torch.manual_seed(0)
    z = torch.randn(B, D)

    def score(prior, dtype):
        if dtype == torch.float64:
            return prior().log_prob(z.double())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return prior().log_prob(z).float()

    with pytest.raises(AssertionError, match="left in bfloat16"):
        assert_float32_after_the_networks(*score_both(PRIORS["maf"](), score))


def test_positive_control_an_output_left_in_bfloat16_is_caught(monkeypatch):
    """A network whose bfloat16 output is not cast back makes the guide's distribution
    bfloat16 (and its log-density): the comparison catches it."""

    def no_cast_back(net, *inputs):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return net(*inputs)

    monkeypatch.setattr(pv.models.guides, "network", no_cast_back)
    torch.manual_seed(0)
    x, z = torch.rand(B, F), torch.randn(B, D)
    guide = GUIDES["gaussian-encoder"](PRIORS["normal"](), LIKELIHOODS["gaussian"]())

    def score(g, dtype):
        return g(x.to(dtype)).log_prob(z.to(dtype)).float()

    with pytest.raises(AssertionError, match="left in bfloat16"):
        assert_float32_after_the_networks(*score_both(guide, score))


def test_network_runs_products_in_bfloat16_and_gives_float32():
    net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    seen = []
    net[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    x = torch.randn(5, 4)
    assert mp.network(net, x).dtype == torch.float32 and seen == [torch.float32]
    with mp.use_precision("bf16-mixed"):
        assert current_precision() == "bf16-mixed"
        out = mp.network(net, x)
        net64 = copy.deepcopy(net).double()
        assert mp.network(net64, x.double()).dtype == torch.float64  # float64: left alone
    assert current_precision() == "32"  # put back
    assert seen[1] == torch.bfloat16 and out.dtype == torch.float32
    out.sum().backward()
    assert all(p.grad.dtype == torch.float32 for p in net.parameters())


def test_bad_precisions_are_refused_with_the_choices():
    with pytest.raises(ValueError, match=r"not one of \['32', 'bf16-mixed'\].*gradient scaler"):
        check_precision("16-mixed")
    with pytest.raises(ValueError, match="not one of"):
        check_precision(32)
    vae = pv.VAE(pv.StandardNormalPrior(1), pv.GaussianLikelihood(pv.MLP(1, 2), 2),
                 pv.GaussianEncoder(pv.MLP(2, 2), 1)).double()  # fmt: skip
    x = torch.randn(16, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"the data are torch\.float64.*precision='32'"):
        pv.fit(
            vae.model,
            vae.guide,
            pv.Batches(x, batch_size=8),
            epochs=1,
            log=False,
            device=pv.Compute("cpu", precision="bf16-mixed"),
        )
    with pytest.raises(ValueError, match="not one of"):
        pv.evaluate(vae.model, vae.guide, x, precision="bf16")


def test_fit_and_evaluate_in_bf16_mixed_follow_float32():
    """The circle VAE trained 3 epochs both ways from the same start: the losses stay close,
    and bf16-mixed scoring of one trained model agrees with float32 scoring (same noise)."""
    losses = {}
    for precision in ("32", "bf16-mixed"):
        pyro.clear_param_store()
        torch.manual_seed(0)
        vae = pv.models.zoo.circle_vae("amortized", num_data=64)
        history = pv.fit(
            vae.model,
            vae.guide,
            circle_data(),
            epochs=3,
            log=False,
            device=pv.Compute("cpu", precision=precision),
        )
        losses[precision] = history.loss
    assert max(abs(a - b) for a, b in zip(*losses.values(), strict=True)) < 0.05
    # the bound for scoring (seen: 0.03 nats): the decoder's mean is rounded to
    # bfloat16 once, which a Gaussian likelihood of scale 0.1 weighs by 1 / 0.1**2
    assert_bf16_scoring_agrees(vae, circle_data().data, num_particles=50)


def test_a_bf16_mixed_run_resumes_exactly(tmp_path):
    """Stopped after one epoch and resumed, a bf16-mixed run ends where the uninterrupted one
    does, bit for bit."""
    whole, _ = fit_circle(tmp_path / "whole", 2, precision="bf16-mixed")
    expected = {k: v.clone() for k, v in whole.state_dict().items()}
    fit_circle(tmp_path / "parts", 1, precision="bf16-mixed")
    resumed, _ = fit_circle(tmp_path / "parts", 2, precision="bf16-mixed", resume=True)
    for name, value in resumed.state_dict().items():
        assert torch.equal(value, expected[name]), name


def test_the_precision_is_saved_and_a_resume_under_another_is_told(tmp_path):
    pyro.clear_param_store()
    vae = pv.models.zoo.circle_vae("amortized", num_data=64)
    bf16, resume = pv.Compute("cpu", precision="bf16-mixed"), pv.Checkpoints(tmp_path, resume=True)
    pv.fit(vae.model, vae.guide, circle_data(), epochs=1, device=bf16, save=tmp_path, log=False)
    with pytest.warns(UserWarning, match=r"precision='32' \(saved: 'bf16-mixed'\)"):
        pv.fit(
            vae.model,
            vae.guide,
            circle_data(),
            epochs=2,
            device=here(),
            save=resume,
            log=False,
        )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same precision: not a word
        pv.fit(vae.model, vae.guide, circle_data(), epochs=3, save=resume, log=False,
               device=pv.Compute("cpu", precision="32"))  # fmt: skip


class DtypeRecord(torch.utils._python_dispatch.TorchDispatchMode):
    """Records each dispatched op's name and its first output's dtype and device type."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple[str, torch.dtype, str]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        first = out[0] if isinstance(out, (tuple, list)) and out else out
        if isinstance(first, torch.Tensor):
            self.ops.append((func.__name__, first.dtype, first.device.type))
        return out


@pytest.mark.not_on_stand_in(FAKE_TENSORS)
def test_on_fake_cuda_the_networks_products_are_bfloat16_and_the_rest_float32(monkeypatch):
    """Autocast "cuda" (made available on fake CUDA tensors): the loss of a MAF-prior VAE
    runs the encoder's and decoder's 3 + 3 linear layers in bfloat16, the MAF's 3 x 3 in
    float32, and returns a float32 loss on the device."""
    monkeypatch.setattr(torch.cuda.amp.common, "amp_definitely_not_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    vae = pv.models.zoo.flow_prior_vae(latent_dim=4, hidden=32)
    with pv.devices.fake_cuda(vae), mp.use_precision("bf16-mixed"), DtypeRecord() as record:
        x = torch.rand(8, 784, device="cuda").round()
        loss = vae.elbo_loss(x, torch.arange(8, device="cuda"), num_data=8)
    products = [(dtype, kind) for name, dtype, kind in record.ops if name.startswith("addmm")]
    assert products.count((torch.bfloat16, "cuda")) == 6
    assert products.count((torch.float32, "cuda")) == 9 and len(products) == 15
    assert loss.dtype == torch.float32 and loss.device.type == "cuda"
