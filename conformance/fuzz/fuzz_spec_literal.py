"""Fuzz target: the spec-literal decoder, ``decode_file(data, max_output_bytes=...)``.

Contract: it returns the decoded tensors or raises :class:`SpecError` whose code is one of spec
§10; within the time and memory of :mod:`.common`.
"""

from __future__ import annotations

from nncodec_rd.conformance import spec_literal_decoder as literal

from .common import SPEC_LITERAL_MAX_OUTPUT_BYTES, ContractViolation, Stats

STATS = Stats("fuzz_spec_literal")
SPEC_CODES = set(literal.ERROR_CODES.values())


def _run(data: bytes) -> str:
    try:
        literal.decode_file(data, max_output_bytes=SPEC_LITERAL_MAX_OUTPUT_BYTES)
    except literal.SpecError as error:
        if error.code not in SPEC_CODES:
            raise ContractViolation(f"SpecError with code {error.code}, not one of §10")
        return "output_bound" if is_output_bound(error) else f"error:{error.name}"
    return "ok"


def is_output_bound(error: "literal.SpecError") -> bool:
    """The caller's bound, not a fault of the file (check_output_bound)."""
    return error.name == "limit_exceeded" and error.field.endswith("(max_output_bytes)")


def test_one_input(data: bytes) -> None:
    STATS.measure(bytes(data), _run)
