"""Fuzz target: the production decoder and the spec-literal decoder against each other.

Both decode every tensor, in header order, with the same output bound. Contract (crashes):

* both accept: the same names, shapes and output bytes (spec §1.3 item 1: "there is no
  tolerance: two conforming decoders produce identical bytes");
* one accepts, the other rejects (neither for the caller's output bound): one of them is wrong.

Findings (counted, inputs kept under ``$NRD_FUZZ_FINDINGS``, not crashes): both reject with
different codes. spec §1.3 fixes the code only for a file with a single fault, and a fuzzed input
often has several; a disagreement on a single-fault file is a bug, found by replaying the findings.
"""

from __future__ import annotations

import numpy as np

from nncodec_rd.conformance import spec_literal_decoder as literal
from nncodec_rd.decoder.reader import NrdFile
from nncodec_rd.format.errors import NrdError, OutputTooLargeError

from .common import SPEC_LITERAL_MAX_OUTPUT_BYTES, ContractViolation, ScratchFile, Stats, warm_up
from .fuzz_spec_literal import is_output_bound

STATS = Stats("fuzz_agreement")
SCRATCH = ScratchFile()


def production(data: bytes):
    """("ok", {name: (shape, bytes)}), ("error", code) or ("bound", None)."""
    path = SCRATCH.write(data)
    try:
        with NrdFile(path, threads=1, max_output_bytes=SPEC_LITERAL_MAX_OUTPUT_BYTES) as handle:
            out = {}
            for name in handle.keys():
                tensor = handle.get_tensor(name)
                out[name] = (tuple(tensor.shape), np.ascontiguousarray(tensor).tobytes())
            return "ok", out
    except OutputTooLargeError:
        return "bound", None
    except NrdError as error:
        return "error", int(error.code)
    finally:
        SCRATCH.discard()


def spec_literal(data: bytes):
    try:
        decoded = literal.decode_file(data, max_output_bytes=SPEC_LITERAL_MAX_OUTPUT_BYTES)
    except literal.SpecError as error:
        return ("bound", None) if is_output_bound(error) else ("error", error.code)
    return "ok", {name: (tuple(shape), raw) for name, (_, shape, raw) in decoded.items()}


def _run(data: bytes) -> str:
    ours, theirs = production(data), spec_literal(data)
    if "bound" in (ours[0], theirs[0]):
        return "output_bound"
    if ours[0] == theirs[0] == "ok":
        if ours[1] != theirs[1]:
            raise ContractViolation("both decoders accept the file but output different bytes")
        return "ok"
    if ours[0] != theirs[0]:
        raise ContractViolation(f"production: {ours}; spec-literal: {theirs}"[:400])
    if ours[1] != theirs[1]:
        STATS.finding(f"codes-{ours[1]}-vs-{theirs[1]}", data)
        return "codes_differ"
    return "same_code"


def test_one_input(data: bytes) -> None:
    warm_up()
    STATS.measure(bytes(data), _run)
