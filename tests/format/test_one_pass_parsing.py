"""The one-pass header parser (NumPy arrays, struct walks over the mapped header) reads every file
exactly as construct's element-by-element parse of the same declarations: same values, and for
a damaged file the same error, code, field and byte offset. The layout rules checked on blocks
of references agree with a plain loop over them."""

import struct

import numpy as np
import pytest
from construct.core import BytesIOWithOffsets, evaluate
from hypothesis import HealthCheck, given, settings, strategies as st

from nncodec_rd.conformance.strategies import nrd_files
from nncodec_rd.format import container, syntax, validate
from nncodec_rd.format.container import parse_preamble, read_container, to_plain
from nncodec_rd.format.errors import ErrorCode, NrdError
from nncodec_rd.format.layout import align_up
from nncodec_rd.format.validate import Report, check_layout

from pathlib import Path

INVALID = sorted((Path(__file__).resolve().parents[2] / "conformance" / "invalid").glob("*.nrd"))


def _outcome(data: bytes):
    """What reading ``data`` gives: the plain header and collected errors, or the error raised."""
    try:
        preamble, header, errors = read_container(data, collect=True)
    except NrdError as error:
        return ("raised", type(error).__name__, error.code, error.field, error.offset, str(error))
    return ("read", to_plain(header),
            [(type(e).__name__, e.code, e.field, e.offset, str(e)) for e in errors])


def _by_declaration(data: bytes, monkeypatch):
    """:func:`_outcome` with every fast path off: construct parses each element from a copy."""
    def element_by_element(self, stream, context, path):
        # construct's Array._parse, with each element's index in an error's path
        return syntax._parse_elements(self, stream, evaluate(self.count, context), context, path)

    with monkeypatch.context() as patch:
        patch.setattr(syntax.FastArray, "_parse", element_by_element)
        patch.setattr(syntax.TensorRecords, "_parse", element_by_element)
        patch.setattr(container.HeaderStream, "over", staticmethod(
            lambda buffer, start, end: BytesIOWithOffsets(bytes(buffer[start:end]), None, start)))
        patch.setattr(BytesIOWithOffsets, "release", lambda self: None, raising=False)
        return _outcome(data)


def _same(data: bytes, monkeypatch) -> None:
    fast, slow = _outcome(data), _by_declaration(data, monkeypatch)
    assert repr(fast) == repr(slow)  # repr: a NaN step equals itself


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(nrd_files())
def test_valid_files_read_the_same(monkeypatch, data):
    _same(data, monkeypatch)


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(nrd_files(max_tensors=2), st.data())
def test_damaged_headers_fail_the_same(monkeypatch, data, draw):
    # Damage inside the header, with the checksum repaired so that the parser sees it.
    header_end = 32 + parse_preamble(data).header_size
    damaged = bytearray(data)
    for _ in range(draw.draw(st.integers(1, 3))):
        position = draw.draw(st.integers(32, header_end - 1))
        damaged[position] = draw.draw(st.integers(0, 255))
    from nncodec_rd.format.checksum import crc32c

    damaged[24:28] = struct.pack("<I", crc32c(bytes(damaged[32:header_end]),
                                              crc32c(bytes(damaged[:24]))))
    _same(bytes(damaged), monkeypatch)


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_conformance_invalid_files_fail_the_same(monkeypatch, path):
    _same(path.read_bytes(), monkeypatch)


def test_a_wrong_frequency_varint_falls_back_to_the_declaration():
    # 0x80 0x80 0x80 0x01: four bytes, one more than VarUInt(3) allows
    stream = syntax.HeaderStream.over(b"\x80\x80\x80\x01", 0, 4)
    with pytest.raises(Exception, match="longer than 3 bytes"):
        syntax.VarUIntArray(1, syntax.VarUInt(3)).parse_stream(stream)


def _loop_layout(header, header_size: int, buffer) -> list:
    """spec §4.7 read literally: one payload after another (the independent reference)."""
    errors, end = [], 32 + header_size
    refs = list(validate.payload_refs(header))
    for field, ref in refs:
        expected = align_up(end)
        if ref.offset != expected:
            return errors + [(ErrorCode.PAYLOAD_LAYOUT, field + ".offset")]
        if ref.offset + ref.size > len(buffer):
            return errors + [(ErrorCode.TRUNCATED, field)]
        if bytes(buffer[end:ref.offset]).strip(b"\0"):
            errors.append((ErrorCode.NONZERO_PADDING, field))
        end = ref.offset + ref.size
    if len(buffer) > end:
        errors.append((ErrorCode.TRAILING_BYTES, "file"))
    return errors


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(nrd_files(), st.data())
def test_layout_checked_in_blocks_agrees_with_a_loop(monkeypatch, data, draw):
    # Blocks of 1 to 3 references (the default is 65,536), and damage in the payload area.
    monkeypatch.setattr(validate, "LAYOUT_BLOCK_REFERENCES", draw.draw(st.integers(1, 3)))
    preamble, header, _ = read_container(data)
    buffer = bytearray(data)
    header_end = 32 + preamble.header_size
    if len(buffer) > header_end:
        for _ in range(draw.draw(st.integers(0, 3))):
            buffer[draw.draw(st.integers(header_end, len(buffer) - 1))] = 0xFF
    if draw.draw(st.booleans()):
        buffer += b"\0" * draw.draw(st.integers(1, 70))
    if draw.draw(st.booleans()) and len(buffer) > header_end:
        del buffer[draw.draw(st.integers(header_end, len(buffer) - 1)):]
    report = Report(collect=True)
    check_layout(header, preamble.header_size, bytes(buffer), report)
    assert [(e.code, e.field) for e in report.errors] == _loop_layout(
        header, preamble.header_size, bytes(buffer))


def test_a_chunk_table_is_one_array_not_an_object_per_chunk():
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    try:
        import header_parsing
    finally:
        sys.path.pop(0)
    data = header_parsing.chunk_file(100_000)
    _, header, _ = read_container(data)
    chunks = header.tensors[0].body.chunks
    assert isinstance(chunks, syntax.RecordTable) and len(chunks) == 100_000
    assert chunks.column("offset").base is not None  # a view of one buffer
    assert dict(chunks[99_999]) == {"offset": len(data), "size": 0, "crc32c": 0}
