"""LazyAdam: its dense path is pyro.optim.Adam, and its sparse state survives a resume."""

from __future__ import annotations

import copy

import pyro
import pytest
import torch
from helpers import here
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO

import pyro_vae as pv

N, F, D, B = 96, 5, 2, 32


def settings(name: str) -> dict:
    """Per-parameter Adam settings, by normalized param-store name: three groups."""
    if name.startswith("vae.prior."):
        return {"lr": 3e-3, "betas": (0.8, 0.99), "weight_decay": 1e-3}
    if name.startswith("vae.likelihood."):
        return {"lr": 1e-2, "eps": 1e-6, "amsgrad": True}
    return {"lr": 5e-3}


def float64_vae() -> pv.VAE:
    return pv.VAE(
        pv.MAFPrior(D, transforms=2, hidden_features=(8,)),
        pv.GaussianLikelihood(pv.MLP(D, F, (8,)), F, scale=0.5, learn_scale=True),
        pv.GaussianEncoder(pv.MLP(F, 2 * D, (8,)), D),
    ).double()


def trajectory(optim_class, schedule: str, steps: int = 60):
    """Losses and all parameters after every step of SVI with ``optim_class(settings)``."""
    pyro.clear_param_store()
    torch.manual_seed(0)
    vae = float64_vae()
    x = torch.randn(N, F, dtype=torch.float64)
    optim = optim_class(settings)
    loss = Trace_ELBO()
    joint = SVI(vae.model, vae.guide, optim, loss)
    # Alternating steps update the guide's parameters, then the model's: the optimizer is
    # called with some of the parameters while the others hold (zeroed) gradients.
    e_step = SVI(poutine.block(vae.model, hide_types=["param"]), vae.guide, optim, loss)
    m_step = SVI(vae.model, poutine.block(vae.guide, hide_types=["param"]), optim, loss)
    pyro.set_rng_seed(1)
    losses, params = [], []
    for step in range(steps):
        idx = torch.randperm(N)[:B]
        svi = joint if schedule == "joint" else (e_step, m_step)[step % 2]
        losses.append(svi.step(x[idx], idx, num_data=N))
        params.append({k: v.detach().clone() for k, v in vae.named_parameters()})
    return losses, params, optim


@pytest.mark.parametrize("schedule", ["joint", "alternating"])
def test_lazy_adam_dense_path_equals_pyro_adam_step_for_step(schedule):
    ref_losses, ref_params, _ = trajectory(pyro.optim.Adam, schedule)
    losses, params, optim = trajectory(pv.LazyAdam, schedule)
    # The dense path was taken: one torch Adam, one parameter group per distinct setting.
    dense = {id(o): o for o in optim.optim_objs.values()}
    assert len(dense) == 1
    (adam,) = dense.values()
    assert type(adam) is torch.optim.Adam and len(adam.param_groups) == 3
    assert len(optim.optim_objs) == len(ref_params[0]) > 10
    for step, (a, b) in enumerate(zip(ref_params, params, strict=True)):
        assert ref_losses[step] == losses[step], step
        for name in a:
            torch.testing.assert_close(b[name], a[name], rtol=0, atol=0, msg=f"{step} {name}")
    # ... and the parameters moved: the comparison is not between two frozen runs.
    first, last = params[0], params[-1]
    assert all(not torch.equal(first[k], last[k]) for k in first)


def per_datapoint_run(save_dir, epochs: int, *, resume: bool = False, init_seed: int = 0):
    """A per-datapoint guide (SparseAdam state) and a network (dense Adam state) trained by fit."""
    x, _ = pv.make_circle(256)
    data = pv.Batches(x, batch_size=64)
    pyro.clear_param_store()
    torch.manual_seed(init_seed)
    vae = pv.VAE(
        pv.StandardNormalPrior(1),
        pv.GaussianLikelihood(pv.MLP(1, 2, (16,)), 2, scale=0.1),
        pv.PerDatapointGaussian(256, 1, init_scale=0.5 if init_seed else 1.0),
    )
    optim = pv.LazyAdam({"lr": 1e-2}, local_lr=5e-2)
    pyro.set_rng_seed(0)
    history = pv.fit(
        vae.model,
        vae.guide,
        data,
        epochs=epochs,
        optim=optim,
        device=here(),
        save=pv.Checkpoints(save_dir, resume=resume),
        log=False,
    )
    state = {  # the optimizer's state by parameter name, read while the names are registered
        name: {k: torch.as_tensor(v).clone() for k, v in per_param["state"].get(0, {}).items()}
        for name, per_param in optim.get_state().items()
    }
    return vae, history, optim, state


def test_resume_with_sparse_adam_state_is_exact(tmp_path):
    vae_a, hist_a, optim_a, state_a = per_datapoint_run(tmp_path / "a", epochs=3)
    per_datapoint_run(tmp_path / "b", epochs=1)
    # New objects with other initial values: the checkpoint must restore everything.
    vae_b, hist_b, _, state_b = per_datapoint_run(
        tmp_path / "b", epochs=3, resume=True, init_seed=7
    )
    kinds = {type(o).__name__ for o in optim_a.optim_objs.values()}
    assert kinds == {"RowSparseAdam", "Adam"}
    assert hist_b.epoch == [1, 2, 3]
    assert hist_a.loss == hist_b.loss
    a, b = vae_a.state_dict(), vae_b.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=0, msg=name)
    # The optimizers end in the same state too (moments and step counts, sparse and dense).
    assert state_a.keys() == state_b.keys()
    assert len(state_a) == len(list(vae_a.parameters()))
    for name in state_a:
        assert state_a[name].keys() == state_b[name].keys() and state_a[name], name
        for key in state_a[name]:
            torch.testing.assert_close(
                state_b[name][key], state_a[name][key], rtol=0, atol=0, msg=f"{name} {key}"
            )


def test_a_capturable_runs_state_resumes_on_the_cpu():
    """A checkpoint of ``fit(compile="reduce-overhead")`` on a GPU has ``capturable=True``
    groups and step counters on the device; ``LazyAdam`` leaves ``capturable`` to the
    device it loads on, so the same Adam update resumes on the CPU (here the GPU's state is
    mimicked on the CPU: ``capturable=True`` and a float32 step tensor)."""
    w = torch.nn.Parameter(torch.ones(3))
    pyro.param("w", w)
    optim = pv.LazyAdam({"lr": 0.1})
    w.grad = torch.ones(3)
    optim([w])
    state = copy.deepcopy(optim.get_state())  # (as a checkpoint holds it: not the live one)
    state["w"]["param_groups"][0]["capturable"] = True
    expected = w.detach().clone()
    w.grad = torch.ones(3)
    optim([w])  # the uninterrupted second step
    expected, w.data = w.detach().clone(), expected
    resumed = pv.LazyAdam({"lr": 0.1})
    resumed.set_state(state)
    w.grad = torch.ones(3)
    resumed([w])  # (torch's Adam refuses capturable=True on the CPU: set_state ignores it)
    assert not resumed._dense.param_groups[0]["capturable"]
    assert torch.equal(w.detach(), expected)
