"""Real English sentences available offline on any CPython: the calibration text that
:func:`nncodec_rd.torch.pretrained.compress_pretrained` and the demo use when none is given, and
the sentences of the sentence-embedding benchmarks.

The source is the text of the Python documentation that CPython ships in the standard-library
module ``pydoc_data.topics`` (the ``topics`` dictionary behind ``help("topic")``): reference-manual
prose about the language, so nothing is downloaded and nothing beyond the standard library is
needed.

The text is cut into sentences as follows:

1. each topic is cut into blocks at blank lines, at list items (``*``, ``-``, ``+``, ``1.``) and
   where the indentation of the text changes (headings and definition-list terms stand on their
   own line, less indented than what follows);
2. whitespace in a block is normalised to single spaces and the block is split after ``.``,
   ``!`` or ``?`` followed by a space;
3. prose-like sentences are kept: 40 to 200 characters, starting with an uppercase letter, ending
   with ``.``, ``!`` or ``?``, with no ``--`` (heading underlines) and none of the characters
   ``*:=()[]{}`>|`` (code, grammar rules and tables);
4. duplicates are removed and the rest sorted.

With Python 3.11.7 this leaves 987 sentences. Each one belongs to one of two disjoint pools,
decided by a salted SHA-256 hash of its text: about a third (331) form the calibration pool, the rest
the evaluation pool, and each pool is ordered by the same hash. :func:`calibration_sentences` and
:func:`evaluation_sentences` return the first ``count`` sentences of their pool, so the two never
overlap whatever the counts, and a sentence keeps its pool and its relative order when the
documentation of another Python version adds or removes other sentences.

The text of ``pydoc_data`` changes between Python versions, so results measured on these
sentences are comparable only on the same Python version; :data:`SOURCE_DESCRIPTION` names it.

Examples
--------
>>> calibration = calibration_sentences(256)
>>> evaluation = evaluation_sentences(512)
>>> set(calibration).isdisjoint(evaluation)
True
"""

from __future__ import annotations

import functools
import hashlib
import platform
import re
from pydoc_data.topics import topics

#: Where the sentences come from, with the Python version whose documentation text was used.
SOURCE_DESCRIPTION: str = (f"prose sentences of the Python documentation in the standard-library "
                           f"module pydoc_data.topics, {platform.python_implementation()} "
                           f"{platform.python_version()}")

SHORTEST_SENTENCE = 40
LONGEST_SENTENCE = 200
#: Characters that mark code, grammar productions or tables rather than prose.
CODE_CHARACTERS = frozenset("*:=()[]{}`>|")
#: Mixed into the hash that assigns sentences to pools; changing it draws other pools.
POOL_SALT = b"nncodec-rd sentences 1"
#: One hash value in this many puts a sentence in the calibration pool.
CALIBRATION_POOL_SHARE = 3

_LIST_ITEM = re.compile(r"^(\s*)((?:[*+-]|\d+\.)\s+)?")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _blocks(text: str):
    """Runs of lines that belong to one paragraph or list item, each joined into one string."""
    lines: list[str] = []
    indentation = None
    for line in text.split("\n"):
        if not line.strip():
            if lines:
                yield " ".join(lines)
            lines, indentation = [], None
            continue
        match = _LIST_ITEM.match(line)
        # A list item's continuation lines are indented to the item's text, not to its bullet.
        text_indentation = len(match.group(1)) + len(match.group(2) or "")
        starts_item = match.group(2) is not None
        if lines and (starts_item or text_indentation != indentation):
            yield " ".join(lines)
            lines = []
        lines.append(line[match.end():].strip())
        indentation = text_indentation
    if lines:
        yield " ".join(lines)


def _is_prose(sentence: str) -> bool:
    """Whether a candidate sentence looks like an English sentence rather than code or a title."""
    return (SHORTEST_SENTENCE <= len(sentence) <= LONGEST_SENTENCE
            and sentence[0].isupper() and sentence[-1] in ".!?" and "--" not in sentence
            and CODE_CHARACTERS.isdisjoint(sentence))


@functools.lru_cache(maxsize=1)
def _all_sentences() -> tuple[str, ...]:
    found = set()
    for name in sorted(topics):
        for block in _blocks(topics[name]):
            block = " ".join(block.split())
            found.update(sentence for sentence in _SENTENCE_END.split(block) if _is_prose(sentence))
    return tuple(sorted(found))


def _pool_key(sentence: str) -> int:
    return int.from_bytes(hashlib.sha256(POOL_SALT + sentence.encode("utf-8")).digest()[:8], "big")


@functools.lru_cache(maxsize=1)
def _pools() -> tuple[tuple[str, ...], tuple[str, ...]]:
    ordered = sorted(_all_sentences(), key=lambda sentence: (_pool_key(sentence), sentence))
    calibration = tuple(s for s in ordered if _pool_key(s) % CALIBRATION_POOL_SHARE == 0)
    evaluation = tuple(s for s in ordered if _pool_key(s) % CALIBRATION_POOL_SHARE != 0)
    return calibration, evaluation


def calibration_pool() -> list[str]:
    """The whole calibration pool: the sentences :func:`calibration_sentences` draws from (the
    evaluation pool stays apart)."""
    return list(_pools()[0])


def all_sentences() -> list[str]:
    """Every prose sentence found in ``pydoc_data.topics``, deduplicated and sorted.

    Returns
    -------
    list of str
        987 sentences with Python 3.11.7; the number depends on the Python version.
    """
    return list(_all_sentences())


def _take(pool: tuple[str, ...], count: int, which: str) -> list[str]:
    if count < 0:
        raise ValueError(f"count must not be negative, got {count}")
    if count > len(pool):
        raise ValueError(f"{count} {which} sentences asked for, but only {len(pool)} exist in "
                         f"the {which} pool ({SOURCE_DESCRIPTION})")
    return list(pool[:count])


def calibration_sentences(count: int = 256) -> list[str]:
    """The first ``count`` sentences of the calibration pool, to calibrate a codec on.

    Parameters
    ----------
    count : int, default 256
        Number of sentences; the pool holds 331 with Python 3.11.7.

    Returns
    -------
    list of str
        The same sentences, in the same order, on every call; never any of
        :func:`evaluation_sentences`. A smaller ``count`` gives a prefix of a larger one.

    Raises
    ------
    ValueError
        If ``count`` is negative or larger than the calibration pool.
    """
    return _take(_pools()[0], count, "calibration")


def evaluation_sentences(count: int = 512) -> list[str]:
    """The first ``count`` sentences of the evaluation pool, to measure embedding fidelity on.

    Parameters
    ----------
    count : int, default 512
        Number of sentences; the pool holds 656 with Python 3.11.7.

    Returns
    -------
    list of str
        The same sentences, in the same order, on every call; never any of
        :func:`calibration_sentences`. A smaller ``count`` gives a prefix of a larger one.

    Raises
    ------
    ValueError
        If ``count`` is negative or larger than the evaluation pool.
    """
    return _take(_pools()[1], count, "evaluation")
