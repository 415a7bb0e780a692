"""Each error condition of spec §10 is detected, with its code, on a file with that single fault."""

import struct

import numpy as np
import pytest

from nncodec_rd.conformance import spec_literal_decoder
from nncodec_rd.conformance.mutators import assemble, mutate_header, split_file
from nncodec_rd import EntropySettings, UniformGrid, CodebookGrid
from nncodec_rd.decoder.reader import NrdFile
from nncodec_rd.encoder.writer import NrdWriter
from nncodec_rd.format.errors import (
    ChecksumMismatchError,
    CorruptStreamError,
    ErrorCode,
    LimitExceededError,
    NrdError,
    TruncatedError,
)


@pytest.fixture(scope="module")
def valid_file(tmp_path_factory):
    """A file with a 2-chunk coded tensor (escapes on), a codebook tensor and a raw tensor."""
    path = tmp_path_factory.mktemp("valid") / "valid.nrd"
    rng = np.random.default_rng(7)
    indices = np.clip(np.round(rng.laplace(scale=2.0, size=(8, 50))), -40, 40).astype(np.int64)
    indices[0, 0] = 300  # escaped
    settings = EntropySettings(symbols_per_chunk=200, max_alphabet_size=64, lane_count=2)
    with NrdWriter(path, metadata={"model_name": "t"}) as writer:
        writer.add_indices("coded", indices, UniformGrid(0.1), "float32", settings=settings)
        writer.add_indices("book", np.array([[0, 1], [2, 1]]), CodebookGrid([-1.0, 0.0, 1.0]),
                           "float16")
        writer.add_raw("raw", np.arange(6, dtype=np.float32))
    return path.read_bytes()


def decode(data: bytes, tmp_path) -> dict:
    path = tmp_path / "file.nrd"
    path.write_bytes(data)
    with NrdFile(path) as handle:
        return {name: handle.get_tensor(name) for name in handle.keys()}


def expect(data, tmp_path, code: ErrorCode, cls=NrdError):
    """Our decoder raises ``code``, and so does the spec-literal decoder (written from spec/)."""
    with pytest.raises(cls) as caught:
        decode(data, tmp_path)
    assert caught.value.code == code, caught.value
    assert isinstance(caught.value, NrdError) and isinstance(caught.value, ValueError)
    with pytest.raises(spec_literal_decoder.SpecError) as literal:
        spec_literal_decoder.decode_file(data)
    assert literal.value.code == int(code), literal.value
    return caught.value


def test_valid_file_decodes(valid_file, tmp_path):
    tensors = decode(valid_file, tmp_path)
    assert tensors["coded"].shape == (8, 50) and tensors["raw"].tolist() == list(range(6))
    assert tensors["book"].dtype == np.float16


def test_mutators_reassemble_the_same_bytes(valid_file):
    header, payloads = split_file(valid_file)
    assert assemble(header, payloads) == valid_file


def test_bad_magic(valid_file, tmp_path):
    expect(b"PK" + valid_file[2:], tmp_path, ErrorCode.BAD_MAGIC)


def test_truncated_at_every_length(valid_file, tmp_path):
    """Every prefix of the file is rejected: truncated (or, cut inside a payload, the layout or
    checksum checks that notice it first); never another exception."""
    for length in list(range(0, 64)) + list(range(64, len(valid_file), 7)):
        expect(valid_file[:length], tmp_path, ErrorCode.TRUNCATED)


def test_unknown_major_version(valid_file, tmp_path):
    data = bytearray(valid_file)
    data[8:10] = (2).to_bytes(2, "little")
    expect(bytes(data), tmp_path, ErrorCode.UNSUPPORTED_VERSION)


def test_higher_minor_version_is_read(valid_file, tmp_path):
    from nncodec_rd.format.checksum import crc32c

    data = bytearray(valid_file)
    data[10:12] = (7).to_bytes(2, "little")
    header_size = struct.unpack_from("<Q", data, 16)[0]
    data[24:28] = crc32c(bytes(data[32:32 + header_size]), crc32c(bytes(data[:24]))).to_bytes(4, "little")
    assert decode(bytes(data), tmp_path)["raw"].tolist() == list(range(6))


def test_unknown_required_feature(valid_file, tmp_path):
    header, payloads = split_file(valid_file)
    expect(assemble(header, payloads, required_features=1 << 5), tmp_path,
           ErrorCode.UNSUPPORTED_FEATURE)


def test_reserved_preamble_field(valid_file, tmp_path):
    data = bytearray(valid_file)
    data[28] = 1
    expect(bytes(data), tmp_path, ErrorCode.RESERVED_VALUE)


def test_header_checksum(valid_file, tmp_path):
    data = bytearray(valid_file)
    data[40] ^= 0x01
    error = expect(bytes(data), tmp_path, ErrorCode.CHECKSUM_HEADER, ChecksumMismatchError)
    assert error.expected != error.actual


def test_payload_checksum(valid_file, tmp_path):
    header, payloads = split_file(valid_file)
    offset = header["tensors"][2]["body"]["payload"]["offset"]
    data = bytearray(valid_file)
    data[offset] ^= 0xFF
    expect(bytes(data), tmp_path, ErrorCode.CHECKSUM_PAYLOAD, ChecksumMismatchError)


def test_header_limit(valid_file, tmp_path):
    data = bytearray(valid_file)
    data[16:24] = (1 << 29).to_bytes(8, "little")
    expect(bytes(data), tmp_path, ErrorCode.LIMIT_EXCEEDED, LimitExceededError)


@pytest.mark.parametrize("change, code", [
    (lambda h, p: h["tensors"][0].update(dtype=77), ErrorCode.UNSUPPORTED_FEATURE),
    (lambda h, p: h["tensors"][0]["body"].update(context_model=9), ErrorCode.UNSUPPORTED_FEATURE),
    (lambda h, p: h["tensors"][0]["body"].update(escape_mode=5), ErrorCode.UNSUPPORTED_FEATURE),
    (lambda h, p: h["tensors"][0]["body"].update(transform_kind=4), ErrorCode.UNSUPPORTED_FEATURE),
    (lambda h, p: h["extensions"].update(extension_count=1, extensions=[
        dict(extension_type=3, extension_flags=1, body=b"")]), ErrorCode.UNSUPPORTED_FEATURE),
    (lambda h, p: h["extensions"].update(extension_count=1, extensions=[
        dict(extension_type=3, extension_flags=4, body=b"")]), ErrorCode.RESERVED_VALUE),
    (lambda h, p: h["tensors"][0]["body"].update(_reserved0=1), ErrorCode.RESERVED_VALUE),
    (lambda h, p: h["tensors"][0]["body"].update(transform_tensor=2), ErrorCode.RESERVED_VALUE),
    (lambda h, p: h["tensors"][1].update(name="coded"), ErrorCode.DUPLICATE_NAME),
    (lambda h, p: h["tensors"][1].update(name=""), ErrorCode.INVALID_VALUE),
    (lambda h, p: h["metadata"].update(entry_count=2, entries=h["metadata"]["entries"] * 2),
     ErrorCode.DUPLICATE_KEY),
    (lambda h, p: h["tensors"][0]["body"]["tables"][0]["frequencies"].__setitem__(0, 999),
     ErrorCode.TABLE_SUM),
    (lambda h, p: h["tensors"][0]["body"].update(precision_bits=17), ErrorCode.LIMIT_EXCEEDED),
    (lambda h, p: h["tensors"][0]["body"].update(precision_bits=0), ErrorCode.INVALID_VALUE),
    (lambda h, p: h["tensors"][0]["body"].update(lane_count=0), ErrorCode.INVALID_VALUE),
    (lambda h, p: h["tensors"][0]["body"].update(context_count=1, context_model=1,
                                                 tables=h["tensors"][0]["body"]["tables"][:1]),
     ErrorCode.INVALID_VALUE),
    (lambda h, p: h["tensors"][0]["body"]["grid"].update(steps=[0.0]), ErrorCode.INVALID_VALUE),
    (lambda h, p: h["tensors"][0]["body"]["grid"].update(steps=[float("nan")]),
     ErrorCode.INVALID_VALUE),
    (lambda h, p: h["tensors"][0]["body"]["grid"].update(group_count=2, steps=[1.0, 1.0]),
     ErrorCode.INVALID_VALUE),
    (lambda h, p: h["tensors"][0]["body"].update(rows_per_chunk=1), ErrorCode.INVALID_VALUE),
    (lambda h, p: h["tensors"][0]["body"].update(coded_row_length=7), ErrorCode.INVALID_VALUE),
    (lambda h, p: h["tensors"][0]["body"].update(transform_kind=1, transform_tensor=5),
     ErrorCode.INVALID_REFERENCE),
    (lambda h, p: h["tensors"][0]["body"].update(transform_kind=1, transform_tensor=2),
     ErrorCode.INVALID_REFERENCE),
    (lambda h, p: h["tensors"][0]["body"].update(index_offset=1 << 23), ErrorCode.INVALID_VALUE),
    (lambda h, p: h["tensors"][2].update(dtype=2), ErrorCode.INVALID_VALUE),
    (lambda h, p: h["tensors"][2].update(dtype=10), ErrorCode.INVALID_VALUE),
    (lambda h, p: h["tensors"][1].update(dtype=8), ErrorCode.INVALID_VALUE),
    (lambda h, p: h["tensors"][0]["shape"].__setitem__(0, (1 << 40) + 1), ErrorCode.LIMIT_EXCEEDED),
])
def test_semantic_errors(valid_file, tmp_path, change, code):
    expect(mutate_header(valid_file, change), tmp_path, code)


def test_bool_raw_payload_must_hold_0_or_1(tmp_path):
    path = tmp_path / "bool.nrd"
    with NrdWriter(path) as writer:
        writer.add_raw("flags", np.array([True, False, True]))
    header, payloads = split_file(path.read_bytes())
    expect(assemble(header, [b"\x01\x02\x00"]), tmp_path, ErrorCode.INVALID_VALUE)


def test_payload_layout(valid_file, tmp_path):
    header, payloads = split_file(valid_file)
    header["tensors"][2]["body"]["payload"]["offset"] += 64
    expect(assemble(header, payloads, fix_offsets=False), tmp_path, ErrorCode.PAYLOAD_LAYOUT)


def test_nonzero_padding(valid_file, tmp_path):
    header, payloads = split_file(valid_file)
    first = header["tensors"][0]["body"]["chunks"][0]
    data = bytearray(valid_file)
    data[first["offset"] - 1] = 0xAA
    expect(bytes(data), tmp_path, ErrorCode.NONZERO_PADDING)


def test_trailing_bytes(valid_file, tmp_path):
    expect(valid_file + b"\0", tmp_path, ErrorCode.TRAILING_BYTES)


def test_header_size_mismatch(valid_file, tmp_path):
    from nncodec_rd.format.checksum import crc32c

    data = bytearray(valid_file)
    header_size = struct.unpack_from("<Q", data, 16)[0]
    shorter = header_size - 1
    data[16:24] = shorter.to_bytes(8, "little")
    data[24:28] = crc32c(bytes(data[32:32 + shorter]), crc32c(bytes(data[:24]))).to_bytes(4, "little")
    expect(bytes(data), tmp_path, ErrorCode.HEADER_SIZE_MISMATCH)


def _with_chunk(valid_file, chunk_bytes):
    header, payloads = split_file(valid_file)
    payloads[0] = chunk_bytes(payloads[0])
    return assemble(header, payloads)


@pytest.mark.parametrize("edit, code", [
    (lambda c: c[:2], ErrorCode.STREAM_TRUNCATED),
    (lambda c: c[:-2], ErrorCode.STREAM_TRUNCATED),
    (lambda c: c + b"\0\0", ErrorCode.STREAM_TRAILING_DATA),
    (lambda c: c + b"\0", ErrorCode.STREAM_TRAILING_DATA),
    (lambda c: c[:8] + (5).to_bytes(4, "little") + c[12:], ErrorCode.RANS_STATE_OUT_OF_RANGE),
    (lambda c: c[:8] + (0x12345678).to_bytes(4, "little") + c[12:], None),
    (lambda c: (0).to_bytes(4, "little") + c[8:], None),
    (lambda c: (2).to_bytes(4, "little") + c[4:8] + c[4:], ErrorCode.ESCAPE_MISMATCH),
    (lambda c: c[:4] + (3).to_bytes(4, "little", signed=True) + c[8:], ErrorCode.ESCAPE_MISMATCH),
])
def test_stream_errors(valid_file, tmp_path, edit, code):
    """A damaged chunk (checksum recomputed) is a CorruptStreamError; where the spec pins the
    exact code for the damage, that code."""
    data = _with_chunk(valid_file, edit)
    with pytest.raises(CorruptStreamError) as caught:
        decode(data, tmp_path)
    with pytest.raises(spec_literal_decoder.SpecError) as literal:
        spec_literal_decoder.decode_file(data)
    assert literal.value.code == int(caught.value.code)
    if code is not None:
        assert caught.value.code == code, caught.value


def test_codebook_index_out_of_range(tmp_path):
    path = tmp_path / "book.nrd"
    with NrdWriter(path) as writer:
        writer.add_indices("book", np.array([0, 1, 2]), CodebookGrid([1.0, 2.0, 3.0]), "float32")
    header, payloads = split_file(path.read_bytes())
    header["tensors"][0]["body"]["grid"].update(codebook_size=2, codebook_values=[1.0, 2.0])
    expect(assemble(header, payloads), tmp_path, ErrorCode.INDEX_OUT_OF_RANGE, CorruptStreamError)


def test_truncated_error_says_how_much_is_needed(valid_file, tmp_path):
    error = expect(valid_file[:100], tmp_path, ErrorCode.TRUNCATED, TruncatedError)
    assert error.needed > 100 and "at byte 100" in str(error)
