"""Canaries for the private (underscored or undocumented) Pyro names pyro_vae relies on.

Each test checks one name, and what pyro_vae relies on it to do, on the installed Pyro. When a
Pyro release renames or changes one, the failure says which name and which module of
pyro_vae to fix, instead of an AttributeError deep inside training.
"""

from __future__ import annotations

import importlib
import inspect

import pyro
import pyro.distributions as dist
import pyro.optim
import pytest
import torch
from pyro import poutine
from pyro.poutine.util import prune_subsample_sites


def gone(name: str, files: str, detail: str) -> str:
    return (
        f"Pyro {pyro.__version__}: the internal name {name} is gone or changed ({detail}); "
        f"it is used by {files}: fix that code"
    )


def test_compute_log_r_of_trace_elbo():
    """pyro_vae/infer/elbo.py: ``_compute_log_r(model_trace, guide_trace)`` returns log p − log q of
    every site, detached, summable to a site's plates with ``.sum_to(cond_indep_stack)``."""
    name = "pyro.infer.trace_elbo._compute_log_r"
    trace_elbo = importlib.import_module("pyro.infer.trace_elbo")
    if not callable(getattr(trace_elbo, "_compute_log_r", None)):
        pytest.fail(gone(name, "pyro_vae/infer/elbo.py", "no such function"))
    compute_log_r = trace_elbo._compute_log_r
    params = list(inspect.signature(compute_log_r).parameters)
    if params != ["model_trace", "guide_trace"]:
        pytest.fail(gone(name, "pyro_vae/infer/elbo.py", f"its parameters are now {params}"))

    x = torch.tensor([0.0, 1.0, -2.0])

    def model():
        with pyro.plate("data", 3):
            z = pyro.sample("z", dist.Bernoulli(0.3))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide():
        q = pyro.param("q", torch.tensor(0.6))
        with pyro.plate("data", 3):
            pyro.sample("z", dist.Bernoulli(q))

    pyro.set_rng_seed(0)
    # The traces as Trace_ELBO prepares them (pyro.infer.enum.get_importance_trace).
    guide_trace = prune_subsample_sites(poutine.trace(guide).get_trace())
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace()
    model_trace = prune_subsample_sites(model_trace)
    model_trace.compute_log_prob()
    guide_trace.compute_log_prob()
    try:
        log_r = compute_log_r(model_trace, guide_trace)
        got = log_r.sum_to(guide_trace.nodes["z"]["cond_indep_stack"])
    except Exception as e:  # a changed return type or sum_to
        pytest.fail(gone(name, "pyro_vae/infer/elbo.py", f"{type(e).__name__}: {e}"))
    z = guide_trace.nodes["z"]["value"]
    expected = (
        dist.Bernoulli(0.3).log_prob(z)
        + dist.Normal(z, 1.0).log_prob(x)
        - dist.Bernoulli(torch.tensor(0.6)).log_prob(z)
    )
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    assert not got.requires_grad, gone(
        name, "pyro_vae/infer/elbo.py", "log r is no longer detached"
    )


def test_pyro_optim_state_waiting_to_be_consumed():
    """pyro_vae/infer/optim.py: ``PyroOptim.set_state`` puts the per-parameter states into the dict
    ``_state_waiting_to_be_consumed`` by parameter name; LazyAdam pops them from there when it
    first sees each parameter."""
    name = "PyroOptim._state_waiting_to_be_consumed"
    optim = pyro.optim.Adam({"lr": 0.1})
    waiting = getattr(optim, "_state_waiting_to_be_consumed", None)
    if not isinstance(waiting, dict):
        pytest.fail(
            gone(name, "pyro_vae/infer/optim.py", f"it is {type(waiting).__name__}, not a dict")
        )
    state = {"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]}
    optim.set_state({"w": state})
    if optim._state_waiting_to_be_consumed.get("w") is not state:
        pytest.fail(gone(name, "pyro_vae/infer/optim.py", "set_state no longer fills it"))


def test_pyro_optim_get_optim_args():
    """pyro_vae/infer/optim.py: ``PyroOptim._get_optim_args(param)`` returns the dict of
    settings, or calls a callable ``optim_args`` with the parameter's normalized name."""
    name = "PyroOptim._get_optim_args"
    if not callable(getattr(pyro.optim.PyroOptim, "_get_optim_args", None)):
        pytest.fail(gone(name, "pyro_vae/infer/optim.py", "no such method"))
    pyro.module("enc", torch.nn.Linear(2, 2))
    weight = pyro.get_param_store().get_param("enc$$$weight")
    seen = []
    per_param = pyro.optim.Adam(lambda n: seen.append(n) or {"lr": 0.2})
    fixed = pyro.optim.Adam({"lr": 0.3})
    try:
        got = per_param._get_optim_args(weight), fixed._get_optim_args(weight)
    except Exception as e:
        pytest.fail(gone(name, "pyro_vae/infer/optim.py", f"{type(e).__name__}: {e}"))
    if got != ({"lr": 0.2}, {"lr": 0.3}) or seen != ["enc.weight"]:
        pytest.fail(
            gone(name, "pyro_vae/infer/optim.py", f"it returned {got} after calling with {seen}")
        )


@pytest.mark.parametrize(
    "attribute, files",
    [
        ("optim_objs", "pyro_vae/infer/optim.py and pyro_vae/train/local.py"),
        ("pt_optim_args", "pyro_vae/train/checkpoint.py"),
    ],
)
def test_pyro_optim_attributes(attribute, files):
    """Undocumented attributes of ``PyroOptim``: ``optim_objs`` (parameter → torch optimizer;
    LazyAdam fills it, infer_local anneals through it) and ``pt_optim_args`` (the settings,
    saved in checkpoints)."""
    settings = {"lr": 0.1}
    optim = pyro.optim.Adam(settings)
    expected, detail = {
        "optim_objs": ({}, "a new optimizer has no empty dict there"),
        "pt_optim_args": (settings, "it does not hold the optim_args given"),
    }[attribute]
    if getattr(optim, attribute, None) != expected:
        pytest.fail(gone(f"PyroOptim.{attribute}", files, detail))
