"""Per-datapoint guides (variational EM), sparse updates, schedules, held-out E-steps,
semi-amortized inference and the amortization gap."""

from __future__ import annotations

import dataclasses
import math
import warnings

import helpers
import pyro
import pytest
import torch
from helpers import PPCA_D as D
from helpers import here, ppca
from pyro.infer import Trace_ELBO

import pyro_vae as pv
from pyro_vae.train import local as local_module
from pyro_vae.train.loop import train


def circle_vae(guide) -> pv.VAE:
    return helpers.circle_vae(guide, hidden=(20, 20))


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def parameters(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def run_steps(vae, optim, x, batches):
    svi = pyro.infer.SVI(vae.model, vae.guide, optim, Trace_ELBO())
    for idx in batches:
        svi.step(x[idx], idx, num_data=x.shape[0])


class RecordingLazyAdam(pv.LazyAdam):
    """LazyAdam that keeps, for every call, a copy of the gradients it is handed."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[dict[torch.Tensor, torch.Tensor]] = []

    def __call__(self, params, *args, **kwargs) -> None:
        params = list(params)
        self.calls.append({p: p.grad.clone() for p in params if p.grad is not None})
        super().__call__(params, *args, **kwargs)

    def names(self, call: int) -> set[str]:
        store = pyro.get_param_store()
        return {store.param_name(p) for p in self.calls[call]}


@pytest.mark.parametrize(
    "sparse, optim_class, rows_with_momentum_move",
    [
        (True, pv.LazyAdam, False),  # sparse gradients: SparseAdam, lazy
        (False, pv.LazyAdam, True),  # dense gradients: LazyAdam is Adam
        (False, pyro.optim.Adam, True),  # the pitfall (pyro-ppl/pyro#2386)
    ],
)
def test_rows_outside_the_batch_move_only_with_dense_gradients(
    sparse, optim_class, rows_with_momentum_move
):
    """Rows stepped once (batch a) carry Adam momentum; then only batch b is drawn. With
    dense gradients Adam keeps moving a's rows; with sparse ones LazyAdam leaves them
    bit-identical. Rows never drawn (zero momentum) never move."""
    n = 1000
    x, _ = pv.make_circle(n)
    guide = pv.PerDatapointGaussian(n, 1, sparse=sparse)
    vae = circle_vae(guide)
    optim = optim_class({"lr": 0.1})
    a, b, never = torch.arange(0, 100), torch.arange(100, 200), torch.arange(200, n)
    run_steps(vae, optim, x, [a])
    before = guide.loc.detach().clone(), guide.log_scale.detach().clone()
    run_steps(vae, optim, x, [b, b, b])
    after = guide.loc.detach(), guide.log_scale.detach()
    for p, q in zip(before, after, strict=True):
        assert (p[b] != q[b]).all()
        assert torch.equal(p[never], q[never])
        assert (p[a] != q[a]).all() if rows_with_momentum_move else torch.equal(p[a], q[a])


def test_sparse_step_touches_only_the_batch_and_lazy_adam_acts_as_adam_elsewhere():
    n = 50
    x, _ = pv.make_circle(n)
    guide = pv.PerDatapointGaussian(n, 1)
    vae = circle_vae(guide)
    settings = {"lr": 0.01, "betas": (0.8, 0.95), "eps": 1e-6}
    optim = RecordingLazyAdam(settings)
    dense_init = parameters(vae.likelihood)
    first, later = torch.arange(0, 10), torch.arange(20, 30)
    run_steps(vae, optim, x, [first])
    before = guide.loc.detach().clone(), guide.log_scale.detach().clone()
    run_steps(vae, optim, x, [later] * 4)
    after = guide.loc.detach(), guide.log_scale.detach()

    # The local parameters' gradients are row-sparse, at the batch's rows only ...
    for call, rows in zip(optim.calls, [first] + [later] * 4, strict=True):
        for p in (guide.loc, guide.log_scale):
            grad = call[p]
            assert grad.is_sparse
            assert torch.equal(grad.coalesce().indices()[0].unique(), rows)
    # ... so the rows outside the batch (the first batch's included: they carry momentum)
    # stay bit-identical while every row of the batch moves.
    outside = torch.ones(n, dtype=torch.bool)
    outside[later] = False
    for p, q in zip(before, after, strict=True):
        assert torch.equal(p[outside], q[outside])
        assert (p[later] != q[later]).all()

    # The dense parameters move exactly as under torch's Adam with the same settings,
    # given the same gradients.
    moved = 0
    for name, p in vae.likelihood.named_parameters():
        ref = dense_init[name].clone().requires_grad_()
        adam = torch.optim.Adam([ref], **settings)
        for call in optim.calls:
            ref.grad = call[p]
            adam.step()
        torch.testing.assert_close(p.detach(), ref.detach(), rtol=0, atol=0, msg=name)
        moved += int(not torch.equal(p.detach(), dense_init[name]))
    assert moved == len(dense_init)


def test_switching_inference_is_one_argument():
    """The same fit call trains an amortized and a per-datapoint guide; the runs start from the
    same model and differ in the guide alone, and each trains every parameter."""
    n = 2000
    x, _ = pv.make_circle(n)
    data = pv.Batches(x, batch_size=200)
    initial_model = {}
    for kind, make_guide in (
        ("amortized", lambda: pv.GaussianEncoder(pv.MLP(2, 2, (20, 20)), 1)),
        ("per-datapoint", lambda: pv.PerDatapointGaussian(n, 1)),
    ):
        pyro.clear_param_store()
        torch.manual_seed(0)
        model = circle_vae(pv.PerDatapointGaussian(1, 1))  # the same initial model twice
        vae = model.with_guide(make_guide(), name="vae")  # the only difference between runs
        initial_model[kind] = parameters(vae.likelihood)
        initial_guide = parameters(vae.variational)
        pyro.set_rng_seed(0)
        history = pv.fit(
            vae.model,
            vae.guide,
            data,
            epochs=15,
            log=False,
            device=here(),
            optim=pv.LazyAdam({"lr": 1e-2}),
        )
        assert history.loss[-1] < history.loss[0] - 5, (kind, history.loss)
        for part, init in ((vae.likelihood, initial_model[kind]), (vae.variational, initial_guide)):
            for name, value in parameters(part).items():
                assert not torch.equal(value, init[name]), (kind, name)
    assert_same(initial_model["amortized"], initial_model["per-datapoint"])


def test_variational_em_schedule_and_frozen_e_step():
    n = 1000
    x, _ = pv.make_circle(n)
    data = pv.Batches(x, batch_size=250)
    vae = circle_vae(pv.PerDatapointGaussian(n, 1))
    optim = RecordingLazyAdam({"lr": 1e-2})
    history = pv.fit(
        vae.model,
        vae.guide,
        data,
        epochs=10,
        e_steps=3,
        device=here(),
        optim=optim,
        log=False,
    )
    assert history.loss[-1] < history.loss[0] - 5
    # The schedule: per batch, 3 steps on the guide's parameters alone, then 1 on the model's.
    guide_names = {f"vae.guide$$${k}" for k in ("loc", "log_scale")}
    model_names = {f"vae.likelihood$$${k}" for k, _ in vae.likelihood.named_parameters()}
    assert len(optim.calls) == 10 * len(data) * 4
    for call in range(len(optim.calls)):
        assert optim.names(call) == (model_names if call % 4 == 3 else guide_names), call

    # An E-step never changes the model's parameters.
    theta = snapshot(vae.likelihood)
    lam = snapshot(vae.variational)
    train(  # infer_local's loop: E-steps under the model
        vae.model,
        vae.guide,
        data,
        epochs=2,
        freeze_model=True,
        device=here(),
        optim=pv.LazyAdam({"lr": 1e-2}),
        progress=False,
    )
    assert_same(theta, snapshot(vae.likelihood))
    assert any((lam[k] != v).any() for k, v in snapshot(vae.variational).items())

    # Held-out points: a new per-datapoint guide fit under the frozen model.
    test = pv.Batches(pv.make_circle(300, seed=1)[0], batch_size=100, shuffle=False)
    before = pv.evaluate(
        *(lambda v: (v.model, v.guide))(vae.with_guide(pv.PerDatapointGaussian(300, 1), name="t0")),
        test,
        num_particles=10,
    )
    local = pv.infer_local(vae, test, epochs=30, lr=5e-2)
    assert_same(theta, snapshot(vae.likelihood))
    assert local.likelihood is vae.likelihood and local.variational.num_data == 300
    after = pv.evaluate(local.model, local.guide, test, num_particles=10)
    assert after.elbo > before.elbo + 1


def test_e_step_error_messages():
    vae = circle_vae(pv.PerDatapointGaussian(10, 1))
    data = pv.Batches(pv.make_circle(10)[0], batch_size=5)
    with pytest.raises(ValueError, match="cannot be combined"):
        train(vae.model, vae.guide, data, epochs=1, e_steps=2, freeze_model=True)
    with pytest.raises(ValueError, match="dataset indices"):
        vae.variational(torch.zeros(5, 2), None)


def test_per_datapoint_inference_recovers_the_exact_ppca_posterior():
    """θ fixed at a PPCA: per-datapoint Gaussian inference → closed-form posterior and log p(x)."""
    vae, x, log_px, (a, b, cov) = ppca()
    n = x.shape[0]
    # Full batches, so dense gradients and a decaying step size (ClippedAdam's lrd) are fine.
    local = vae.with_guide(pv.PerDatapointGaussian(n, D, sparse=False).double(), name="local")
    theta = snapshot(vae)
    train(  # infer_local's loop (E-steps only), with a loss and optimizer of the test's own
        local.model,
        local.guide,
        pv.Batches(x, batch_size=n, shuffle=False),
        epochs=1000,
        loss=Trace_ELBO(num_particles=128, vectorize_particles=True, max_plate_nesting=1),
        optim=pyro.optim.ClippedAdam({"lr": 0.05, "lrd": 0.995}),
        freeze_model=True,
        device=here(),
        progress=False,
    )
    post_loc = x @ a.T - a @ b  # posterior means are O(1); scales 0.15 and 0.51
    post_scale = torch.diagonal(cov).sqrt().expand(n, D)
    torch.testing.assert_close(local.variational.loc.detach(), post_loc, rtol=0, atol=0.02)
    torch.testing.assert_close(
        local.variational.log_scale.detach().exp(), post_scale, rtol=0.02, atol=0
    )
    result = pv.evaluate(local.model, local.guide, x, num_particles=2000)
    assert result.elbo == pytest.approx(log_px.mean().item(), abs=0.005)
    assert result.log_likelihood == pytest.approx(log_px.mean().item(), abs=0.005)
    assert_same(theta, snapshot(vae))


def test_semi_amortized_refinement_improves_the_elbo():
    vae, x, log_px, _ = ppca()
    with torch.no_grad():  # a poor encoder
        vae.variational.encoder.bias[:D] += 0.3
    plain = pv.evaluate(vae.model, vae.guide, x, num_particles=500)
    semi = pv.SemiAmortizedGaussian(vae.variational, vae.prior, vae.likelihood, steps=20, lr=1e-3)
    refined_vae = vae.with_guide(semi, name="semi")
    refined = pv.evaluate(refined_vae.model, refined_vae.guide, x, num_particles=500)
    assert refined.elbo > plain.elbo + 0.5, (plain, refined)
    assert refined.elbo <= log_px.mean().item() + 0.02


def test_semi_amortized_training_differentiates_through_the_refinement():
    """The refined mean λ_K depends on the encoder's λ_0 through K gradient steps: its
    gradient is the derivative through those steps (checked by central differences, float64,
    the refinement noise fixed), not the identity path a detached refinement would give."""
    vae, x, _, _ = ppca()
    semi = pv.SemiAmortizedGaussian(vae.variational, vae.prior, vae.likelihood, steps=3, lr=1e-2)
    bias = vae.variational.encoder.bias

    def refined_mean_sum() -> torch.Tensor:
        torch.manual_seed(1)  # the same refinement noise in every call
        return semi(x).mean.sum()

    refined_mean_sum().backward()
    grad = bias.grad[:D].clone()
    h = 1e-6
    numeric = torch.empty(D, dtype=torch.float64)
    with torch.no_grad():
        for d in range(D):
            bias[d] += h
            up = refined_mean_sum()
            bias[d] -= 2 * h
            down = refined_mean_sum()
            bias[d] += h
            numeric[d] = (up - down) / (2 * h)
    torch.testing.assert_close(grad, numeric, rtol=1e-6, atol=0)
    identity_path = torch.full((D,), float(x.shape[0]), dtype=torch.float64)
    assert ((grad - identity_path).abs() > 0.1 * x.shape[0]).all(), grad

    # Training: every parameter of the composed VAE gets a gradient through the loss.
    amortized = circle_vae(pv.GaussianEncoder(pv.MLP(2, 2, (8,)), 1))
    guide = pv.SemiAmortizedGaussian(
        amortized.variational, amortized.prior, amortized.likelihood, steps=3, lr=1e-3
    )
    trained = amortized.with_guide(guide, name="semi")
    points = pv.make_circle(64)[0]
    loss = Trace_ELBO().differentiable_loss(trained.model, trained.guide, points, torch.arange(64))
    loss.backward()
    for name, p in trained.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_amortization_gap_on_ppca_is_the_encoder_kl():
    vae, x, log_px, (_, _, cov) = ppca()
    shift = 0.1
    with torch.no_grad():
        vae.variational.encoder.bias[:D] += shift
    # Exact: the amortized guide's gap is KL(q_φ ‖ p(z|x)) = Σ_d shift² / (2 σ_d²); the
    # optimal Gaussian is the exact posterior, so the approximation gap is 0.
    kl = (shift**2 / (2 * torch.diagonal(cov))).sum().item()
    data = pv.Batches(x, batch_size=x.shape[0], shuffle=False)
    gap = pv.amortization_gap(vae, data, epochs=600, lr=0.01, num_particles=4000)
    assert gap.amortization_gap == pytest.approx(kl, abs=0.05 * kl + 0.02)
    assert abs(gap.approximation_gap) < 0.03
    assert gap.log_likelihood == pytest.approx(log_px.mean().item(), abs=0.01)
    assert math.isfinite(gap.elbo_amortized)


def test_lazy_adam_local_lr_applies_to_sparse_parameters_only():
    """Adam's first step moves each coordinate by lr · g/(|g| + eps) ≈ lr: by local_lr = 0.5 for
    the batch's local parameters, by lr = 1e-4 for the networks'."""
    n = 50
    x, _ = pv.make_circle(n)
    vae = circle_vae(pv.PerDatapointGaussian(n, 1))
    before = snapshot(vae)
    optim = pv.LazyAdam({"lr": 1e-4}, local_lr=0.5)
    batch = torch.arange(10)
    run_steps(vae, optim, x, [batch])
    after = snapshot(vae)
    for name in ("variational.loc", "variational.log_scale"):
        step = (after[name] - before[name]).abs()
        torch.testing.assert_close(
            step[batch], torch.full_like(step[batch], 0.5), rtol=1e-5, atol=0
        )
        assert (step[10:] == 0).all()
    dense = [(after[k] - before[k]).abs() for k in before if k.startswith("likelihood.")]
    largest = max(step.max().item() for step in dense)
    assert largest == pytest.approx(1e-4, rel=1e-2)  # float32 rounding of values ~ 1


def test_amortization_gap_takes_a_tensor_refuses_a_per_datapoint_vae_and_warns_when_short(
    monkeypatch,
):
    """Before: ``amortization_gap`` refused a tensor (``evaluate`` takes one), reported an
    "amortized" ELBO for a VAE without an encoder, and returned a negative gap without a
    word (here the optimum's score is made 1 nat worse than the amortized one)."""
    x, _ = pv.make_circle(60)
    vae = circle_vae(pv.GaussianEncoder(pv.MLP(2, 2, (20, 20)), 1))
    with warnings.catch_warnings():  # (one epoch may well be short of the optimum)
        warnings.simplefilter("ignore")
        gap = pv.amortization_gap(vae, x, epochs=1, num_particles=4)  # a tensor
    assert math.isfinite(gap.amortization_gap)
    real = local_module.evaluate
    calls = []

    def worse_optimum(*args, **kwargs):
        result = real(*args, **kwargs)
        calls.append(result)
        if len(calls) == 2:  # the per-datapoint optimum's score
            return dataclasses.replace(result, elbo=calls[0].elbo - 1.0)
        return result

    monkeypatch.setattr(local_module, "evaluate", worse_optimum)
    with pytest.warns(UserWarning, match=r"has not converged in 1 epochs.*Raise epochs"):
        gap = pv.amortization_gap(vae, x, epochs=1, num_particles=4)
    assert gap.amortization_gap == pytest.approx(-1.0)
    local = circle_vae(pv.PerDatapointGaussian(60, 1))
    with pytest.raises(ValueError, match="already per-datapoint"):
        pv.amortization_gap(local, x, epochs=1, num_particles=4)


def test_infer_local_takes_a_tensor():
    x, _ = pv.make_circle(40)
    vae = circle_vae(pv.GaussianEncoder(pv.MLP(2, 2, (20, 20)), 1))
    local = pv.infer_local(vae, x, epochs=1)
    assert local.variational.loc.shape == (40, 1)
