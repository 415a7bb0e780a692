"""Fuzz target: the container parser, ``read_container`` with ``collect=False`` and ``True``.

Contract: either both succeed, or they raise :class:`NrdError` (``FormatError`` or
``LimitExceededError``). Consistency: collecting changes which faults are reported, never whether
the file is valid, nor the first fault: when ``collect=False`` raises code *c* in step 10 or 11,
``collect=True`` returns a first error of code *c*; a syntax error (steps 1-9) is raised by both.
"""

from __future__ import annotations

from nncodec_rd.format.container import read_container
from nncodec_rd.format.errors import NrdError

from .common import ContractViolation, Stats

STATS = Stats("fuzz_container")


def _run(data: bytes) -> str:
    try:
        read_container(data)
    except NrdError as error:
        first = error
    else:
        first = None
    try:
        _, _, collected = read_container(data, collect=True)
    except NrdError as error:
        if first is None or error.code != first.code:
            raise ContractViolation(f"collect=True raised {error.code.slug}, collect=False "
                                    f"{first.code.slug if first else 'nothing'}") from error
        return f"error:{first.code.slug}"
    if first is None:
        if collected:
            raise ContractViolation(f"collect=True found {collected[0].code.slug} in a file that "
                                    "collect=False accepts")
        return "ok"
    if not collected or collected[0].code != first.code:
        raise ContractViolation(f"collect=False raised {first.code.slug}; collect=True's first "
                                f"error is {collected[0].code.slug if collected else 'none'}")
    for error in collected:
        if not isinstance(error, NrdError):
            raise ContractViolation(f"collect=True gathered a {type(error).__name__}")
    return f"error:{first.code.slug}"


def test_one_input(data: bytes) -> None:
    STATS.measure(bytes(data), _run)
