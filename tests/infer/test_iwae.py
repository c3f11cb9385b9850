"""ImportanceWeightedELBO: Pyro's RenyiELBO(alpha=0) on a full batch, the ELBO at K = 1, the
right scale under subsampling, and a bound that tightens with K towards the exact log p(x)."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from helpers import PPCA_B as B
from helpers import PPCA_D as D
from helpers import bernoulli_vae, ppca
from pyro.infer import RenyiELBO

import pyro_vae as pv


def small_vae(dtype=torch.float64):
    torch.manual_seed(0)
    return bernoulli_vae().to(dtype)


def loss_and_grads(elbo, vae, *args, **kwargs):
    """The loss and the gradient of every parameter, from one ``loss_and_grads`` call."""
    pyro.clear_param_store()
    vae.zero_grad()
    pyro.set_rng_seed(3)
    loss = elbo.loss_and_grads(vae.model, vae.guide, *args, **kwargs)
    grads = [p.grad.clone() for p in vae.parameters()]
    return float(loss), grads


@pytest.mark.parametrize("k", [2, 7])
def test_equals_renyi_alpha_zero_on_a_full_batch(k):
    """Same particles (same seed, same particle plate): same loss and same gradients, exactly
    (not only in expectation)."""
    vae = small_vae()
    x = torch.rand(10, 6, dtype=torch.float64).round()
    ours = loss_and_grads(pv.ImportanceWeightedELBO(k, max_plate_nesting=1), vae, x)
    renyi = RenyiELBO(alpha=0, num_particles=k, vectorize_particles=True, max_plate_nesting=1)
    theirs = loss_and_grads(renyi, vae, x)
    assert ours[0] == pytest.approx(theirs[0], rel=1e-12)
    for a, b in zip(ours[1], theirs[1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_equals_the_elbo_at_one_particle():
    vae = small_vae()
    x, idx = torch.rand(10, 6, dtype=torch.float64).round(), torch.arange(3, 13)
    ours = loss_and_grads(
        pv.ImportanceWeightedELBO(1, max_plate_nesting=1), vae, x, idx, num_data=50
    )
    theirs = loss_and_grads(pv.TensorTrace_ELBO(max_plate_nesting=1), vae, x, idx, num_data=50)
    assert ours[0] == pytest.approx(theirs[0], rel=1e-12)
    for a, b in zip(ours[1], theirs[1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_subsample_scale_multiplies_the_per_datapoint_bounds():
    """A minibatch of B of N points: N/B times the bound of those B points (the unbiased
    estimate of the N-point bound). RenyiELBO puts N/B inside the log-mean-exp instead."""
    vae = small_vae()
    x, idx = torch.rand(10, 6, dtype=torch.float64).round(), torch.arange(10)
    iwae = pv.ImportanceWeightedELBO(5, max_plate_nesting=1)
    scaled = loss_and_grads(iwae, vae, x, idx, num_data=40)
    plain = loss_and_grads(iwae, vae, x)  # the same particles: the same seed, no subsampling
    assert scaled[0] == pytest.approx(4 * plain[0], rel=1e-12)
    for a, b in zip(scaled[1], plain[1], strict=True):
        torch.testing.assert_close(a, 4 * b, rtol=1e-10, atol=1e-12)
    renyi = RenyiELBO(alpha=0, num_particles=5, vectorize_particles=True, max_plate_nesting=1)
    assert loss_and_grads(renyi, vae, x, idx, num_data=40)[0] < scaled[0] - 1  # not the same


def test_tightens_with_k_towards_the_exact_log_likelihood():
    """Probabilistic PCA with a worse-than-exact guide: E[L_1] < E[L_5] < E[L_50] < log p(x),
    each expectation estimated from 400 independent bounds per point (float64)."""
    vae, x, log_px, _ = ppca()
    with torch.no_grad():  # shifted mean, wider scale: the ELBO is ~0.7 nats loose
        vae.variational.encoder.bias[:D] += 0.1
        vae.variational.encoder.bias[D:] += math.log(1.5)
    reps = 400
    xs = x.repeat(reps, 1)  # each point, 400 times: 400 independent bounds per point
    means, errors = [], []
    for k in (1, 5, 50):
        with torch.no_grad():
            lw = pv.log_weights(vae.model, vae.guide, xs, num_particles=k)  # (K, reps·B)
        per_datapoint = (lw.logsumexp(0) - math.log(k)).view(reps, B)
        # the loss is the negative sum of the same bounds
        loss = pv.ImportanceWeightedELBO(k, max_plate_nesting=1).loss(vae.model, vae.guide, xs)
        means.append(per_datapoint.mean(0))
        errors.append(per_datapoint.std(0) / math.sqrt(reps))
        assert -loss / (reps * B) == pytest.approx(
            per_datapoint.mean().item(), abs=5 * per_datapoint.std().item() / math.sqrt(reps * B)
        )
    gap = [(log_px - m).mean().item() for m in means]
    assert gap[0] > 0.5 and gap[0] > gap[1] > gap[2] > 0, gap
    for m, e in zip(means, errors, strict=True):
        assert (m < log_px + 5 * e).all()
    assert gap[2] < 0.05 * gap[0]  # K = 50 closes most of the gap on this model


def test_the_exact_posterior_gives_log_p_x_at_every_k():
    vae, x, log_px, _ = ppca()
    for k in (1, 3):
        loss = pv.ImportanceWeightedELBO(k, max_plate_nesting=1).loss(vae.model, vae.guide, x)
        assert -loss == pytest.approx(log_px.sum().item(), abs=1e-9)


def test_a_guide_without_reparameterized_samples_is_refused():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Bernoulli(0.3))
            pyro.sample("x", dist.Normal(c, 1.0), obs=x)

    def guide(x):
        q = pyro.param("q", torch.tensor(0.6), constraint=dist.constraints.unit_interval)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("c", dist.Bernoulli(q))

    iwae = pv.ImportanceWeightedELBO(3, max_plate_nesting=1)
    with pytest.raises(NotImplementedError, match=r"site 'c' .*Use TensorTrace_ELBO"):
        iwae.differentiable_loss(model, guide, torch.zeros(4))


def test_bad_num_particles():
    with pytest.raises(ValueError, match="num_particles must be an integer >= 1; got 0"):
        pv.ImportanceWeightedELBO(0)


def test_fit_trains_on_the_sync_free_step_with_e_steps():
    torch.manual_seed(0)
    vae = small_vae(torch.float32)
    patterns = torch.tensor([[1.0, 1, 1, 0, 0, 0], [0.0, 0, 0, 1, 1, 1]])
    data = pv.Batches(patterns.repeat(32, 1), batch_size=16)  # log p(x) -> -log 2 at best
    loss = pv.ImportanceWeightedELBO(4, max_plate_nesting=1)
    before = pv.evaluate(vae.model, vae.guide, data, num_particles=200)
    history = pv.fit(
        vae.model,
        vae.guide,
        data,
        epochs=30,
        loss=loss,
        e_steps=1,
        log=False,
        optim=pv.LazyAdam({"lr": 0.02}),
    )
    assert not history.svi_step  # the differentiable-loss step, not SVI.step
    after = pv.evaluate(vae.model, vae.guide, data, num_particles=200)
    assert after.log_likelihood > before.log_likelihood + 1
    # The loss recorded is the negative bound per point: below the negative ELBO per point.
    assert history.loss[-1] < -after.elbo + 0.3
