"""The compiled step (``fit(compile=True)``): the derived estimator is exactly
TensorTrace_ELBO's (every zoo model and every combination of the contract matrix, float64, the
same noise), the once-only check refuses a derivation that disagrees, what cannot be compiled
stays eager with one warning, and a compiled run follows the eager one (3 epochs, β warm-up, a
smaller last batch; variational EM; exact resume)."""

from __future__ import annotations

import warnings

import pyro
import pytest
import torch
import torch._dynamo
import torch._inductor.config
import zuko
from helpers import (
    COMBINATIONS,
    ZOO,
    DeltaPair,
    N,
    bernoulli_vae,
    build,
    data_for,
    generator,
    grouped,
    here,
)

import pyro_vae as pv
from pyro_vae.models import zoo
from pyro_vae.train._derived import compile_mode
from pyro_vae.train.step import Step

B = 8


def _pyro_and_derived(vae: pv.VAE, x, idx, beta: float = 1.0, particles: int = 1):
    """Both losses and their gradients in every parameter, with the same random numbers
    (``particles`` > 1: the importance-weighted bound)."""
    params = [p for p in vae.parameters() if p.requires_grad]
    if particles > 1:
        loss = pv.ImportanceWeightedELBO(particles, max_plate_nesting=1)
    else:
        loss = pv.TensorTrace_ELBO()
    with torch.random.fork_rng():
        torch.manual_seed(1)
        with pv.LatentScale(beta):
            pyro_loss = loss.differentiable_loss(vae.model, vae.guide, x, idx, num_data=N)
        torch.manual_seed(1)
        derived = vae.elbo_loss(x, idx, num_data=N, beta=beta, num_particles=particles)
    grads = [torch.autograd.grad(v, params, allow_unused=True) for v in (pyro_loss, derived)]
    return (pyro_loss, derived), grads


def _assert_same(vae, x, idx, beta: float = 1.0, particles: int = 1, rtol: float = 1e-9) -> None:
    (pyro_loss, derived), (want, got) = _pyro_and_derived(vae, x, idx, beta, particles)
    assert derived.item() == pytest.approx(pyro_loss.item(), rel=rtol)
    dense = [(a, b) if a is None else tuple(g.to_dense() for g in (a, b)) for a, b in zip(
        want, got, strict=True)]  # fmt: skip
    scale = max(a.norm() for a, _ in dense if a is not None)  # (a gradient that cancels to ~0
    for a, b in dense:  # differs relatively in its rounding: norms against the largest one)
        assert (a is None) == (b is None)
        if a is not None:
            assert (b - a).norm() <= rtol * scale


@pytest.mark.parametrize("particles", [1, 3])
@pytest.mark.parametrize("name", list(ZOO))
def test_derived_estimator_on_every_zoo_model(name, particles):
    """The ELBO and the importance-weighted bound (K = 3), value and every gradient."""
    torch.manual_seed(0)
    vae = ZOO[name]().double()
    x = torch.rand(B, *vae.event_shape, dtype=torch.float64).round()
    if name.startswith("circle"):
        x = torch.randn(B, 2, dtype=torch.float64)
    _assert_same(vae, x, torch.randperm(N)[:B], beta=0.7, particles=particles)


@pytest.mark.parametrize(("prior", "likelihood", "guide"), COMBINATIONS)
def test_derived_estimator_on_the_contract_matrix(prior, likelihood, guide):
    vae = build(prior, likelihood, guide).double()
    x = data_for(likelihood, B, *vae.event_shape, dtype=torch.float64)
    _assert_same(vae, x, torch.randperm(N)[:B])
    _assert_same(vae, x, torch.randperm(N)[:B], particles=2)


@pytest.mark.parametrize(
    "flow",
    [
        lambda: zuko.flows.MAF(5, transforms=3, hidden_features=(16, 16)),
        lambda: zuko.flows.NSF(5, transforms=2, hidden_features=(16,)),
        lambda: zuko.flows.MAF(5, transforms=1),
    ],
)
def test_flow_prior_log_prob_is_zukos(flow):
    prior = pv.FlowPrior(flow()).double()
    z = torch.randn(7, 5, dtype=torch.float64)
    torch.testing.assert_close(prior.log_prob(z), prior().log_prob(z), rtol=1e-12, atol=1e-12)


def _local_hierarchy() -> pv.HierarchicalVAE:
    """Per-datapoint guides in a two-layer VAE: not compiled (only a one-layer VAE's is)."""
    vae = zoo.iwae_vae(layers=2)
    dims = [g.latent_dim for g in vae.guide_layers()]
    return vae.with_guide([pv.PerDatapointGaussian(32, d) for d in dims], name="local")


class OwnModel(pv.VAE):
    def model(self, x, idx=None, *, num_data=None):
        super().model(x, idx, num_data=num_data)
        pyro.factor("extra", torch.zeros(()))


def _fit(vae_or_pair, data, **options):
    model, guide = vae_or_pair.model, vae_or_pair.guide
    return pv.fit(
        model,
        guide,
        data,
        epochs=2,
        **grouped(device=here(), progress=False, **options),
    )


@pytest.mark.parametrize(
    ("make", "options", "reason"),
    [
        (DeltaPair, dict, "not one pv.VAE's"),
        (bernoulli_vae, lambda: {"loss": pyro.infer.Trace_ELBO(num_particles=2)}, "no compiled"),
        (bernoulli_vae, lambda: {"loss": pyro.infer.TraceMeanField_ELBO()}, "no compiled"),
        (_local_hierarchy, lambda: {"optim": pv.LazyAdam({"lr": 1e-2})}, "row-sparse"),
        (lambda: OwnModel(*bernoulli_vae().children()), dict, "writes its own model"),
        # torch.compile cannot capture it: autograd inside the guide's forward pass
        (lambda: zoo.circle_vae("semi-amortized", num_data=32), dict, "failed"),
    ],
)
def test_what_cannot_be_compiled_stays_eager_with_one_warning(make, options, reason):
    """The same run as without compile=True (a loss object is made for each run: Pyro's
    guess of max_plate_nesting draws random numbers once per object)."""
    runs = []
    for compile in (False, True):
        pyro.clear_param_store()
        torch.manual_seed(0)
        pair = make()
        features = 2 if isinstance(pair, DeltaPair) else pair.event_shape[0]  # (784: rounded)
        data = pv.Batches(torch.rand(32, features).round(), batch_size=8)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            runs.append(_fit(pair, data, compile=compile, **options()).loss)
        mine = [str(w.message) for w in caught if "compile=True" in str(w.message)]
        assert len(mine) == (1 if compile else 0)
    assert reason in mine[0] and "eager step" in mine[0]
    assert runs[0] == runs[1]


def _wrong(vae: pv.VAE, *, value: bool) -> None:
    """Plants a derivation that is wrong in its value (β ignored) or in one gradient only."""
    right = vae.elbo_loss
    p = next(vae.likelihood.parameters())

    def elbo_loss(x, idx=None, *, num_data=None, beta=1.0, num_particles=1):
        loss = right(x, idx, num_data=num_data, beta=1.0 if value else beta)
        return loss if value else loss + (p.sum() - p.sum().detach())

    vae.elbo_loss = elbo_loss


@pytest.mark.parametrize(
    ("value", "says"), [(True, "derived estimator gives"), (False, "gradient")]
)
def test_a_derivation_that_disagrees_is_refused(value, says):
    """Positive controls for the once-only check: a wrong value, a wrong gradient."""
    vae = bernoulli_vae()
    _wrong(vae, value=value)
    data = pv.Batches(torch.rand(32, 6).round(), batch_size=8)
    with pytest.warns(UserWarning, match=says):
        _fit(vae, data, compile=True, beta=0.5)


@pytest.fixture
def pinned_noise():
    """Inductor draws with torch's own random ops: the compiled and the eager step see the
    same noise, so their runs agree to float rounding."""
    torch._dynamo.reset()
    with torch._inductor.config.patch(fallback_random=True):
        yield
    torch._dynamo.reset()


def _compare_runs(make, data, epochs, lazy=None, mode=True, make_loss=None, **options):
    runs, params = [], []
    for compile in (False, mode):
        pyro.clear_param_store()
        torch.manual_seed(0)
        vae = make()
        if make_loss is not None:  # a loss of each run's own (Pyro's keep what they guessed)
            options["loss"] = make_loss()
        if lazy is not None:  # a LazyAdam of each run's own
            options["optim"] = pv.LazyAdam(lazy["optim_args"], local_lr=lazy["local_lr"])
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no fallback
            history = pv.fit(vae.model, vae.guide, data, epochs=epochs,
                             **grouped(device=here(), progress=False, compile=compile,
                                       **options))  # fmt: skip
        runs.append(history.loss)
        params.append([p.detach().clone() for p in vae.parameters()])
    assert runs[1] == pytest.approx(runs[0], rel=1e-5)
    for a, b in zip(*params, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


@pytest.mark.slow_compile
def test_compiled_fit_follows_eager(pinned_noise):
    """3 epochs with a β warm-up (a tensor: no recompile) and a smaller last batch (one more
    graph): the losses and the trained weights agree; at most 3 graphs were compiled."""
    data = pv.Batches(torch.rand(100, 6, generator=generator(1)).round(),
                      batch_size=32)  # fmt: skip
    torch._dynamo.utils.counters.clear()
    _compare_runs(bernoulli_vae, data, 3, beta=lambda e: min(1.0, e / 2))
    # the loss for the full batches and for the last one, Adam's step: no graph per β
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] <= 3
    # variational EM: E-steps (the guide's parameters) and M-steps (the model's) alike
    _compare_runs(bernoulli_vae, data, 2, e_steps=2)
    # the importance-weighted bound, at its default max_plate_nesting (Pyro's guess runs the
    # pair before the check's common random numbers; before, the check failed and blamed
    # "the VAE's pieces")
    _compare_runs(bernoulli_vae, data, 2, make_loss=lambda: pv.ImportanceWeightedELBO(3))


@pytest.mark.slow_compile
@pytest.mark.parametrize("posterior", ["iaf", "nsf"])
def test_compiled_flow_guides_follow_eager(pinned_noise, posterior):
    """The IAF guide (Pyro's affine autoregressive maps, conditioned without a
    ``functools.partial`` attribute) and a zuko flow guide (a composed transform without
    zuko's argument assertion) compile with no fallback and follow the eager run."""
    data = pv.Batches(torch.rand(24, 784, generator=generator(1)).round(),
                      batch_size=10)  # fmt: skip

    def make() -> pv.VAE:
        return zoo.flow_posterior_vae(posterior, flows=2, latent_dim=3, hidden=8)

    _compare_runs(make, data, 2)


@pytest.mark.slow_compile
def test_the_cuda_graph_mode_runs_on_the_cpu(pinned_noise):
    """``compile="reduce-overhead"`` on the CPU: inductor runs the same graphs without CUDA
    graphs (there are none on a CPU), and the run follows eager."""
    data = pv.Batches(torch.rand(40, 6, generator=generator(1)).round(),
                      batch_size=16)  # fmt: skip
    _compare_runs(bernoulli_vae, data, 2, mode="reduce-overhead")


def test_compile_takes_torch_compile_modes_and_refuses_others():
    assert compile_mode(True) == "default" and compile_mode(False) is None
    assert compile_mode("reduce-overhead") == "reduce-overhead"
    data = pv.Batches(torch.rand(16, 6).round(), batch_size=8)
    for wrong in ("fast", 1):
        with pytest.raises(ValueError, match=r"not a torch\.compile mode.*reduce-overhead"):
            _fit(bernoulli_vae(), data, compile=wrong)
    pair = DeltaPair()  # (no derived estimator: the warning names the option as it was given)
    with pytest.warns(UserWarning, match="compile='reduce-overhead': the model and guide"):
        _fit(pair, pv.Batches(torch.rand(16, 2), batch_size=8), compile="reduce-overhead")


@pytest.mark.host_default("compares storages by data_ptr(), which stand-in tensors lack")
def test_the_cuda_graph_mode_reaches_torch_compile(monkeypatch):
    """``compile="reduce-overhead"``: the loss (one graph) and Adam's step are compiled in
    that mode, every step is marked as a new CUDA-graph step, and the loss returned is a copy
    (a CUDA graph's output buffer is overwritten by its next replay). ``torch.compile`` is
    replaced by a recorder that runs the functions as they are."""
    calls, outputs, marks = [], [], []

    def recorder(fn, **options):
        calls.append(options)

        def run(*args, **kwargs):
            outputs.append(fn(*args, **kwargs))
            return outputs[-1]

        return run

    monkeypatch.setattr(torch, "compile", recorder)
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    vae = bernoulli_vae()
    step = Step(vae.model, vae.guide, pv.LazyAdam({"lr": 1e-2}), pv.TensorTrace_ELBO(),
                num_data=32, device=here(), dtype=torch.float32, compile="reduce-overhead",
                modules=vae)  # fmt: skip
    x, idx = torch.rand(8, 6).round(), torch.arange(8)
    losses = [step(x, idx) for _ in range(3)]
    assert step.compiled is not None
    assert [c["mode"] for c in calls] == ["reduce-overhead"] * 2  # the loss, Adam's step
    assert calls[0]["fullgraph"]
    graph_losses = [out for out in outputs if isinstance(out, torch.Tensor)]
    assert len(marks) == len(graph_losses) == 3
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(losses, graph_losses, strict=True))
    assert not any(g.get("capturable") for g in step.optim._dense.param_groups)  # (the CPU)


@pytest.mark.slow_compile
def test_compiled_fit_resumes_exactly(tmp_path):
    """Inductor's own random numbers come from torch's generator: a run stopped after epoch 1
    and resumed by a new VAE with other weights (as a new process would) gives the
    uninterrupted run's losses and weights, bit for bit, with a smaller last batch (its own
    graph). Before: the weights differed by up to 6e-8 (the losses were compared only)."""
    data = pv.Batches(torch.rand(60, 6, generator=generator(1)).round(),
                      batch_size=16)  # fmt: skip
    losses, weights = [], []
    for stops in ([3], [1, 3]):
        folder = tmp_path / str(len(stops))
        for i, epochs in enumerate(stops):
            pyro.clear_param_store()
            torch.manual_seed(i)  # the resumed run: other initial weights, other RNG state
            vae = bernoulli_vae()
            history = pv.fit(
                vae.model,
                vae.guide,
                data,
                epochs=epochs,
                device=pv.Compute("cpu", compile=True),
                log=False,
                save=pv.Checkpoints(folder, resume=True),
            )
        losses.append(history.loss)
        weights.append(vae.state_dict())
    assert losses[0] == losses[1]
    for name, value in weights[0].items():
        assert torch.equal(value, weights[1][name]), name


@pytest.mark.slow_compile
def test_runs_in_one_process_each_compile():
    """Dynamo counts recompiles per code object: before, every run's ``VAE.elbo_loss`` and
    ``Adam.step`` shared one count, and from the 9th ``fit(compile=True)`` in a process
    nothing compiled, with a log line only. Each run now compiles code of its own (shown with
    a recompile limit of 1: three runs, no fallback); a run that does reach the limit says so
    in fit's warning."""
    with torch._dynamo.config.patch(recompile_limit=1):
        data = pv.Batches(torch.rand(32, 6).round(), batch_size=16)  # (no smaller last batch)
        counters = torch._dynamo.utils.counters
        for _ in range(3):
            before = counters["stats"]["unique_graphs"]
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # no fallback
                _fit(bernoulli_vae(), data, compile=True)
            assert counters["stats"]["unique_graphs"] == before + 2  # the loss, Adam's step
        ragged = pv.Batches(torch.rand(40, 6).round(), batch_size=16)  # a second graph: the limit
        with pytest.warns(UserWarning, match=r"recompile limit .*= 1\) is reached.*raise it"):
            _fit(bernoulli_vae(), ragged, compile=True)
    assert torch._dynamo.config.fail_on_recompile_limit_hit is False  # (put back)


def test_the_check_accepts_batchnorm_and_trains_nothing():
    """A convolution's bias before a BatchNorm has a gradient that cancels to rounding noise
    on both sides: the check compares it against the largest gradient too. The check runs
    in eval mode, so the running statistics stay as they were."""
    from pyro_vae.train._derived import compiled_loss

    torch.manual_seed(0)
    vae = zoo.conv_vae(latent_dim=4)
    x, idx = torch.rand(B, *vae.event_shape).round(), torch.arange(B)
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compiled, _ = compiled_loss(vae.model, vae.guide, pv.TensorTrace_ELBO(), x, idx,
                                    num_data=N)  # fmt: skip
    assert compiled is not None  # (torch.compile compiles at the first call: not here)
    assert all(torch.equal(v, vae.state_dict()[k]) for k, v in before.items())
    assert vae.training  # the mode as found


@pytest.mark.slow_compile
def test_compiled_per_datapoint_guide(pinned_noise):
    """A per-datapoint guide's rows are read outside the graph: variational EM follows the
    eager run, and LazyAdam leaves the rows outside the batch bit-identical."""
    data = pv.Batches(torch.rand(40, 6, generator=generator(1)).round(),
                      batch_size=16)  # fmt: skip

    def make() -> pv.VAE:
        return bernoulli_vae(guide=pv.PerDatapointGaussian(40, 2, init_scale=0.5))

    optim = {"optim_args": {"lr": 1e-2}, "local_lr": 0.1}
    _compare_runs(make, data, 2, e_steps=1, optim=None, lazy=optim)
    vae = make()
    optim = pv.LazyAdam({"lr": 1e-2})
    step = Step(vae.model, vae.guide, optim, pv.TensorTrace_ELBO(), num_data=40, device=here(),
                dtype=torch.float32, compile=True, modules=vae)  # fmt: skip
    before = vae.variational.loc.detach().clone()
    idx = torch.tensor([3, 7, 11, 20])
    for _ in range(3):  # the first step checks and compiles, the others run the graphs
        step(data.data[idx], idx)
    assert step.compiled is not None
    after = vae.variational.loc.detach()
    outside = torch.ones(40, dtype=torch.bool)
    outside[idx] = False
    assert torch.equal(after[outside], before[outside])
    assert (after[idx] != before[idx]).all()


@pytest.mark.slow_compile
@pytest.mark.parametrize("likelihood", ["zinb", "multinomial", "discretized-logistic"])
def test_compiled_count_and_8bit_likelihoods_follow_eager(pinned_noise, likelihood):
    """The likelihoods of counts (a size factor read from the data, the zero-inflation) and of
    8-bit values (a mixture) compile with no fallback and follow the eager run."""
    data = pv.Batches(data_for(likelihood, 40, 6), batch_size=16)
    _compare_runs(lambda: build("normal", likelihood, "gaussian-encoder"), data, 2)
