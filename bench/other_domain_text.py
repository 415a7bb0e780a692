"""English sentences of another domain than the calibration's: the license texts that the
benchmark's own dependencies ship in their distributions (legal prose, where the calibration and
in-domain evaluation text is the Python documentation, :mod:`nncodec_rd.torch.sentences`).

Nothing is downloaded: the files come from the installed distributions of :data:`PACKAGES`
(``*.dist-info/licenses/`` and the like), cut into sentences by the same rules as the Python
documentation's. Which files a distribution ships can change with its version, so the
benchmark records how many sentences it used and from which distributions and versions
(:func:`source_description`).

>>> sentences = license_sentences(32)
>>> len(sentences) == 32 and all(sentence[0].isupper() for sentence in sentences)
True
"""

from __future__ import annotations

import functools
import importlib.metadata

from nncodec_rd.torch.sentences import _SENTENCE_END, _blocks, _is_prose

PACKAGES = ("numpy", "torch", "scipy", "pillow", "matplotlib")
"""Distributions the benchmark needs anyway (the bench extra and torch), in this order."""

LICENSE_NAMES = ("LICENSE", "COPYING", "NOTICE")


@functools.lru_cache(maxsize=1)
def _sentences_and_sources() -> tuple[tuple[str, ...], tuple[str, ...]]:
    found, seen, sources = [], set(), []
    for package in PACKAGES:
        try:
            distribution = importlib.metadata.distribution(package)
        except importlib.metadata.PackageNotFoundError:
            continue
        sources.append(f"{package} {distribution.version}")
        for file in sorted(distribution.files or (), key=str):
            if not file.name.upper().startswith(LICENSE_NAMES):
                continue
            path = file.locate()
            if not path.is_file():
                continue
            for block in _blocks(path.read_text(encoding="utf-8", errors="replace")):
                for sentence in _SENTENCE_END.split(" ".join(block.split())):
                    if _is_prose(sentence) and sentence not in seen:
                        seen.add(sentence)
                        found.append(sentence)
    return tuple(found), tuple(sources)


def license_sentences(count: int = 256) -> list[str]:
    """The first ``count`` sentences (fewer if there are not as many)."""
    return list(_sentences_and_sources()[0][:count])


def source_description(count: int = 256) -> str:
    """Where :func:`license_sentences` ``(count)`` came from, in words."""
    sentences, sources = _sentences_and_sources()
    return (f"{min(count, len(sentences))} sentences of the license texts shipped by "
            f"{', '.join(sources)}")
