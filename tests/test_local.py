"""Per-datapoint guides (variational EM), sparse updates, schedules, held-out E-steps,
semi-amortized inference and the amortization gap."""

from __future__ import annotations

import math

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO
from test_exact import D, ppca

import pyro_vae as pv


def circle_vae(guide) -> pv.VAE:
    likelihood = pv.GaussianLikelihood(pv.MLP(1, 2, (20, 20)), 2, scale=0.1)
    return pv.VAE(pv.StandardNormalPrior(1), likelihood, guide)


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def run_steps(vae, optim, x, batches):
    svi = pyro.infer.SVI(vae.model, vae.guide, optim, Trace_ELBO())
    for idx in batches:
        svi.step(x[idx], idx, num_data=x.shape[0])


@pytest.mark.parametrize("sparse", [True, False])
def test_untouched_rows_stay_bit_identical(sparse):
    n = 1000
    x, _ = pv.make_circle(n)
    guide = pv.PerDatapointGaussian(n, 1, sparse=sparse)
    vae = circle_vae(guide)
    # Two batches alternate; rows 500.. are touched at step 0 only (batch A is visited first).
    a, b = torch.arange(0, 100), torch.arange(100, 200)
    run_steps(vae, pv.LazyAdam({"lr": 0.1}), x, [a])
    before = guide.loc.detach().clone(), guide.log_scale.detach().clone()
    run_steps(
        vae,
        pv.LazyAdam({"lr": 0.1}) if sparse else pyro.optim.Adam({"lr": 0.1}),
        x,
        [b, b, b, b, b],
    )
    after = guide.loc.detach(), guide.log_scale.detach()
    untouched = torch.ones(n, dtype=torch.bool)
    untouched[b] = False
    changed_b = (after[0][b] != before[0][b]).all()
    assert changed_b
    if sparse:  # LazyAdam + sparse gradients: rows outside the batches never move
        for p, q in zip(before, after, strict=True):
            assert torch.equal(p[untouched], q[untouched])
    else:  # pitfall (pyro-ppl/pyro#2386) with dense grads, shown on a fresh Adam run
        pyro.clear_param_store()
        guide2 = pv.PerDatapointGaussian(n, 1, sparse=False)
        vae2 = circle_vae(guide2)
        optim = pyro.optim.Adam({"lr": 0.1})
        run_steps(vae2, optim, x, [a])
        rows_a = guide2.loc.detach()[a].clone()
        run_steps(vae2, optim, x, [b, b])
        assert (guide2.loc.detach()[a] != rows_a).any()  # momentum moved rows not in the batch


def test_sparse_step_touches_only_the_batch_and_lazy_adam_acts_as_adam_elsewhere():
    n = 50
    x, _ = pv.make_circle(n)
    guide = pv.PerDatapointGaussian(n, 1)
    vae = circle_vae(guide)
    optim = pv.LazyAdam({"lr": 0.01})
    run_steps(vae, optim, x, [torch.arange(10)])
    kinds = {type(o).__name__ for o in optim.optim_objs.values()}
    assert kinds == {"SparseAdam", "Adam"}
    assert guide.loc.grad is None or guide.loc.grad.is_sparse


def test_switching_inference_is_one_argument():
    n = 2000
    x, _ = pv.make_circle(n)
    data = pv.Batches(x, batch_size=200)
    results = {}
    for kind, guide in (
        ("amortized", pv.GaussianEncoder(pv.MLP(2, 2, (20, 20)), 1)),
        ("per-point", pv.PerDatapointGaussian(n, 1)),
    ):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        vae = circle_vae(guide)  # the only difference between the two runs
        history = pv.fit(
            vae.model,
            vae.guide,
            data,
            epochs=15,
            progress=False,
            device="cpu",
            optim=pv.LazyAdam({"lr": 1e-2}),
        )
        results[kind] = history.loss
        assert history.loss[-1] < history.loss[0] - 5, (kind, history.loss)


def test_variational_em_schedule_and_frozen_e_step():
    n = 1000
    x, _ = pv.make_circle(n)
    data = pv.Batches(x, batch_size=250)
    vae = circle_vae(pv.PerDatapointGaussian(n, 1))
    history = pv.fit(
        vae.model,
        vae.guide,
        data,
        epochs=10,
        e_steps=3,
        device="cpu",
        optim=pv.LazyAdam({"lr": 1e-2}),
        progress=False,
    )
    assert history.loss[-1] < history.loss[0] - 5

    # An E-step never changes the model's parameters.
    theta = snapshot(vae.likelihood)
    lam = snapshot(vae.variational)
    pv.fit(
        vae.model,
        vae.guide,
        data,
        epochs=2,
        freeze_model=True,
        device="cpu",
        optim=pv.LazyAdam({"lr": 1e-2}),
        progress=False,
    )
    assert_same(theta, snapshot(vae.likelihood))
    assert any((lam[k] != v).any() for k, v in snapshot(vae.variational).items())

    # Held-out points: a new per-point guide fit under the frozen model.
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
        pv.fit(vae.model, vae.guide, data, epochs=1, e_steps=2, freeze_model=True)
    with pytest.raises(ValueError, match="dataset indices"):
        vae.variational(torch.zeros(5, 2), None)


def test_per_point_inference_recovers_the_exact_ppca_posterior():
    """θ fixed at a PPCA: per-point Gaussian inference → closed-form posterior and log p(x)."""
    vae, x, log_px, (a, b, cov) = ppca()
    n = x.shape[0]
    # Full batches, so dense gradients and a decaying step size (ClippedAdam's lrd) are fine.
    local = vae.with_guide(pv.PerDatapointGaussian(n, D, sparse=False).double(), name="local")
    theta = snapshot(vae)
    pv.fit(
        local.model,
        local.guide,
        pv.Batches(x, batch_size=n, shuffle=False),
        epochs=1000,
        loss=Trace_ELBO(num_particles=128, vectorize_particles=True, max_plate_nesting=1),
        optim=pyro.optim.ClippedAdam({"lr": 0.05, "lrd": 0.995}),
        freeze_model=True,
        device="cpu",
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
    amortized = circle_vae(pv.GaussianEncoder(pv.MLP(2, 2, (8,)), 1))
    guide = pv.SemiAmortizedGaussian(
        amortized.variational, amortized.prior, amortized.likelihood, steps=3, lr=1e-3
    )
    vae = amortized.with_guide(guide, name="semi")
    x = pv.make_circle(64)[0]
    loss = Trace_ELBO().differentiable_loss(vae.model, vae.guide, x, torch.arange(64))
    loss.backward()
    for name, p in vae.named_parameters():
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
    n = 50
    x, _ = pv.make_circle(n)
    vae = circle_vae(pv.PerDatapointGaussian(n, 1))
    optim = pv.LazyAdam({"lr": 1e-4}, local_lr=0.5)
    run_steps(vae, optim, x, [torch.arange(10)])
    lrs = {type(o).__name__: o.param_groups[0]["lr"] for o in optim.optim_objs.values()}
    assert lrs == {"SparseAdam": 0.5, "Adam": 1e-4}
