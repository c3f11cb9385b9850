"""TensorTrace_ELBO is Trace_ELBO's estimator: same loss, same gradients, tensor-valued."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO

import pyro_vae as pv


def with_discrete_site():
    """A model with a non-reparameterized (Bernoulli) latent: the score-function path."""

    def model(x):
        p = pyro.param("p", torch.tensor(0.3), constraint=dist.constraints.unit_interval)
        loc = pyro.param("loc", torch.zeros(2))
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Bernoulli(p))
            z = pyro.sample("z", dist.Normal(loc + c[:, None], 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, 0.5).to_event(1), obs=x)

    def guide(x):
        q = pyro.param("q", torch.tensor(0.6), constraint=dist.constraints.unit_interval)
        w = pyro.param("w", torch.zeros(2, 2))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("c", dist.Bernoulli(q))
            pyro.sample("z", dist.Normal(x @ w, 1.0).to_event(1))

    return model, guide


@pytest.mark.parametrize("num_particles", [1, 3])
def test_same_loss_and_gradients_as_trace_elbo(num_particles):
    model, guide = with_discrete_site()
    x = torch.randn(5, 2)
    results = []
    for elbo in (Trace_ELBO(num_particles=num_particles), pv.TensorTrace_ELBO(num_particles)):
        pyro.set_rng_seed(0)
        loss = elbo.differentiable_loss(model, guide, x)
        params = {k: pyro.param(k).unconstrained() for k in ("p", "loc", "q", "w")}
        grads = torch.autograd.grad(loss, list(params.values()))
        results.append((loss.detach(), grads))
    (loss_a, grads_a), (loss_b, grads_b) = results
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-6, atol=1e-6)
    for ga, gb in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(ga, gb, rtol=1e-6, atol=1e-6)
    assert grads_b[2].abs() > 0  # the discrete site's parameter gets a score-function gradient


def test_loss_and_grads_returns_a_tensor_and_works_with_svi():
    model, guide = with_discrete_site()
    x = torch.randn(5, 2)
    pyro.set_rng_seed(0)
    value = pv.TensorTrace_ELBO().loss_and_grads(model, guide, x)
    assert isinstance(value, torch.Tensor) and not value.requires_grad
    assert pyro.param("w").unconstrained().grad is not None
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), pv.TensorTrace_ELBO())
    assert isinstance(svi.step(x), float)
