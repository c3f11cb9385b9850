"""Batches: shuffled minibatches with their indices, binarized as asked, and their arguments
checked."""

from __future__ import annotations

import pytest
import torch

import pyro_vae as pv


def test_bad_batches_arguments():
    with pytest.raises(ValueError, match="binarize must be"):
        pv.Batches(torch.rand(10, 3), batch_size=4, binarize="round")
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        pv.Batches(torch.rand(10, 3), batch_size=0)


def test_batches_yield_indices_and_binarize():
    data = torch.rand(10, 3)
    seen = []
    for x, idx in pv.Batches(data, batch_size=4, binarize="dynamic"):
        assert set(x.unique().tolist()) <= {0.0, 1.0}
        seen.append(idx)
    assert sorted(torch.cat(seen).tolist()) == list(range(10))
    x, idx = next(iter(pv.Batches(data, batch_size=4, binarize="threshold", shuffle=False)))
    torch.testing.assert_close(x, data[:4].round())
    assert len(pv.Batches(data, batch_size=4, drop_last=True)) == 2
