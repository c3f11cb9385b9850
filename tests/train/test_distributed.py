"""Data-parallel training: 2 processes (gloo, loopback) against 1 process on the same data,
and the edge cases of the data-parallel path (uneven kills, tiny global batches, local rows,
validation, shared sparse parameters, BatchNorm buffers, mismatched data, collective timeouts).

Each scenario runs in 2 spawned processes that join a gloo process group on 127.0.0.1
(``helpers.run_ranks``; its process-group timeout makes a rank left waiting in a collective
fail instead of hanging the suite), and writes what it saw to a file the test reads back.
"""

from __future__ import annotations

import os
import shutil
from functools import partial

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.distributed as tdist
from helpers import DeltaPair, ShiftedDeltaPair, circle_vae, grouped, run_ranks
from torch import nn

import pyro_vae as pv
from pyro_vae.train._distributed import combine_gradients
from pyro_vae.train._gradient import gradient_step
from pyro_vae.train.checkpoint import CheckpointError


def delta_run(distributed: bool, save_dir=None, epochs: int = 3) -> tuple[DeltaPair, pv.History]:
    pyro.clear_param_store()
    torch.manual_seed(0)
    pair = DeltaPair()
    pyro.set_rng_seed(0)
    history = pv.fit(
        pair.model,
        pair.guide,
        pv.Batches(pv.make_circle(40)[0], batch_size=7),
        epochs=epochs,
        device=pv.Compute("cpu", distributed=distributed),
        log=False,
        save=save_dir,
        optim=pv.LazyAdam({"lr": 0.05}),
    )
    return pair, history


def per_datapoint_options() -> dict:
    return {
        "epochs": 20,
        "log": False,
        "optim": pv.LazyAdam({"lr": 1e-2}, local_lr=0.05),
    }


# ---- scenarios (run on each rank) --------------------------------------------------------------


def same_as_one_process(rank: int, out: str) -> dict:
    pair, history = delta_run(True)
    return {"state": pair.state_dict(), "loss": history.loss}


def shifted_run(distributed: bool) -> list[float]:
    """Three epochs of :class:`ShiftedDeltaPair` on batches with the field ``shift``."""
    pyro.clear_param_store()
    torch.manual_seed(0)
    pair = ShiftedDeltaPair()
    shift = torch.linspace(-1.0, 1.0, 40)
    data = pv.Batches(pv.make_circle(40)[0], shift=shift, batch_size=7)
    pyro.set_rng_seed(0)
    optim = pv.LazyAdam({"lr": 0.05})
    history = pv.fit(
        pair.model,
        pair.guide,
        data,
        epochs=3,
        device=pv.Compute("cpu", distributed=distributed),
        log=False,
        optim=optim,
    )
    return history.loss


def fields_same_as_one_process(rank: int, out: str) -> dict:
    return {"loss": shifted_run(True)}


def per_datapoint_shards(rank: int, out: str) -> dict:
    pyro.clear_param_store()
    torch.manual_seed(0)
    vae = circle_vae(pv.PerDatapointGaussian(40, 1))
    x = pv.make_circle(40)[0]
    pyro.set_rng_seed(0)
    options = per_datapoint_options()
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
            save=pv.Checkpoints(save_dir, resume=resume),
            log=False,
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


def zinb_run(distributed: bool) -> tuple:
    """Two epochs of a ZINB VAE with a size factor (its mean total a buffer) on counts."""
    pyro.clear_param_store()
    torch.manual_seed(0)
    zinb = {"size_factor": True, "zero_inflated": True}
    vae = pv.VAE(
        pv.StandardNormalPrior(2),
        pv.NegativeBinomialLikelihood(pv.MLP(2, 12, (8,)), 6, **zinb),
        pv.GaussianEncoder(pv.MLP(6, 4, (8,)), 2),
    )
    x = torch.poisson(5 * torch.rand(40, 6, generator=torch.Generator().manual_seed(0)))
    pyro.set_rng_seed(0)
    history = pv.fit(
        vae.model,
        vae.guide,
        pv.Batches(x, batch_size=8),
        epochs=2,
        device=pv.Compute("cpu", distributed=distributed),
        log=False,
    )
    return vae, history


def zinb_on_each_rank(rank: int, out: str) -> dict:
    vae, history = zinb_run(True)
    return {"state": vae.state_dict(), "loss": history.loss}


# ---- tests -------------------------------------------------------------------------------------


def test_two_processes_train_the_single_process_model(tmp_path):
    ranks = run_ranks(same_as_one_process, tmp_path)
    single, history = delta_run(False)
    for name, value in single.state_dict().items():
        for r in ranks:  # every rank holds the single-process parameters
            torch.testing.assert_close(r["state"][name], value, rtol=1e-5, atol=1e-6, msg=name)
    for r in ranks:  # and the global loss of every epoch
        assert r["loss"] == pytest.approx(history.loss, rel=1e-5)


def test_a_zinb_vae_with_a_size_factor_trains_under_two_processes(tmp_path):
    """Counts under two processes: every rank holds the same parameters, the likelihood's mean
    total is the whole data set's (as in one process, not a rank's part's), and the global
    loss falls. (Not the single-process numbers: each rank draws the noise of its own part of
    a batch, so the runs differ as two seeds do.)"""
    ranks = run_ranks(zinb_on_each_rank, tmp_path)
    single, _ = zinb_run(False)
    for name, value in ranks[0]["state"].items():
        assert torch.equal(ranks[1]["state"][name], value), name
    assert torch.equal(ranks[0]["state"]["likelihood.mean_total"],
                       single.state_dict()["likelihood.mean_total"])  # fmt: skip
    assert ranks[0]["loss"] == ranks[1]["loss"] and ranks[0]["loss"][1] < ranks[0]["loss"][0]


def test_fields_are_sharded_with_their_points(tmp_path):
    """Each rank's part of a batch carries its own points' field: two processes give the
    single-process losses (a misaligned field would change them)."""
    ranks = run_ranks(fields_same_as_one_process, tmp_path)
    single = shifted_run(False)
    for r in ranks:
        assert r["loss"] == pytest.approx(single, rel=1e-5)


def test_per_datapoint_guides_are_sharded_by_rank(tmp_path):
    ranks = run_ranks(per_datapoint_shards, tmp_path)
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
    pv.fit(vae.model, vae.guide, pv.Batches(x, batch_size=8), **per_datapoint_options())
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
            save=pv.Checkpoints(tmp_path / "full", resume=True),
            log=False,
            device="cpu",
        )


def test_without_a_process_group_fit_runs_in_one_process():
    assert pv._world.get_world() is None
    with pytest.raises(ValueError, match="launch with torchrun"):
        pv._world.get_world(True)


# ---- edge cases of the data-parallel path ------------------------------------------------------


class DeltaLocal(nn.Module):
    """A noise-free per-datapoint guide (one point mass per point, dense gradients) that
    :func:`pyro_vae.train._distributed.shard_local_guides` shards like PerDatapointGaussian."""

    def __init__(self, num_data: int) -> None:
        super().__init__()
        self.num_data, self.offset, self.sparse = num_data, 0, False
        self.loc = nn.Parameter(torch.linspace(-1, 1, num_data).unsqueeze(-1))

    def shard(self, start: int, stop: int) -> None:
        self.offset = start
        self.loc = nn.Parameter(self.loc[start:stop].detach().clone())
        self.loc.local_rows = True


class LocalPair(nn.Module):
    def __init__(self, num_data: int) -> None:
        super().__init__()
        self.decoder, self.local = nn.Linear(1, 2), DeltaLocal(num_data)

    def model(self, x, idx=None, num_data=None):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", num_data, subsample=idx):
            z = pyro.sample("z", dist.Normal(torch.zeros(1), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.decoder(z), 0.5).to_event(1), obs=x)

    def guide(self, x, idx=None, num_data=None):
        pyro.module("local", self.local)
        with pyro.plate("data", num_data, subsample=idx):
            pyro.sample("z", dist.Delta(self.local.loc[idx - self.local.offset]).to_event(1))


def delta_fit(distributed, *, n=40, batch=8, epochs=2, norm=False, **options):
    pyro.clear_param_store()
    torch.manual_seed(0)
    pair = DeltaPair(norm)
    pyro.set_rng_seed(0)
    history = pv.fit(
        pair.model,
        pair.guide,
        pv.Batches(pv.make_circle(n)[0], batch_size=batch),
        epochs=epochs,
        optim=pv.LazyAdam({"lr": 0.05}),
        **grouped(device="cpu", progress=False, distributed=distributed, **options),
    )
    return pair, history


def local_fit(distributed: bool) -> torch.Tensor:
    """One SGD step on all N = 4 points (shuffle=False, batch = N): the 2-process global
    minibatch is then the single-process one."""
    pyro.clear_param_store()
    torch.manual_seed(0)
    pair = LocalPair(4)
    pv.fit(
        pair.model,
        pair.guide,
        pv.Batches(pv.make_circle(4)[0], batch_size=4, shuffle=False),
        epochs=1,
        device=pv.Compute("cpu", distributed=distributed),
        log=False,
        optim=pyro.optim.SGD({"lr": 0.01}),
    )
    return pair.local.loc.detach().clone()


# ---- scenarios (run on each rank) --------------------------------------------------------------


def resume_after_uneven_kill(rank: int, out: str):
    save_dir = os.path.join(out, "run")
    delta_fit(True, epochs=2, save_dir=save_dir)
    tdist.barrier()
    if rank == 1:  # killed after rank 0 saved epoch 2, before rank 1 saved its own epoch 2
        shutil.copy(
            os.path.join(save_dir, "checkpoint.rank1.prev.pt"),
            os.path.join(save_dir, "checkpoint.rank1.pt"),
        )
    tdist.barrier()
    try:
        _, history = delta_fit(True, epochs=3, save_dir=save_dir, resume=True)
    except CheckpointError:
        return "CheckpointError"
    return history.epoch


def batch_smaller_than_world(rank: int, out: str):
    try:
        delta_fit(True, n=10, batch=1, epochs=1)
    except ValueError as e:
        return str(e)
    return "trained"


def other_data(rank: int, out: str):
    """Rank 1 holds other points (size or values) than rank 0."""
    results = {}
    for case, n, seed in (("size", 40 + 8 * rank, 0), ("values", 40, rank)):
        x = pv.make_circle(n, seed=seed)[0]
        pair = DeltaPair()
        try:
            pv.fit(
                pair.model,
                pair.guide,
                pv.Batches(x, batch_size=8),
                epochs=1,
                device=pv.Compute("cpu", distributed=True),
                log=False,
            )
            results[case] = "trained"
        except ValueError as e:
            results[case] = str(e)
    return results


def local_gradient(rank: int, out: str):
    return local_fit(True)


def validation_without_distributed(rank: int, out: str):
    # Each rank trains its own model on its own data (distributed=False) inside a group.
    pyro.clear_param_store()
    torch.manual_seed(rank)
    pair = DeltaPair()
    held_out = pv.Batches(pv.make_circle(30, seed=10 + rank)[0], batch_size=30)
    history = pv.fit(
        pair.model,
        pair.guide,
        pv.Batches(pv.make_circle(40, seed=rank)[0], batch_size=8),
        epochs=1,
        device=pv.Compute("cpu", distributed=False),
        log=False,
        validation=held_out,
    )
    own = pv.evaluate(pair.model, pair.guide, held_out, num_particles=1, distributed=False)
    return history.val_elbo[-1], own.elbo


def shared_sparse_parameter(rank: int, out: str):
    pyro.clear_param_store()
    torch.manual_seed(0)
    pair = DeltaPair()

    def guide(x, idx=None, num_data=None):  # a hand-written per-datapoint table, not sharded
        table = pyro.param("table", torch.zeros(num_data, 1))
        with pyro.plate("data", num_data, subsample=idx):
            z = nn.functional.embedding(idx, table, sparse=True)
            pyro.sample("z", dist.Delta(z).to_event(1))

    try:
        pv.fit(
            pair.model,
            guide,
            pv.Batches(pv.make_circle(16)[0], batch_size=8),
            epochs=1,
            device="cpu",
            log=False,
            optim=pv.LazyAdam({"lr": 0.05}),
            modules=pair,
        )
    except ValueError:
        return "ValueError"
    return pyro.param("table").detach().clone()


def batchnorm_buffers(rank: int, out: str):
    pair, _ = delta_fit(True, norm=True, epochs=1)
    return {k: v.clone() for k, v in pair.state_dict().items() if "running" in k}


# ---- tests -------------------------------------------------------------------------------------


def test_resume_with_checkpoints_of_different_epochs_fails_alike(tmp_path):
    ranks = run_ranks(resume_after_uneven_kill, tmp_path)
    assert ranks[0] == ranks[1]


def test_global_batch_smaller_than_world_is_refused_on_every_rank(tmp_path):
    ranks = run_ranks(batch_smaller_than_world, tmp_path)
    assert all("batch" in r and r != "trained" for r in ranks)


def test_ranks_holding_other_data_are_refused_on_every_rank(tmp_path):
    """Ranks holding other data are refused on every rank with a ValueError: data of another
    size with one naming each rank's N (not gloo's 'Received data size doesn't match'), data of
    the same size with one saying which rank holds other data than rank 0."""
    for r in run_ranks(other_data, tmp_path):
        assert "rank 0: N = 40, rank 1: N = 48" in r["size"], r
        assert "rank 1 holds other data than rank 0" in r["values"], r


def test_local_rows_get_the_single_process_gradient(tmp_path):
    ranks = run_ranks(local_gradient, tmp_path)
    single = local_fit(False)
    torch.testing.assert_close(torch.cat(ranks), single, rtol=1e-5, atol=1e-6)


def test_validation_follows_fits_distributed_flag(tmp_path):
    for val, own in run_ranks(validation_without_distributed, tmp_path):
        assert val == pytest.approx(own, rel=1e-6)


def test_shared_sparse_parameters_stay_equal_or_are_refused(tmp_path):
    ranks = run_ranks(shared_sparse_parameter, tmp_path)
    if isinstance(ranks[0], str) or isinstance(ranks[1], str):
        assert ranks == ["ValueError", "ValueError"]
    else:
        assert torch.equal(ranks[0], ranks[1])


def test_batchnorm_buffers_agree_across_ranks(tmp_path):
    ranks = run_ranks(batchnorm_buffers, tmp_path)
    for name, value in ranks[0].items():
        torch.testing.assert_close(ranks[1][name], value, rtol=0, atol=0, msg=name)


def test_fit_starts_its_process_group_with_a_collective_timeout(monkeypatch):
    """fit starts its process group with COLLECTIVE_TIMEOUT (at most 10 minutes), so a stopped
    rank does not hold the others for torch's default 30 minutes."""
    calls = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(tdist, "is_initialized", lambda: False)
    monkeypatch.setattr(tdist, "init_process_group", lambda *a, **k: calls.append(k))
    monkeypatch.setattr(tdist, "get_rank", lambda: 0)
    monkeypatch.setattr(tdist, "get_world_size", lambda: 2)
    assert pv._world.get_world() == (0, 2)
    assert calls == [{"timeout": pv._world.COLLECTIVE_TIMEOUT}]
    assert pv._world.COLLECTIVE_TIMEOUT.total_seconds() <= 600


def test_a_collective_that_times_out_says_what_happened(monkeypatch, tmp_path):
    tdist.init_process_group("gloo", store=tdist.HashStore(), rank=0, world_size=1)
    try:
        real = tdist.all_reduce

        def stuck(tensor, *args, **kwargs):
            if tensor.dtype == torch.float32:  # the gradients: the other process is stopped
                raise RuntimeError("[../gloo/transport/tcp/pair.cc:598] Timed out waiting 300000ms")
            return real(tensor, *args, **kwargs)

        monkeypatch.setattr(tdist, "all_reduce", stuck)
        with pytest.raises(RuntimeError, match="a data-parallel process did not answer in time"):
            delta_fit(True, n=16, batch=8, epochs=1)
    finally:
        tdist.destroy_process_group()
