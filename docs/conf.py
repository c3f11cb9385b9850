"""Sphinx configuration of the pyro_vae documentation (``bash .ci/docs`` builds it)."""

from __future__ import annotations

import pyro_vae  # installed (editable) by .ci/setup

project = "pyro_vae"
author = "the pyro_vae developers"
release = version = pyro_vae.__version__
copyright = "2026, the pyro_vae developers"

extensions = [
    "myst_parser",  # the guide, gallery and results pages are Markdown
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",  # the docstrings' Google-style Args / Returns
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3
exclude_patterns = ["_build", "gallery/examples-table.md", "gallery/runs"]

autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_class_signature = "separated"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# Offline: MathJax is served from _static (``.ci/docs`` fetches it from the npm registry);
# intersphinx inventories of torch, Pyro and zuko cannot be fetched here, so their names are
# plain text (not links) and nitpicky mode ignores them.
mathjax_path = "mathjax/tex-chtml.js"
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(torch|torchvision|pyro|zuko|tqdm|numpy|matplotlib|argparse|os|pathlib)\b.*"),
    (r"py:.*", r"(collections|typing|contextlib)\b.*"),
    (r"py:class", r"pyro_vae\.[\w.]*\._\w+"),  # private bases shown by show-inheritance
    (r"py:.*", r"(Tensor|Module|Distribution|TorchDistribution|Size|dtype|device)"),
    (r"py:.*", r"(nn|dist|np|Path|PathLike|Callable|Iterator|Sequence|Mapping|Any|Literal)\b.*"),
    (r"py:.*", r"(ELBO|PyroOptim|DataLoader|Dataset|Optimizer|Messenger|Trace|SummaryWriter)"),
    (r"py:.*", r"(TorchDispatchMode|OpOverload|Generator|Figure|Axes|Transform|Flow)"),
]

smartquotes = False  # "--inference" stays two hyphens (not an en dash) in the prose

html_theme = "furo"
html_title = f"pyro_vae {version}"
html_static_path = ["_static"]
html_css_files = ["tables.css"]


def _no_torch_init_docstring(app, what, name, obj, options, lines) -> None:
    """A class's ``__init__`` shows its signature, not the docstring it inherits from
    ``torch.nn.Module.__init__`` ("Initialize internal Module state...", 18 times on the
    models page before): the class's docstring says what its arguments are."""
    if name.endswith(".__init__") and lines and lines[0].startswith("Initialize internal Module"):
        lines.clear()


def setup(app) -> None:
    app.connect("autodoc-process-docstring", _no_torch_init_docstring)
