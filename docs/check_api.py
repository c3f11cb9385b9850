"""Checks the built site: every public name of ``pyro_vae`` and of its subpackages has an entry
in the API reference (read from Sphinx's ``objects.inv``), nothing private has one (no module
or name that begins with an underscore), and every example has a gallery page with its
figures.

    python -m docs.check_api docs/_build/html
"""

from __future__ import annotations

import sys
from pathlib import Path

from sphinx.util.inventory import InventoryFile

import pyro_vae as pv
from docs.gallery import EXAMPLES

SUBPACKAGES = ("data", "devices", "infer", "models", "plots", "train")


def _private(name: str) -> bool:
    """A module or name that begins with one underscore (dunders are public)."""
    return any(p.startswith("_") and not p.startswith("__") for p in name.split("."))


def main(argv: list[str] | None = None) -> None:
    html = Path((argv or sys.argv[1:] or ["docs/_build/html"])[0])
    with open(html / "objects.inv", "rb") as f:
        inventory = InventoryFile.load(f, "", lambda base, uri: uri)
    entries = getattr(inventory, "data", inventory)  # (Sphinx 9: a dict)
    documented = {name for names in entries.values() for name in names}
    missing = [n for n in pv.__all__ if f"pyro_vae.{n}" not in documented]
    for package in SUBPACKAGES:
        names = getattr(pv, package).__all__
        flat = [n for n in names if n in pv.__all__]
        missing += [f"{package}.{n}" for n in names if n not in flat]
        missing = [m for m in missing if f"pyro_vae.{m}" not in documented]
    private = sorted(n for n in documented if n.startswith("pyro_vae") and _private(n))
    if private:
        raise SystemExit(f"private names in the built documentation: {', '.join(private)}")
    for name in EXAMPLES:
        page = (html / "gallery" / f"{name}.html").read_text()
        if "<img" not in page:
            missing.append(f"figures of the gallery page {name}")
    if missing:
        raise SystemExit(f"not in the built documentation: {', '.join(missing)}")
    ours = sorted(n for n in documented if n.startswith("pyro_vae"))
    print(
        f"{len(pv.__all__)} names in pyro_vae.__all__, {len(ours)} entries in the API reference "
        f"(none private); {len(EXAMPLES)} gallery pages with figures"
    )


if __name__ == "__main__":
    main()
