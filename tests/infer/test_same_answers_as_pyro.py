"""Same answers as Pyro: TensorTrace_ELBO and gradient_step against Trace_ELBO and SVI.step on
Pyro programs that have nothing trainable, no sample site, factors or blocked plates (programs
that Trace_ELBO trains, and so does the default loss)."""

from __future__ import annotations

from contextlib import nullcontext

import pyro
import pyro.distributions as dist
import pytest
import torch
from helpers import HandWritten, generator, here
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO

import pyro_vae as pv
from pyro_vae.train._gradient import gradient_step

X = torch.tensor([0.5, -1.0, 2.0])


def factor_model():
    loc = pyro.param("loc", torch.tensor(0.3))
    z = pyro.sample("z", dist.Normal(loc, 1.0))
    pyro.factor("f", -(z**2))


def normal_guide():
    q = pyro.param("q", torch.tensor(0.1))
    pyro.sample("z", dist.Normal(q, 1.0))


def factor_guide():
    normal_guide()
    pyro.factor("g", pyro.param("q") * 0.5, has_rsample=True)


def observed_model():
    loc = pyro.param("loc", torch.tensor(0.3))
    with pyro.plate("data", 3):
        pyro.sample("x", dist.Normal(loc, 1.0), obs=X)


def empty():
    pass


def fixed_model():
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    pyro.sample("x", dist.Normal(z, 1.0), obs=torch.tensor(1.0))


def fixed_guide():
    pyro.sample("z", dist.Normal(0.5, 1.0))


def blocked_plate_model():
    loc = pyro.param("loc", torch.tensor(0.3))
    with poutine.block(), pyro.plate("data", 3):
        pyro.sample("x", dist.Normal(loc, 1.0), obs=X)
    pyro.factor("f", torch.tensor(-1.0))


def fixed_factor_model():
    pyro.factor("f", torch.tensor(-2.0))


def nested_model():
    loc = pyro.param("loc", torch.tensor(0.2))
    with pyro.plate("a", 3, dim=-2), pyro.plate("b", 2, dim=-1):
        z = pyro.sample("z", dist.Normal(loc, 1.0))
        pyro.sample("x", dist.Normal(z, 0.5), obs=torch.ones(3, 2))


def nested_guide():
    q = pyro.param("q", torch.zeros(3, 2))
    with pyro.plate("a", 3, dim=-2), pyro.plate("b", 2, dim=-1):
        pyro.sample("z", dist.Normal(q, 1.0))


def sequential_model():
    loc = pyro.param("loc", torch.tensor(0.2))
    for i in pyro.plate("seq", 3):
        z = pyro.sample(f"z{i}", dist.Normal(loc, 1.0))
        pyro.sample(f"x{i}", dist.Normal(z, 0.5), obs=X[i])


def sequential_guide():
    q = pyro.param("q", torch.zeros(3))
    for i in pyro.plate("seq", 3):
        pyro.sample(f"z{i}", dist.Normal(q[i], 1.0))


def subsampled_model():
    loc = pyro.param("loc", torch.tensor(0.2))
    with pyro.plate("data", 10, subsample_size=4) as idx:
        pyro.sample("x", dist.Normal(loc, 1.0), obs=torch.linspace(-1, 1, 10)[idx])


def masked_model():
    loc = pyro.param("loc", torch.tensor(0.2))
    with pyro.plate("data", 3), poutine.scale(scale=0.5):
        z = pyro.sample("z", dist.Normal(loc, 1.0))
        with poutine.mask(mask=torch.tensor([True, False, True])):
            pyro.sample("x", dist.Normal(z, 0.5), obs=X)
        pyro.sample("y", dist.Normal(z, 1.0).mask(torch.tensor([False, True, True])), obs=X)


def plated_guide():
    q = pyro.param("q", torch.zeros(3))
    with pyro.plate("data", 3), poutine.scale(scale=0.5):
        pyro.sample("z", dist.Normal(q, 1.0))


def discrete_model():
    p = pyro.param("p", torch.tensor(0.3), constraint=dist.constraints.unit_interval)
    with pyro.plate("data", 3):
        c = pyro.sample("c", dist.Bernoulli(p))
        pyro.sample("x", dist.Normal(2.0 * c - 1.0, 1.0), obs=X)


def discrete_guide():
    q = pyro.param("q", torch.full((3,), 0.5), constraint=dist.constraints.unit_interval)
    with pyro.plate("data", 3):
        pyro.sample("c", dist.Bernoulli(q))  # a score-function site


def reused_plates_model():
    loc = pyro.param("loc", torch.tensor(0.2))
    a, b = pyro.plate("a", 3, dim=-1), pyro.plate("b", 2, dim=-2)
    with a:
        z = pyro.sample("z", dist.Normal(loc, 1.0))
    with b:  # a plate of its own, not nested in a
        pyro.sample("w", dist.Normal(loc, 1.0), obs=torch.zeros(2, 1))
    with a:  # the same plate again
        pyro.sample("x", dist.Normal(z, 0.5), obs=X)


def reused_plates_guide():
    q = pyro.param("q", torch.zeros(3))
    with pyro.plate("a", 3, dim=-1):
        pyro.sample("z", dist.Normal(q, 1.0))


def obs_mask_model():
    loc = pyro.param("loc", torch.tensor(0.2))
    with pyro.plate("data", 3):
        pyro.sample("x", dist.Normal(loc, 1.0), obs=X, obs_mask=torch.tensor([True, False, True]))


def obs_mask_guide():
    q = pyro.param("q", torch.zeros(3))
    with pyro.plate("data", 3):
        pyro.sample("x_unobserved", dist.Normal(q, 1.0))


def stable_model():
    loc = pyro.param("loc", torch.tensor(0.2))
    reparam = poutine.reparam(config={"z": pyro.infer.reparam.LatentStableReparam()})
    with reparam, pyro.plate("data", 3):
        z = pyro.sample("z", dist.Stable(1.5, 0.0, 1.0, loc))
        pyro.sample("x", dist.Normal(z, 1.0), obs=X)


CASES = {
    "non-nested and reused plates": (reused_plates_model, reused_plates_guide, {}),
    "obs_mask": (obs_mask_model, obs_mask_guide, {}),
    "LatentStableReparam, empty guide": (stable_model, empty, {}),
    "nested plates": (nested_model, nested_guide, {}),
    "sequential plate": (sequential_model, sequential_guide, {}),
    "subsampled plate, no latent": (subsampled_model, empty, {}),
    "scale, mask and masked distribution": (masked_model, plated_guide, {}),
    "score-function site": (discrete_model, discrete_guide, {}),
    "3 particles": (nested_model, nested_guide, {"num_particles": 3}),
    "3 vectorized particles": (
        discrete_model,
        discrete_guide,
        {"num_particles": 3, "vectorize_particles": True, "max_plate_nesting": 1},
    ),
    "factor in the model": (factor_model, normal_guide, {}),
    "factor in the guide": (factor_model, factor_guide, {}),
    "empty guide": (observed_model, empty, {}),
    "empty model and guide": (empty, empty, {}),
    "no trainable parameter": (fixed_model, fixed_guide, {}),
    "factor only, nothing trainable": (fixed_factor_model, empty, {}),
    "blocked plate": (blocked_plate_model, empty, {}),
    "vectorized particles, nothing trainable": (
        fixed_model,
        fixed_guide,
        {"num_particles": 4, "vectorize_particles": True, "max_plate_nesting": 0},
    ),
}


def grads(loss):
    params = [p.unconstrained() for p in pyro.get_param_store().values()]
    if not getattr(loss, "requires_grad", False) or not params:
        return None
    return [g for g in torch.autograd.grad(loss, params, allow_unused=True)]


@pytest.mark.parametrize("case", list(CASES))
def test_tensor_trace_elbo_gives_trace_elbo_loss_and_gradients(case):
    model, guide, options = CASES[case]
    pyro.set_rng_seed(0)
    expected = Trace_ELBO(**options).differentiable_loss(model, guide)
    expected_grads = grads(expected)
    pyro.set_rng_seed(0)
    actual = pv.TensorTrace_ELBO(**options).differentiable_loss(model, guide)
    assert isinstance(actual, torch.Tensor)
    torch.testing.assert_close(actual.detach(), torch.as_tensor(expected).detach().float())
    actual_grads = grads(actual)
    assert (actual_grads is None) == (expected_grads is None)
    for a, b in zip(actual_grads or [], expected_grads or [], strict=True):
        if b is None:
            assert a is None
        else:
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("case", list(CASES))
def test_a_step_equals_svi_step(case):
    model, guide, options = CASES[case]
    pyro.set_rng_seed(0)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.1}), Trace_ELBO(**options))
    expected_loss = svi.step()
    expected = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    loss = gradient_step(model, guide, pv.TensorTrace_ELBO(**options), pv.LazyAdam({"lr": 0.1}))
    assert float(loss) == pytest.approx(expected_loss, rel=1e-6, abs=1e-6)
    actual = {k: v.detach() for k, v in pyro.get_param_store().items()}
    assert actual.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], msg=name)


def plate_mismatch_model():
    with pyro.plate("data", 3):
        pyro.sample("x", dist.Normal(torch.zeros(4), 1.0), obs=torch.zeros(4))


def unspecified_factor_guide():
    normal_guide()
    pyro.factor("g", pyro.param("q") * 0.5)  # invalid in a guide: has_rsample is required


@pytest.mark.parametrize(
    ("model", "guide", "message"),
    [
        (factor_model, unspecified_factor_guide, "missing specification of has_rsample"),
        (factor_model, empty, None),  # a latent site the guide lacks: Pyro warns, both run
        (empty, normal_guide, None),  # a guide site the model lacks: Pyro warns, both run
        (plate_mismatch_model, empty, "Shape mismatch inside plate"),
    ],
)
def test_invalid_programs_fail_or_warn_alike(model, guide, message):
    def outcome(elbo):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        try:
            with pytest.warns(UserWarning) if message is None else nullcontext():
                elbo.differentiable_loss(model, guide)
        except ValueError as e:
            return str(e)
        return None

    assert outcome(Trace_ELBO()) == outcome(pv.TensorTrace_ELBO())
    if message is not None:
        assert message in outcome(pv.TensorTrace_ELBO())


def mixture_model(x, idx=None, num_data=None):
    locs = pyro.param("locs", torch.tensor([-0.5, 0.5]))
    with pyro.plate("data", num_data, subsample=idx):
        c = pyro.sample("c", dist.Categorical(torch.ones(2) / 2))
        pyro.sample("x", dist.Normal(locs[c], 0.5), obs=x)


@pyro.infer.config_enumerate
def mixture_guide(x, idx=None, num_data=None):
    probs = pyro.param("probs", torch.ones(num_data, 2) / 2, constraint=dist.constraints.simplex)
    with pyro.plate("data", num_data, subsample=idx) as i:
        pyro.sample("c", dist.Categorical(probs[i]))


LOSSES = {
    "TraceMeanField_ELBO": (pyro.infer.TraceMeanField_ELBO, False),
    "TraceGraph_ELBO": (pyro.infer.TraceGraph_ELBO, True),
    "RenyiELBO": (pyro.infer.RenyiELBO, True),
    "JitTrace_ELBO": (pyro.infer.JitTrace_ELBO, True),  # (its differentiable_loss: 2 × grad)
}


# Every Pyro loss fit accepts, with what it needs; fit steps the first group through
# differentiable_loss and the second through SVI.step.
EVERY_LOSS = {
    "TensorTrace_ELBO": lambda: pv.TensorTrace_ELBO(),
    "Trace_ELBO": lambda: pyro.infer.Trace_ELBO(),
    "TraceMeanField_ELBO": lambda: pyro.infer.TraceMeanField_ELBO(),
    "TraceEnum_ELBO": lambda: pyro.infer.TraceEnum_ELBO(max_plate_nesting=1),
    "TraceTMC_ELBO": lambda: pyro.infer.TraceTMC_ELBO(max_plate_nesting=1),
    "JitTraceMeanField_ELBO": lambda: pyro.infer.JitTraceMeanField_ELBO(),
    "JitTraceEnum_ELBO": lambda: pyro.infer.JitTraceEnum_ELBO(max_plate_nesting=1),
    "JitTrace_ELBO": lambda: pyro.infer.JitTrace_ELBO(),
    "TraceGraph_ELBO": lambda: pyro.infer.TraceGraph_ELBO(),
    "JitTraceGraph_ELBO": lambda: pyro.infer.JitTraceGraph_ELBO(),
    "RenyiELBO": lambda: pyro.infer.RenyiELBO(),
}


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.filterwarnings("ignore:.*torch.jit.trace. is deprecated")
@pytest.mark.filterwarnings("ignore:.*found no sample sites configured for enumeration")
@pytest.mark.parametrize("name", list(EVERY_LOSS))
def test_one_fit_step_is_one_svi_step_under_plain_sgd(name):
    """Under plain SGD, which (unlike Adam) is not invariant to the gradient's scale, so a
    doubled gradient shows, one fit step is one SVI step for every loss, JitTrace_ELBO
    included. One batch, one step, the same noise: the same parameters."""
    x, idx = pv.make_circle(16)[0], torch.arange(16)

    def trained(step):
        pyro.clear_param_store()
        torch.manual_seed(0)
        vae = pv.models.zoo.circle_vae("amortized")
        pyro.set_rng_seed(1)
        step(vae)
        return {k: v.detach().clone() for k, v in pyro.get_param_store().items()}

    def svi(vae):
        optim = pyro.optim.SGD({"lr": 0.1})
        SVI(vae.model, vae.guide, optim, EVERY_LOSS[name]()).step(x, idx, num_data=16)

    def fit(vae):
        data = pv.Batches(x, batch_size=16, shuffle=False)  # one step
        optim, loss = pyro.optim.SGD({"lr": 0.1}), EVERY_LOSS[name]()
        pv.fit(
            vae.model,
            vae.guide,
            data,
            epochs=1,
            optim=optim,
            loss=loss,
            device=here(),
            log=False,
        )

    expected, actual = trained(svi), trained(fit)
    assert actual.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("name", list(LOSSES))
def test_every_pyro_loss_trains_through_fit_and_says_which_step(name):
    make, svi_step = LOSSES[name]
    vae = pv.models.zoo.circle_vae("amortized")
    data = pv.Batches(pv.make_circle(200)[0], batch_size=50)
    optim = pv.LazyAdam({"lr": 1e-2})
    history = pv.fit(vae.model, vae.guide, data, epochs=15, loss=make(), optim=optim, log=False)
    assert history.loss[-1] < history.loss[0] - 20, history.loss  # ~60 → below 10 nats
    assert history.svi_step is svi_step  # SVI.step: a host sync per step


def test_an_enumerated_discrete_site_trains_through_fit():
    g = generator(0)
    x = torch.cat([torch.randn(100, generator=g) - 2, torch.randn(100, generator=g) + 2])
    history = pv.fit(
        mixture_model,
        mixture_guide,
        pv.Batches(x, batch_size=50),
        epochs=30,
        loss=pyro.infer.TraceEnum_ELBO(max_plate_nesting=1),
        optim=pv.LazyAdam({"lr": 0.05}),
        log=False,
        device=here(),
    )
    assert not history.svi_step and history.loss[-1] < history.loss[0]
    locs = pyro.param("locs").detach().sort().values
    torch.testing.assert_close(locs, torch.tensor([-2.0, 2.0]), atol=0.3, rtol=0)


SETUPS = {
    "amortized VAE": (
        lambda: pv.models.zoo.circle_vae("amortized"),
        lambda: pyro.optim.Adam({"lr": 1e-2}),
    ),
    "per-datapoint guide": (
        lambda: pv.models.zoo.circle_vae("per-datapoint", num_data=64),
        lambda: pv.LazyAdam({"lr": 1e-2}, local_lr=0.05),
    ),
    "hand-written pair": (lambda: HandWritten(2, 1), lambda: pyro.optim.Adam({"lr": 1e-2})),
}


@pytest.mark.parametrize("setup", list(SETUPS))
def test_fit_takes_the_steps_of_a_plain_svi_loop(setup):
    build, make_optim = SETUPS[setup]
    data = pv.Batches(pv.make_circle(64)[0], batch_size=16)

    def start():
        pyro.clear_param_store()
        torch.manual_seed(0)
        pair = build()
        pyro.set_rng_seed(1)
        return pair

    pair = start()
    history = pv.fit(
        pair.model,
        pair.guide,
        data,
        epochs=3,
        optim=make_optim(),
        device=here(),
        log=False,
    )
    fitted = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}

    pair = start()
    svi = SVI(pair.model, pair.guide, make_optim(), Trace_ELBO())
    losses = []
    for _ in range(3):
        total = sum(svi.step(x, idx, num_data=64) * len(idx) / 64 for x, idx in data)
        losses.append(total / 64)
    plain = {k: v.detach() for k, v in pyro.get_param_store().items()}
    assert fitted.keys() == plain.keys()
    for name in plain:
        torch.testing.assert_close(fitted[name], plain[name], rtol=1e-5, atol=1e-6, msg=name)
    assert history.loss == pytest.approx(losses, rel=1e-5)


def growing_model(step: int):
    """A float64 program whose constrained parameter ``b`` appears at step 5."""
    a = pyro.param("a", torch.tensor([0.3, -0.2], dtype=torch.float64))
    total = -((a - 1.0) ** 2).sum()
    if step >= 5:
        b = pyro.param(
            "b", torch.tensor(2.0, dtype=torch.float64), constraint=dist.constraints.positive
        )
        total = total - (b - 0.5) ** 2
    pyro.factor("f", total)


def run_optimizer(optims, steps: int) -> list[dict]:
    """Steps ``growing_model`` with ``optims[k]`` from step k on; snapshots after each step."""
    pyro.clear_param_store()
    snapshots, optim = [], None
    for step in range(steps):
        optim = optims.get(step, optim)
        gradient_step(lambda s=step: growing_model(s), empty, pv.TensorTrace_ELBO(), optim)
        snapshots.append({k: v.detach().clone() for k, v in pyro.get_param_store().items()})
    return snapshots


def handover(source, target_cls, args):
    """A new optimizer of ``target_cls`` that continues from ``source``'s state."""
    target = target_cls(args)
    target.set_state(source.get_state())
    return target


@pytest.mark.parametrize(
    ("first", "second"), [(pyro.optim.Adam, pv.LazyAdam), (pv.LazyAdam, pyro.optim.Adam)]
)
def test_lazy_adam_and_pyro_adam_take_the_same_steps_and_hand_over_their_state(first, second):
    args = {"lr": 0.1, "betas": (0.8, 0.95)}
    reference = run_optimizer({0: pyro.optim.Adam(args)}, 12)
    lazy = run_optimizer({0: pv.LazyAdam(args)}, 12)  # a constrained parameter appears mid-run
    for ref, got in zip(reference, lazy, strict=True):
        assert ref.keys() == got.keys()
        for name in ref:
            torch.testing.assert_close(got[name], ref[name], rtol=0, atol=1e-12, msg=name)
    # 4 steps with one optimizer, then its state moves to the other: the run goes on the same.
    snapshots = []
    pyro.clear_param_store()
    optim = first(args)
    for step in range(12):
        if step == 4:
            optim = handover(optim, second, args)
        gradient_step(lambda s=step: growing_model(s), empty, pv.TensorTrace_ELBO(), optim)
        snapshots.append({k: v.detach().clone() for k, v in pyro.get_param_store().items()})
    for ref, got in zip(reference, snapshots, strict=True):
        for name in ref:
            torch.testing.assert_close(got[name], ref[name], rtol=0, atol=1e-12, msg=name)
