"""Fixtures of the training tests."""

from __future__ import annotations

import sys

import pytest

steps = sys.modules["pyro_vae.train.step"]


@pytest.fixture
def pyro_steps(monkeypatch) -> list[int]:
    """Counts the steps taken through Pyro's traced loss (``gradient_step``)."""
    calls = []
    original = steps.gradient_step

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(steps, "gradient_step", counted)
    return calls
