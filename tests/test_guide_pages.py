"""The code on the pages runs as written: every ``python`` block of the README, the index and
each guide page, in order, in one namespace (as a reader pastes them into one session), in a
fresh working folder, with MNIST found by the default lookup (``$PYRO_VAE_DATA``).

What a page trains at full size is cut to a test's budget by caps patched into the package,
not into the pages: ``fit`` runs one epoch (without compiling: tests/infer/test_compiled.py
compiles), MNIST holds its first 512 images, ``evaluate`` and ``amortization_gap`` draw at most
8 particles and ``infer_local`` and ``amortization_gap`` run one epoch. Everything else — the
imports, the names, the calls and their arguments — is the page's.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pyro
import pytest
import torch

import pyro_vae as pv

ROOT = Path(__file__).resolve().parents[1]
PAGES = {  # page: whether it reads MNIST
    "README.md": True,
    "docs/index.md": True,
    "docs/guide/quickstart.md": True,
    "docs/guide/data.md": True,
    "docs/guide/likelihoods.md": True,
    "docs/guide/inference.md": False,
    "docs/guide/flows.md": True,
    "docs/guide/bounds.md": True,
    "docs/guide/fields.md": False,
    "docs/guide/pictures.md": True,
    "docs/guide/trained.md": True,
    "docs/guide/speed.md": True,
}
SMALL = 512


def blocks(page: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / page).read_text(), flags=re.S)


def test_every_page_with_python_is_listed():
    """A new page with code cannot be left out of this test."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
             *sorted((ROOT / "docs" / "guide").glob("*.md"))]  # fmt: skip
    with_code = {str(p.relative_to(ROOT)) for p in pages if "```python" in p.read_text()}
    assert with_code == set(PAGES)


@pytest.fixture
def budget(monkeypatch, tmp_path, request):
    """The caps described above, a fresh working folder and, for MNIST pages, the data."""
    if PAGES[request.node.callspec.params["page"]]:
        monkeypatch.setenv("PYRO_VAE_DATA", str(request.getfixturevalue("mnist_dir")))
    monkeypatch.chdir(tmp_path)
    import torchvision

    real = {name: getattr(pv, name) for name in
            ("load_mnist", "fit", "evaluate", "infer_local", "amortization_gap")}  # fmt: skip

    def load_mnist(*args, **kwargs):
        return tuple(t[:SMALL] for t in real["load_mnist"](*args, **kwargs))

    def fit(*args, **kwargs):
        device, log = kwargs.get("device"), kwargs.get("log")
        if isinstance(device, pv.Compute):
            kwargs["device"] = dataclasses.replace(device, compile=False)
        quiet = dataclasses.replace(log, progress=False) if isinstance(log, pv.Logging) else False
        kwargs.update(epochs=1, log=quiet)
        return real["fit"](*args, **kwargs)

    def evaluate(*args, num_particles=1000, **kwargs):
        return real["evaluate"](*args, num_particles=min(num_particles, 8), **kwargs)

    def infer_local(*args, **kwargs):
        return real["infer_local"](*args, **{**kwargs, "epochs": 1, "progress": False})

    def amortization_gap(*args, num_particles=1000, **kwargs):
        kwargs.update(epochs=1, num_particles=min(num_particles, 8))
        return real["amortization_gap"](*args, **kwargs)

    class MNIST(torchvision.datasets.MNIST):  # (its folder is named after its class)
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.data, self.targets = self.data[:SMALL], self.targets[:SMALL]

    caps = [load_mnist, fit, evaluate, infer_local, amortization_gap]
    for fn in caps:
        monkeypatch.setattr(pv, fn.__name__, fn)
    monkeypatch.setattr(torchvision.datasets, "MNIST", MNIST)
    yield
    pyro.clear_param_store()


# DataLoader(pin_memory=True) pins for the accelerator PyTorch sees: the stand-in's, which has no
# pinned memory.
PINNED = pytest.mark.not_on_stand_in("pin_memory=True pins for the stand-in, which cannot pin")


@pytest.mark.host_default("a page's code is what a reader runs with torch's defaults")
@pytest.mark.parametrize(
    "page", [pytest.param(p, marks=PINNED) if p.endswith("data.md") else p for p in PAGES]
)
def test_every_code_block_of_the_page_runs(page, budget):
    assert blocks(page), f"{page} has no python block"
    namespace: dict = {}
    pyro.set_rng_seed(0)
    with torch.random.fork_rng():
        for i, code in enumerate(blocks(page)):
            exec(compile(code, f"{page}, block {i + 1}", "exec"), namespace)
