"""The recipes of the invalid conformance files (``invalid/<name>.v<version>.nrd``), in the order of
their manifest: each breaks one rule of a small base file (``invalid_base``) and names the error
code a decoder must report."""

from __future__ import annotations

import functools
import math
import struct

import numpy as np

from nncodec_rd.format.constants import RANS_STATE_LOWER_BOUND
from nncodec_rd.format.errors import ErrorCode
from nncodec_rd.format.grids import CodebookGrid, UniformGrid

from .annex_example import field_rows
from .mutators import assemble, mutate_header, split_file
from .recipes import (escape_only_file, field_offset, invalid, laplace_indices, patch,
                      patch_field, recipe_entropy, written)


# ---------------------------------------------------------------------------------------------
# Invalid files. Each breaks one rule of a small base file; the comments name the rule.
# ---------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def invalid_base() -> bytes:
    """A small file with a 2-chunk coded tensor with escapes and PREVIOUS_INDEX contexts, a
    codebook tensor, a raw tensor, file and tensor metadata."""
    indices = laplace_indices((4, 12), 2.0, 30)
    indices[0, 0] = 300  # escaped
    settings = recipe_entropy(symbols_per_chunk=24, max_alphabet_size=16, lane_count=2,
                               context_model="previous", context_count=3)

    def populate(w):
        w.add_indices("coded", indices, UniformGrid(0.1), "float32", settings=settings,
                      metadata={"original_dtype": "float32"})
        w.add_indices("book", np.array([[0, 1], [2, 1]]), CodebookGrid([-1.0, 0.0, 1.0]),
                      "float16", settings=recipe_entropy(context_model="iid", lane_count=1))
        w.add_raw("raw", np.arange(6, dtype=np.float32))
    return written(populate, {"model_name": "base", "flag": True})


def header_edit(change, **options):
    """A recipe body that applies ``change(header, payloads)`` to the base file."""
    return lambda: mutate_header(invalid_base(), change, **options)


def _body(header, position=0):
    return header["tensors"][position]["body"]


def _define_invalid() -> None:
    B = ErrorCode
    simple = [
        # name, code, sections, description, change(header, payloads)
        ("dtype_unknown", B.UNSUPPORTED_FEATURE, ("5.2", "3.2"), "dtype 77 is not a TensorDtype",
         lambda h, p: h["tensors"][0].update(dtype=77)),
        ("context_model_unknown", B.UNSUPPORTED_FEATURE, ("7.2", "3.2"), "context_model 9",
         lambda h, p: _body(h).update(context_model=9)),
        ("escape_mode_unknown", B.UNSUPPORTED_FEATURE, ("7.2", "3.2"), "escape_mode 5",
         lambda h, p: _body(h).update(escape_mode=5)),
        ("transform_kind_unknown", B.UNSUPPORTED_FEATURE, ("6.4", "3.2"), "transform_kind 4",
         lambda h, p: _body(h).update(transform_kind=4)),
        ("extension_required_unknown", B.UNSUPPORTED_FEATURE, ("3.4", "4.5"),
         "a required extension of unknown type in the file's list",
         lambda h, p: h["extensions"].update(extension_count=1, extensions=[
             dict(extension_type=3, extension_flags=1, body=b"")])),
        ("tensor_extension_required_unknown", B.UNSUPPORTED_FEATURE, ("3.4", "5.6"),
         "a required extension of unknown type in a tensor's list",
         lambda h, p: h["tensors"][1]["extensions"].update(extension_count=1, extensions=[
             dict(extension_type=9, extension_flags=1, body=b"xyz")])),
        ("extension_flags_reserved", B.RESERVED_VALUE, ("3.4", "2.5"),
         "extension flag bit 2 set (reserved), on an optional extension",
         lambda h, p: h["extensions"].update(extension_count=1, extensions=[
             dict(extension_type=3, extension_flags=4, body=b"")])),
        ("rans_reserved0", B.RESERVED_VALUE, ("7.2", "2.5"), "RansBody _reserved0 = 1",
         lambda h, p: _body(h).update(_reserved0=1)),
        ("transform_tensor_without_transform", B.RESERVED_VALUE, ("6.3",),
         "transform_tensor 2 with transform_kind NONE",
         lambda h, p: _body(h).update(transform_tensor=2)),
        ("name_duplicate", B.DUPLICATE_NAME, ("5.2",), "two tensors named 'coded'",
         lambda h, p: h["tensors"][1].update(name="coded")),
        ("name_empty", B.INVALID_VALUE, ("5.2",), "an empty tensor name",
         lambda h, p: h["tensors"][1].update(name="")),
        ("name_too_long", B.LIMIT_EXCEEDED, ("5.2", "9"), "a 4097-byte tensor name",
         lambda h, p: h["tensors"][1].update(name="x" * 4097)),
        ("metadata_key_duplicate", B.DUPLICATE_KEY, ("5.5",), "a file metadata key twice",
         lambda h, p: h["metadata"].update(entry_count=3, entries=h["metadata"]["entries"]
                                           + h["metadata"]["entries"][:1])),
        ("metadata_key_too_long", B.LIMIT_EXCEEDED, ("5.5", "9"), "a 257-byte metadata key",
         lambda h, p: h["metadata"]["entries"][0].update(key="k" * 257)),
        ("metadata_bool_value", B.INVALID_VALUE, ("5.5",), "a BOOL metadata value of 2",
         lambda h, p: h["metadata"]["entries"][1].update(value=2)),
        ("table_sum_wrong", B.TABLE_SUM, ("7.2",), "a frequency table summing to more than "
         "2^precision_bits", lambda h, p: _body(h)["tables"][0]["frequencies"].__setitem__(
             0, _body(h)["tables"][0]["frequencies"][0] + 1)),
        ("precision_bits_17", B.LIMIT_EXCEEDED, ("7.2", "9"), "precision_bits 17",
         lambda h, p: _body(h).update(precision_bits=17)),
        ("precision_bits_0", B.INVALID_VALUE, ("7.2",), "precision_bits 0",
         lambda h, p: _body(h).update(precision_bits=0)),
        ("lane_count_0", B.INVALID_VALUE, ("7.2",), "lane_count 0",
         lambda h, p: _body(h).update(lane_count=0)),
        ("iid_with_two_tables", B.INVALID_VALUE, ("7.4",), "IID context with context_count 2",
         lambda h, p: _body(h, 1).update(context_count=2, tables=_body(h, 1)["tables"] * 2)),
        ("previous_with_one_table", B.INVALID_VALUE, ("7.4",),
         "PREVIOUS_INDEX context with context_count 1",
         lambda h, p: _body(h).update(context_count=1, tables=_body(h)["tables"][:1])),
        ("step_zero", B.INVALID_VALUE, ("6.1",), "a UNIFORM step of +0.0",
         lambda h, p: _body(h)["grid"].update(steps=[0.0])),
        ("step_negative_zero", B.INVALID_VALUE, ("6.1",), "a UNIFORM step of -0.0",
         lambda h, p: _body(h)["grid"].update(steps=[-0.0])),
        ("step_nan", B.INVALID_VALUE, ("6.1",), "a UNIFORM step of NaN",
         lambda h, p: _body(h)["grid"].update(steps=[math.nan])),
        ("step_infinite", B.INVALID_VALUE, ("6.1",), "a UNIFORM step of +infinity",
         lambda h, p: _body(h)["grid"].update(steps=[math.inf])),
        ("group_count_wrong", B.INVALID_VALUE, ("6.1",), "group_count 2 with rows_per_group 0",
         lambda h, p: _body(h)["grid"].update(group_count=2, steps=[1.0, 1.0])),
        ("has_zero_point_2", B.INVALID_VALUE, ("6.1",), "has_zero_point 2",
         lambda h, p: _body(h)["grid"].update(has_zero_point=2, zero_points=[0])),
        ("zero_point_out_of_range", B.INVALID_VALUE, ("6.1", "9"), "a zero point of 2^23",
         lambda h, p: _body(h)["grid"].update(has_zero_point=1, zero_points=[1 << 23])),
        ("codebook_empty", B.INVALID_VALUE, ("6.2",), "codebook_size 0",
         lambda h, p: _body(h, 1)["grid"].update(codebook_size=0, codebook_values=[])),
        ("codebook_value_infinite", B.INVALID_VALUE, ("6.2",), "an infinite codebook value",
         lambda h, p: _body(h, 1)["grid"].update(codebook_values=[-1.0, math.inf, 1.0])),
        ("codebook_last_index_out_of_range", B.INVALID_VALUE, ("6.2", "9"),
         "first_index + codebook_size - 1 beyond 2^23 - 1",
         lambda h, p: _body(h, 1)["grid"].update(first_index=(1 << 23) - 2)),
        ("rows_per_chunk_wrong", B.INVALID_VALUE, ("7.1",), "rows_per_chunk 1 for 2 chunks of "
         "4 rows", lambda h, p: _body(h).update(rows_per_chunk=1)),
        ("rows_per_chunk_0", B.INVALID_VALUE, ("7.1",), "rows_per_chunk 0",
         lambda h, p: _body(h).update(rows_per_chunk=0)),
        ("coded_row_length_wrong", B.INVALID_VALUE, ("6.3",), "coded_row_length 7 without "
         "transform for rows of 12", lambda h, p: _body(h).update(coded_row_length=7)),
        ("coded_row_length_over_limit", B.LIMIT_EXCEEDED, ("6.3", "9"),
         "coded_row_length 2^40 + 1", lambda h, p: _body(h).update(coded_row_length=(1 << 40) + 1)),
        ("transform_missing_tensor", B.INVALID_REFERENCE, ("6.4",),
         "transform_tensor 5 in a file of 3 tensors",
         lambda h, p: _body(h).update(transform_kind=1, transform_tensor=5)),
        ("transform_self", B.INVALID_REFERENCE, ("6.4",), "a transform naming its own tensor",
         lambda h, p: _body(h).update(transform_kind=1, transform_tensor=0)),
        ("transform_wrong_shape", B.INVALID_REFERENCE, ("6.4",),
         "a transform naming a rank-1 tensor",
         lambda h, p: _body(h).update(transform_kind=1, transform_tensor=2)),
        ("index_offset_out_of_range", B.INVALID_VALUE, ("7.2", "9"), "index_offset 2^23",
         lambda h, p: _body(h).update(index_offset=1 << 23)),
        ("largest_direct_index_out_of_range", B.INVALID_VALUE, ("7.2", "7.5"),
         "index_offset + alphabet_size - 1 beyond 2^23 - 1",
         lambda h, p: _body(h).update(index_offset=(1 << 23) - 5)),
        ("context_center_out_of_range", B.INVALID_VALUE, ("7.2",), "context_center -2^23",
         lambda h, p: _body(h).update(context_center=-(1 << 23))),
        ("alphabet_size_0", B.INVALID_VALUE, ("7.2",), "alphabet_size 0 with empty tables",
         lambda h, p: _body(h).update(alphabet_size=0, tables=[dict(frequencies=[])] * 3)),
        ("raw_size_wrong", B.INVALID_VALUE, ("5.3",), "a raw float32 tensor of 6 elements "
         "declared float16", lambda h, p: h["tensors"][2].update(dtype=2)),
        ("raw_bool_size_wrong", B.INVALID_VALUE, ("5.3",), "a raw tensor of 24 bytes declared "
         "BOOL (6 bytes)", lambda h, p: h["tensors"][2].update(dtype=10)),
        ("rans_dtype_not_float", B.INVALID_VALUE, ("5.3",), "a coded tensor with dtype INT32",
         lambda h, p: h["tensors"][1].update(dtype=8)),
        ("dimension_over_limit", B.LIMIT_EXCEEDED, ("5.1", "9"), "a dimension of 2^40 + 1",
         lambda h, p: h["tensors"][0]["shape"].__setitem__(0, (1 << 40) + 1)),
        ("element_count_over_limit", B.LIMIT_EXCEEDED, ("5.1", "2.4", "9"),
         "dimensions within the limit whose product exceeds 2^40",
         lambda h, p: h["tensors"][2].update(rank=2, shape=[1 << 21, 1 << 20])),
        ("chunk_count_wrong", B.INVALID_VALUE, ("7.1",), "rows_per_chunk 4 (1 chunk) with 2 "
         "entry points", lambda h, p: _body(h).update(rows_per_chunk=4)),
    ]
    for name, code, sections, description, change in simple:
        invalid(name, code, sections, description)(header_edit(change))


_define_invalid()


@invalid("payload_offset_not_canonical", ErrorCode.PAYLOAD_LAYOUT, ("4.7",),
         "the raw payload 64 bytes after its canonical offset")
def _layout_gap() -> bytes:
    header, payloads = split_file(invalid_base())
    header["tensors"][2]["body"]["payload"]["offset"] += 64
    return assemble(header, payloads, fix_offsets=False)


@invalid("payloads_overlapping", ErrorCode.PAYLOAD_LAYOUT, ("4.7",),
         "the second chunk's entry point equal to the first chunk's offset (overlap)")
def _overlap() -> bytes:
    header, payloads = split_file(invalid_base())
    chunks = _body(header)["chunks"]
    chunks[1]["offset"] = chunks[0]["offset"]
    return assemble(header, payloads, fix_offsets=False)


@invalid("payload_offset_beyond_file", ErrorCode.PAYLOAD_LAYOUT, ("4.7", "2.4"),
         "a chunk offset near 2^64 (offset + size would wrap in 64 bits)")
def _offset_huge() -> bytes:
    header, payloads = split_file(invalid_base())
    _body(header)["chunks"][0]["offset"] = (1 << 64) - 8
    return assemble(header, payloads, fix_offsets=False)


@invalid("payload_size_beyond_file", ErrorCode.TRUNCATED, ("4.7", "2.4"),
         "a chunk's size of 2^32 (the limit) runs past the end of the file")
def _size_huge() -> bytes:
    header, payloads = split_file(invalid_base())
    _body(header, 1)["chunks"][0]["size"] = 1 << 32
    return assemble(header, payloads, fix_offsets=False)


def _byte_field(path: str, value: int):
    return lambda: patch_field(invalid_base(), path, bytes([value]))


# Unknown enumeration values whose structures cannot be built from a dict: one byte patched.
for _name, _sections, _path, _value in [
    ("coding_unknown", ("5.3", "3.2"), "header.tensors[2].coding", 9),
    ("grid_kind_unknown", ("6", "3.2"), "header.tensors[0].body.grid_kind", 7),
    ("metadata_type_unknown", ("5.5", "3.2"), "header.metadata.entries[0].value_type", 6),
]:
    invalid(_name, ErrorCode.UNSUPPORTED_FEATURE, _sections,
            f"{_path.rsplit('.', 1)[1]} {_value} is not defined in 1.0")(_byte_field(_path, _value))


@invalid("chunk_symbols_over_limit", ErrorCode.LIMIT_EXCEEDED, ("7.1", "9"),
         "one chunk of 2^32 + 1 symbols (a 1 x (2^32 + 1) tensor)")
def _chunk_symbols() -> bytes:
    def change(header, payloads):
        body = _body(header)
        header["tensors"][0]["shape"] = [1, (1 << 32) + 1]
        body.update(coded_row_length=(1 << 32) + 1, rows_per_chunk=1, chunk_count=1,
                    chunks=body["chunks"][:1])
        del payloads[1]
    return mutate_header(invalid_base(), change)


@invalid("chunk_size_over_limit", ErrorCode.LIMIT_EXCEEDED, ("7.1", "9"),
         "a chunk size of 2^32 + 1 bytes in the entry-point table")
def _chunk_size() -> bytes:
    header, payloads = split_file(invalid_base())
    _body(header)["chunks"][1]["size"] = (1 << 32) + 1
    return assemble(header, payloads, fix_offsets=False)


@invalid("nonzero_padding", ErrorCode.NONZERO_PADDING, ("4.7",),
         "a padding byte before the first payload is 0xAA")
def _padding() -> bytes:
    data = invalid_base()
    header, _ = split_file(data)
    first = _body(header)["chunks"][0]["offset"]
    return data[:first - 1] + b"\xaa" + data[first:]


@invalid("trailing_bytes", ErrorCode.TRAILING_BYTES, ("4.7",), "one zero byte after the last "
         "payload")
def _trailing() -> bytes:
    return invalid_base() + b"\0"


@invalid("bad_magic", ErrorCode.BAD_MAGIC, ("4.2", "4.8"), "a ZIP signature instead of the magic")
def _bad_magic() -> bytes:
    return b"PK\x03\x04" + invalid_base()[4:]


@invalid("bad_magic_short", ErrorCode.BAD_MAGIC, ("4.8",), "a 5-byte file that is not a prefix "
         "of the magic")
def _bad_magic_short() -> bytes:
    return b"hello"


@invalid("magic_text_mode", ErrorCode.BAD_MAGIC, ("4.2",), "the magic after a text-mode "
         "transfer turned CR LF into LF")
def _text_mode() -> bytes:
    data = invalid_base()
    return data[:4] + b"\n" + data[6:]


@invalid("empty_file", ErrorCode.TRUNCATED, ("4.8",), "a file of 0 bytes")
def _empty() -> bytes:
    return b""


@invalid("major_version_2", ErrorCode.UNSUPPORTED_VERSION, ("3.1", "4.8"), "major_version 2")
def _major() -> bytes:
    return patch(invalid_base(), 8, struct.pack("<H", 2))


@invalid("required_feature_unknown", ErrorCode.UNSUPPORTED_FEATURE, ("3.3", "4.8"),
         "required_features bit 5")
def _required_feature() -> bytes:
    header, payloads = split_file(invalid_base())
    return assemble(header, payloads, required_features=1 << 5)


@invalid("preamble_reserved", ErrorCode.RESERVED_VALUE, ("4.2", "2.5"), "preamble _reserved0 = 1")
def _preamble_reserved() -> bytes:
    return patch(invalid_base(), 28, b"\x01")


@invalid("header_size_over_limit", ErrorCode.LIMIT_EXCEEDED, ("4.8", "9"), "header_size 2^29")
def _header_limit() -> bytes:
    return patch(invalid_base(), 16, struct.pack("<Q", 1 << 29), fix_checksum=False)


@invalid("header_checksum_wrong", ErrorCode.CHECKSUM_HEADER, ("8.2",), "one header bit flipped, "
         "checksum not updated")
def _header_crc() -> bytes:
    data = bytearray(invalid_base())
    data[40] ^= 0x01
    return bytes(data)


@invalid("payload_checksum_wrong", ErrorCode.CHECKSUM_PAYLOAD, ("8.3",), "one byte of the raw "
         "payload flipped, checksum not updated")
def _payload_crc() -> bytes:
    data = invalid_base()
    header, _ = split_file(data)
    offset = header["tensors"][2]["body"]["payload"]["offset"]
    return data[:offset] + bytes([data[offset] ^ 0xFF]) + data[offset + 1:]


@invalid("payload_checksum_wrong_shared_offset", ErrorCode.CHECKSUM_PAYLOAD, ("8.3", "4.7"),
         "two zero-size payloads at the same offset (canonical, spec 4.7); the second's CRC-32C "
         "is 0xdeadbeef instead of 0 (issue 17: a decoder that remembers checked payloads by "
         "offset and size alone accepts it)")
def _payload_crc_shared_offset() -> bytes:
    def populate(w):
        w.add_raw("first", np.zeros(0, np.float32))
        w.add_raw("second", np.zeros(0, np.float32))

    header, payloads = split_file(written(populate))
    data = assemble(header, payloads)
    header, payloads = split_file(data)
    header["tensors"][1]["body"]["payload"]["crc32c"] = 0xDEADBEEF
    return assemble(header, payloads, fix_checksums=False)


@invalid("header_size_short", ErrorCode.HEADER_SIZE_MISMATCH, ("4.3",), "header_size one byte "
         "less than the header's structures")
def _header_short() -> bytes:
    data = invalid_base()
    size = struct.unpack_from("<Q", data, 16)[0]
    return patch(data, 16, struct.pack("<Q", size - 1))


@invalid("header_size_long", ErrorCode.HEADER_SIZE_MISMATCH, ("4.3",), "header_size one byte "
         "more than the header's structures")
def _header_long() -> bytes:
    data = invalid_base()
    size = struct.unpack_from("<Q", data, 16)[0]
    return patch(data, 16, struct.pack("<Q", size + 1))


@invalid("sized_field_overrun", ErrorCode.INVALID_VALUE, ("2.1",), "a grid whose u32 size is "
         "one byte short of its content")
def _sized_overrun() -> bytes:
    data = invalid_base()
    start, end = field_offset(data, "header.tensors[0].body.grid (size)")
    size = struct.unpack_from("<I", data, start)[0]
    return patch(data, start, struct.pack("<I", size - 1))


@invalid("grid_size_past_body_and_header", ErrorCode.INVALID_VALUE, ("2.1",), "a grid whose u32 "
         "size is 2^32 - 1, past the end of its RansBody and of the Header: the body's fault")
def _grid_size_past_both() -> bytes:
    return patch_field(invalid_base(), "header.tensors[0].body.grid (size)",
                       struct.pack("<I", 0xFFFFFFFF))


@invalid("body_size_past_header", ErrorCode.HEADER_SIZE_MISMATCH, ("2.1", "4.3"), "a tensor body "
         "whose u32 size is 2^32 - 1, past the end of the Header")
def _body_size_past_header() -> bytes:
    return patch_field(invalid_base(), "header.tensors[2].body (size)",
                       struct.pack("<I", 0xFFFFFFFF))


@invalid("grid_kind_unknown_short_grid", ErrorCode.UNSUPPORTED_FEATURE, ("4.8", "6", "3.2"),
         "grid_kind 7 with a grid of 3 bytes, too few for any known grid: skipped, not parsed")
def _grid_kind_short_grid() -> bytes:
    def change(header, payloads):
        _body(header).update(grid_kind=7, grid=b"\x01\x02\x03")
    return mutate_header(invalid_base(), change)


@invalid("extension_flags_reserved_and_required", ErrorCode.RESERVED_VALUE, ("3.4", "2.5"),
         "an extension of unknown type with flags 0x0003: required, and reserved bit 1 set; the "
         "reserved bits are checked first")
def _extension_reserved_and_required() -> bytes:
    def change(header, payloads):
        header["extensions"].update(extension_count=1, extensions=[
            dict(extension_type=3, extension_flags=3, body=b"")])
    return mutate_header(invalid_base(), change)


@invalid("chunk_damaged_checksum_stale", ErrorCode.CHECKSUM_PAYLOAD, ("4.8", "8.3", "7.3"),
         "a chunk whose first lane state is damaged to 5, checksum not updated: the checksum is "
         "verified before the chunk is decoded")
def _chunk_damaged_checksum_stale() -> bytes:
    header, payloads = split_file(invalid_base())
    payloads[1] = payloads[1][:8] + struct.pack("<I", 5) + payloads[1][12:]
    return assemble(header, payloads, fix_checksums=False)


@invalid("metadata_int64_size", ErrorCode.INVALID_VALUE, ("5.5", "2.1"), "an INT64 metadata "
         "value of 4 bytes")
def _metadata_size() -> bytes:
    def change(header, payloads):
        header["metadata"]["entries"][1].update(value_type=5, value=b"1234")  # BYTES, 4 bytes
    data = mutate_header(invalid_base(), change)
    start, _ = field_offset(data, "header.metadata.entries[1].value_type")
    return patch(data, start, b"\x02")  # now INT64 with a 4-byte value


def _varint_start(data: bytes, value_bytes: int) -> int:
    for start, end, path, _ in field_rows(data):
        if ".frequencies" in path:
            raw = data[start:end]
            position = 0
            while position < len(raw):
                length = 1
                while raw[position + length - 1] & 0x80:
                    length += 1
                if length == value_bytes:
                    return start + position
                position += length
    raise ValueError(f"no {value_bytes}-byte varint")


@invalid("varint_not_minimal", ErrorCode.INVALID_VALUE, ("2.2",), "a 2-byte varint whose last "
         "byte is 0x00")
def _varint_minimal() -> bytes:
    data = invalid_base()
    start = _varint_start(data, 2)
    return patch(data, start, bytes([data[start] | 0x80, 0x00]))


@invalid("varint_too_long", ErrorCode.INVALID_VALUE, ("2.2",), "a varint whose third byte has "
         "its continuation bit set")
def _varint_long() -> bytes:
    data = written(lambda w: w.add_indices("t", np.array([0, 1, 1, 1, 1]), UniformGrid(1.0),
                                           settings=recipe_entropy(precision_bits=16,
                                                                    context_model="iid")))
    start = _varint_start(data, 3)
    return patch(data, start + 2, bytes([data[start + 2] | 0x80]))


@invalid("name_not_utf8", ErrorCode.INVALID_VALUE, ("2.3",), "a tensor name with an overlong "
         "UTF-8 sequence (C0 AF)")
def _name_utf8() -> bytes:
    data = invalid_base()
    start, end = field_offset(data, "header.tensors[2].name")
    return patch(data, start + 2, b"\xc0\xaf\x77")  # 'raw' -> overlong '/' + 'w'


@invalid("metadata_string_surrogate", ErrorCode.INVALID_VALUE, ("2.3", "5.5"), "a STRING value "
         "holding an encoded surrogate (ED A0 80)")
def _string_surrogate() -> bytes:
    def change(header, payloads):
        header["metadata"]["entries"][0].update(value="abc")
    data = mutate_header(invalid_base(), change)
    start, end = field_offset(data, "header.metadata.entries[0].value")
    return patch(data, end - 3, b"\xed\xa0\x80")


def _count_patch(path: str, value: int):
    def build() -> bytes:
        data = invalid_base()
        start, end = field_offset(data, path)
        return patch(data, start, value.to_bytes(end - start, "little"))
    return build


for _name, _path, _value, _description in [
    ("tensor_count_over_limit", "header.tensor_count", (1 << 20) + 1, "tensor_count 2^20 + 1"),
    ("entry_count_over_limit", "header.metadata.entry_count", 65537, "entry_count 65537"),
    ("extension_count_over_limit", "header.extensions.extension_count", 257,
     "extension_count 257"),
    ("rank_over_limit", "header.tensors[2].rank", 9, "rank 9"),
    ("group_count_over_limit", "header.tensors[0].body.grid.group_count", (1 << 24) + 1,
     "group_count 2^24 + 1"),
    ("codebook_size_over_limit", "header.tensors[1].body.grid.codebook_size", 65537,
     "codebook_size 65537"),
    ("lane_count_over_limit", "header.tensors[0].body.lane_count", 33, "lane_count 33"),
    ("context_count_over_limit", "header.tensors[0].body.context_count", 17, "context_count 17"),
    ("alphabet_size_over_limit", "header.tensors[0].body.alphabet_size", 65537,
     "alphabet_size 65537"),
    ("chunk_count_over_limit", "header.tensors[0].body.chunk_count", (1 << 24) + 1,
     "chunk_count 2^24 + 1"),
]:
    invalid(_name, ErrorCode.LIMIT_EXCEEDED, ("4.8", "9"),
            f"{_description}, checked as soon as it is read")(_count_patch(_path, _value))


def _chunk_edit(edit, position: int = 0):
    def build() -> bytes:
        header, payloads = split_file(invalid_base())
        payloads[position] = edit(payloads[position])
        return assemble(header, payloads)
    return build


for _name, _code, _sections, _description, _edit in [
    ("chunk_shorter_than_4_bytes", ErrorCode.STREAM_TRUNCATED, ("7.3",),
     "a chunk of 2 bytes", lambda c: c[:2]),
    ("chunk_shorter_than_fixed_part", ErrorCode.STREAM_TRUNCATED, ("7.3",),
     "a chunk that ends inside its lane states", lambda c: c[:4 + 4 + 6]),
    ("words_run_out", ErrorCode.STREAM_TRUNCATED, ("7.6",), "the last word of a chunk removed",
     lambda c: c[:-2]),
    ("words_left_over", ErrorCode.STREAM_TRAILING_DATA, ("7.7",), "one extra word after the "
     "last one read", lambda c: c + b"\0\0"),
    ("word_area_odd", ErrorCode.STREAM_TRAILING_DATA, ("7.3",), "an odd number of bytes after "
     "the lane states", lambda c: c + b"\0"),
    ("lane_state_below_2_16", ErrorCode.RANS_STATE_OUT_OF_RANGE, ("7.3",),
     "the first lane state is 5", lambda c: c[:8] + struct.pack("<I", 5) + c[12:]),
    ("escape_value_missing", ErrorCode.ESCAPE_MISMATCH, ("7.5", "7.6"),
     "escape_count 0 in a chunk with an escape symbol",
     lambda c: struct.pack("<I", 0) + c[8:]),
    ("escape_value_left_over", ErrorCode.ESCAPE_MISMATCH, ("7.7",),
     "two escape values where one is used", lambda c: struct.pack("<I", 2) + c[4:8] + c[4:]),
    ("escape_value_direct", ErrorCode.ESCAPE_MISMATCH, ("7.5",),
     "an escape value that is a direct index", lambda c: c[:4] + struct.pack("<i", 1) + c[8:]),
]:
    invalid(_name, _code, _sections, _description)(_chunk_edit(_edit))


@invalid("final_state_wrong", ErrorCode.RANS_FINAL_STATE, ("7.7",), "a lane state changed so "
         "that the lane ends in another state than 2^16")
def _final_state() -> bytes:
    data = written(lambda w: w.add_indices("zeros", np.zeros((2, 4), np.int64), UniformGrid(1.0),
                                           settings=recipe_entropy(lane_count=1,
                                                                    context_model="iid")))
    header, payloads = split_file(data)
    # one-symbol table: the state never changes, so a start state of 2^16 + 1 ends there
    payloads[0] = payloads[0][:4] + struct.pack("<I", RANS_STATE_LOWER_BOUND + 1) + payloads[0][8:]
    return assemble(header, payloads)


@invalid("escape_value_out_of_range", ErrorCode.ESCAPE_MISMATCH, ("7.5", "9"),
         "an escape value of 2^23 in an escape-only alphabet")
def _escape_range() -> bytes:
    return escape_only_file("e", np.array([[3, 1 << 23]]), lane_count=1, step=1.0)


@invalid("codebook_index_out_of_range", ErrorCode.INDEX_OUT_OF_RANGE, ("6.2", "7.6"),
         "index 2 decoded for a codebook of 2 values")
def _index_range() -> bytes:
    header, payloads = split_file(invalid_base())
    _body(header, 1)["grid"].update(codebook_size=2, codebook_values=[-1.0, 0.0])
    return assemble(header, payloads)


@invalid("raw_bool_byte_2", ErrorCode.INVALID_VALUE, ("5.3",), "a raw BOOL byte of 2")
def _bool_byte() -> bytes:
    data = written(lambda w: w.add_raw("flags", np.array([True, False, True])))
    header, _ = split_file(data)
    return assemble(header, [b"\x01\x02\x00"])


def _truncations() -> None:
    """The base file cut at every structural boundary: after each field of the preamble and the
    header, and inside and at the end of each payload (spec §4.8 steps 1 and 7, §4.7)."""
    data = invalid_base()
    cuts = sorted({end for _, end, _, _ in field_rows(data) if end < len(data)}
                  | {start for start, _, _, _ in field_rows(data) if start > 0})
    for cut in cuts:
        invalid(f"truncated_at_{cut:04d}", ErrorCode.TRUNCATED, ("4.8", "4.7"),
                f"the base file cut to its first {cut} bytes")(lambda cut=cut: invalid_base()[:cut])


_truncations()


# ---------------------------------------------------------------------------------------------
# Format 1.1: the UNIFORM_TRELLIS grid (spec §6.6)
# ---------------------------------------------------------------------------------------------

def _trellis_file() -> bytes:
    return written(lambda w: w.add_indices(
        "t", laplace_indices((4, 6), 2.0, 44), UniformGrid(0.25, trellis=True), "float32"))


@invalid("trellis_without_feature_bit", ErrorCode.INVALID_VALUE, ("6.6", "3.3", "4.9"),
         "a UNIFORM_TRELLIS grid in a file whose required_features is 0 (a 1.0 decoder does "
         "not know grid_kind 3: unsupported_feature)",
         earlier_errors=(("1.0", ErrorCode.UNSUPPORTED_FEATURE),))
def _trellis_without_bit() -> bytes:
    header, payloads = split_file(_trellis_file())
    return assemble(header, payloads, required_features=0)


@invalid("trellis_zero_point", ErrorCode.INVALID_VALUE, ("6.6",),
         "a UNIFORM_TRELLIS grid with has_zero_point 1 (zero point 0)")
def _trellis_zero_point() -> bytes:
    def change(header, payloads):
        grid = header["tensors"][0]["body"]["grid"]
        grid.update(has_zero_point=1, zero_points=[0])
    return mutate_header(_trellis_file(), change)

