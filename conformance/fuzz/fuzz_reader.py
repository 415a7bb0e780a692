"""Fuzz target: the production decoder, :class:`NrdFile`, opened with ``max_output_bytes`` and
``max_transform_work``.

Per input: open it, read its metadata and every tensor's info, decode every tensor, a small row
range of each (rows 1 to 3, and into ``out=``) and the indices of coded tensors. Contract: each
call succeeds or raises :class:`NrdError`; within the time and memory of :mod:`.common`.
"""

from __future__ import annotations

import numpy as np

from nncodec_rd.decoder.reader import NrdFile
from nncodec_rd.format.constants import Coding
from nncodec_rd.format.errors import NrdError, OutputTooLargeError

from .common import (
    MAX_OUTPUT_BYTES,
    MAX_TRANSFORM_WORK,
    ContractViolation,
    ScratchFile,
    Stats,
    warm_up,
)

STATS = Stats("fuzz_reader")
SCRATCH = ScratchFile()


def _calls(handle: NrdFile, name: str):
    """The decoding calls made for one tensor, each on its own (a fault stops only that call)."""
    record = handle.record(name)
    yield lambda: handle.info(name)
    yield lambda: handle.get_tensor(name)
    if len(record.shape) >= 1:
        yield lambda: handle.get_rows(name, 1, 3)

        def into_out():
            rows = min(2, int(record.shape[0]))
            expected = handle.get_rows(name, 0, rows)
            out = np.empty_like(expected)
            if handle.get_rows(name, 0, rows, out=out) is not out or \
                    out.tobytes() != expected.tobytes():
                raise ContractViolation(f"get_rows(out=) differs from get_rows for {name!r}")

        yield into_out
    if record.coding == Coding.RANS:
        yield lambda: handle.get_indices(name)


def _run(data: bytes) -> str:
    path = SCRATCH.write(data)
    try:
        handle = NrdFile(path, threads=1, max_output_bytes=MAX_OUTPUT_BYTES,
                         max_transform_work=MAX_TRANSFORM_WORK)
    except NrdError as error:
        return f"open:{error.code.slug}"
    outcome = "ok"
    try:
        handle.metadata()
        handle.header_dict()
        for name in handle.keys():
            for call in _calls(handle, name):
                try:
                    call()
                except OutputTooLargeError:
                    outcome = "output_bound" if outcome == "ok" else outcome
                except NrdError as error:
                    outcome = f"decode:{error.code.slug}" if outcome in ("ok", "output_bound") \
                        else outcome
    finally:
        handle.close()
        SCRATCH.discard()
    return outcome


def test_one_input(data: bytes) -> None:
    warm_up()
    STATS.measure(bytes(data), _run)
