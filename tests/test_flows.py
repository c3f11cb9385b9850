"""Flow guides: exact log-densities (against autograd Jacobians), invertible planar maps, and
a better fit than a Gaussian guide where the posterior is not Gaussian."""

from __future__ import annotations

import pyro
import pytest
import torch
import zuko
from pyro.distributions.transforms import ComposeTransform
from torch import nn
from torch.autograd.functional import jacobian

import pyro_vae as pv

D, F, H = 3, 5, 8


def make(name: str) -> nn.Module:
    enc = pv.MLP(F, H, (16,))
    if name == "planar":
        return pv.PlanarEncoder(enc, H, D, flows=4)
    if name == "iaf":
        return pv.IAFEncoder(enc, H, D, flows=2, hidden_features=(16,))
    if name == "iaf-affine":
        return pv.IAFEncoder(enc, H, D, flows=2, hidden_features=(16,), stable=False)
    if name == "nsf":
        return pv.ZukoFlowEncoder(enc, zuko.flows.NSF(D, context=H, transforms=2))
    if name == "maf":
        return pv.ZukoFlowEncoder(enc, zuko.flows.MAF(D, context=H, transforms=2))
    raise ValueError(name)


FLOWS = ["planar", "iaf", "iaf-affine", "nsf", "maf"]


def sample_with_map(q, x):
    """Draws z = f(z0) as the guide does; returns z, z0, the base and the map f (one point)."""
    if isinstance(q, pyro.distributions.TransformedDistribution):
        base = q.base_dist
        f = ComposeTransform(q.transforms)
        z0 = base.rsample()
        return f(z0), z0, base, f
    flow = q.dist  # ZukoToPyro(NormalizingFlow): sampling maps base draws through transform.inv
    z = q()
    z0 = flow.transform(z)
    return z, z0, flow.base, flow.transform.inv


@pytest.mark.parametrize("name", FLOWS)
def test_log_density_matches_autograd_jacobian(name):
    torch.manual_seed(0)
    guide = make(name).double()
    with torch.no_grad():  # make the maps far from the identity
        for p in guide.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.rand(1, F, dtype=torch.float64)
    q = guide(x)
    z, z0, base, f = sample_with_map(q, x)
    log_q = q.log_prob(z)  # from the forward pass's cache
    jac = jacobian(lambda v: f(v.unsqueeze(0)).squeeze(0), z0.squeeze(0).detach())
    expected = base.log_prob(z0) - torch.linalg.slogdet(jac)[1]
    torch.testing.assert_close(log_q, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(f(z0), z, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["nsf", "maf"])
def test_zuko_guides_score_their_samples_from_the_cache(name):
    q = make(name)(torch.rand(4, F))
    z = q()
    assert z in q.cache  # ZukoToPyro kept zuko's rsample_and_log_prob density
    fresh = q.dist.log_prob(z)  # the same density through the (slow) inverse
    torch.testing.assert_close(q.log_prob(z), fresh, rtol=1e-4, atol=1e-4)


def test_planar_maps_stay_invertible_for_any_encoder_output():
    torch.manual_seed(0)
    guide = pv.PlanarEncoder(pv.MLP(F, H, (16,)), H, D, flows=3).double()
    with torch.no_grad():  # adversarial encoder outputs: huge u, w, b of any sign
        for p in guide.transforms.parameters():
            p.copy_(50 * torch.randn_like(p))
    x = torch.randn(64, F, dtype=torch.float64)
    q = guide(x)
    for t in q.transforms:
        _, u, w = t._params()
        u_hat = t.u_hat(u, w)
        assert ((w * u_hat).sum(-1) >= -1 - 1e-9).all()
    f = ComposeTransform(q.transforms)
    z0 = q.base_dist.sample()
    for i in range(8):  # det of the Jacobian of the whole map is positive at every point
        jac = jacobian(
            lambda v, i=i: f(torch.where(torch.arange(64)[:, None] == i, v, z0))[i], z0[i]
        )
        assert torch.linalg.det(jac) > 0
