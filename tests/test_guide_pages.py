"""The code on the guide pages runs as written: every ``python`` block of a page, in order, in
one namespace (as a reader pastes them into one session)."""

from __future__ import annotations

import re
from pathlib import Path

import pyro
import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGES = ["guide/fields.md"]  # the pages whose blocks are complete programs


def blocks(page: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), flags=re.S)


@pytest.mark.parametrize("page", PAGES)
def test_every_code_block_of_the_page_runs(page):
    assert blocks(page), f"{page} has no python block"
    namespace: dict = {}
    pyro.set_rng_seed(0)
    for i, code in enumerate(blocks(page)):
        exec(compile(code, f"{page}, block {i + 1}", "exec"), namespace)
