"""Reproducers from a review of the data-parallel path (2 gloo processes on 127.0.0.1).

The 2-process harness is the one of ``tests/test_distributed.py`` (its process-group timeout
makes a rank left waiting in a collective fail instead of hanging the suite).
"""

from __future__ import annotations

import os
import shutil

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.distributed as tdist
from test_distributed import run_ranks  # the same 2-process gloo harness
from torch import nn

import pyro_vae as pv
from pyro_vae.checkpoint import CheckpointError

WORLD = 2


# ---- models ------------------------------------------------------------------------------------


class DeltaPair(nn.Module):
    """A noise-free pair (a point-mass guide), as in tests/test_distributed.py; the plate also
    works without ``num_data`` (as :func:`pyro_vae.evaluate` calls it). ``norm`` puts a
    BatchNorm1d in the encoder."""

    def __init__(self, norm: bool = False) -> None:
        super().__init__()
        self.encoder = (
            nn.Sequential(nn.BatchNorm1d(2), nn.Linear(2, 1)) if norm else nn.Linear(2, 1)
        )
        self.decoder = nn.Linear(1, 2)

    @staticmethod
    def plate(x, idx, num_data):
        if num_data is None:
            return pyro.plate("data", x.shape[0])
        return pyro.plate("data", num_data, subsample=idx)

    def model(self, x, idx=None, num_data=None):
        pyro.module("decoder", self.decoder)
        with self.plate(x, idx, num_data):
            z = pyro.sample("z", dist.Normal(torch.zeros(1), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.decoder(z), 0.5).to_event(1), obs=x)

    def guide(self, x, idx=None, num_data=None):
        pyro.module("encoder", self.encoder)
        with self.plate(x, idx, num_data):
            pyro.sample("z", dist.Delta(self.encoder(x)).to_event(1))


class DeltaLocal(nn.Module):
    """A noise-free per-datapoint guide (one point mass per point, dense gradients) that
    :func:`pyro_vae.distributed.shard_local_guides` shards like PerDatapointGaussian."""

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
        device="cpu",
        progress=False,
        distributed=distributed,
        optim=pv.LazyAdam({"lr": 0.05}),
        **options,
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
        device="cpu",
        progress=False,
        distributed=distributed,
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
        device="cpu",
        progress=False,
        distributed=False,
        validation=held_out,
    )
    own = pv.evaluate(pair.model, pair.guide, held_out, num_particles=1, distributed=False)
    return history.val_elbo[-1], own.elbo


def shared_sparse_parameter(rank: int, out: str):
    pyro.clear_param_store()
    torch.manual_seed(0)
    pair = DeltaPair()

    def guide(x, idx=None, num_data=None):  # a hand-written per-point table, not sharded
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
            progress=False,
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
