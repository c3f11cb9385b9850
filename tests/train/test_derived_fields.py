"""The derived estimator of the models whose batches carry fields: ConditionalVAE (the ELBO and
the importance-weighted bound, conditional or plain prior, a mask) and SemiSupervisedVAE (the
enumerated label summed exactly, as TraceEnum_ELBO sums it) give Pyro's loss and every gradient
with the same noise (float64); fit takes them by default (M2 with the enumerating loss), a
compiled run follows the eager one, and a loss they do not match is refused with a reason."""

from __future__ import annotations

import warnings

import pyro
import pytest
import torch
import torch._dynamo
import torch._inductor.config
from helpers import generator, grouped, here
from pyro.infer import Trace_ELBO, TraceEnum_ELBO
from torch import nn

import pyro_vae as pv
from pyro_vae.train._derivation import check_derivation, default_loss

B, N, F, C, D, K = 8, 40, 6, 3, 2, 3


def m2(alpha: float = 0.0, dropout: float = 0.0, mlp: bool = True) -> pv.SemiSupervisedVAE:
    """``mlp``: the encoder an MLP (its first product split: x's taken once per point), else
    a Sequential of the same layers (the guide run as it is, on [x, onehot(k)])."""
    torch.manual_seed(0)
    classifier = nn.Sequential(nn.Linear(F, 5), nn.Dropout(dropout), nn.Tanh(), nn.Linear(5, K))
    encoder = pv.MLP(F + K, 2 * D, (5,))
    return pv.SemiSupervisedVAE(
        classifier,
        pv.BernoulliLikelihood(pv.MLP(D + K, F, (5,)), F),
        pv.GaussianEncoder(encoder if mlp else nn.Sequential(*encoder), D),
        num_classes=K,
        alpha=alpha,
    )


def cvae(prior: str = "conditional", mask: bool = False, decode: bool = True) -> pv.VAE:
    torch.manual_seed(0)
    p = pv.GaussianEncoder(pv.MLP(C, 2 * D), D) if prior == "conditional" else pv.MAFPrior(D)
    width = D + C if decode else D
    return pv.ConditionalVAE(p, pv.BernoulliLikelihood(pv.MLP(width, F, (5,)), F),
                             pv.GaussianEncoder(pv.MLP(F + C, 2 * D, (5,)), D),
                             mask="m" if mask else None, decode_condition=decode)  # fmt: skip


def m2_fields(known: str = "half", n: int = B) -> dict[str, torch.Tensor]:
    g = generator(3)
    y = torch.randint(0, K, (n,), generator=g)
    mask = {"half": torch.arange(n) % 2 == 0, "all": torch.ones(n, dtype=torch.bool),
            "none": torch.zeros(n, dtype=torch.bool)}[known]  # fmt: skip
    return {"y": torch.where(mask, y, -1), "y_mask": mask}


def cvae_fields(mask: bool, n: int = B) -> dict[str, torch.Tensor]:
    g = generator(4)
    fields = {"c": torch.randn(n, C, generator=g)}
    if mask:
        fields["m"] = torch.rand(n, F, generator=g) < 0.5
    return fields


def points(n: int = B) -> torch.Tensor:
    return torch.rand(n, F, generator=generator(2)).round()


def assert_same(vae, loss, fields, beta: float = 1.0, rtol: float = 1e-9) -> None:
    """Pyro's loss and the derived one, values and every gradient, same noise (float64)."""
    vae.double()
    x, idx = points().double(), torch.arange(3, 3 + B)
    fields = {k: v.double() if v.is_floating_point() else v for k, v in fields.items()}
    params = [p for p in vae.parameters() if p.requires_grad]
    K_ = loss.num_particles if isinstance(loss, pv.ImportanceWeightedELBO) else 1
    with torch.random.fork_rng():
        torch.manual_seed(1)
        with pv.LatentScale(beta):
            want = loss.differentiable_loss(vae.model, vae.guide, x, idx, num_data=N, **fields)
        torch.manual_seed(1)
        got = vae.elbo_loss(x, idx, num_data=N, beta=beta, num_particles=K_, **fields)
    assert got.item() == pytest.approx(want.item(), rel=rtol)
    wanted = torch.autograd.grad(want, params, allow_unused=True)
    gotten = torch.autograd.grad(got, params, allow_unused=True)
    top = max(g.norm() for g in wanted if g is not None)
    for p, a, b in zip(params, wanted, gotten, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            assert (b - a).norm() <= rtol * top, tuple(p.shape)


@pytest.mark.parametrize("mlp", [True, False], ids=["split-first-layer", "guide-as-is"])
@pytest.mark.parametrize("known", ["half", "all", "none"])
@pytest.mark.parametrize(("alpha", "beta"), [(0.0, 1.0), (0.5, 1.0), (0.5, 0.3)])
def test_m2_derived_estimator_is_trace_enum_elbo(known, alpha, beta, mlp):
    """The unknown labels summed out, the known ones observed, the auxiliary term, β on the
    latent sites (the enumerated label's too)."""
    assert_same(m2(alpha, mlp=mlp), TraceEnum_ELBO(max_plate_nesting=1), m2_fields(known), beta)


@pytest.mark.parametrize("particles", [1, 3])
@pytest.mark.parametrize(
    ("prior", "mask", "decode"),
    [("conditional", False, True), ("conditional", True, True), ("flow", False, False)],
)
def test_cvae_derived_estimator_is_pyros(prior, mask, decode, particles):
    loss = pv.ImportanceWeightedELBO(particles, max_plate_nesting=1) if particles > 1 else (
        pv.TensorTrace_ELBO())  # fmt: skip
    assert_same(cvae(prior, mask, decode), loss, cvae_fields(mask), beta=0.7)


def test_m2_under_dropout_draws_as_pyro_draws():
    """The classifier's dropout masks are drawn where Pyro's guide and model draw them (the
    classifier runs twice with α > 0): in train mode the two losses still agree."""
    vae = m2(alpha=0.5, dropout=0.3).train()
    assert_same(vae, TraceEnum_ELBO(max_plate_nesting=1), m2_fields())


def test_the_loss_fit_takes_by_default():
    """The enumerating loss where a site is marked for enumeration; TensorTrace_ELBO else."""
    loss = default_loss(m2().model, m2().guide, points(), m2_fields(), num_data=B)
    assert type(loss) is TraceEnum_ELBO and loss.max_plate_nesting == 1
    vae = cvae()
    loss = default_loss(vae.model, vae.guide, points(), cvae_fields(False), num_data=B)
    assert type(loss) is pv.TensorTrace_ELBO


def test_a_loss_the_estimator_does_not_match_is_refused():
    """Trace_ELBO samples M2's unknown label: its value is not the enumerated sum, and the
    once-only check says so (the run keeps Pyro's loss)."""
    vae = m2()
    _, reason = check_derivation(vae.model, vae.guide, Trace_ELBO(), points(), torch.arange(B),
                                 num_data=N, fields=m2_fields())  # fmt: skip
    assert reason is not None and "derived estimator gives" in reason
    _, reason = check_derivation(vae.model, vae.guide, TraceEnum_ELBO(max_plate_nesting=1),
                                 points(), torch.arange(B), num_data=N,
                                 fields=m2_fields())  # fmt: skip
    assert reason is None


def train(make, fields, loss=None, **options):
    pyro.clear_param_store()
    vae = make()
    data = pv.Batches(points(N), batch_size=16, **fields)
    pyro.set_rng_seed(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (no fallback, no sampled enumeration)
        options = grouped(device=here(), progress=False, loss=loss, **options)
        history = pv.fit(vae.model, vae.guide, data, epochs=2, **options)
    return vae, history


@pytest.mark.parametrize("model", ["m2", "cvae"])
def test_fit_takes_the_derived_estimator_and_follows_pyros_loss(pyro_steps, model):
    make, fields = (lambda: m2(alpha=0.5), m2_fields(n=N)) if model == "m2" else (
        lambda: cvae(mask=True), cvae_fields(True, n=N))  # fmt: skip
    derived, history = train(make, fields)
    assert not pyro_steps  # the default: no step through Pyro's tracing
    loss = TraceEnum_ELBO(max_plate_nesting=1) if model == "m2" else pv.TensorTrace_ELBO()
    reference, expected = train(make, fields, loss=loss)
    assert pyro_steps  # asked for: Pyro's loss in every step
    assert history.loss == pytest.approx(expected.loss, rel=1e-5)
    for (name, a), b in zip(derived.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


@pytest.fixture
def pinned_noise():
    """Inductor draws with torch's own random ops: compiled and eager see the same noise."""
    torch._dynamo.reset()
    with torch._inductor.config.patch(fallback_random=True):
        yield
    torch._dynamo.reset()


@pytest.mark.slow_compile
@pytest.mark.parametrize("model", ["m2", "cvae"])
def test_compiled_runs_follow_eager(pinned_noise, model):
    """compile=True with fields (the enumerated dimension a static one), β < 1: the losses
    and the trained weights agree with the eager derived run's."""
    make, fields = (lambda: m2(alpha=0.5), m2_fields(n=N)) if model == "m2" else (
        lambda: cvae(mask=True), cvae_fields(True, n=N))  # fmt: skip
    eager, a = train(make, fields, beta=0.5)
    compiled, b = train(make, fields, beta=0.5, compile=True)
    assert b.loss == pytest.approx(a.loss, rel=1e-5)
    for p, q in zip(eager.parameters(), compiled.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-6)


def test_an_m2_run_resumes_exactly_on_its_derived_step(tmp_path, pyro_steps):
    """The checkpoint records the derived step; the resumed run takes it again and continues
    as the uninterrupted run (the same losses and weights, bit for bit)."""
    fields = m2_fields(n=N)

    def run(folder, epochs, resume=False):
        pyro.clear_param_store()
        vae = m2(alpha=0.5)
        data = pv.Batches(points(N), batch_size=16, **fields)
        pyro.set_rng_seed(1)
        save = pv.Checkpoints(folder, resume=resume)
        history = pv.fit(vae.model, vae.guide, data, epochs=epochs, device=here(), save=save,
                         log=False)  # fmt: skip
        return vae, history

    straight, expected = run(tmp_path / "a", 3)
    run(tmp_path / "b", 2)
    resumed, history = run(tmp_path / "b", 3, resume=True)
    assert not pyro_steps  # every step on the derived estimator, before and after resuming
    assert history.loss == expected.loss
    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)


def test_pyros_completion_cvae_derived_estimator_is_pyros():
    """Pyro's CVAE (zoo.pyro_cvae's pieces): the prior reads the condition completed by a
    frozen baseline, the guide the point alone; the baseline gets no gradient."""
    from pyro_vae.models.completion import CompletionPrior

    torch.manual_seed(0)
    prior = CompletionPrior(pv.MLP(F, F, (5,)), pv.GaussianEncoder(pv.MLP(F, 2 * D), D))
    vae = pv.ConditionalVAE(prior, pv.BernoulliLikelihood(pv.MLP(D, F, (5,)), F),
                            pv.GaussianEncoder(pv.MLP(F, 2 * D, (5,)), D), mask="m",
                            decode_condition=False, encode_condition=False)  # fmt: skip
    unknown = torch.rand(B, F, generator=generator(5)) < 0.5
    fields = {"c": torch.where(unknown, -1.0, points()), "m": unknown}
    assert_same(vae, pv.TensorTrace_ELBO(), fields)
    x, idx = points().double(), torch.arange(B)
    fields = {"c": fields["c"].double(), "m": unknown}
    vae.elbo_loss(x, idx, num_data=N, **fields).backward()
    assert not list(prior.baseline.parameters())  # frozen: buffers, saved with the prior
    assert len(prior.baseline.state_dict()) == 4
    assert all(p.grad is not None for p in prior.prior.parameters())
