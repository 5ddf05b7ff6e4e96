"""Sphinx configuration of the pixcontrast manual: ``python -m sphinx -W --keep-going -b html docs docs/_build/html``.

Pages are Markdown (MyST); the API reference is generated from the package's docstrings (autodoc + napoleon).
The build needs no network: no intersphinx inventories are fetched.
"""

from __future__ import annotations

import os
from datetime import date

import pixcontrast

project = "pixcontrast"
author = "the pixcontrast authors"
copyright = f"{date.today().year}, {author}"
release = pixcontrast.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_inherit_docstrings = False
autosummary_generate = False
napoleon_google_docstring = True
napoleon_numpy_docstring = False
# Lightning, torch and timm are documented elsewhere: their names in our signatures are not cross-referenced.
nitpicky = False
suppress_warnings = ["myst.header"]

html_theme = "furo"
html_title = f"pixcontrast {release}"
html_static_path: list[str] = []
html_show_sourcelink = False

# Importing the package for autodoc must not start threads pools or look for weights online.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
