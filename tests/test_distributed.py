"""Data-parallel training: 2 processes (gloo, loopback) against 1 process on the same data.

Each scenario runs in 2 spawned processes that join a gloo process group on 127.0.0.1, and
writes what it saw to a file the test reads back.
"""

from __future__ import annotations

import datetime
import os
import socket
from functools import partial

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp
from torch import nn

import pyro_vae as pv
from pyro_vae.checkpoint import CheckpointError
from pyro_vae.distributed import combine_gradients
from pyro_vae.optim import gradient_step

WORLD = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, scenario, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    timeout = datetime.timedelta(seconds=60)  # a stuck rank fails the test, never hangs CI
    tdist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=timeout)
    try:
        pyro.enable_validation(True)
        result = scenario(rank, out)
        torch.save(result, os.path.join(out, f"result{rank}.pt"))
    finally:
        tdist.barrier()  # nobody leaves (rank 0 hosts the store) before all are done
        tdist.destroy_process_group()


def run_ranks(scenario, tmp_path) -> list[dict]:
    mp.spawn(_worker, args=(free_port(), scenario, str(tmp_path)), nprocs=WORLD)
    return [torch.load(tmp_path / f"result{r}.pt", weights_only=False) for r in range(WORLD)]


# ---- models ------------------------------------------------------------------------------------


class DeltaPair(nn.Module):
    """A noise-free pair (a point-mass guide): two processes can reproduce one exactly."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder, self.decoder = nn.Linear(2, 1), nn.Linear(1, 2)

    def model(self, x, idx=None, num_data=None):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", num_data, subsample=idx):
            z = pyro.sample("z", dist.Normal(torch.zeros(1), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.decoder(z), 0.5).to_event(1), obs=x)

    def guide(self, x, idx=None, num_data=None):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", num_data, subsample=idx):
            pyro.sample("z", dist.Delta(self.encoder(x)).to_event(1))


def circle_vae(guide: nn.Module) -> pv.VAE:
    likelihood = pv.GaussianLikelihood(pv.MLP(1, 2, (8,)), 2, scale=0.1)
    return pv.VAE(pv.StandardNormalPrior(1), likelihood, guide)


def delta_run(distributed: bool, save_dir=None, epochs: int = 3) -> tuple[DeltaPair, pv.History]:
    pyro.clear_param_store()
    torch.manual_seed(0)
    pair = DeltaPair()
    pyro.set_rng_seed(0)
    history = pv.fit(
        pair.model,
        pair.guide,
        pv.Batches(pv.make_circle(40)[0], batch_size=7),  # parts of 4 and 3 points, 3 and 2
        epochs=epochs,
        device="cpu",
        progress=False,
        distributed=distributed,
        save_dir=save_dir,
        optim=pv.LazyAdam({"lr": 0.05}),
    )
    return pair, history


def per_point_options() -> dict:
    return {
        "epochs": 20,
        "progress": False,
        "optim": pv.LazyAdam({"lr": 1e-2}, local_lr=0.05),
    }


# ---- scenarios (run on each rank) --------------------------------------------------------------


def same_as_one_process(rank: int, out: str) -> dict:
    pair, history = delta_run(True)
    return {"state": pair.state_dict(), "loss": history.loss}


def per_point_shards(rank: int, out: str) -> dict:
    pyro.clear_param_store()
    torch.manual_seed(0)
    vae = circle_vae(pv.PerDatapointGaussian(40, 1))
    x = pv.make_circle(40)[0]
    pyro.set_rng_seed(0)
    options = per_point_options()
    optim = options["optim"]
    history = pv.fit(vae.model, vae.guide, pv.Batches(x, batch_size=8), **options)
    result = pv.evaluate(vae.model, vae.guide, x, num_particles=50)
    loc = vae.variational.loc.detach().clone()
    # One more step on 4 points of this rank's block: the other rows stay bit-identical.
    batch = torch.arange(20 * rank, 20 * rank + 4)
    gradient_step(
        vae.model,
        vae.guide,
        pv.TensorTrace_ELBO(),
        optim,
        x[batch],
        batch,
        num_data=40,
        before_step=partial(combine_gradients, weight=0.5),
    )
    moved = (vae.variational.loc.detach() != loc).any(-1)
    # Held-out points: local inference and evaluation split across the ranks too.
    held_out = pv.make_circle(20, seed=1)[0]
    local = pv.infer_local(vae, pv.Batches(held_out, batch_size=10), epochs=5, lr=0.05)
    test = pv.evaluate(local.model, local.guide, held_out, num_particles=20)
    return {
        "moved": moved,
        "held_out_rows": len(local.variational.loc),
        "held_out": (test.elbo, test.num_data),
        "loc": loc,
        "offset": vae.variational.offset,
        "decoder": vae.likelihood.state_dict(),
        "loss": history.loss,
        "elbo": result.elbo,
        "count": result.num_data,
    }


def kill_and_resume(rank: int, out: str) -> dict:
    def run(save_dir, epochs, resume, seed):
        pyro.clear_param_store()
        torch.manual_seed(seed)
        vae = circle_vae(pv.GaussianEncoder(pv.MLP(2, 2, (8,)), 1))
        pyro.set_rng_seed(0)
        history = pv.fit(
            vae.model,
            vae.guide,
            pv.Batches(pv.make_circle(40)[0], batch_size=8, binarize=None),
            epochs=epochs,
            save_dir=save_dir,
            resume=resume,
            progress=False,
        )
        return vae, history

    full_vae, full = run(os.path.join(out, "full"), 3, False, 0)
    run(os.path.join(out, "part"), 1, False, 0)
    resumed_vae, resumed = run(os.path.join(out, "part"), 3, True, 7)
    return {
        "full": full.loss,
        "resumed": resumed.loss,
        "same_state": all(
            torch.equal(a, b)
            for a, b in zip(
                full_vae.state_dict().values(), resumed_vae.state_dict().values(), strict=True
            )
        ),
    }


# ---- tests -------------------------------------------------------------------------------------


def test_two_processes_train_the_single_process_model(tmp_path):
    ranks = run_ranks(same_as_one_process, tmp_path)
    single, history = delta_run(False)
    for name, value in single.state_dict().items():
        for r in ranks:  # every rank holds the single-process parameters
            torch.testing.assert_close(r["state"][name], value, rtol=1e-5, atol=1e-6, msg=name)
    for r in ranks:  # and the global loss of every epoch
        assert r["loss"] == pytest.approx(history.loss, rel=1e-5)


def test_per_point_guides_are_sharded_by_rank(tmp_path):
    ranks = run_ranks(per_point_shards, tmp_path)
    for rank, r in enumerate(ranks):
        assert r["loc"].shape == (20, 1) and r["offset"] == 20 * rank  # O(N / world) rows
        assert r["moved"][:4].all() and not r["moved"][4:].any()  # LazyAdam, per rank
        assert r["held_out_rows"] == 10 and r["held_out"][1] == 20
        assert r["held_out"] == ranks[0]["held_out"]  # the global result on every rank
        assert r["count"] == 40  # evaluate scores every point once, on the rank that owns it
        assert r["loss"] == ranks[0]["loss"]  # the global history on every rank
        assert r["elbo"] == ranks[0]["elbo"]
    for name, value in ranks[0]["decoder"].items():  # shared parameters stay identical
        torch.testing.assert_close(ranks[1]["decoder"][name], value, rtol=0, atol=0, msg=name)
    assert ranks[0]["loss"][-1] < ranks[0]["loss"][0] - 10
    # The gathered shards: one process trained on the same data reaches a similar ELBO.
    pyro.clear_param_store()
    torch.manual_seed(0)
    vae = circle_vae(pv.PerDatapointGaussian(40, 1))
    x = pv.make_circle(40)[0]
    pyro.set_rng_seed(0)
    pv.fit(vae.model, vae.guide, pv.Batches(x, batch_size=8), **per_point_options())
    single = pv.evaluate(vae.model, vae.guide, x, num_particles=50).elbo
    assert ranks[0]["elbo"] == pytest.approx(single, abs=0.2 * abs(single))


def test_kill_and_resume_under_two_processes(tmp_path):
    ranks = run_ranks(kill_and_resume, tmp_path)
    for r in ranks:
        assert r["resumed"] == r["full"] and r["same_state"]
    assert (tmp_path / "full" / "checkpoint.pt").exists()
    assert (tmp_path / "full" / "checkpoint.rank1.pt").exists()
    # One process cannot resume a run saved by two.
    vae = circle_vae(pv.GaussianEncoder(pv.MLP(2, 2, (8,)), 1))
    with pytest.raises(CheckpointError, match="written by 2 data-parallel processes"):
        pv.fit(
            vae.model,
            vae.guide,
            pv.Batches(pv.make_circle(40)[0], batch_size=8),
            epochs=4,
            save_dir=tmp_path / "full",
            resume=True,
            progress=False,
            device="cpu",
        )


def test_without_a_process_group_fit_runs_in_one_process():
    assert pv.distributed.get_world() is None
    with pytest.raises(ValueError, match="launch with torchrun"):
        pv.distributed.get_world(True)
