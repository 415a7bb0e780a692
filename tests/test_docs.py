"""The documentation site builds from this checkout with warnings as errors (as `make docs` does).

CI runs only `make test`, so this test is what keeps the site, the included spec and the API
reference (the docstrings) buildable. The build goes to a temporary folder, never to docs/_build.
"""

from __future__ import annotations

import glob
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """Build the HTML site once; returns (output folder, sphinx-build's stderr)."""
    out = tmp_path_factory.mktemp("docs")
    command = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-E", "-q", "-b", "html",
               "-d", str(out / "doctrees"), DOCS, str(out / "html")]
    completed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    problems = completed.stderr.strip()
    assert completed.returncode == 0 and "WARNING" not in problems and "ERROR" not in problems, (
        f"sphinx-build failed (exit {completed.returncode}); fix the pages or docstrings it "
        f"names:\n{problems}\n{completed.stdout[-2000:]}")
    return out / "html", problems


def read(html_folder, page):
    with open(html_folder / page, encoding="utf-8") as handle:
        return handle.read()


def test_site_builds_without_warnings(site):
    html, _ = site
    assert (html / "index.html").exists()


def test_spec_is_included_not_copied(site):
    # docs/spec/X.md is an include of spec/X.md and nothing else: one source of truth.
    for name in ("nrd-format.md", "errata.md"):
        with open(os.path.join(DOCS, "spec", name), encoding="utf-8") as handle:
            wrapper = handle.read().strip()
        assert wrapper == f"```{{include}} ../../spec/{name}\n```", wrapper
    html, _ = site
    page = read(html, "spec/nrd-format.html")
    with open(os.path.join(ROOT, "spec", "nrd-format.md"), encoding="utf-8") as handle:
        spec = handle.read()
    # every section of the spec made it, with the GitHub-style anchor its own links use
    for heading in re.findall(r"^## (.+)$", spec, flags=re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        assert f'id="{slug}"' in page, heading
    assert 'href="errata.html"' in page


def test_every_result_page_is_in_the_site(site):
    html, _ = site
    index = read(html, "index.html")
    for path in glob.glob(os.path.join(DOCS, "*.md")):
        name = os.path.splitext(os.path.basename(path))[0]
        if name in ("README", "index"):
            continue
        assert f'href="{name}.html"' in index, f"docs/{name}.md is not linked from the index"


def test_benchmark_plots_render(site):
    html, _ = site
    for page, image in [("decode-speed.html", "decode_speed.png"),
                        ("rate-fidelity.html", "minilm_rate_fidelity.png")]:
        assert f'src="_images/{image}"' in read(html, page)
        assert (html / "_images" / image).exists()


def test_api_reference_has_the_public_entry_points(site):
    html, _ = site
    expected = {
        "api/nncodec_rd.html": ["nncodec_rd.save_file", "nncodec_rd.load_file",
                                "nncodec_rd.safe_open", "nncodec_rd.UniformGrid",
                                "nncodec_rd.EntropySettings"],
        "api/format.html": ["nncodec_rd.format.errors.FormatError",
                            "nncodec_rd.format.errors.ErrorCode"],
        "api/decoder.html": ["nncodec_rd.decoder.reader.NrdFile"],
        "api/encoder.html": ["nncodec_rd.encoder.writer.NrdWriter"],
        "api/torch.html": ["nncodec_rd.torch.compress_model.compress"],
        "api/conformance.html": ["nncodec_rd.conformance.strategies.nrd_files"],
    }
    for page, names in expected.items():
        text = read(html, page)
        for name in names:
            assert f'id="{name}"' in text, f"{name} is missing from {page}"


def test_repository_links_resolve_in_the_site(site):
    # The guides link the spec as GitHub shows it (../../spec/nrd-format.md#anchor); in the site
    # these go to the included spec page, at the section's anchor.
    html, _ = site
    page = read(html, "guides/writing-a-decoder.html")
    assert 'href="../spec/nrd-format.html#reading-a-file-procedure"' in page
    assert 'href="../spec/nrd-format.html#annex-a-worked-example"' in page
    # an existing repository file outside docs/ becomes a download, not a broken link
    downloads = [folder / "spec_literal_decoder.py" for folder in (html / "_downloads").iterdir()]
    assert any(path.exists() for path in downloads)
