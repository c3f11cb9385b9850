"""Checks the built site: every public name of ``pyro_vae`` has an entry in the API reference
(read from Sphinx's ``objects.inv``) and every example has a gallery page with its figures.

    python -m docs.check_api docs/_build/html
"""

from __future__ import annotations

import sys
from pathlib import Path

from sphinx.util.inventory import InventoryFile

import pyro_vae as pv
from docs.gallery import EXAMPLES


def main(argv: list[str] | None = None) -> None:
    html = Path((argv or sys.argv[1:] or ["docs/_build/html"])[0])
    with open(html / "objects.inv", "rb") as f:
        inventory = InventoryFile.load(f, "", lambda base, uri: uri)
    entries = getattr(inventory, "data", inventory)  # (Sphinx 9: a dict)
    documented = {name for names in entries.values() for name in names}
    missing = [n for n in pv.__all__ if f"pyro_vae.{n}" not in documented]
    for name in EXAMPLES:
        page = (html / "gallery" / f"{name}.html").read_text()
        if "<img" not in page:
            missing.append(f"figures of the gallery page {name}")
    if missing:
        raise SystemExit(f"not in the built documentation: {', '.join(missing)}")
    print(f"{len(pv.__all__)} public names documented; {len(EXAMPLES)} gallery pages with figures")


if __name__ == "__main__":
    main()
