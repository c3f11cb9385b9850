"""CUDA: training, evaluation, sparse updates and checkpoints on the GPU (skipped without one).

Kept small: each test takes a fraction of a second on a GPU.
"""

from __future__ import annotations

import copy
import math

import pyro
import pytest
import torch
from helpers import assert_bf16_scoring_agrees, ppca
from pyro.infer import SVI, Trace_ELBO

import pyro_vae as pv

pytestmark = pytest.mark.cuda

DEVICE = torch.device("cuda")
D, F, N = 2, 6, 64

PRIORS = {
    "normal": lambda: pv.StandardNormalPrior(D),
    "maf": lambda: pv.MAFPrior(D, transforms=2, hidden_features=(16,)),
}
LIKELIHOODS = {
    "bernoulli": lambda: pv.BernoulliLikelihood(pv.MLP(D, F, (16,)), F),
    "gaussian-learned": lambda: pv.GaussianLikelihood(
        pv.MLP(D, F, (16,)), F, scale=0.5, learn_scale=True
    ),
}
GUIDES = {
    "encoder": lambda prior, lik: pv.GaussianEncoder(pv.MLP(F, 2 * D, (16,)), D),
    "per-datapoint": lambda prior, lik: pv.PerDatapointGaussian(N, D),
    "semi-amortized": lambda prior, lik: pv.SemiAmortizedGaussian(
        pv.GaussianEncoder(pv.MLP(F, 2 * D, (16,)), D), prior, lik, steps=2, lr=1e-2
    ),
}


def binary_data(n: int, features: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, features, generator=torch.Generator().manual_seed(seed)).round()


def on_device(module: torch.nn.Module, device: torch.device) -> bool:
    tensors = [*module.parameters(), *module.buffers()]
    return bool(tensors) and all(t.device.type == device.type for t in tensors)


def assert_matches_cpu(vae: pv.VAE, x: torch.Tensor, result: pv.Evaluation) -> None:
    """``evaluate``'s ELBO and log-likelihood (of ``vae`` on ``x``, on the GPU) agree with an
    independent CPU estimate from a copy of ``vae``: within 6 combined standard errors
    (per point: Var(log w)/K for the ELBO, ρ/K with ρ = Var(w)/E[w]² for log p(x)), plus 1e-3
    for float32 arithmetic."""
    cpu = copy.deepcopy(vae).cpu()
    cpu.name = "cpu"  # its own param-store names
    k = result.num_particles
    lw = pv.log_weights(cpu.model, cpu.guide, x.cpu(), torch.arange(len(x)), num_particles=k)
    ll = lw.logsumexp(0) - math.log(k)
    rho = (2 * (lw - ll)).exp().mean(0) - 1
    n = len(x)
    se_elbo = (lw.var(0) / k).sum().sqrt().item() / n
    se_ll = (rho / k).sum().sqrt().item() / n
    tol = 6 * math.sqrt(2)
    assert result.num_data == n
    assert abs(result.elbo - lw.mean().item()) < tol * se_elbo + 1e-3, (result, se_elbo)
    assert abs(result.log_likelihood - ll.mean().item()) < tol * se_ll + 1e-3, (result, se_ll)


@pytest.mark.parametrize("guide_name", list(GUIDES))
@pytest.mark.parametrize("likelihood_name", list(LIKELIHOODS))
@pytest.mark.parametrize("prior_name", list(PRIORS))
def test_one_training_step_and_one_evaluation_on_cuda(prior_name, likelihood_name, guide_name):
    prior, likelihood = PRIORS[prior_name](), LIKELIHOODS[likelihood_name]()
    vae = pv.VAE(prior, likelihood, GUIDES[guide_name](prior, likelihood))
    before = {k: v.detach().clone() for k, v in vae.named_parameters()}
    x = binary_data(N, F)
    data = pv.Batches(x, batch_size=N)  # one batch: one step
    history = pv.fit(vae.model, vae.guide, data, epochs=1, device=DEVICE, log=False)
    assert len(history.loss) == 1 and math.isfinite(history.loss[0])
    assert on_device(vae, DEVICE)
    after = dict(vae.named_parameters())
    for role in ("prior", "likelihood", "variational"):  # the step reached every role
        names = [k for k in before if k.startswith(f"{role}.")]
        if names:
            assert any(not torch.equal(after[k].detach().cpu(), before[k]) for k in names), role

    result = pv.evaluate(vae.model, vae.guide, data.to(DEVICE), num_particles=256)
    assert_matches_cpu(vae, x, result)


def test_fit_and_evaluate_on_cuda():
    vae = pv.VAE(
        pv.MAFPrior(4, transforms=2, hidden_features=(32, 32)),
        pv.BernoulliLikelihood(pv.MLP(4, 20, (32,)), 20),
        pv.GaussianEncoder(pv.MLP(20, 8, (32,)), 4),
    )
    data = pv.Batches(torch.rand(512, 20), batch_size=64, binarize="dynamic")
    history = pv.fit(vae.model, vae.guide, data, epochs=3, modules=vae, device=DEVICE, log=False)
    assert on_device(vae, DEVICE)
    assert history.loss[-1] < history.loss[0]
    x = binary_data(256, 20)
    result = pv.evaluate(vae.model, vae.guide, x.to(DEVICE), num_particles=500)
    assert_matches_cpu(vae, x, result)
    assert vae.sample(3).device.type == DEVICE.type


def test_evaluate_on_cuda_gives_the_exact_ppca_log_likelihood():
    """With the exact posterior as the guide every importance weight is p(x) (float64)."""
    vae, x, log_px, _ = ppca()
    vae.to(DEVICE)
    result = pv.evaluate(vae.model, vae.guide, x.to(DEVICE), num_particles=10)
    assert result.elbo == pytest.approx(log_px.mean().item(), abs=1e-10)
    assert result.log_likelihood == pytest.approx(log_px.mean().item(), abs=1e-10)


def test_lazy_adam_leaves_rows_outside_the_batch_bit_identical_on_cuda():
    n = 500
    x = pv.make_circle(n)[0].to(DEVICE)
    guide = pv.PerDatapointGaussian(n, 1)
    vae = pv.VAE(
        pv.StandardNormalPrior(1),
        pv.GaussianLikelihood(pv.MLP(1, 2, (16,)), 2, scale=0.1),
        guide,
    ).to(DEVICE)
    svi = SVI(vae.model, vae.guide, pv.LazyAdam({"lr": 0.1}), Trace_ELBO())
    a = torch.arange(0, 100, device=DEVICE)
    b = torch.arange(100, 200, device=DEVICE)
    svi.step(x[a], a, num_data=n)  # a's rows now carry Adam momentum
    assert guide.loc.grad.is_sparse and guide.loc.grad.device.type == DEVICE.type
    before = guide.loc.detach().clone(), guide.log_scale.detach().clone()
    for _ in range(3):
        svi.step(x[b], b, num_data=n)
    outside = torch.ones(n, dtype=torch.bool, device=DEVICE)
    outside[b] = False
    for p, q in zip(before, (guide.loc.detach(), guide.log_scale.detach()), strict=True):
        assert torch.equal(p[outside], q[outside])
        assert (p[b] != q[b]).all()


def test_checkpoint_written_on_cuda_resumes_on_the_cpu(tmp_path):
    data = pv.Batches(pv.make_circle(256)[0], batch_size=64)

    def run(device, epochs, resume):
        pyro.clear_param_store()
        torch.manual_seed(0)
        vae = pv.VAE(  # a per-datapoint guide: SparseAdam and Adam states in the checkpoint
            pv.StandardNormalPrior(1),
            pv.GaussianLikelihood(pv.MLP(1, 2, (16,)), 2, scale=0.1),
            pv.PerDatapointGaussian(256, 1),
        )
        history = pv.fit(
            vae.model,
            vae.guide,
            data,
            epochs=epochs,
            device=device,
            save=pv.Checkpoints(tmp_path, resume=resume),
            log=False,
        )
        return vae, history

    gpu_vae, gpu_history = run(DEVICE, 1, False)
    assert on_device(gpu_vae, DEVICE)
    trained = {k: v.detach().cpu().clone() for k, v in gpu_vae.state_dict().items()}
    # Resumed on the CPU with nothing left to train: exactly the GPU run's state.
    cpu_vae, history = run("cpu", 1, True)
    assert history == gpu_history
    assert on_device(cpu_vae, torch.device("cpu"))
    for name, value in cpu_vae.state_dict().items():
        torch.testing.assert_close(value, trained[name], rtol=0, atol=0, msg=name)
    # ... and it trains on from there on the CPU.
    cpu_vae, history = run("cpu", 2, True)
    assert history.epoch == [1, 2] and history.loss[0] == gpu_history.loss[0]
    assert math.isfinite(history.loss[1])
    assert on_device(cpu_vae, torch.device("cpu"))
    assert not torch.equal(cpu_vae.variational.loc.detach(), trained["variational.loc"])


def test_fit_without_modules_or_device_trains_the_vae_on_the_gpu():
    vae = pv.VAE(
        pv.MAFPrior(D, transforms=2, hidden_features=(16,)),
        pv.BernoulliLikelihood(pv.MLP(D, F, (16,)), F),
        pv.GaussianEncoder(pv.MLP(F, 2 * D, (16,)), D),
    )
    before = {k: v.detach().clone() for k, v in vae.named_parameters()}
    data = pv.Batches(binary_data(N, F), batch_size=32)  # on the CPU
    pv.fit(vae.model, vae.guide, data, epochs=1, log=False)  # no modules=, no device=
    assert pv.default_device().type == "cuda"
    assert on_device(vae, DEVICE)
    for name, p in vae.named_parameters():
        assert not torch.equal(p.detach().cpu(), before[name]), name


@pytest.mark.parametrize("mode", [True, "reduce-overhead"])
def test_compiled_fit_follows_eager_on_cuda(mode):
    """``fit(compile=...)`` on the GPU: inductor's Triton kernels, and with
    ``"reduce-overhead"`` CUDA graphs with a capturable Adam. The same noise (inductor draws
    with torch's random ops): the losses follow the eager run's, with no fallback."""
    import warnings

    import torch._dynamo
    import torch._inductor.config

    data = pv.Batches(binary_data(100, F), batch_size=32)  # (a smaller last batch)
    runs = []
    for compile in (False, mode):
        pyro.clear_param_store()
        torch.manual_seed(0)
        torch._dynamo.reset()
        vae = pv.VAE(PRIORS["maf"](), LIKELIHOODS["bernoulli"](), GUIDES["encoder"](None, None))
        optim = pv.LazyAdam({"lr": 1e-3})
        with (
            warnings.catch_warnings(record=True) as caught,
            torch._inductor.config.patch(fallback_random=True),
        ):
            warnings.simplefilter("always")
            history = pv.fit(
                vae.model,
                vae.guide,
                data,
                epochs=3,
                modules=vae,
                device=pv.Compute(DEVICE, compile=compile),
                optim=optim,
                log=False,
            )
        assert not [w for w in caught if "compile=" in str(w.message)]  # no fallback
        runs.append(history.loss)
        if compile == "reduce-overhead":
            assert all(group["capturable"] for group in optim._dense.param_groups)
    assert runs[1] == pytest.approx(runs[0], rel=1e-4)


@pytest.mark.parametrize("compile", [False, True])
def test_bf16_mixed_trains_and_scores_on_cuda(compile):
    """``precision="bf16-mixed"`` on the GPU (autocast "cuda"), eager and compiled: the loss
    follows float32's from the same start, a bfloat16 product really ran, and ``evaluate``
    in bf16-mixed agrees with float32 on the trained model (the same noise)."""
    import warnings

    data = pv.Batches(binary_data(128, F), batch_size=32)
    runs, seen = {}, []
    for precision in ("32", "bf16-mixed"):
        pyro.clear_param_store()
        torch.manual_seed(0)
        vae = pv.VAE(PRIORS["maf"](), LIKELIHOODS["bernoulli"](), GUIDES["encoder"](None, None))
        if not compile:  # (a hook with a side effect would stop fullgraph compiling)
            vae.variational.encoder.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            history = pv.fit(
                vae.model,
                vae.guide,
                data,
                epochs=3,
                device=pv.Compute(DEVICE, compile=compile, precision=precision),
                log=False,
            )
        assert not [w for w in caught if "compile=" in str(w.message)]  # no fallback
        runs[precision] = history.loss
    assert compile or (torch.bfloat16 in seen and torch.float32 in seen)
    assert runs["bf16-mixed"] == pytest.approx(runs["32"], abs=0.05)
    assert_bf16_scoring_agrees(vae, binary_data(128, F).to(DEVICE), num_particles=100)
