"""One contract for every prior, likelihood and guide the package ships."""

from __future__ import annotations

import io
import re

import pyro
import pytest
import torch
from helpers import (
    COMBINATIONS,
    DISTRIBUTIONS,
    GUIDES,
    LIKELIHOODS,
    PRIORS,
    B,
    D,
    F,
    N,
    build,
    make_batch,
)
from pyro import poutine
from pyro.infer import Trace_ELBO

import pyro_vae as pv


@pytest.fixture(params=list(PRIORS))
def prior_name(request):
    return request.param


@pytest.fixture(params=list(LIKELIHOODS))
def likelihood_name(request):
    return request.param


@pytest.fixture(params=list(GUIDES))
def guide_name(request):
    return request.param


@pytest.fixture
def prior(prior_name):
    return PRIORS[prior_name]()


@pytest.fixture
def likelihood(likelihood_name):
    return LIKELIHOODS[likelihood_name]()


@pytest.fixture
def guide(guide_name):
    return GUIDES[guide_name](PRIORS["normal"](), LIKELIHOODS["gaussian"]())


def test_every_exported_piece_is_in_the_contract():
    """Coverage guard: each exported prior, likelihood, guide and distribution class is built
    by a case above (in the style of Pyro's example-coverage test)."""
    prior, likelihood = PRIORS["normal"](), LIKELIHOODS["gaussian"]()
    built = {type(f()) for f in PRIORS.values()} | {type(f()) for f in LIKELIHOODS.values()}
    built |= {type(f(prior, likelihood)) for f in GUIDES.values()}
    built |= {type(make()) for make, _ in DISTRIBUTIONS.values()}
    exported = {getattr(pv, name) for name in pv.__all__}
    roles = (pv.Prior, pv.Likelihood, pv.Guide)
    pieces = {
        c
        for c in exported
        if isinstance(c, type)
        and c not in roles
        and (
            (
                issubclass(c, torch.nn.Module)
                and not issubclass(c, pv.VAE)
                and c.__module__.split(".")[-1] in ROLE_MODULES
            )
            or issubclass(c, torch.distributions.Distribution)
        )
    }
    missing = sorted(c.__name__ for c in pieces - built)
    assert not missing, f"not in the contract test: {missing}"


ROLE_MODULES = {"priors", "likelihoods", "guides", "flows", "hierarchical"}


@pytest.mark.parametrize("name", list(DISTRIBUTIONS))
def test_distribution_contract(name):
    make, value = DISTRIBUTIONS[name]
    d = make()
    x = value()
    assert d.support.check(x).all()
    assert d.log_prob(x).shape == d.batch_shape
    assert torch.isfinite(d.log_prob(x)).all()
    assert d.sample().shape == d.batch_shape + d.event_shape


def test_each_piece_is_accepted_in_its_role_and_refused_in_the_others():
    """The protocols of priors and guides name the same attributes (``isinstance`` alone lets
    a guide pass as a prior): the VAE also checks what ``forward`` takes."""
    prior, likelihood = PRIORS["normal"](), LIKELIHOODS["gaussian"]()
    roles = {
        "prior": [f() for f in PRIORS.values()],
        "likelihood": [f() for f in LIKELIHOODS.values()],
        "guide": [f(prior, likelihood) for f in GUIDES.values()],
    }
    check_role = pv.models._composition.check_role
    for role, pieces in roles.items():
        for piece in pieces:
            check_role(role, piece)
            for other in roles.keys() - {role}:
                with pytest.raises(TypeError, match=f"the {other} must be an nn.Module"):
                    check_role(other, piece)
    guide = GUIDES["gaussian-encoder"](prior, likelihood)
    assert isinstance(guide, pv.Prior)  # the attributes alone do not tell the roles apart ...
    with pytest.raises(TypeError, match=r"the prior must be an nn\.Module with latent_dim"):
        pv.VAE(guide, likelihood, GUIDES["gaussian-encoder"](prior, likelihood))  # ... the VAE does
    with pytest.raises(TypeError, match=r"the prior must be an nn\.Module with latent_dim"):
        pv.VAE(torch.nn.Linear(2, 2), likelihood, GUIDES["per-datapoint"](prior, likelihood))
    with pytest.raises(TypeError, match=r"the likelihood must be an nn\.Module with event_shape"):
        pv.VAE(prior, torch.nn.Linear(2, 2), GUIDES["per-datapoint"](prior, likelihood))


def grad_abs_sum(p: torch.Tensor) -> torch.Tensor:
    g = p.grad.coalesce().values() if p.grad.is_sparse else p.grad
    return g.abs().sum()


def test_prior_contract(prior):
    p = prior()
    assert p.event_shape == (D,)
    z = p(torch.Size((5,)))
    assert z.shape == (5, D)
    assert p.log_prob(z).shape == (5,)
    assert torch.isfinite(p.log_prob(torch.randn(4, 2, D))).all()


def test_likelihood_contract(likelihood):
    z = torch.randn(4, B, D)
    p = likelihood(z)
    assert p.batch_shape == (4, B) and p.event_shape == (F,)
    assert p.log_prob(torch.rand(B, F).round()).shape == (4, B)
    assert p.mean.shape == (4, B, F)


def test_guide_contract(guide):
    x, idx = make_batch()
    q = guide(x, idx)
    assert q.batch_shape == (B,) and q.event_shape == (D,)
    assert q.has_rsample
    z = q()  # Pyro draws reparameterized samples when has_rsample (ZukoToPyro has no rsample)
    assert z.shape == (B, D) and z.requires_grad
    z.square().sum().backward()  # reparameterized: the sample is a function of the parameters
    assert all(p.grad is not None and grad_abs_sum(p) > 0 for p in guide.parameters())


@pytest.mark.parametrize("prior_name,likelihood_name,guide_name", COMBINATIONS)
def test_vae_contract(prior_name, likelihood_name, guide_name):
    vae = build(prior_name, likelihood_name, guide_name)
    x, idx = make_batch()

    # The model and guide are ordinary Pyro programs with the documented sites and plate.
    guide_tr = poutine.trace(vae.guide).get_trace(x, idx, num_data=N)
    model_tr = poutine.trace(poutine.replay(vae.model, trace=guide_tr)).get_trace(
        x, idx, num_data=N
    )
    assert model_tr.nodes["x"]["is_observed"] and not model_tr.nodes["z"]["is_observed"]
    assert model_tr.nodes["z"]["value"] is guide_tr.nodes["z"]["value"]
    for tr in (model_tr, guide_tr):
        assert tr.nodes["z"]["scale"] == N / B
        assert [f.name for f in tr.nodes["z"]["cond_indep_stack"]] == ["data"]

    # Finite loss, and its gradient reaches every parameter of every module.
    loss = Trace_ELBO().differentiable_loss(vae.model, vae.guide, x, idx, num_data=N)
    assert torch.isfinite(loss)
    loss.backward()
    for name, p in vae.named_parameters():
        assert p.grad is not None and torch.isfinite(grad_abs_sum(p)), name
        assert grad_abs_sum(p) > 0, name
    store_names = set(pyro.get_param_store().keys())
    assert {n.split("$$$")[0] for n in store_names} <= {"vae.prior", "vae.likelihood", "vae.guide"}

    # Shapes of the helpers.
    assert vae.sample(5).shape == (5, F)
    assert vae.reconstruct(x).shape == x.shape
    assert pv.log_weights(vae.model, vae.guide, x, idx, num_particles=7).shape == (7, B)


@pytest.mark.parametrize("prior_name,likelihood_name,guide_name", COMBINATIONS)
def test_save_load_round_trip(prior_name, likelihood_name, guide_name):
    vae = build(prior_name, likelihood_name, guide_name)
    x, idx = make_batch()
    buffer = io.BytesIO()
    torch.save(vae.state_dict(), buffer)

    torch.manual_seed(123)
    other = build(prior_name, likelihood_name, guide_name)  # other initial weights ...
    assert any((p != q).any() for p, q in zip(vae.parameters(), other.parameters(), strict=True))
    buffer.seek(0)
    other.load_state_dict(torch.load(buffer))  # ... until the saved ones are loaded

    pyro.set_rng_seed(1)
    a = pv.log_weights(vae.model, vae.guide, x, idx, num_particles=3)
    pyro.clear_param_store()
    pyro.set_rng_seed(1)
    b = pv.log_weights(other.model, other.guide, x, idx, num_particles=3)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_every_export_is_in_a_group():
    """The package docstring lists the flat namespace by subpackage: each exported name appears
    there exactly once, under the subpackage that holds it, and nothing else is listed."""
    groups = pv.__doc__.split("bottom up")[1].split("\n* ")[1:]
    listed = []
    for group in groups:
        package = re.match(r":mod:`pyro_vae\.(\w+)`", group).group(1)
        names = re.findall(r":(?:class|func):`(\w+)`", group)
        assert all(name in getattr(pv, package).__all__ for name in names), (package, names)
        listed += names
    assert sorted(listed) == sorted(pv.__all__)  # (the subpackages: attributes, not in it)
