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
sys.path.insert(0, ROOT)  # autodoc imports nncodec_rd (and its conformance suite) from this checkout

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
# Pseudo-code blocks of the spec have no language: show them plain, not as Python.
highlight_language = "text"

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


# -- Links to the repository outside docs/ ------------------------------------------------------------
# The pages are also read on GitHub, where `[spec](../spec/nrd-format.md#9-limits)` or
# `[harness](../conformance/fuzz/)` are right. In the site, links into spec/ go to the included
# spec pages, and links to other existing repository paths become plain text; a link to a path
# that exists nowhere still fails the build.
from sphinx import addnodes  # noqa: E402
from sphinx.transforms.post_transforms import SphinxPostTransform  # noqa: E402


class RepositoryLinks(SphinxPostTransform):
    default_priority = 8  # before MyST resolves its references (9)

    def run(self, **kwargs) -> None:
        for node in list(self.document.findall(addnodes.pending_xref)):
            if node.get("reftype") != "myst":
                continue
            target = node["reftarget"]
            if node["refdomain"] == "doc":
                path = os.path.join(DOCS, target)  # a docname; absolute when outside docs/
                candidates = [path + ".md", path]
            else:
                if "://" in target or target.startswith(("#", "mailto:")):
                    continue
                folder = os.path.dirname(node.get("refdoc", self.env.docname))
                path = os.path.join(DOCS, folder, target.split("#")[0])
                candidates = [path]
            path = os.path.normpath(path)
            inside_repository = os.path.commonpath([path, ROOT]) == ROOT
            if not inside_repository or os.path.commonpath([path, DOCS]) == DOCS:
                continue  # MyST resolves (or reports) links inside docs/
            relative = os.path.relpath(path, ROOT).replace(os.sep, "/")
            if node["refdomain"] == "doc" and relative.startswith("spec/"):
                name = relative[len("spec/"):]
                if os.path.exists(os.path.join(DOCS, "spec", name + ".md")):
                    node["reftarget"] = "spec/" + name
                    continue
            if any(os.path.exists(os.path.normpath(candidate)) for candidate in candidates):
                node.replace_self(node[0].deepcopy())


def setup(app):
    app.add_post_transform(RepositoryLinks)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
