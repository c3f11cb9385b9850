"""What the benchmarks share: the examples' scaffolding (``examples/_common.py``: flags, MNIST,
result blocks) and the plain-PyTorch baseline (``_baseline.py``). A benchmark imports it as
``from . import _common`` (``python -m benchmarks.x``) or ``import _common`` (``python
benchmarks/x.py``, which puts the repository root on the path here).
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:  # run as a file: the examples' package beside this one
    sys.path.insert(0, _ROOT)

from benchmarks._baseline import (  # noqa: E402
    plain_cvae_loss,
    plain_epoch,
    plain_loss,
    plain_m2_loss,
    sync,
)
from examples._common import (  # noqa: E402
    ACTIVATIONS,
    binarized_mnist,
    mnist_tensors,
    replace_block,
    write_results,
)

__all__ = [
    "ACTIVATIONS",
    "binarized_mnist",
    "mnist_tensors",
    "plain_cvae_loss",
    "plain_epoch",
    "plain_loss",
    "plain_m2_loss",
    "replace_block",
    "sync",
    "twin",
    "write_results",
]


def twin(build, like, name: str, device):
    """A model from ``build()`` on ``device`` with ``like``'s initial values and its own
    param-store names (``name``): the same start for each way a benchmark times."""
    model = build().to(device)
    model.load_state_dict(like.state_dict())
    model.name = name
    return model
