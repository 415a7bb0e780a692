"""Sphinx configuration of the nncodec-rd documentation site.

Build it with ``make docs`` (warnings are errors); ``tests/test_docs.py`` builds it too. The
specification is included from ``spec/`` (``docs/spec/*.md`` are one-line include wrappers), never
copied; the benchmark plots are read from ``bench/results/``.
"""

from __future__ import annotations

import importlib.util
import os
import sys

DOCS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(DOCS)
sys.path.insert(0, ROOT)  # autodoc imports nncodec_rd and conformance from this checkout

import nncodec_rd  # noqa: E402

project = "nncodec-rd"
author = "the nncodec-rd authors"
copyright = "the nncodec-rd authors"
release = nncodec_rd.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
# docs/README.md is the folder's note for people browsing the repository, not a page of the site.
exclude_patterns = ["_build", "README.md", "Thumbs.db", ".DS_Store"]

# -- MyST: the spec is GitHub-flavoured Markdown ---------------------------------------------------
# Its links (`#4-file-structure`) are GitHub heading slugs (MyST's default slug function);
# headings down to #### get anchors.
myst_heading_anchors = 4
myst_enable_extensions = ["colon_fence", "deflist"]

# -- autodoc ------------------------------------------------------------------------------------------
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented"
autodoc_default_options = {"members": True, "show-inheritance": True}
# The PyTorch pages import torch; without it (a decoder-only install) they are built from a mock.
autodoc_mock_imports = [] if importlib.util.find_spec("torch") else ["torch"]
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False

# -- HTML ---------------------------------------------------------------------------------------------
html_theme = "furo"
html_title = f"nncodec-rd {release}"
html_static_path: list[str] = []
