"""Self-test of the spec-literal decoder (conformance/spec_literal_decoder.py), kept beside it so
that the decoder stays one file in the specification's order.

It checks the decoder against Annex A (copied here and read from spec/nrd-format.md), the
rounding of §2.4 / §6.5, mutations of Annex A for each step of §4.8, the order of the rules of
§4.9, and files built by a small Annex B encoder written here (every dtype, metadata, extensions,
rANS variants), which the decoder must decode back or reject with the right error.

    python -m nncodec_rd.conformance.spec_literal_selftest

tests/conformance/test_spec_literal_selftest.py runs it with the test suite.
"""

from __future__ import annotations

import collections
import math
import os
import struct
import sys

from .spec_literal_decoder import (BINARY32, CODING_RANS, CODING_RAW, CONTEXT_IID,
    CONTEXT_PREVIOUS_INDEX, DTYPES, DTYPE_BOOL, ERROR_CODES, ESCAPE_LAST_SYMBOL, ESCAPE_NONE,
    FEATURE_TRELLIS, GRID_CODEBOOK, GRID_UNIFORM, GRID_UNIFORM_TRELLIS, MAGIC, META_BOOL, META_BYTES, META_FLOAT64, META_INT64,
    META_STRING, STATE_LOW, SpecError, UniformGrid, bfloat16_bits, ceil_div, crc32c, decode_file,
    decode_indices, f32_from_bits, float16_bits, is_inf, is_nan, parse_header, read_file_header,
    read_preamble, rn32_of_f64, uniform_value)
from .spec_literal_decoder import main as _decoder_main

# Annex A, copied verbatim from spec/nrd-format.md.
_ANNEX_A_HEX = """
00000000  89 4e 52 44 0d 0a 1a 0a 01 00 00 00 00 00 00 00
00000010  83 00 00 00 00 00 00 00 f0 1c cb b5 00 00 00 00
00000020  00 00 00 00 01 00 00 00 01 00 77 01 02 03 00 00
00000030  00 00 00 00 00 04 00 00 00 00 00 00 00 01 59 00
00000040  00 00 01 11 00 00 00 00 00 00 00 00 00 00 00 01
00000050  00 00 00 00 00 00 00 3f 00 00 00 00 00 04 00 00
00000060  00 00 00 00 00 04 01 00 01 00 00 00 00 00 00 ff
00000070  ff ff ff 04 00 00 00 03 09 03 01 03 00 00 00 00
00000080  00 00 00 01 00 00 00 c0 00 00 00 00 00 00 00 0a
00000090  00 00 00 00 00 00 00 c4 07 3a 5c 00 00 00 00 00
000000a0  00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
000000b0  00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
000000c0  00 00 00 00 f9 15 0b 00 73 7f
"""

# Annex A decoding trace: i, lane, state before, slot, symbol, state after
# step, word read, state after, index.
_ANNEX_A_TRACE = """
| 0 | 0 | 0x000b15f9 | 9 | 1 | 0x00063c5d | - | 0x00063c5d | 0 |
| 1 | 0 | 0x00063c5d | 13 | 2 | 0x00012b50 | - | 0x00012b50 | 1 |
| 2 | 0 | 0x00012b50 | 0 | 0 | 0x0000381f | 0x7f73 | 0x381f7f73 | -1 |
| 3 | 0 | 0x381f7f73 | 3 | 1 | 0x1f91b7af | - | 0x1f91b7af | 0 |
| 4 | 0 | 0x1f91b7af | 15 | 3 | 0x01f91b7a | - | 0x01f91b7a | 2 |
| 5 | 0 | 0x01f91b7a | 10 | 1 | 0x011c1f76 | - | 0x011c1f76 | 0 |
| 6 | 0 | 0x011c1f76 | 6 | 1 | 0x009fd1b2 | - | 0x009fd1b2 | 0 |
| 7 | 0 | 0x009fd1b2 | 2 | 0 | 0x001df753 | - | 0x001df753 | -1 |
| 8 | 0 | 0x001df753 | 3 | 1 | 0x0010db1d | - | 0x0010db1d | 0 |
| 9 | 0 | 0x0010db1d | 13 | 2 | 0x00032914 | - | 0x00032914 | 1 |
| 10 | 0 | 0x00032914 | 4 | 1 | 0x0001c71a | - | 0x0001c71a | 0 |
| 11 | 0 | 0x0001c71a | 10 | 1 | 0x00010000 | - | 0x00010000 | 0 |
"""

_ANNEX_A_INDICES = [0, 1, -1, 0, 2, 0, 0, -1, 0, 1, 0, 0]
_ANNEX_A_BITS = """
00000000 3f000000 bf000000 00000000
3f800000 00000000 00000000 bf000000
00000000 3f000000 00000000 00000000
"""


def _parse_hexdump(text):
    out = bytearray()
    for line in text.strip().splitlines():
        parts = line.split()
        if not parts or not all(len(x) == 2 for x in parts[1:]):
            continue
        assert int(parts[0], 16) == len(out), "hex dump offsets must be contiguous"
        out.extend(int(x, 16) for x in parts[1:])
    return bytes(out)


def _annex_from_spec_file():
    """The Annex A hex dump as found in spec/nrd-format.md (if present)."""
    here = os.path.dirname(os.path.abspath(__file__))
    path = os.path.join(here, os.pardir, "spec", "nrd-format.md")
    if not os.path.exists(path):
        return None
    text = open(path, encoding="utf-8").read()
    start = text.index("## Annex A")
    block = text[start:].split("```text", 1)[1].split("```", 1)[0]
    return _parse_hexdump(block)


# --- little builders for test files ------------------------------------------

def _u8(v): return struct.pack("<B", v)
def _u16(v): return struct.pack("<H", v)
def _u32(v): return struct.pack("<I", v)
def _u64(v): return struct.pack("<Q", v)
def _i32(v): return struct.pack("<i", v)
def _f32(x): return struct.pack("<f", x)
def _str16(b): return _u16(len(b)) + b
def _sized(b): return _u32(len(b)) + b


def _varint(v):
    out = bytearray()
    while True:
        byte = v & 0x7F
        v >>= 7
        if v:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


_EMPTY_META = _u32(0)
_EMPTY_EXT = _u16(0)


def _meta(entries):
    """entries: list of (key bytes, value_type, value bytes)."""
    return _u32(len(entries)) + b"".join(_str16(k) + _u8(t) + _sized(v) for k, t, v in entries)


def _exts(exts):
    """exts: list of (type, flags, body bytes)."""
    return _u16(len(exts)) + b"".join(_u16(t) + _u16(f) + _sized(b) for t, f, b in exts)


class _T:
    """A tensor to build: payloads plus a function from their PayloadRef bytes
    to the record body."""

    def __init__(self, name, dtype, shape, coding, payloads, body_fn, meta=_EMPTY_META, ext=_EMPTY_EXT):
        self.name, self.dtype, self.shape, self.coding = name, dtype, shape, coding
        self.payloads, self.body_fn, self.meta, self.ext = payloads, body_fn, meta, ext

    def record(self, refs):
        return (_str16(self.name) + _u8(self.dtype) + _u8(len(self.shape))
                + b"".join(_u64(d) for d in self.shape) + _u8(self.coding)
                + _sized(self.body_fn(refs)) + self.meta + self.ext)


def _raw_tensor(name, dtype, shape, payload, **kw):
    return _T(name, dtype, shape, CODING_RAW, [payload], lambda refs: refs[0], **kw)


def _build(tensors, meta=_EMPTY_META, ext=_EMPTY_EXT, major=1, minor=0, features=0):
    """A conforming file (canonical layout, spec §4.7) of these tensors."""
    def header(refs_per_tensor):
        return (meta + _u32(len(tensors))
                + b"".join(t.record(r) for t, r in zip(tensors, refs_per_tensor)) + ext)
    dummy = [[b"\0" * 20] * len(t.payloads) for t in tensors]
    header_size = len(header(dummy))
    end = 32 + header_size
    refs, body = [], bytearray()
    for t in tensors:
        rs = []
        for pl in t.payloads:
            off = ceil_div(end, 64) * 64
            body += b"\0" * (off - end) + pl
            rs.append(_u64(off) + _u64(len(pl)) + _u32(crc32c(pl)))
            end = off + len(pl)
        refs.append(rs)
    hbytes = header(refs)
    assert len(hbytes) == header_size
    pre = MAGIC + _u16(major) + _u16(minor) + _u32(features) + _u64(header_size)
    return pre + _u32(crc32c(pre + hbytes)) + _u32(0) + hbytes + bytes(body)


def _contexts(indices, *, L, context_model, center, context_count):
    """§7.4 contexts of a chunk's symbols, computed forwards (Annex B): the
    context of symbol i comes from p = the index of symbol i - L (the
    previous symbol of the same lane), or p = center for i < L."""
    if context_model == CONTEXT_IID:
        return [0] * len(indices)
    ctxs = []
    for i in range(len(indices)):
        p = indices[i - L] if i >= L else center
        ctxs.append(min(abs(p - center), context_count - 1))
    return ctxs


def _encode_chunk(indices, *, n, L, tables, context_model, center, offset, alphabet, escape_mode,
                  ctxs=None):
    """Annex B: encode one chunk (the inverse of §7.6).  ctxs overrides the
    contexts of §7.4 (a test hook, to code a chunk with other contexts)."""
    D = alphabet if escape_mode == ESCAPE_NONE else alphabet - 1
    syms, escapes = [], []
    if ctxs is None:                                        # contexts forwards
        ctxs = _contexts(indices, L=L, context_model=context_model, center=center,
                         context_count=len(tables))
    for q in indices:
        if offset <= q < offset + D:
            syms.append(q - offset)
        else:
            syms.append(alphabet - 1)
            escapes.append(q)
    starts = []
    for f in tables:
        acc, st = 0, []
        for v in f:
            st.append(acc)
            acc += v
        starts.append(st)
    x = [STATE_LOW] * L
    words = []
    for i in range(len(indices) - 1, -1, -1):              # encode backwards
        l, s, c = i % L, syms[i], ctxs[i]
        f = tables[c][s]
        assert f > 0, "symbol with frequency 0"
        if x[l] >= f << (32 - n):
            words.append(x[l] & 0xFFFF)
            x[l] >>= 16
        x[l] = (x[l] // f << n) + x[l] % f + starts[c][s]
    words.reverse()
    return (_u32(len(escapes)) + b"".join(_i32(v) for v in escapes)
            + b"".join(_u32(v) for v in x) + b"".join(_u16(v) for v in words))


def _uniform_grid(steps, rows_per_group=0, zero_points=None):
    g = _u64(rows_per_group) + _u32(len(steps)) + _u8(1 if zero_points is not None else 0)
    g += b"".join(_f32(s) for s in steps)
    if zero_points is not None:
        g += b"".join(_i32(z) for z in zero_points)
    return g


def _codebook_grid(first_index, values):
    return _u32(len(values)) + _i32(first_index) + b"".join(_f32(v) for v in values)


def _flat_table(alphabet, n):
    M = 1 << n
    base = [M // alphabet] * alphabet
    for i in range(M - sum(base)):
        base[i] += 1
    return base


def _rans_tensor(name, dtype, shape, indices, *, grid_kind=GRID_UNIFORM, grid=None, n=12, L=1,
                 context_model=CONTEXT_IID, tables=None, center=0, offset=-8, alphabet=17,
                 escape_mode=ESCAPE_NONE, rows_per_chunk=None, transform_kind=0, transform_tensor=0,
                 coded_row_length=None, reserved0=0, chunk_count=None, varint=_varint,
                 chunks_fn=None, **kw):
    rows = shape[0] if shape else 1
    row_length = math.prod(shape[1:]) if len(shape) >= 2 else 1
    crl = row_length if coded_row_length is None else coded_row_length
    assert len(indices) == rows * crl
    if grid is None:
        grid = _uniform_grid([0.5])
    if tables is None:
        ccount = 1 if context_model == CONTEXT_IID else 3
        tables = [_flat_table(alphabet, n)] * ccount
    rpc = rows if rows_per_chunk is None else rows_per_chunk
    rpc = max(rpc, 1)
    chunks = []
    if rows * crl:
        for k in range(ceil_div(rows, rpc)):
            part = indices[k * rpc * crl:min((k + 1) * rpc, rows) * crl]
            chunks.append(_encode_chunk(part, n=n, L=L, tables=tables, context_model=context_model,
                                        center=center, offset=offset, alphabet=alphabet,
                                        escape_mode=escape_mode))
    if chunks_fn is not None:                 # test hook: alter the coded chunks
        chunks = chunks_fn(chunks)
    ccount_field = len(chunks) if chunk_count is None else chunk_count

    def body(refs):
        return (_u8(grid_kind) + _sized(grid) + _u8(transform_kind) + _u32(transform_tensor)
                + _u64(crl) + _u8(n) + _u8(L) + _u8(context_model) + _u8(len(tables))
                + _u8(escape_mode) + _u8(reserved0) + _i32(center) + _i32(offset) + _u32(alphabet)
                + b"".join(varint(f) for t in tables for f in t)
                + _u64(rpc) + _u32(ccount_field) + b"".join(refs))
    return _T(name, dtype, shape, CODING_RANS, chunks, body, **kw)


def _rans_record(name=b"w", dtype=1, shape=(3, 4), *, grid_kind=GRID_UNIFORM, grid=None,
                 transform_kind=0, transform_tensor=0, crl=None, n=4, L=1, cm=CONTEXT_IID, cc=None,
                 em=ESCAPE_NONE, r0=0, center=0, offset=-1, alphabet=4, tables=None, rpc=3,
                 chunk_count=None, chunks=None, **kw):
    """A RANS record with every field given literally (defaults: Annex A's,
    with Annex A's chunk as its payload); for step-10 precedence tests whose
    fields need not be consistent."""
    if grid is None:
        grid = _uniform_grid([0.5])
    if tables is None:
        tables = [[3, 9, 3, 1]]
    if crl is None:
        crl = math.prod(shape[1:]) if len(shape) >= 2 else 1
    if chunks is None:
        chunks = [_parse_hexdump(_ANNEX_A_HEX)[192:202]]
    cc = len(tables) if cc is None else cc
    ccount = len(chunks) if chunk_count is None else chunk_count

    def body(refs):
        return (_u8(grid_kind) + _sized(grid) + _u8(transform_kind) + _u32(transform_tensor)
                + _u64(crl) + _u8(n) + _u8(L) + _u8(cm) + _u8(cc) + _u8(em) + _u8(r0)
                + _i32(center) + _i32(offset) + _u32(alphabet)
                + b"".join(_varint(f) for t in tables for f in t)
                + _u64(rpc) + _u32(ccount) + b"".join(refs))
    return _T(name, dtype, shape, CODING_RANS, chunks, body, **kw)


def _fix_header_crc(b):
    b = bytearray(b)
    hs = struct.unpack_from("<Q", b, 16)[0]
    struct.pack_into("<I", b, 24, crc32c(bytes(b[0:24]) + bytes(b[32:32 + hs])))
    return bytes(b)


def _patch(b, offset, new, fix_crc=True):
    b = bytearray(b)
    b[offset:offset + len(new)] = new
    return _fix_header_crc(b) if fix_crc else bytes(b)


_TALLY = [collections.Counter()]


def _expect_error(data, name, label, fn=None, kind="error cases"):
    _TALLY[0][kind] += 1
    try:
        (fn or decode_file)(data)
    except SpecError as exc:
        assert exc.name == name and exc.code == ERROR_CODES[name], \
            f"{label}: expected {name}, got {exc.name} ({exc})"
        return exc
    raise AssertionError(f"{label}: expected {name}, decoded without error")


def _bits_of_f32(x):
    return struct.unpack("<I", struct.pack("<f", x))[0]


def self_test():
    """Run every check; an AssertionError names the first that fails. Returns the
    count of each kind of check."""
    import random
    rng = random.Random(12345)
    tally = collections.Counter()
    _TALLY[0] = tally

    # ---- §8.1 CRC-32C ---------------------------------------------------
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"") == 0x00000000

    # ---- §2.4 / §6.5 rounding ---------------------------------------------
    # RN32 against the platform's (float) cast, for in-range doubles.
    for _ in range(20000):
        kind = rng.random()
        if kind < 0.4:
            x = rng.uniform(-3.4e38, 3.4e38)
        elif kind < 0.7:
            x = rng.uniform(-1, 1) * 2.0 ** rng.randint(-160, 127)
        else:
            x = _bits_to_f64(rng.getrandbits(64))
            if math.isnan(x) or math.isinf(x) or abs(x) >= 3.4e38:
                continue
        try:
            ref = struct.unpack("<I", struct.pack("<f", x))[0]
        except OverflowError:
            continue
        assert rn32_of_f64(x) == ref, (x, hex(rn32_of_f64(x)), hex(ref))
        tally["RN32 comparisons"] += 1
    # Exact cases of RN32: the overflow threshold is 2^128 - 2^103 (ties to even).
    assert rn32_of_f64(2.0 ** 128 - 2.0 ** 103) == 0x7F800000
    assert rn32_of_f64(2.0 ** 128 - 2.0 ** 103 - 2.0 ** 80) == 0x7F7FFFFF
    assert rn32_of_f64(-1e39) == 0xFF800000
    assert rn32_of_f64(2.0 ** -150) == 0x00000000             # tie to even (0)
    assert rn32_of_f64(2.0 ** -150 * 1.5) == 0x00000001
    assert rn32_of_f64(-0.0) == 0x80000000
    assert rn32_of_f64(float("inf")) == 0x7F800000
    # FLOAT16 against struct's 'e' format (round-half-even) for in-range values.
    for _ in range(20000):
        v = rng.getrandbits(32)
        if is_nan(v, BINARY32) or is_inf(v, BINARY32):
            continue
        x = f32_from_bits(v)
        if abs(x) >= 65504.0:
            continue
        ref = struct.unpack("<H", struct.pack("<e", x))[0]
        assert float16_bits(v) == ref, (hex(v), hex(float16_bits(v)), hex(ref))
        tally["binary16 comparisons"] += 1
    for x, want in [(1.0, 0x3C00), (-0.0, 0x8000), (65504.0, 0x7BFF), (65519.0, 0x7BFF),
                    (65520.0, 0x7C00), (-65520.0, 0xFC00), (1e10, 0x7C00), (2.0 ** -24, 0x0001),
                    (2.0 ** -25, 0x0000), (1.5 * 2.0 ** -25, 0x0001), (2.0 ** -14, 0x0400),
                    (float("inf"), 0x7C00), (float("-inf"), 0xFC00)]:
        assert float16_bits(_bits_of_f32(x)) == want, (x, hex(float16_bits(_bits_of_f32(x))))
    assert float16_bits(0x7FC00000) == 0x7E00 and float16_bits(0xFF800001) == 0x7E00
    # BFLOAT16 (§6.5 formula).
    for v, want in [(0x3F800000, 0x3F80), (0x3F808000, 0x3F80), (0x3F818000, 0x3F82),
                    (0x3F808001, 0x3F81), (0x7F7FFFFF, 0x7F80), (0xFF7FFFFF, 0xFF80),
                    (0x80000000, 0x8000), (0x7FC00000, 0x7FC0), (0xFFFFFFFF, 0x7FC0),
                    (0x7F800000, 0x7F80), (0x00008000, 0x0000), (0x00018000, 0x0002)]:
        assert bfloat16_bits(v) == want, (hex(v), hex(bfloat16_bits(v)))
    # §6.1 uniform value: one binary32 multiplication.
    grid = UniformGrid("g", 0, 1, 0, [_bits_of_f32(0.1)], [])
    for d in (-(1 << 24) + 1, -3, -1, 0, 1, 7, 12345, (1 << 24) - 1):
        want = _bits_of_f32(f32_from_bits(_bits_of_f32(0.1)) * d)   # exact in f64, one rounding
        assert uniform_value(grid, d, 0) == want
    big = UniformGrid("g", 0, 1, 0, [0x7F7FFFFF], [])
    assert uniform_value(big, 2, 0) == 0x7F800000 and uniform_value(big, -2, 0) == 0xFF800000
    assert uniform_value(big, 0, 0) == 0x00000000

    # ---- Annex A ----------------------------------------------------------
    annex = _parse_hexdump(_ANNEX_A_HEX)
    assert len(annex) == 202
    from_spec = _annex_from_spec_file()
    if from_spec is not None:
        assert from_spec == annex, "embedded Annex A differs from spec/nrd-format.md"
    hdr = read_file_header(annex)
    rec = hdr.tensors[0]
    assert (rec.name, rec.dtype, rec.shape, rec.coding) == (b"w", 1, (3, 4), 1)
    assert rec.rans.tables == [[3, 9, 3, 1]] and rec.rans.index_offset == -1
    assert rec.rans.chunks[0].offset == 192 and rec.rans.chunks[0].size == 10
    assert hdr.preamble.header_crc32c == 0xB5CB1CF0 == crc32c(annex[:24] + annex[32:163])
    assert rec.rans.chunks[0].crc32c == 0x5C3A07C4 == crc32c(annex[192:202])
    trace = []
    assert decode_indices(annex, "w", trace) == _ANNEX_A_INDICES
    want_trace = []
    for line in _ANNEX_A_TRACE.strip().splitlines():
        cells = [c.strip() for c in line.strip("| \n").split("|")]
        want_trace.append(tuple(None if c == "-" else int(c, 0) for c in cells))
    assert trace == want_trace, (trace, want_trace)
    out = decode_file(annex)
    assert list(out) == ["w"]
    dtype_name, shape, raw = out["w"]
    assert dtype_name == "FLOAT32" and shape == (3, 4)
    want_bits = [int(x, 16) for x in _ANNEX_A_BITS.split()]
    assert list(struct.unpack("<12I", raw)) == want_bits

    # The Annex B encoder and the builder reproduce Annex A byte for byte.
    rebuilt = _build([_rans_tensor(b"w", 1, (3, 4), _ANNEX_A_INDICES, n=4, L=1, tables=[[3, 9, 3, 1]],
                                   offset=-1, alphabet=4, rows_per_chunk=3)])
    assert rebuilt == annex, "rebuilt Annex A differs"

    # ---- Mutations of Annex A: §4.8 steps 1-8 -------------------------------
    E = _expect_error
    E(b"", "truncated", "empty file")
    E(annex[:5], "truncated", "5 bytes of magic")
    E(annex[:8], "truncated", "magic only")
    E(annex[:20], "truncated", "20-byte prefix")
    E(b"\x89PNG\r\n", "bad_magic", "short non-magic")
    E(annex[:31], "truncated", "31-byte prefix")
    E(_patch(annex, 0, b"\x88", False), "bad_magic", "magic byte 0")
    E(_patch(annex, 7, b"\x0b", False), "bad_magic", "magic byte 7")
    E(_patch(annex, 8, _u16(2)), "unsupported_version", "major 2")
    E(_patch(annex, 8, _u16(0)), "unsupported_version", "major 0")
    E(_patch(annex, 8, _u16(2), False), "unsupported_version", "major 2, stale crc (step 3 before 8)")
    assert decode_file(_patch(annex, 10, _u16(7)))["w"] == out["w"]      # §3.1 minor 1.x accepted
    # (bit 0 is the trellis of 1.1, §3.3: bit 1 is the lowest bit no version defines)
    E(_patch(annex, 12, _u32(2)), "unsupported_feature", "required_features bit 1")
    E(_patch(annex, 12, _u32(0x80000000)), "unsupported_feature", "required_features bit 31")
    E(_patch(annex, 28, _u32(1), False), "reserved_value", "preamble _reserved0")
    E(_patch(annex, 16, _u64((1 << 28) + 1), False), "limit_exceeded", "header_size > 2^28")
    E(_patch(annex, 16, _u64(1 << 28), False), "truncated", "header_size = 2^28 (within limit)")
    E(_patch(annex, 16, _u64(200), False), "truncated", "header past end of file")
    E(_patch(annex, 24, b"\xf1", False), "checksum_header", "header crc byte")
    E(_patch(annex, 42, b"x", False), "checksum_header", "header byte changed, crc stale")

    # ---- step 9: structure -----------------------------------------------
    E(_patch(annex, 16, _u64(130)), "header_size_mismatch", "header one byte short")
    E(_patch(annex, 16, _u64(132)), "header_size_mismatch", "header one byte long")
    E(_patch(annex, 16, _u64(5)), "header_size_mismatch", "header of 5 bytes")
    E(_patch(annex, 62, _u32(90)), "invalid_value", "body size one too large")
    E(_patch(annex, 62, _u32(88)), "invalid_value", "body size one too small")
    E(_patch(annex, 62, _u32(5000)), "header_size_mismatch", "body past the header")
    E(_patch(annex, 67, _u32(18)), "invalid_value", "grid size one too large")
    E(_patch(annex, 67, _u32(16)), "invalid_value", "grid size one too small")
    E(_patch(annex, 44, _u8(9)), "limit_exceeded", "rank 9")
    E(_patch(annex, 45, _u64((1 << 40) + 1)), "limit_exceeded", "dimension 2^40+1")
    E(_patch(annex, 36, _u32((1 << 20) + 1)), "limit_exceeded", "tensor_count 2^20+1")
    E(_patch(annex, 32, _u32(65537)), "limit_exceeded", "metadata entry_count 65537")
    E(_patch(annex, 159, _u16(257)), "limit_exceeded", "extension_count 257")
    E(_patch(annex, 101, _u8(17)), "limit_exceeded", "precision_bits 17")
    E(_patch(annex, 102, _u8(33)), "limit_exceeded", "lane_count 33")
    E(_patch(annex, 104, _u8(17)), "limit_exceeded", "context_count 17")
    E(_patch(annex, 115, _u32(65537)), "limit_exceeded", "alphabet_size 65537")
    E(_patch(annex, 131, _u32((1 << 24) + 1)), "limit_exceeded", "chunk_count 2^24+1")
    E(_patch(annex, 79, _u32((1 << 24) + 1)), "limit_exceeded", "group_count 2^24+1")
    E(_patch(annex, 83, _u8(2)), "invalid_value", "has_zero_point 2 (zero points expected: grid short)")
    E(_patch(annex, 42, b"\xff"), "invalid_value", "name not UTF-8")

    # ---- step 10: semantics ------------------------------------------------
    E(_patch(annex, 43, _u8(14)), "unsupported_feature", "dtype 14")
    E(_patch(annex, 43, _u8(5)), "invalid_value", "RANS tensor of dtype INT8")
    E(_patch(annex, 61, _u8(2)), "unsupported_feature", "coding 2")
    E(_patch(annex, 66, _u8(4)), "unsupported_feature", "grid_kind 4")   # 3 is UNIFORM_TRELLIS (1.1)
    E(_patch(annex, 88, _u8(2)), "unsupported_feature", "transform_kind 2")
    E(_patch(annex, 103, _u8(2)), "unsupported_feature", "context_model 2")
    E(_patch(annex, 105, _u8(2)), "unsupported_feature", "escape_mode 2")
    E(_patch(annex, 106, _u8(1)), "reserved_value", "RansBody _reserved0")
    E(_patch(annex, 89, _u32(1)), "reserved_value", "transform_tensor with NONE")
    E(_patch(annex, 88, _u8(1)), "invalid_reference", "RIGHT_MATRIX naming itself")
    E(_patch(annex, 88, _u8(1) + _u32(1)), "invalid_reference", "RIGHT_MATRIX naming tensor 1 of 1")
    E(_patch(annex, 93, _u64(5)), "invalid_value", "coded_row_length != row_length")
    E(_patch(annex, 102, _u8(0)), "invalid_value", "lane_count 0")
    E(_patch(annex, 103, _u8(1)), "invalid_value", "PREVIOUS_INDEX with context_count 1")
    E(_patch(annex, 107, _i32(1 << 23)), "invalid_value", "context_center 2^23")
    assert decode_file(_patch(annex, 107, _i32(-(1 << 23) + 1)))["w"] == out["w"]   # IID ignores it
    E(_patch(annex, 111, _i32(-(1 << 23))), "invalid_value", "index_offset -2^23")
    E(_patch(annex, 111, _i32((1 << 23) - 3)), "invalid_value", "largest direct index 2^23")
    assert decode_indices(_patch(annex, 111, _i32((1 << 23) - 4)), "w")[0] == (1 << 23) - 3
    E(_patch(annex, 119, b"\x03\x09\x03\x02"), "table_sum", "table sums to 17")
    E(_patch(annex, 119, b"\x03\x09\x03\x00"), "table_sum", "table sums to 15")
    E(_patch(annex, 123, _u64(0)), "invalid_value", "rows_per_chunk 0")
    E(_patch(annex, 123, _u64(2)), "invalid_value", "chunk_count != ceil(3/2)")
    assert decode_file(_patch(annex, 123, _u64(7)))["w"] == out["w"]      # ceil(3/7) = 1
    E(_patch(annex, 71, _u64(1)), "invalid_value", "group_count != ceil(3/1)")
    assert decode_file(_patch(annex, 71, _u64(3)))["w"] == out["w"]       # ceil(3/3) = 1
    E(_patch(annex, 84, _f32(0.0)), "invalid_value", "step 0")
    E(_patch(annex, 84, _f32(-0.0)), "invalid_value", "step -0")
    E(_patch(annex, 84, _f32(-0.5)), "invalid_value", "step -0.5")
    E(_patch(annex, 84, _f32(float("inf"))), "invalid_value", "step inf")
    E(_patch(annex, 84, _u32(0x7FC00000)), "invalid_value", "step NaN")
    assert decode_file(_patch(annex, 84, _u32(1)))["w"][2][4:8] == _u32(1)   # subnormal step

    # ---- step 11: layout ----------------------------------------------------
    E(annex + b"\0", "trailing_bytes", "one byte appended")
    E(annex[:201], "truncated", "payload cut short")
    E(annex[:192], "truncated", "payload missing")
    E(annex[:170], "truncated", "file ends in padding")
    E(_patch(annex, 170, b"\x01", False), "nonzero_padding", "padding byte")
    E(_patch(annex, 163, b"\x01", False), "nonzero_padding", "first padding byte")
    moved = _patch(annex[:192] + b"\0" * 64 + annex[192:], 135, _u64(256))
    E(moved, "payload_layout", "payload at 256 instead of 192")
    E(_patch(annex, 135, _u64(1 << 62)), "payload_layout", "payload offset far away")
    E(_patch(annex, 135, _u64(128)), "payload_layout", "payload inside the header")

    # ---- step 12: payloads and §7 ------------------------------------------
    def chunk_variant(chunk):
        """Annex A with chunk 0 replaced (sizes and checksums fixed)."""
        b = bytearray(annex[:192] + chunk)
        struct.pack_into("<QI", b, 143, len(chunk), crc32c(chunk))
        return _fix_header_crc(b)
    E(_patch(annex, 201, b"\x7e", False), "checksum_payload", "payload byte")
    E(_patch(annex, 151, b"\xc5"), "checksum_payload", "payload crc byte")
    assert decode_file(chunk_variant(annex[192:])) == out
    E(chunk_variant(b""), "stream_truncated", "empty chunk")
    E(chunk_variant(annex[192:195]), "stream_truncated", "3-byte chunk")
    E(chunk_variant(annex[192:199]), "stream_truncated", "lane state cut")
    E(chunk_variant(annex[192:200]), "stream_truncated", "word stream missing")
    E(chunk_variant(annex[192:202] + b"\0\0"), "stream_trailing_data", "one word too many")
    E(chunk_variant(annex[192:202] + b"\0"), "stream_trailing_data", "odd word area")
    E(chunk_variant(_u32(0) + _u32(0xFFFF) + annex[200:202]), "rans_state_out_of_range", "state 2^16-1")
    E(chunk_variant(_u32(0) + _u32(726522) + annex[200:202]), "rans_final_state", "state + 1")
    E(chunk_variant(_u32(1) + _i32(100) + annex[196:202]), "escape_mismatch", "unused escape value")
    E(chunk_variant(_u32(0x40000000) + annex[196:202]), "stream_truncated", "huge escape_count")

    # ---- built files: raw tensors of every dtype, metadata, extensions ---
    raws = []
    for code, (dname, size) in DTYPES.items():
        payload = bytes(rng.getrandbits(8) for _ in range(6 * size))
        if code == DTYPE_BOOL:
            payload = bytes(rng.getrandbits(1) for _ in range(6))
        raws.append((dname.lower().encode(), code, (2, 3), payload))
    f = _build([_raw_tensor(n_, c, s, p) for n_, c, s, p in raws])
    got = decode_file(f)
    for n_, c, s, p in raws:
        assert got[n_.decode()] == (DTYPES[c][0], s, p)
    E(_build([_raw_tensor(b"b", DTYPE_BOOL, (2,), b"\x01\x02")]), "invalid_value", "BOOL byte 2")
    E(_build([_raw_tensor(b"a", 1, (2,), b"\0" * 12)]), "invalid_value", "raw size mismatch")
    E(_build([_raw_tensor(b"a", 1, (2,), b"\0" * 8), _raw_tensor(b"a", 1, (1,), b"\0" * 4)]),
      "duplicate_name", "duplicate name")
    E(_build([_raw_tensor(b"", 1, (1,), b"\0" * 4)]), "invalid_value", "empty name")
    E(_build([_raw_tensor(b"x" * 4097, 1, (1,), b"\0" * 4)]), "limit_exceeded", "name of 4097 bytes")
    assert "x" * 4096 in decode_file(_build([_raw_tensor(b"x" * 4096, 1, (1,), b"\0" * 4)]))
    E(_build([_raw_tensor(b"\xed\xa0\x80", 1, (1,), b"\0" * 4)]), "invalid_value", "surrogate name")
    # Zero-size payloads (and the canonical padding they imply); rank 0; ordering.
    f = _build([_raw_tensor(b"s", 1, (), _f32(1.5)), _raw_tensor(b"e", 1, (0, 3), b""),
                _raw_tensor(b"v", 5, (3,), b"\x01\x02\x03"), _raw_tensor(b"z", 9, (2, 0), b"")])
    got = decode_file(f)
    assert list(got) == ["s", "e", "v", "z"] and got["s"] == ("FLOAT32", (), _f32(1.5))
    assert len(f) % 64 == 0  # the last (empty) payload sits on a multiple of 64
    assert decode_file(_build([])) == {}
    # Metadata (§5.5).
    good_meta = _meta([(b"model_name", META_STRING, "m\u00e9".encode()), (b"", META_BYTES, b"\xff"),
                       (b"n", META_INT64, struct.pack("<q", -5)), (b"f", META_FLOAT64, struct.pack("<d", 1.0)),
                       (b"b", META_BOOL, b"\x01"), (b"k" * 256, META_STRING, b"")])
    one = [_raw_tensor(b"a", 1, (1,), b"\0" * 4, meta=good_meta)]
    assert "a" in decode_file(_build(one, meta=good_meta))
    bad_metas = [
        ([(b"k", 1, b""), (b"k", 2, b"\0" * 8)], "duplicate_key"),
        ([(b"k", 6, b"")], "unsupported_feature"),
        ([(b"k", 0, b"")], "unsupported_feature"),
        ([(b"k", META_INT64, b"\0" * 7)], "invalid_value"),
        ([(b"k", META_FLOAT64, b"\0" * 9)], "invalid_value"),
        ([(b"k", META_BOOL, b"\x02")], "invalid_value"),
        ([(b"k", META_BOOL, b"")], "invalid_value"),
        ([(b"k", META_STRING, b"\xc0\x80")], "invalid_value"),
        ([(b"k" * 257, META_STRING, b"")], "limit_exceeded"),
        ([(b"\xff", META_STRING, b"")], "invalid_value"),
    ]
    for entries, code in bad_metas:
        E(_build(one, meta=_meta(entries)), code, f"file metadata {entries!r}")
        E(_build([_raw_tensor(b"a", 1, (1,), b"\0" * 4, meta=_meta(entries))]), code,
          f"tensor metadata {entries!r}")
    # Extensions (§3.4, §4.5).
    assert "a" in decode_file(_build(one, ext=_exts([(7, 0, b"anything"), (0, 0, b"")])))
    assert "a" in decode_file(_build([_raw_tensor(b"a", 1, (1,), b"\0" * 4, ext=_exts([(9, 0, b"x")]))]))
    E(_build(one, ext=_exts([(7, 1, b"")])), "unsupported_feature", "required file extension")
    E(_build([_raw_tensor(b"a", 1, (1,), b"\0" * 4, ext=_exts([(9, 1, b"")]))]),
      "unsupported_feature", "required tensor extension")
    E(_build(one, ext=_exts([(7, 2, b"")])), "reserved_value", "extension flag bit 1")
    E(_build(one, ext=_exts([(7, 0x8000, b"")])), "reserved_value", "extension flag bit 15")

    # ---- built files: rANS variants ----------------------------------------
    def roundtrip(t_list, name, indices):
        tally["encode/decode round trips"] += 1
        f = _build(t_list)
        assert decode_indices(f, name) == indices, name
        return f, decode_file(f)

    # Several lanes and chunks, uniform grid with groups and zero points.
    shape = (7, 5)
    idx = [rng.randint(-8, 8) for _ in range(35)]
    zps = [0, 3, -2, 5]
    steps = [0.5, 0.1, 3.0, 1e-3]
    for L in (1, 2, 3, 5, 32):
        for rpc in (1, 2, 3, 7, 100):
            t = _rans_tensor(b"t", 1, shape, idx, grid=_uniform_grid(steps, 2, zps), L=L, rows_per_chunk=rpc)
            f, got = roundtrip([t], "t", idx)
            vals = struct.unpack("<35I", got["t"][2])
            for e_, q in enumerate(idx):
                g = (e_ // 5) // 2
                assert vals[e_] == _bits_of_f32(f32_from_bits(_bits_of_f32(steps[g])) * (q - zps[g]))
    # PREVIOUS_INDEX with escapes; FLOAT16 and BFLOAT16 outputs.
    idx = [rng.choice([0, 0, 1, -1, 2, 3, -3, 40, -1000, (1 << 23) - 1]) for _ in range(60)]
    tables = [[200, 1000, 1000, 1000, 500, 300, 96], [1000, 1000, 1000, 500, 96, 300, 200],
              [500, 500, 500, 500, 96, 1000, 1000]]
    for dtype in (1, 2, 3):
        t = _rans_tensor(b"p", dtype, (6, 10), idx, n=12, L=3, context_model=CONTEXT_PREVIOUS_INDEX,
                         tables=tables, center=0, offset=-2, alphabet=7, escape_mode=ESCAPE_LAST_SYMBOL,
                         rows_per_chunk=4, grid=_uniform_grid([0.25]))
        f, got = roundtrip([t], "p", idx)
        if dtype == 1:
            want = b"".join(_f32(0.25 * q) for q in idx)
        elif dtype == 2:
            want = b"".join(_u16(float16_bits(_bits_of_f32(0.25 * q))) for q in idx)
            assert want == b"".join(struct.pack("<e", 0.25 * q) if abs(0.25 * q) < 65504
                                    else _u16(0x7C00 | (0x8000 if q < 0 else 0)) for q in idx)
        else:
            want = b"".join(_u16(bfloat16_bits(_bits_of_f32(0.25 * q))) for q in idx)
        assert got["p"] == (DTYPES[dtype][0], (6, 10), want)

    # ---- §7.4 PREVIOUS_INDEX: p is the index of symbol i - lane_count ----------
    def old_rule_ctxs(part, center, count):
        """The context rule before §7.4 changed: p = the index of symbol i - 1
        (whatever its lane).  Used only to show that the cases below tell the
        two rules apart."""
        ctxs, p = [], center
        for q in part:
            ctxs.append(min(abs(p - center), count - 1))
            p = q
        return ctxs
    # (a) One-symbol tables (n = 1): table 0 = [2, 0] codes only symbol 0,
    # table 1 = [0, 2] only symbol 1, and a step leaves the state unchanged
    # (x = 2 floor(x/2) + slot - 0 with slot = x mod 2 = 0).  So the chunk is
    # just escape_count 0 and lane states 2^16, no words, and the indices
    # follow from the contexts alone.  With center 1: p = 1 -> ctx 0 -> index
    # 0 -> ctx 1 -> index 1 -> ctx 0 -> ..., each lane on its own: symbol i
    # is floor(i / L) mod 2.  The old rule (previous symbol of any lane)
    # decodes the same bytes as 0, 1, 0, 1, ... whatever L.
    for L in (1, 2, 3):
        want_a = [(i // L) % 2 for i in range(12)]
        t = _rans_tensor(b"a", 1, (2, 6), want_a, n=1, L=L, context_model=CONTEXT_PREVIOUS_INDEX,
                         tables=[[2, 0], [0, 2]], center=1, offset=0, alphabet=2)
        f, _ = roundtrip([t], "a", want_a)
        ref = read_file_header(f).tensors[0].rans.chunks[0]
        assert f[ref.offset:ref.offset + ref.size] == _u32(0) + _u32(STATE_LOW) * L   # Annex B's chunk
        old_a = [i % 2 for i in range(12)]
        assert (want_a == old_a) == (L == 1)      # "With one lane this is the previous symbol."
    # (b) The same with escapes (LAST_SYMBOL, alphabet 3: direct indices 0 and
    # 1, symbol 2 the escape), center 0, three one-symbol tables: table 0 =
    # [0, 0, 2] (always an escape), table 1 = [2, 0, 0] (index 0), table 2 =
    # [0, 2, 0] (index 1).  Two lanes, escapes 7, -1, 9:
    #   i=0 lane 0 p=center 0 ctx 0 -> escape 7      i=1 lane 1 p=center 0 ctx 0 -> escape -1
    #   i=2 lane 0 p=7 ctx 2 -> 1                    i=3 lane 1 p=-1 ctx 1 -> 0
    #   i=4 lane 0 p=1 ctx 1 -> 0                    i=5 lane 1 p=0 ctx 0 -> escape 9
    # The escaped index (7, -1) is its lane's new p.  The old rule reads the
    # same chunk as 7, 1, 0, -1, 0, 9.
    tables_b = [[0, 0, 2], [2, 0, 0], [0, 2, 0]]
    chunk_b = _u32(3) + _i32(7) + _i32(-1) + _i32(9) + _u32(STATE_LOW) * 2
    want_b = [7, -1, 1, 0, 0, 9]
    t = _rans_tensor(b"b", 1, (1, 6), want_b, n=1, L=2, context_model=CONTEXT_PREVIOUS_INDEX,
                     tables=tables_b, center=0, offset=0, alphabet=3, escape_mode=ESCAPE_LAST_SYMBOL)
    f, got = roundtrip([t], "b", want_b)
    ref = read_file_header(f).tensors[0].rans.chunks[0]
    assert f[ref.offset:ref.offset + ref.size] == chunk_b
    assert got["b"][2] == b"".join(_f32(0.5 * q) for q in want_b)
    trace = []
    decode_indices(f, "b", trace)
    assert [(i, l, s, q) for i, l, _, _, s, _, _, _, q in trace] == [
        (0, 0, 2, 7), (1, 1, 2, -1), (2, 0, 1, 1), (3, 1, 0, 0), (4, 0, 0, 0), (5, 1, 2, 9)]
    assert old_rule_ctxs(want_b, 0, 3) != _contexts(want_b, L=2, context_model=CONTEXT_PREVIOUS_INDEX,
                                                    center=0, context_count=3)
    # (c) Random indices, several lanes and chunks, escapes, unequal tables:
    # chunks coded with the old rule's contexts do not decode to the indices
    # (a wrong index or an error), chunks coded with the new rule do.
    idx_c = [rng.choice([0, 0, 1, -1, 2, 3, -3, 40, -1000]) for _ in range(70)]
    for L in (2, 3, 5):
        kw = dict(n=12, L=L, context_model=CONTEXT_PREVIOUS_INDEX, tables=tables, center=1, offset=-2,
                  alphabet=7, escape_mode=ESCAPE_LAST_SYMBOL)
        parts = [idx_c[0:30], idx_c[30:60], idx_c[60:70]]           # rows_per_chunk 3 of (7, 10)
        roundtrip([_rans_tensor(b"c", 1, (7, 10), idx_c, rows_per_chunk=3, **kw)], "c", idx_c)
        old_chunks = [_encode_chunk(part, n=12, L=L, tables=tables, context_model=CONTEXT_PREVIOUS_INDEX,
                                    center=1, offset=-2, alphabet=7, escape_mode=ESCAPE_LAST_SYMBOL,
                                    ctxs=old_rule_ctxs(part, 1, 3)) for part in parts]
        f_old = _build([_rans_tensor(b"c", 1, (7, 10), idx_c, rows_per_chunk=3,
                                     chunks_fn=lambda _c, oc=old_chunks: oc, **kw)])
        try:
            assert decode_indices(f_old, "c") != idx_c, f"L={L}: old-rule chunks decoded to the indices"
        except SpecError:
            pass
        tally["old-rule chunks rejected or misdecoded"] += 1

    # Escape faults.
    def esc_file(escapes_override):
        t = _rans_tensor(b"p", 1, (1, 3), [0, 50, 1], n=4, offset=0, alphabet=3, escape_mode=ESCAPE_LAST_SYMBOL,
                         tables=[[6, 6, 4]])
        f = bytearray(_build([t]))
        hdr_ = read_file_header(bytes(f))
        ref = hdr_.tensors[0].rans.chunks[0]
        chunk = bytearray(f[ref.offset:ref.offset + ref.size])
        chunk[4:8] = _i32(escapes_override)
        f[ref.offset:ref.offset + ref.size] = chunk
        at = hdr_.fields[f"{ref.path}.crc32c"]
        f[at:at + 4] = _u32(crc32c(bytes(chunk)))
        return _fix_header_crc(f)
    assert decode_indices(esc_file(50), "p") == [0, 50, 1]
    assert decode_indices(esc_file(-(1 << 23) + 1), "p") == [0, -(1 << 23) + 1, 1]
    E(esc_file(1), "escape_mismatch", "escape value is a direct index")
    E(esc_file(1 << 23), "escape_mismatch", "escape value 2^23")
    # An escape symbol with no value left: code symbol 2 directly (escape_mode
    # NONE), then relabel the tensor LAST_SYMBOL so that symbol 2 is the escape.
    t2 = _rans_tensor(b"p", 1, (1, 1), [2], n=4, offset=0, alphabet=3, escape_mode=ESCAPE_NONE,
                      tables=[[6, 6, 4]])
    f2 = _build([t2])
    at = read_file_header(f2).fields["header.tensors[0].body.escape_mode"]
    E(_patch(f2, at, _u8(ESCAPE_LAST_SYMBOL)), "escape_mismatch", "escape symbol without a value")

    # Codebook grid, index_out_of_range, -0.0 stays -0.0.
    cb = [-1.5, -0.0, 0.25, 7.0]
    idx = [-2, -1, 0, 1, 1, 0, -2, -1]
    t = _rans_tensor(b"c", 1, (2, 4), idx, grid_kind=GRID_CODEBOOK, grid=_codebook_grid(-2, cb),
                     offset=-2, alphabet=4, n=8, L=2)
    f, got = roundtrip([t], "c", idx)
    assert got["c"][2] == b"".join(_f32(cb[q + 2]) for q in idx)
    assert got["c"][2][4:8] == _u32(0x80000000)
    t = _rans_tensor(b"c", 1, (2, 4), idx, grid_kind=GRID_CODEBOOK, grid=_codebook_grid(-1, cb),
                     offset=-2, alphabet=4, n=8, L=2)
    f = _build([t])
    E(f, "index_out_of_range", "index below the codebook")
    # §6.2: detected while decoding (§7.6), so decode_indices reports it too.
    E(f, "index_out_of_range", "index below the codebook (indices only)",
      lambda d: decode_indices(d, "c"))
    E(_build([_rans_tensor(b"c", 1, (1, 1), [0], grid_kind=GRID_CODEBOOK, grid=_codebook_grid(0, []),
                           offset=0, alphabet=1, n=1)]), "invalid_value", "empty codebook")
    E(_build([_rans_tensor(b"c", 1, (1, 1), [0], grid_kind=GRID_CODEBOOK,
                           grid=_codebook_grid((1 << 23) - 2, [1.0, 2.0, 3.0]), offset=0, alphabet=1, n=1)]),
      "invalid_value", "codebook past 2^23-1")
    E(_build([_rans_tensor(b"c", 1, (1, 1), [0], grid_kind=GRID_CODEBOOK, grid=_codebook_grid(0, [float("inf")]),
                           offset=0, alphabet=1, n=1)]), "invalid_value", "infinite codebook value")

    # RIGHT_MATRIX transform with a raw T and with a rANS-coded T.
    rows, K, cols = 3, 2, 4
    tvals = [rng.uniform(-2, 2) for _ in range(K * cols)]
    traw = b"".join(_f32(v) for v in tvals)
    cidx = [rng.randint(-5, 5) for _ in range(rows * K)]
    for dtype in (1, 2, 3):
        a = _rans_tensor(b"a", dtype, (rows, cols), cidx, coded_row_length=K, transform_kind=1,
                         transform_tensor=1, grid=_uniform_grid([0.125]))
        f, got = roundtrip([a, _raw_tensor(b"T", 1, (K, cols), traw)], "a", cidx)
        tv = [f32_from_bits(v) for v in struct.unpack(f"<{K * cols}I", traw)]
        want = []
        for r in range(rows):
            for j in range(cols):
                s = 0.0
                for k in range(K):
                    s += (0.125 * cidx[r * K + k]) * tv[k * cols + j]
                v = _bits_of_f32(s)
                want.append({1: _u32(v), 2: _u16(float16_bits(v)), 3: _u16(bfloat16_bits(v))}[dtype])
        assert got["a"][2] == b"".join(want)
        assert got["T"][2] == traw
    tidx = [rng.randint(-3, 3) for _ in range(K * cols)]
    T = _rans_tensor(b"T", 1, (K, cols), tidx, grid=_uniform_grid([0.75]))
    a = _rans_tensor(b"a", 1, (rows, cols), cidx, coded_row_length=K, transform_kind=1, transform_tensor=0)
    f, got = roundtrip([T, a], "a", cidx)
    want = []
    for r in range(rows):
        for j in range(cols):
            s = 0.0
            for k in range(K):
                s += (0.5 * cidx[r * K + k]) * (0.75 * tidx[k * cols + j])
            want.append(_f32(s))
    assert got["a"][2] == b"".join(want)
    # NaN from the transform becomes 0x7FC00000; inf*0 is NaN.
    traw_nan = _f32(float("inf")) + _f32(1.0)
    a = _rans_tensor(b"a", 1, (1, 1), [0, 1], coded_row_length=2, transform_kind=1, transform_tensor=1)
    got = decode_file(_build([a, _raw_tensor(b"T", 1, (2, 1), traw_nan)]))
    assert got["a"][2] == _u32(0x7FC00000)
    # K = 0: no coded symbols, every element is +0.0.
    a = _rans_tensor(b"a", 1, (2, 3), [], coded_row_length=0, transform_kind=1, transform_tensor=1)
    got = decode_file(_build([a, _raw_tensor(b"T", 1, (0, 3), b"")]))
    assert got["a"][2] == b"\0" * 24
    # invalid_reference cases.
    base = dict(coded_row_length=K, transform_kind=1, transform_tensor=1)
    E(_build([_rans_tensor(b"a", 1, (rows, cols), cidx, **base),
              _raw_tensor(b"T", 8, (K, cols), traw)]), "invalid_reference", "T not FLOAT32")
    E(_build([_rans_tensor(b"a", 1, (rows, cols), cidx, **base),
              _raw_tensor(b"T", 1, (cols, K), traw)]), "invalid_reference", "T transposed")
    E(_build([_rans_tensor(b"a", 1, (rows, cols), cidx, **base),
              _raw_tensor(b"T", 1, (K * cols,), traw)]), "invalid_reference", "T rank 1")
    E(_build([_rans_tensor(b"a", 1, (rows, cols), cidx, **base)]), "invalid_reference", "T missing")
    f = _build([_rans_tensor(b"a", 1, (rows, cols), cidx, **base), _raw_tensor(b"T", 1, (K, cols), traw)])
    at = read_file_header(f).fields["header.tensors[0].body.coded_row_length"]
    E(_patch(f, at, _u64(1 << 33)), "invalid_reference", "coded_row_length != T rows")
    E(_patch(f, at, _u64(K + 1)), "invalid_reference", "coded_row_length K+1")
    E(_build([_rans_tensor(b"a", 1, (rows, cols), cidx, **base),
              _rans_tensor(b"T", 1, (K, cols), [0] * K, coded_row_length=1, transform_kind=1,
                           transform_tensor=2),
              _raw_tensor(b"U", 1, (1, cols), b"\0" * 4 * cols)]), "invalid_reference", "T has a transform")
    # §6.4 "This rule looks only at those field values of T's record; T's own
    # faults are reported when T's record is checked": a T after the tensor
    # with an unknown coding / dtype / transform_kind is invalid_reference;
    # a T before it fails its own check first (unsupported_feature).
    E(_build([_rans_tensor(b"a", 1, (rows, cols), cidx, **base),
              _T(b"T", 1, (K, cols), 5, [], lambda refs: b"")]), "invalid_reference", "T of unknown coding")
    E(_build([_T(b"T", 1, (K, cols), 5, [], lambda refs: b""),
              _rans_tensor(b"a", 1, (rows, cols), cidx, coded_row_length=K, transform_kind=1,
                           transform_tensor=0)]), "unsupported_feature", "T of unknown coding, T first")
    E(_build([_rans_tensor(b"a", 1, (rows, cols), cidx, **base),
              _raw_tensor(b"T", 99, (K, cols), traw)]), "invalid_reference", "T of unknown dtype")
    E(_build([_raw_tensor(b"T", 99, (K, cols), traw),
              _rans_tensor(b"a", 1, (rows, cols), cidx, coded_row_length=K, transform_kind=1,
                           transform_tensor=0)]), "unsupported_feature", "T of unknown dtype, T first")
    E(_build([_rans_tensor(b"a", 1, (rows, cols), cidx, **base),
              _rans_tensor(b"T", 1, (K, cols), [0] * (K * cols), transform_kind=7)]),
      "invalid_reference", "T of unknown transform_kind")
    E(_build([_rans_tensor(b"a", 1, (rows, cols), cidx, **base),
              _rans_tensor(b"T", 1, (K, cols), [0] * (K * cols), reserved0=1)]),
      "reserved_value", "T suitable but faulty: T's own fault")
    E(_build([_rans_tensor(b"a", 1, (rows, cols), cidx, **base),
              _raw_tensor(b"T", 1, (K, cols), traw[:-4])]), "invalid_value", "T suitable, raw size wrong")

    # Edge geometry: rank 0, vector, [5, 0], [0, 5].
    f, got = roundtrip([_rans_tensor(b"s", 1, (), [3])], "s", [3])
    assert got["s"] == ("FLOAT32", (), _f32(1.5))
    f, got = roundtrip([_rans_tensor(b"v", 1, (4,), [1, 2, 3, 4], rows_per_chunk=3)], "v", [1, 2, 3, 4])
    got = decode_file(_build([_rans_tensor(b"e", 1, (5, 0), [], rows_per_chunk=2)]))
    assert got["e"] == ("FLOAT32", (5, 0), b"")
    got = decode_file(_build([_rans_tensor(b"e", 1, (0, 5), [], rows_per_chunk=2)]))
    assert got["e"] == ("FLOAT32", (0, 5), b"")
    E(_build([_rans_tensor(b"e", 1, (5, 0), [], rows_per_chunk=2, chunk_count=3)]),
      "invalid_value", "chunk_count 3 for an empty tensor")

    # Varint form (§2.2).
    def nonminimal(v):                  # one extra, empty group: 128 -> 80 81 00
        b = bytearray(_varint(v))
        b[-1] |= 0x80
        return bytes(b) + b"\x00"
    t = _rans_tensor(b"t", 1, (1, 2), [0, 1], n=8, offset=0, alphabet=2, tables=[[128, 128]])
    assert decode_indices(_build([t]), "t") == [0, 1]
    t = _rans_tensor(b"t", 1, (1, 2), [0, 1], n=16, offset=0, alphabet=2, tables=[[32768, 32768]])
    assert decode_indices(_build([t]), "t") == [0, 1]                   # 3-byte varints
    E(_build([_rans_tensor(b"t", 1, (1, 2), [0, 1], n=8, offset=0, alphabet=2, tables=[[128, 128]],
                           varint=nonminimal)]), "invalid_value", "non-minimal varint")
    E(_build([_rans_tensor(b"t", 1, (1, 2), [0, 1], n=8, offset=0, alphabet=2, tables=[[128, 128]],
                           varint=lambda v: b"\x80\x80\x80\x00" if v == 128 else _varint(v))]),
      "invalid_value", "4-byte varint")
    E(_build([_rans_tensor(b"t", 1, (1, 2), [0, 1], n=8, offset=0, alphabet=2, tables=[[128, 128]],
                           varint=lambda v: b"\x80\x81\x00" if v == 128 else _varint(v))]),
      "invalid_value", "3-byte varint ending in 0x00")
    # PREVIOUS_INDEX needs 2 ... 16 contexts; IID needs 1.
    E(_build([_rans_tensor(b"t", 1, (1, 2), [0, 1], n=4, offset=0, alphabet=2,
                           tables=[[8, 8], [8, 8]])]), "invalid_value", "IID with 2 tables")

    # =====================================================================
    # Rules of the revised text: §2.1, §2.3, §2.4, §3.4, §4.8, §4.9, §5.3,
    # §5.5, §6.1, §6.2, §6.4, §7.1-§7.7, §9.
    # =====================================================================
    R = _rans_record
    assert _build([R()]) == annex                        # the free-form builder is exact

    def fpath(f, path):
        """A field's offset, from steps 1-9 only (the file may have later faults)."""
        return parse_header(f, read_preamble(f)).fields[path]

    def patch_path(f, path, new):
        return _patch(f, fpath(f, path), new)

    def raw1(name=b"a", **kw):
        return _raw_tensor(name, 1, (1,), b"\0" * 4, **kw)

    dup_meta = _meta([(b"k", 1, b""), (b"k", 1, b"")])

    # ---- §4.8 step 1: files shorter than 32 bytes ----------------------------
    E(MAGIC[:4], "truncated", "4 bytes of magic")
    E(MAGIC[:1], "truncated", "first magic byte only")
    E(MAGIC + b"\x02", "truncated", "magic plus one byte")
    E(b"\x89NRE", "bad_magic", "4 bytes, last differs")
    E(b"\0" * 20, "bad_magic", "20 zero bytes")

    # ---- §2.1: where an overrunning stated size belongs ------------------------
    E(_patch(annex, 67, _u32(85)), "invalid_value", "grid size one past the body (the body's error)")
    E(_patch(annex, 67, _u32(5000)), "invalid_value", "grid size past the body and the Header")
    f = _build([raw1()], ext=_exts([(7, 0, b"abc")]))
    E(patch_path(f, "header.extensions.extensions[0].body (size)", _u32(1000)),
      "header_size_mismatch", "extension body past the Header")
    f = _build([raw1()], meta=_meta([(b"k", META_BYTES, b"xy")]))
    E(patch_path(f, "header.metadata.entries[0].value (size)", _u32(1 << 20)),
      "header_size_mismatch", "metadata value past the Header")
    # A metadata value is parsed by its value_type (step 9): its size faults
    # and a STRING's UTF-8 are step-9 faults, found before any step-10 rule;
    # an unknown value_type does not stop the parse.
    E(_build([raw1()], meta=_meta([(b"k" * 257, META_STRING, b""), (b"x", META_INT64, b"\0" * 7)])),
      "invalid_value", "INT64 of 7 bytes (step 9) before an earlier over-long key (step 10)")
    E(_build([raw1()], meta=_meta([(b"k", META_STRING, b""), (b"k", META_STRING, b"\xff")])),
      "invalid_value", "ill-formed STRING value (step 9) before duplicate_key (step 10)")
    E(_build([raw1()], meta=_meta([(b"k", 77, b"xyz"), (b"x", META_FLOAT64, b"\0" * 9)])),
      "invalid_value", "unknown value_type skipped, a later FLOAT64 of 9 bytes (step 9)")
    E(_build([raw1()], meta=_meta([(b"k", META_BOOL, b"\x01\x00")])), "invalid_value", "BOOL of 2 bytes")

    # ---- §2.3: UTF-8, byte-for-byte comparison ------------------------------------
    got = decode_file(_build([_raw_tensor(b"a\x00b", 1, (1,), b"\0" * 4),
                              _raw_tensor("\u00e9".encode(), 1, (1,), b"\0" * 4),
                              _raw_tensor("e\u0301".encode(), 1, (1,), b"\0" * 4)],
                             meta=_meta([("\u00e9".encode(), META_STRING, b"\x00"),
                                         ("e\u0301".encode(), META_STRING, b"")])))
    assert list(got) == ["a\x00b", "\u00e9", "e\u0301"]          # NFC and NFD names are distinct
    E(_build([_raw_tensor(b"\xf4\x90\x80\x80", 1, (1,), b"\0" * 4)]), "invalid_value", "name above U+10FFFF")
    E(_build([_raw_tensor(b"\xc0\xaf", 1, (1,), b"\0" * 4)]), "invalid_value", "overlong name")
    E(_build([_raw_tensor(b"a\xe2\x82", 1, (1,), b"\0" * 4)]), "invalid_value", "truncated UTF-8 sequence")

    # ---- §2.4 / §9: element_count, dimensions, inclusive limits -------------------
    got = decode_file(_build([_raw_tensor(b"z", 1, (0, 1 << 40, 1 << 40), b"")]))
    assert got["z"] == ("FLOAT32", (0, 1 << 40, 1 << 40), b"")
    E(_build([_raw_tensor(b"z", 1, (0, (1 << 40) + 1), b"")]), "limit_exceeded", "dimension 2^40+1 next to 0")
    E(_build([_T(b"z", 1, (1 << 20, 1 << 20, 2), 9, [], lambda refs: b"")]),
      "limit_exceeded", "element_count 2^41 (before the unknown coding)")
    E(_build([_T(b"z", 1, (1 << 20, 1 << 20), 9, [], lambda refs: b"")]),
      "unsupported_feature", "element_count 2^40 is within the limit")

    # ---- §3.4: reserved flag bits before the required bit, every extension ---------
    E(_build([raw1()], ext=_exts([(7, 3, b"")])), "reserved_value", "flags 0x0003")
    E(_build([raw1()], ext=_exts([(7, 1, b""), (8, 2, b"")])), "unsupported_feature",
      "extension 0 required, extension 1 reserved bit")
    E(_build([raw1()], ext=_exts([(7, 0, b""), (8, 0x10, b""), (9, 1, b"")])), "reserved_value",
      "a skipped extension with a reserved bit, before a later required one")

    # ---- §4.8 step 9: only syntax and the listed counts; unknown values go on ------
    E(_patch(_patch(annex, 61, _u8(2)), 16, _u64(132)), "header_size_mismatch",
      "unknown coding, then the Header is one byte long")
    E(_patch(_patch(annex, 66, _u8(4)), 115, _u32(65537)), "limit_exceeded",
      "unknown grid_kind, then alphabet_size 65537 (the parse goes on)")
    E(_patch(_patch(annex, 43, _u8(14)), 101, _u8(17)), "unsupported_feature",
      "unknown dtype before precision_bits 17 (a step-10 limit)")
    E(_patch(_patch(annex, 45, _u64((1 << 40) + 1)), 67, _u32(18)), "invalid_value",
      "grid not filled (step 9) before dimension 2^40+1 (step 10)")
    f = _build([_raw_tensor(b"x" * 4097, 1, (1,), b"\0" * 4)])
    E(_patch(f, 16, _u64(struct.unpack_from("<Q", f, 16)[0] + 1)), "header_size_mismatch",
      "Header mismatch (step 9) before a name of 4097 bytes (step 10)")
    hz2 = _u64(0) + _u32(1) + _u8(2) + _f32(0.5) + _i32(0)          # has_zero_point 2, zero point present
    E(_build([R(grid=hz2)]), "invalid_value", "has_zero_point 2 (parsed with zero points, step 10)")
    E(_build([R(grid=hz2, dtype=99)]), "unsupported_feature", "has_zero_point 2 after an unknown dtype")
    E(_patch(annex, 83, _u8(2)), "invalid_value", "has_zero_point 2 without zero points: grid too short")
    E(_build([R(grid=_u64(0) + _u32(1) + _u8(1) + _f32(0.5))]), "invalid_value", "zero point missing")
    E(_patch(annex, 104, _u8(16)), "invalid_value", "context_count 16 is parsed (then the body is short)")

    # ---- §4.9 item 1: metadata, entry by entry -------------------------------------
    for entries, code, label in [
        ([(b"k" * 257, 1, b""), (b"k" * 257, 1, b"")], "limit_exceeded", "key length before duplicate"),
        ([(b"k", 6, b""), (b"k", 1, b"")], "unsupported_feature", "entry 0 value_type before entry 1"),
        ([(b"k", 1, b""), (b"k", 6, b"")], "duplicate_key", "duplicate before value_type"),
        ([(b"b", META_BOOL, b"\x02"), (b"b", 1, b"")], "invalid_value", "entry 0 BOOL before entry 1"),
        ([(b"k", 1, b""), (b"k", META_BOOL, b"\x05")], "duplicate_key", "duplicate before BOOL value"),
        ([(b"", 1, b""), (b"", 1, b"")], "duplicate_key", "two empty keys"),
    ]:
        E(_build([raw1()], meta=_meta(entries)), code, f"file metadata: {label}")
        E(_build([raw1(meta=_meta(entries))]), code, f"tensor metadata: {label}")
    # §5.5 keys may be empty; recommended keys are not type-checked.
    assert "a" in decode_file(_build([raw1()], meta=_meta([(b"model_name", META_INT64, _u64(3)),
                                                          (b"license", META_BYTES, b"\xff"), (b"", 1, b"")])))
    E(_build([_raw_tensor(b"", 1, (1,), b"\0" * 4)], meta=dup_meta), "duplicate_key",
      "file metadata before the first record")

    # ---- §4.9 item 2: each record, rules 2.1 to 2.7 --------------------------------
    E(_build([_raw_tensor(b"", 1, (1,), b"\0" * 4), _raw_tensor(b"", 1, (1,), b"\0" * 4)]),
      "invalid_value", "2.1 empty name before duplicate")
    E(_build([raw1(), _raw_tensor(b"a", 99, (1,), b"\0" * 4)]), "duplicate_name", "2.1 before 2.2")
    E(_build([_raw_tensor(b"x" * 4097, 99, (1,), b"\0" * 4)]), "limit_exceeded", "2.1 name length before dtype")
    E(_build([_raw_tensor(b"a", 99, ((1 << 40) + 1,), b"")]), "unsupported_feature", "2.2 before 2.3")
    E(_build([_T(b"a", 1, ((1 << 40) + 1,), 9, [], lambda refs: b"")]), "limit_exceeded", "2.3 before 2.4")
    E(_build([_T(b"a", 1, (2,), 9, [], lambda refs: b"x", meta=dup_meta)]), "unsupported_feature",
      "2.4 before 2.6")
    E(_build([_raw_tensor(b"a", 1, (2,), b"\0" * 4, meta=dup_meta)]), "invalid_value", "2.5 RAW size before 2.6")
    E(_build([raw1(meta=dup_meta, ext=_exts([(7, 2, b"")]))]), "duplicate_key", "2.6 before 2.7")
    E(_build([raw1(ext=_exts([(7, 2, b"")])), _raw_tensor(b"", 1, (1,), b"\0" * 4)]),
      "reserved_value", "record 0's extensions before record 1's name")
    E(_build([raw1(ext=_exts([(7, 1, b"")]))], ext=_exts([(7, 2, b"")])),
      "unsupported_feature", "record extensions before the file's extensions")
    E(_build([raw1()], meta=_meta([(b"b", META_BOOL, b"\x07")]), ext=_exts([(7, 1, b"")])),
      "invalid_value", "file metadata before the file's extensions")
    # 2.5 RANS, in the order of the RansBody fields (R(): Annex A's record).
    for kw, code, label in [
        (dict(dtype=5, grid_kind=4), "invalid_value", "reconstruction dtype before grid_kind"),
        (dict(grid=_uniform_grid([0.0]), transform_kind=2), "invalid_value", "grid rules before transform_kind"),
        (dict(grid=_uniform_grid([0.5, 0.5], 1), transform_kind=2), "invalid_value",
         "group_count before transform_kind"),
        (dict(grid_kind=4, transform_kind=2, n=0), "unsupported_feature", "grid_kind before precision_bits"),
        (dict(transform_kind=2, n=17), "unsupported_feature", "transform_kind before precision_bits"),
        (dict(crl=5, transform_tensor=1), "invalid_value", "§6.3 coded_row_length before transform_tensor"),
        (dict(transform_tensor=1, n=17), "reserved_value", "§6.3 transform_tensor before precision_bits"),
        (dict(transform_kind=1, transform_tensor=0, crl=(1 << 40) + 1), "limit_exceeded",
         "§6.4 coded_row_length limit before the reference"),
        (dict(transform_kind=1, transform_tensor=0, n=0), "invalid_reference", "§6.4 reference before precision_bits"),
        (dict(n=17), "limit_exceeded", "precision_bits 17 (its table no longer sums) before table_sum"),
        (dict(n=17, L=0), "limit_exceeded", "precision_bits 17 before lane_count 0"),
        (dict(L=0, cm=2), "invalid_value", "lane_count before context_model"),
        (dict(cm=2, r0=1), "unsupported_feature", "context_model before _reserved0"),
        (dict(cm=1, em=2), "invalid_value", "PREVIOUS_INDEX context_count 1 before escape_mode"),
        (dict(tables=[[3, 9, 3, 1]] * 2, em=2), "invalid_value", "IID context_count 2 before escape_mode"),
        (dict(em=2, r0=1), "unsupported_feature", "escape_mode before _reserved0"),
        (dict(r0=1, alphabet=0, tables=[[]]), "reserved_value", "_reserved0 before alphabet_size"),
        (dict(alphabet=0, tables=[[]]), "invalid_value", "alphabet_size 0 (its empty table) before table_sum"),
        (dict(center=1 << 23, tables=[[3, 9, 3, 2]]), "invalid_value", "context_center before table_sum"),
        (dict(offset=1 << 23, tables=[[3, 9, 3, 2]]), "invalid_value", "index_offset before table_sum"),
        (dict(offset=(1 << 23) - 3, tables=[[3, 9, 3, 2]]), "invalid_value", "largest direct index before table_sum"),
        (dict(tables=[[3, 9, 3, 2]], rpc=0), "table_sum", "table_sum before rows_per_chunk"),
        (dict(tables=[[3, 9, 3, 2]], chunk_count=2, chunks=[annex[192:202], b""]), "table_sum",
         "table_sum before chunk_count"),
        (dict(cm=1, tables=[[3, 9, 3, 1], [3, 9, 3, 2], [1, 1, 1, 1]]), "table_sum", "tables in order"),
        (dict(rpc=0), "invalid_value", "rows_per_chunk 0 (no division by 0)"),
        (dict(chunk_count=2, chunks=[annex[192:202], b""]), "invalid_value", "chunk_count 2 for 1 chunk of rows"),
        (dict(meta=dup_meta, ext=_exts([(7, 1, b"")]), r0=1), "reserved_value", "2.5 before 2.6 and 2.7"),
    ]:
        E(_build([R(**kw)]), code, f"2.5 RANS: {label}")
    # One fault, two rules (§4.9): a transformed tensor whose transform_kind is
    # flipped to NONE breaks both rules of §6.3; coded_row_length is first.
    f = _build([_rans_tensor(b"a", 1, (3, 4), [0] * 6, coded_row_length=2, transform_kind=1, transform_tensor=1),
                _raw_tensor(b"T", 1, (2, 4), b"\0" * 32)])
    E(patch_path(f, "header.tensors[0].body.transform_kind", _u8(0)), "invalid_value",
      "RIGHT_MATRIX flipped to NONE")
    # Symbols per chunk and chunk sizes (§9, inclusive).
    read_file_header(_build([R(shape=(2, 1 << 32), rpc=1, chunks=[b"", b""])]))   # 2^32 symbols: allowed
    E(_build([R(shape=(2, (1 << 32) + 1), rpc=1, chunks=[b"", b""])]), "limit_exceeded",
      "2^32+1 symbols in one chunk")
    E(_build([R(shape=(2, (1 << 32) + 1), rpc=1, chunks=[b"", b""], meta=dup_meta)]),
      "limit_exceeded", "symbols per chunk before the record's metadata")
    E(_patch(annex, 143, _u64((1 << 32) + 1)), "limit_exceeded", "chunk size 2^32+1")
    E(_patch(annex, 143, _u64(1 << 32)), "truncated", "chunk size 2^32 (within the limit; then step 11)")
    # §6.4 coded_row_length limit (inclusive); §6.3 with rows = 0.
    f = _build([R(b"a", 1, (0, 1), transform_kind=1, transform_tensor=1, crl=1 << 40, chunks=[]),
                _raw_tensor(b"T", 1, (1 << 40, 1), b"")])
    E(f, "invalid_value", "K = 2^40 accepted; then T's own raw size")
    E(patch_path(f, "header.tensors[1].body.payload.size", _u64(1 << 42)), "truncated",
      "K = 2^40 accepted, T's size right: then the layout")
    E(_build([R(b"a", 1, (0, 1 << 40, 2), crl=1 << 41, chunks=[])]), "limit_exceeded",
      "NONE with rows 0: coded_row_length 2^41 is beyond §9")
    assert decode_file(_build([R(b"a", 1, (0, 1 << 40), crl=1 << 40, chunks=[])]))["a"][2] == b""

    # ---- step 10 before 11 before 12 ----------------------------------------------
    E(_build([_raw_tensor(b"a", 1, (2,), b"\0" * 12)]) + b"\0", "invalid_value",
      "RAW size (step 10) before trailing bytes (step 11)")
    E(_patch(annex + b"\0", 151, b"\xc5"), "trailing_bytes", "trailing bytes (step 11) before a checksum (12)")

    # ---- §4.9 step 11 order -----------------------------------------------------------
    two = _build([_raw_tensor(b"a", 1, (1,), b"\1\2\3\4"), _raw_tensor(b"b", 1, (1,), b"\5\6\7\x08")])
    hdr2 = read_file_header(two)
    p0, p1 = hdr2.tensors[0].raw_payload, hdr2.tensors[1].raw_payload
    at1 = hdr2.fields["header.tensors[1].body.payload.offset"]
    assert p0.offset > 32 + hdr2.preamble.header_size and p1.offset == p0.offset + 64
    E(_patch(_patch(two, at1, _u64(p1.offset + 64)), p0.offset + 4, b"\1", False),
      "payload_layout", "payload 1's offset before the padding before it")
    E(_patch(_patch(two, at1, _u64(p1.offset + 64)), p0.offset - 1, b"\1", False),
      "nonzero_padding", "payload 0's padding before payload 1's offset")
    E(_patch(two, at1, _u64(1 << 40)), "payload_layout", "offset before within-file")
    E(_patch(_patch(annex, 143, _u64(1 << 20)), 170, b"\1", False), "truncated", "within-file before padding")
    E(_patch(two + b"\0", p1.offset - 1, b"\1", False), "nonzero_padding", "padding before trailing bytes")

    # ---- §4.8 step 12: checksums, then chunks, then the transform tensor ---------------
    def word_more(chunk):                     # a deterministic §7.7 fault: one word left over
        return chunk + b"\0\0"
    idx = [rng.randint(-8, 8) for _ in range(12)]
    f = _build([_rans_tensor(b"m", 1, (3, 4), idx, rows_per_chunk=1, chunks_fn=lambda c: [word_more(c[0])] + c[1:])])
    E(f, "stream_trailing_data", "chunk 0 with a word left over")
    crc1_at = fpath(f, "header.tensors[0].body.chunks[1].crc32c")
    E(_patch(f, crc1_at, _u32(crc32c(f[:4]))), "checksum_payload",
      "every checksum before any chunk (chunk 1's checksum, chunk 0's stream)")
    E(_build([_rans_tensor(b"m", 1, (3, 4), idx, rows_per_chunk=1,
                           chunks_fn=lambda c: [word_more(c[0]), c[1][:3], c[2]])]),
      "stream_trailing_data", "chunk 0's fault before chunk 1's")
    E(_build([_rans_tensor(b"m", 1, (3, 4), idx, rows_per_chunk=1,
                           chunks_fn=lambda c: [c[0][:3], word_more(c[1]), c[2]])]),
      "stream_truncated", "chunk 0's fault before chunk 1's (reversed)")
    # A transformed tensor: its own chunks before its transform tensor T.
    rows, K, cols = 3, 2, 4
    cidx = [rng.randint(-5, 5) for _ in range(rows * K)]
    traw = b"".join(_f32(rng.uniform(-1, 1)) for _ in range(K * cols))

    def bad0(c):
        return [word_more(c[0])] + c[1:]
    a_bad = _rans_tensor(b"a", 1, (rows, cols), cidx, coded_row_length=K, transform_kind=1,
                         transform_tensor=1, chunks_fn=bad0)
    f = _build([a_bad, _raw_tensor(b"T", 1, (K, cols), traw)])
    tp = read_file_header(f).tensors[1].raw_payload
    E(_patch(f, tp.offset, bytes([f[tp.offset] ^ 0x40]), False), "stream_trailing_data",
      "a's chunk before T's checksum (T after a)")
    a_bad0 = _rans_tensor(b"a", 1, (rows, cols), cidx, coded_row_length=K, transform_kind=1,
                          transform_tensor=0, chunks_fn=bad0)
    f = _build([_raw_tensor(b"T", 1, (K, cols), traw), a_bad0])
    tp = read_file_header(f).tensors[0].raw_payload
    E(_patch(f, tp.offset, bytes([f[tp.offset] ^ 0x40]), False), "checksum_payload",
      "T first in the file: T is decoded (and checked) first")
    tidx = [rng.randint(-3, 3) for _ in range(K * cols)]
    a_ok = _rans_tensor(b"a", 1, (rows, cols), cidx, coded_row_length=K, transform_kind=1, transform_tensor=1)
    f = _build([a_ok, _rans_tensor(b"T", 1, (K, cols), tidx, chunks_fn=bad0)])
    E(f, "stream_trailing_data", "T's chunk fault, found while decoding a")
    E(f, "stream_trailing_data", "T's chunk fault (T's indices)", lambda d: decode_indices(d, "T"))
    assert decode_indices(f, "a") == cidx                          # a's indices alone do not need T
    # RAW: BOOL checked after the checksum; output unchanged (NaN patterns too).
    f = _build([_raw_tensor(b"b", DTYPE_BOOL, (2,), b"\x01\x02")])
    E(patch_path(f, "header.tensors[0].body.payload.crc32c", _u32(0)), "checksum_payload",
      "BOOL byte 2 with a bad checksum")
    nan_bits = _u32(0x7FA00001) + _u32(0xFFC00000)
    assert decode_file(_build([_raw_tensor(b"n", 1, (2,), nan_bits)]))["n"][2] == nan_bits

    # ---- §7.3 order ---------------------------------------------------------------------
    E(chunk_variant(_u32(0x40000000) + b"\0" * 5), "stream_truncated", "§7.3 item 2 before item 3")
    E(chunk_variant(_u32(0) + _u32(0xFFFF) + b"\x73"), "stream_trailing_data", "§7.3 item 3 before item 4")
    E(chunk_variant(_u32(1) + _i32(5) + _u32(0xFFFF) + annex[200:202]), "rans_state_out_of_range",
      "§7.3 item 4 before §7.7")
    idx2 = [0, 1, 2, 3, 0, 1, 2, 3]
    E(_build([_rans_tensor(b"t", 1, (2, 4), idx2, L=2, chunks_fn=lambda c: [c[0][:8]])]),
      "stream_truncated", "§7.3 item 2 counts lane_count")
    exc = E(_build([_rans_tensor(b"t", 1, (2, 4), idx2, L=2,
                                 chunks_fn=lambda c: [_u32(0) + _u32(5) + _u32(6) + c[0][12:]])]),
            "rans_state_out_of_range", "both lanes low")
    assert exc.field.endswith("lane_states[0]"), exc.field
    exc = E(_build([_rans_tensor(b"t", 1, (2, 4), idx2, L=2,
                                 chunks_fn=lambda c: [c[0][:8] + _u32(6) + c[0][12:]])]),
            "rans_state_out_of_range", "lane 1 low")
    assert exc.field.endswith("lane_states[1]"), exc.field

    # ---- §7.6 / §7.7 order; §6.2 index_out_of_range inside the loop --------------------
    cb = [-1.5, -0.0, 0.25, 7.0]
    oor = dict(grid_kind=GRID_CODEBOOK, grid=_codebook_grid(-1, cb), offset=-2, alphabet=4, n=8, L=1)
    idx3 = [0, 1, -2, 0, 1, 1, 0, 0]                          # symbol 2 is below the codebook
    E(_build([_rans_tensor(b"c", 1, (2, 4), idx3, chunks_fn=lambda c: [word_more(c[0])], **oor)]),
      "index_out_of_range", "index_out_of_range before a word left over (§7.7)")
    E(_build([_rans_tensor(b"c", 1, (2, 4), idx3, chunks_fn=lambda c: [_u32(1) + _i32(9) + c[0][4:]], **oor)]),
      "index_out_of_range", "index_out_of_range before an unused escape value (§7.7)")
    E(_build([_rans_tensor(b"c", 1, (2, 4), idx3, rows_per_chunk=1,
                           chunks_fn=lambda c: [c[0], c[1][:3]], **oor)]),
      "index_out_of_range", "chunk 0's index before chunk 1's stream")
    esc_cb = dict(grid_kind=GRID_CODEBOOK, grid=_codebook_grid(-2, cb), offset=-2, alphabet=4, n=8,
                  escape_mode=ESCAPE_LAST_SYMBOL, tables=[[100, 100, 50, 6]])
    # Direct indices -2, -1, 0; symbol 3 escapes.  An escape to 1 is in the
    # codebook; one to 50 is a valid escape outside it: index_out_of_range.
    assert decode_file(_build([_rans_tensor(b"c", 1, (1, 3), [0, 1, -2], **esc_cb)]))["c"][2] == \
        _f32(0.25) + _f32(7.0) + _f32(-1.5)
    E(_build([_rans_tensor(b"c", 1, (1, 3), [0, 50, -2], **esc_cb)]), "index_out_of_range",
      "escaped index outside the codebook")
    E(_build([_rans_tensor(b"c", 1, (1, 4), [0, -1, -2, 1], **esc_cb,
                           chunks_fn=lambda c: [c[0][:4] + _i32(0) + c[0][8:]])]),
      "escape_mismatch", "escape value 0 is a direct index")
    E(_build([_rans_tensor(b"c", 1, (1, 4), [0, 50, -2, 1], **esc_cb,
                           chunks_fn=lambda c: [c[0][:8] + _i32(-1) + c[0][12:]])]),
      "index_out_of_range", "index 50 (symbol 1) before the direct escape value -1 (symbol 3)")
    # §7.7: words left, then final states, then unused escapes.
    E(chunk_variant(_u32(1) + _i32(100) + _u32(726522) + annex[200:202]), "rans_final_state",
      "final state before an unused escape")
    E(chunk_variant(_u32(1) + _i32(100) + annex[196:202] + b"\0\0"), "stream_trailing_data",
      "a word left before an unused escape")

    # ---- §7.5: alphabet_size 1 with LAST_SYMBOL -----------------------------------------
    top = (1 << 23) - 1
    one = dict(alphabet=1, escape_mode=ESCAPE_LAST_SYMBOL, tables=[[16]], n=4)
    vals = [5, -7, top, -top, 0]
    f, got = roundtrip([_rans_tensor(b"e", 1, (5,), vals, offset=top, **one)], "e", vals)
    assert got["e"][2] == b"".join(_f32(0.5 * v) for v in vals)
    roundtrip([_rans_tensor(b"e", 1, (1,), [top], offset=top, **one)], "e", [top])   # = index_offset
    E(_build([_rans_tensor(b"e", 1, (1,), [3], offset=1 << 23, **one)]), "invalid_value",
      "alphabet 1 LAST_SYMBOL: index_offset itself is still checked")
    E(_build([_rans_tensor(b"e", 1, (1,), [3], offset=0, **one,
                           chunks_fn=lambda c: [_u32(1) + _i32(1 << 23) + c[0][8:]])]),
      "escape_mismatch", "alphabet 1: escape value 2^23")

    # ---- §6.1: groups of coded rows (with a transform) ----------------------------------
    steps3, zps3 = [0.5, 0.25], [1, -1]
    a = _rans_tensor(b"a", 1, (rows, cols), cidx, coded_row_length=K, transform_kind=1, transform_tensor=1,
                     grid=_uniform_grid(steps3, 2, zps3))
    f, got = roundtrip([a, _raw_tensor(b"T", 1, (K, cols), traw)], "a", cidx)
    tv = [f32_from_bits(v) for v in struct.unpack(f"<{K * cols}I", traw)]
    want = []
    for r in range(rows):
        g = r // 2                                            # the coded row's group
        for j in range(cols):
            acc = 0.0
            for k in range(K):
                acc += (steps3[g] * (cidx[r * K + k] - zps3[g])) * tv[k * cols + j]
            want.append(_f32(acc))
    assert got["a"][2] == b"".join(want)
    E(_build([_rans_tensor(b"a", 1, (rows, cols), cidx, coded_row_length=K, transform_kind=1, transform_tensor=1,
                           grid=_uniform_grid([0.5] * 2, 1)), _raw_tensor(b"T", 1, (K, cols), traw)]),
      "invalid_value", "group_count counts the coded rows (3), not 2")
    assert decode_file(_build([R(grid=_uniform_grid([0.5], 5))]))["w"] == out["w"]       # max(1, ceil(3/5))

    # ---- §7.1: chunk_count counts coded symbols -----------------------------------------
    cidx6 = [rng.randint(-5, 5) for _ in range(6)]
    Tz = _raw_tensor(b"T", 1, (2, 0), b"")
    a0 = _rans_tensor(b"a", 1, (3, 0), cidx6, coded_row_length=2, transform_kind=1, transform_tensor=1,
                      rows_per_chunk=2)
    assert decode_file(_build([a0, Tz]))["a"] == ("FLOAT32", (3, 0), b"")
    assert decode_indices(_build([a0, Tz]), "a") == cidx6
    a0bad = _rans_tensor(b"a", 1, (3, 0), cidx6, coded_row_length=2, transform_kind=1, transform_tensor=1,
                         rows_per_chunk=2, chunks_fn=lambda c: [c[0], word_more(c[1])])
    E(_build([a0bad, Tz]), "stream_trailing_data", "row_length 0: every chunk is still decoded and checked")
    E(_build([R(b"a", 1, (3, 0), transform_kind=1, transform_tensor=1, crl=2, rpc=2, chunks=[]), Tz]),
      "invalid_value", "chunk_count 0 for 6 coded symbols")

    # ---- §9: more inclusive limits ---------------------------------------------------------
    t16 = [_flat_table(5, 8)] * 16
    idx16 = [rng.randint(-2, 2) for _ in range(40)]
    roundtrip([_rans_tensor(b"p", 1, (4, 10), idx16, n=8, context_model=CONTEXT_PREVIOUS_INDEX, tables=t16,
                            offset=-2, alphabet=5, L=32)], "p", idx16)
    idx64k = [rng.randint(-3, 3) for _ in range(6)]
    roundtrip([_rans_tensor(b"q", 1, (2, 3), idx64k, n=16, offset=-3, alphabet=65536,
                            tables=[[1] * 65536])], "q", idx64k)
    ends = [-(1 << 15), 0, (1 << 15) - 1]
    cbig = _codebook_grid(-(1 << 15), [float(i) for i in range(65536)])
    f, got = roundtrip([_rans_tensor(b"c", 1, (1, 3), ends, grid_kind=GRID_CODEBOOK, grid=cbig,
                                     offset=-(1 << 15), alphabet=65536, n=16, tables=[[1] * 65536])], "c", ends)
    assert got["c"][2] == _f32(0.0) + _f32(32768.0) + _f32(65535.0)

    # =====================================================================
    # 1.1: the UNIFORM_TRELLIS grid (§6.6), required_features bit 0 (§3.3),
    # its place in the order of checks (§4.9 item 2.5), and this decoder's
    # 1.0-only mode (spec_version="1.0", §3.1 / §4.8 step 4).
    # =====================================================================
    def E11(data, name, label, fn=None):
        return _expect_error(data, name, label, fn, kind="1.1 error cases")
    TR = GRID_UNIFORM_TRELLIS
    assert TR == 3 and FEATURE_TRELLIS == 1

    def trellis_model(indices, rows, K, rpc, steps, rows_per_group=0):
        """§6.6 written another way (the form of VVC's dependent quantization):
        d = sgn(q) (2|q| - (state >> 1)), next state = (32040 >> (4 state + 2 (q & 1))) & 3
        (32040 = 0x7D28 packs the NEXT table two bits an entry); states are 0 at a
        chunk's first row.  Returns binary32 patterns."""
        out_, st = [], []
        for r in range(rows):
            if r % rpc == 0:
                st = [0] * K
            g = 0 if rows_per_group == 0 else r // rows_per_group
            step = f32_from_bits(_bits_of_f32(steps[g]))
            for c in range(K):
                q = indices[r * K + c]
                d = ((q > 0) - (q < 0)) * (2 * abs(q) - (st[c] >> 1))
                out_.append(_bits_of_f32(step * d))      # exact in binary64, rounded once to binary32
                st[c] = (32040 >> ((st[c] << 2) + ((q & 1) << 1))) & 3
        return out_
    # The model's packed table is §6.6's NEXT table.
    assert [[(32040 >> ((t << 2) + (b << 1))) & 3 for b in (0, 1)] for t in range(4)] == \
        [[0, 2], [2, 0], [1, 3], [3, 1]]

    def enc(bits, dtype):
        return b"".join({1: _u32(v), 2: _u16(float16_bits(v)), 3: _u16(bfloat16_bits(v))}[dtype]
                        for v in bits)

    def tbuild(tensors, features=FEATURE_TRELLIS, minor=1, **kw):
        return _build(tensors, features=features, minor=minor, **kw)

    # ---- §6.6 worked example: indices 1, 1, -1, 0, one group, step 0.5 -------------
    # "has states 0, 2, 3, 1 before each index, so d is 2, 1, -1, 0 and the values
    # 1.0, 0.5, -0.5, 0.0".
    ex = [1, 1, -1, 0]
    f = tbuild([_rans_tensor(b"x", 1, (4, 1), ex, grid_kind=TR, grid=_uniform_grid([0.5]))])
    tally["encode/decode round trips"] += 1
    assert decode_indices(f, "x") == ex                  # §7 gives indices; only values use the trellis
    assert decode_file(f)["x"] == ("FLOAT32", (4, 1), _f32(1.0) + _f32(0.5) + _f32(-0.5) + _f32(0.0))
    assert decode_file(f)["x"][2][12:16] == _u32(0)      # d = 0 is +0.0
    assert trellis_model(ex, 4, 1, 4, [0.5]) == [_bits_of_f32(v) for v in (1.0, 0.5, -0.5, 0.0)]
    # The same indices on the UNIFORM grid of §6.1 are step x q.
    f_u = _build([_rans_tensor(b"x", 1, (4, 1), ex, grid=_uniform_grid([0.5]))])
    assert decode_file(f_u)["x"][2] == _f32(0.5) + _f32(0.5) + _f32(-0.5) + _f32(0.0)
    # FLOAT16 / BFLOAT16 output: the §6.6 value, then §6.5.
    for dtype in (2, 3):
        f = tbuild([_rans_tensor(b"x", dtype, (4, 1), ex, grid_kind=TR, grid=_uniform_grid([0.5]))])
        assert decode_file(f)["x"][2] == enc([_bits_of_f32(v) for v in (1.0, 0.5, -0.5, 0.0)], dtype)
    # Columns do not affect each other: the example beside another column, in 2 lanes.
    ex2 = [1, 0, 1, 0, -1, 0, 0, 0]                      # column 0: the example; column 1: zeros
    f = tbuild([_rans_tensor(b"x", 1, (4, 2), ex2, grid_kind=TR, grid=_uniform_grid([0.5]), L=2)])
    assert decode_file(f)["x"][2] == b"".join(_f32(v) for v in (1.0, 0, 0.5, 0, -0.5, 0, 0.0, 0))

    # ---- §6.6 negative odd indices: q mod 2 is 1 (§2.4: -3 mod 2 = 1) ------------
    # Hand trace: t=0 q=-3 d=-6 -> t=2; q=-3 d=-5 -> t=3; q=-1 d=-1 -> t=1; q=2 d=4 -> t=2;
    # q=0 d=0 -> t=1; q=-5 d=-10 -> t=0; q=-7 d=-14 -> t=2; q=-2 d=-3 -> t=1.
    neg = [-3, -3, -1, 2, 0, -5, -7, -2]
    want_d = [-6, -5, -1, 4, 0, -10, -14, -3]
    f = tbuild([_rans_tensor(b"n", 1, (8, 1), neg, grid_kind=TR, grid=_uniform_grid([0.25]))])
    assert decode_file(f)["n"][2] == b"".join(_f32(0.25 * d) for d in want_d)
    assert trellis_model(neg, 8, 1, 8, [0.25]) == [_bits_of_f32(0.25 * d) for d in want_d]
    # A remainder that keeps the sign (C's -3 % 2 == -1, read as "not 1", i.e. parity 0)
    # would decode other values: the case tells the two apart.
    st, c_rem = 0, []
    for q in neg:
        c_rem.append(2 * q if st <= 1 else 2 * q - ((q > 0) - (q < 0)))
        st = [[0, 2], [2, 0], [1, 3], [3, 1]][st][1 if math.fmod(q, 2) == 1 else 0]
    assert c_rem != want_d
    # Escaped indices are the final q (§7.5), down to -(2^23 - 1) (odd): |d| = 2^24 - 2
    # in quantizer 0 and 2^24 - 3 in quantizer 1 (§6.6 "|d| <= 2^24 - 2").
    top = (1 << 23) - 1
    big = [-top, -top, top, -top, 40, -41, 3, -1000001]
    ekw = dict(grid_kind=TR, grid=_uniform_grid([1.0]), offset=-2, alphabet=6, n=8,
               escape_mode=ESCAPE_LAST_SYMBOL, tables=[_flat_table(6, 8)])
    f = tbuild([_rans_tensor(b"b", 1, (8, 1), big, **ekw)])
    tally["encode/decode round trips"] += 1
    assert decode_indices(f, "b") == big
    # states before each index: 0, 2, 3, 1, 0, 0, 2, 3 (quantizer 1 at t = 2, 3)
    d_big = [-(2 * top), -(2 * top) + 1, 2 * top - 1, -(2 * top), 80, -82, 5, -2000001]
    assert d_big[0] == -((1 << 24) - 2) and d_big[1] == -((1 << 24) - 3)
    assert decode_file(f)["b"][2] == b"".join(_f32(float(d)) for d in d_big)
    assert trellis_model(big, 8, 1, 8, [1.0]) == [_bits_of_f32(float(d)) for d in d_big]

    # ---- §6.6 state reset at the first row of each chunk (not at a group's) --------
    ones = [1] * 8
    # (4, 2), rows_per_chunk 2: each chunk's rows 0, 1 give d = 2, 1 in both columns.
    for L in (1, 2, 3):
        f = tbuild([_rans_tensor(b"r", 1, (4, 2), ones, grid_kind=TR, grid=_uniform_grid([0.5]),
                                 rows_per_chunk=2, L=L)])
        assert decode_file(f)["r"][2] == b"".join(_f32(v) for v in (1.0, 1.0, 0.5, 0.5, 1.0, 1.0, 0.5, 0.5))
    # One chunk of the same rows: no reset, d = 2, 1, 1, 2 (states 0, 2, 3, 1).
    f = tbuild([_rans_tensor(b"r", 1, (4, 2), ones, grid_kind=TR, grid=_uniform_grid([0.5]))])
    assert decode_file(f)["r"][2] == b"".join(_f32(v) for v in (1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 1.0, 1.0))
    # rows_per_chunk 3 of 4 rows: chunk 1 (row 3) starts again at state 0.
    f = tbuild([_rans_tensor(b"r", 1, (4, 2), ones, grid_kind=TR, grid=_uniform_grid([0.5]), rows_per_chunk=3)])
    assert decode_file(f)["r"][2] == b"".join(_f32(v) for v in (1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 1.0, 1.0)[:6]
                                                 + (1.0, 1.0))
    # A group boundary inside a chunk changes the step, not the state: steps 1, 0.5, 0.25
    # per row, indices 1, 1, 1 -> d = 2, 1, 1 -> 2.0, 0.5, 0.25.
    f = tbuild([_rans_tensor(b"g", 1, (3, 1), [1, 1, 1], grid_kind=TR, grid=_uniform_grid([1.0, 0.5, 0.25], 1))])
    assert decode_file(f)["g"][2] == _f32(2.0) + _f32(0.5) + _f32(0.25)
    # Random indices against the model: lanes, chunks, groups, contexts, dtypes.
    for shape, rpc, L, rpg, steps_, cm in [((7, 5), 3, 2, 2, [0.5, 0.1, 3.0, 1e-3], CONTEXT_IID),
                                           ((9, 4), 1, 3, 0, [0.37], CONTEXT_IID),
                                           ((6, 10), 4, 5, 5, [0.2, 7.5], CONTEXT_PREVIOUS_INDEX),
                                           ((5, 3), 100, 32, 1, [1.0, 2.0, 0.5, 0.25, 1e-30], CONTEXT_IID)]:
        rows_, K_ = shape[0], math.prod(shape[1:])
        idx_t = [rng.randint(-8, 8) for _ in range(rows_ * K_)]
        for dtype in (1, 2, 3):
            extra = dict(tables=[_flat_table(17, 12)] * 3) if cm == CONTEXT_PREVIOUS_INDEX else {}
            t = _rans_tensor(b"t", dtype, shape, idx_t, grid_kind=TR, grid=_uniform_grid(steps_, rpg),
                             rows_per_chunk=rpc, L=L, context_model=cm, **extra)
            f = tbuild([t])
            tally["encode/decode round trips"] += 1
            assert decode_indices(f, "t") == idx_t
            want = trellis_model(idx_t, rows_, K_, rpc, steps_, rpg)
            assert decode_file(f)["t"] == (DTYPES[dtype][0], shape, enc(want, dtype)), (shape, dtype)

    # ---- §6.4 with §6.6 coefficients: states run down each coefficient column ---------
    rows, K, cols = 5, 3, 2
    cidx_t = [rng.choice([-3, -1, 0, 1, 2, 5]) for _ in range(rows * K)]
    traw = b"".join(_f32(rng.uniform(-2, 2)) for _ in range(K * cols))
    tv = [f32_from_bits(v) for v in struct.unpack(f"<{K * cols}I", traw)]
    for dtype in (1, 2, 3):
        for rpc in (5, 2):
            a = _rans_tensor(b"a", dtype, (rows, cols), cidx_t, coded_row_length=K, transform_kind=1,
                             transform_tensor=1, grid_kind=TR, grid=_uniform_grid([0.5, 0.125], 3),
                             rows_per_chunk=rpc)
            f = tbuild([a, _raw_tensor(b"T", 1, (K, cols), traw)])
            tally["encode/decode round trips"] += 1
            assert decode_indices(f, "a") == cidx_t
            coef = [f32_from_bits(v) for v in trellis_model(cidx_t, rows, K, rpc, [0.5, 0.125], 3)]
            want = []
            for r in range(rows):
                for j in range(cols):
                    acc = 0.0
                    for k in range(K):
                        acc += coef[r * K + k] * tv[k * cols + j]
                    want.append(_bits_of_f32(acc))
            assert decode_file(f)["a"][2] == enc(want, dtype), (dtype, rpc)
    # A trellis-coded transform tensor T (RANS, transform_kind NONE: allowed by §6.4).
    tidx_t = [rng.randint(-3, 3) for _ in range(K * cols)]
    T = _rans_tensor(b"T", 1, (K, cols), tidx_t, grid_kind=TR, grid=_uniform_grid([0.75]))
    a = _rans_tensor(b"a", 1, (rows, cols), cidx_t, coded_row_length=K, transform_kind=1, transform_tensor=0)
    got = decode_file(tbuild([T, a]))
    tvals = [f32_from_bits(v) for v in trellis_model(tidx_t, K, cols, K, [0.75])]
    assert got["T"][2] == b"".join(_u32(_bits_of_f32(v)) for v in tvals)
    want = []
    for r in range(rows):
        for j in range(cols):
            acc = 0.0
            for k in range(K):
                acc += (0.5 * cidx_t[r * K + k]) * tvals[k * cols + j]
            want.append(_f32(acc))
    assert got["a"][2] == b"".join(want)
    # Annex A's record with the trellis grid: its indices, the trellis values.
    R = _rans_record
    assert decode_file(tbuild([R(grid_kind=TR)]))["w"][2] == \
        enc(trellis_model(_ANNEX_A_INDICES, 3, 4, 3, [0.5]), 1)

    # ---- §3.3 / §6.6 / §4.9 item 2.5: the missing bit 0 ------------------------------------
    # "a UNIFORM_TRELLIS grid in a file without it is invalid_value (checked right after
    # grid_kind, before the grid's fields)".
    exc = E11(_build([R(grid_kind=TR)]), "invalid_value", "trellis grid, required_features 0")
    assert exc.field.endswith(".grid_kind"), exc.field
    E11(_patch(annex, 66, _u8(TR)), "invalid_value", "Annex A with grid_kind 3, bit 0 not set")
    exc = E11(_build([R(grid_kind=TR)], features=0, minor=1), "invalid_value", "minor 1 does not stand for bit 0")
    assert exc.field.endswith(".grid_kind")
    exc = E11(_build([R(grid_kind=TR, grid=_uniform_grid([0.5, 0.5], 1))]), "invalid_value",
              "missing bit before group_count")
    assert exc.field.endswith(".grid_kind"), exc.field
    exc = E11(tbuild([R(grid_kind=TR, grid=_uniform_grid([0.5, 0.5], 1))]), "invalid_value",
              "bit set: group_count")
    assert exc.field.endswith(".group_count"), exc.field
    exc = E11(_build([R(grid_kind=TR, grid=_uniform_grid([0.5], 0, [1]))]), "invalid_value",
              "missing bit before has_zero_point")
    assert exc.field.endswith(".grid_kind"), exc.field
    E11(_build([R(grid_kind=TR, transform_kind=2)]), "invalid_value", "missing bit before transform_kind")
    E11(tbuild([R(grid_kind=TR, transform_kind=2)]), "unsupported_feature", "bit set: transform_kind 2")
    E11(_build([R(grid_kind=TR, n=17)]), "invalid_value", "missing bit before precision_bits 17")
    exc = E11(_build([R(grid_kind=TR, dtype=5)]), "invalid_value", "reconstruction dtype before the missing bit")
    assert exc.field.endswith(".dtype"), exc.field
    E11(_build([R(grid_kind=TR, dtype=99)]), "unsupported_feature", "unknown dtype (2.2) before the missing bit")
    E11(_build([R(grid_kind=TR, shape=(1 << 21, 1 << 20))]), "limit_exceeded",
        "element_count (2.3) before the missing bit")
    E11(_build([R(grid_kind=TR, grid=_u64(0) + _u32((1 << 24) + 1) + _u8(0))]), "limit_exceeded",
        "group_count 2^24+1 (step 9) before the missing bit (step 10)")
    E11(_build([R(grid_kind=TR, tables=[[3, 9, 3, 1]], alphabet=65537)]), "limit_exceeded",
        "alphabet_size 65537 (step 9) before the missing bit (step 10)")
    E11(_build([R(grid_kind=TR)], meta=dup_meta), "duplicate_key", "file metadata (item 1) before the missing bit")
    E11(_build([raw1(ext=_exts([(7, 1, b"")])), R(b"w", grid_kind=TR)]), "unsupported_feature",
        "record 0's extensions before record 1's missing bit")
    E11(_build([R(b"w", grid_kind=TR), _raw_tensor(b"a", 99, (1,), b"\0" * 4)]), "invalid_value",
        "record 0's missing bit before record 1's dtype")
    E11(_build([R(grid_kind=TR, meta=dup_meta)]), "invalid_value", "missing bit (2.5) before record metadata (2.6)")
    # A trellis grid is a UniformGrid in step 9 (1.1): a short one is a step-9 fault.
    E11(tbuild([R(grid_kind=TR, grid=_u64(0) + _u32(1) + _u8(0))]), "invalid_value", "trellis grid without its step")
    # "a file MAY set bit 0 without using it"; minor_version is never checked.
    assert decode_file(_patch(annex, 12, _u32(1)))["w"] == out["w"]
    assert decode_file(_patch(_patch(annex, 12, _u32(1)), 10, _u16(1)))["w"] == out["w"]
    assert decode_file(tbuild([R(grid_kind=TR)], minor=0))["w"] == decode_file(tbuild([R(grid_kind=TR)]))["w"]
    E11(_patch(annex, 12, _u32(3)), "unsupported_feature", "bits 0 and 1")
    E11(_patch(annex, 12, _u32(0xFFFFFFFE)), "unsupported_feature", "bits 1 to 31")
    E11(tbuild([R(grid_kind=4)]), "unsupported_feature", "bit 0 set, grid_kind 4")

    # ---- §6.6 has_zero_point MUST be 0 ------------------------------------------------------
    zp1 = _uniform_grid([0.5], 0, [0])                     # has_zero_point 1, zero point 0
    exc = E11(tbuild([R(grid_kind=TR, grid=zp1)]), "invalid_value", "trellis has_zero_point 1")
    assert exc.field.endswith(".has_zero_point"), exc.field
    assert "w" in decode_file(_build([R(grid=zp1)]))        # the same grid is valid for UNIFORM (§6.1)
    E11(tbuild([R(grid_kind=TR, grid=zp1, transform_kind=2)]), "invalid_value",
        "has_zero_point 1 (grid rule) before transform_kind 2")
    E11(tbuild([R(grid_kind=TR, grid=_u64(0) + _u32(1) + _u8(2) + _f32(0.5) + _i32(0))]), "invalid_value",
        "trellis has_zero_point 2")
    exc = E11(tbuild([R(grid_kind=TR, grid=_uniform_grid([0.5, 0.5], 1, [0, 0]))]), "invalid_value",
              "group_count before has_zero_point")
    assert exc.field.endswith(".group_count"), exc.field
    exc = E11(tbuild([R(grid_kind=TR, grid=_uniform_grid([0.0], 0, [0]))]), "invalid_value",
              "has_zero_point before the steps")
    assert exc.field.endswith(".has_zero_point"), exc.field
    exc = E11(tbuild([R(grid_kind=TR, grid=_uniform_grid([0.0]))]), "invalid_value", "trellis step 0")
    assert exc.field.endswith(".steps[0]"), exc.field
    E11(tbuild([R(grid_kind=TR, grid=_u64(0) + _u32(1) + _u8(1) + _f32(0.5))]), "invalid_value",
        "has_zero_point 1 without its zero points: the grid is short (step 9)")

    # ---- the 1.0-only mode (spec_version="1.0"): bit 0 unknown ------------------------------
    def v10(d):
        return decode_file(d, spec_version="1.0")
    f = tbuild([_rans_tensor(b"x", 1, (4, 1), ex, grid_kind=TR, grid=_uniform_grid([0.5]))])
    exc = E11(f, "unsupported_feature", "1.0 decoder, trellis file", v10)
    assert exc.field == "preamble.required_features", exc.field
    E11(f, "unsupported_feature", "1.0 decoder, trellis file (indices)",
        lambda d: decode_indices(d, "x", spec_version="1.0"))
    E11(f, "unsupported_feature", "1.0 decoder, header only", lambda d: read_file_header(d, "1.0"))
    E11(_patch(annex, 12, _u32(1)), "unsupported_feature", "1.0 decoder, bit 0 set and unused", v10)
    assert v10(annex) == out                                 # a 1.0 file decodes the same in both modes
    # grid_kind 3 without bit 0: unknown to a 1.0 decoder (§3.2), whose grid is skipped (§4.8
    # step 9, even a grid too short for a UniformGrid); invalid_value to a 1.1 decoder.
    E11(_patch(annex, 66, _u8(TR)), "unsupported_feature", "1.0 decoder, grid_kind 3 unknown", v10)
    short = _build([R(grid_kind=TR, grid=_u64(0) + _u32(1) + _u8(0))])
    E11(short, "unsupported_feature", "1.0 decoder, grid_kind 3 with a short grid: skipped", v10)
    E11(short, "invalid_value", "1.1 decoder, grid_kind 3 with a short grid")
    try:
        decode_file(annex, spec_version="2.0")
        raise AssertionError("spec_version 2.0 accepted")
    except ValueError:
        pass
    # The command line: --spec-version 1.0 refuses the file, exit status 1 and no output.
    import contextlib
    import io
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "t.nrd"), os.path.join(tmp, "t.npz")
        with open(src, "wb") as fh:
            fh.write(f)
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            assert _decoder_main(["--spec-version", "1.0", src, dst]) == 1
            assert "unsupported_feature" in err.getvalue() and not os.path.exists(dst)
            assert _decoder_main(["--spec-version=1.0", src, dst]) == 1 and not os.path.exists(dst)
            assert _decoder_main(["--spec-version", "0.9", src, dst]) == 2
            assert _decoder_main(["--spec-version", "1.1", src, dst]) == 0 and os.path.exists(dst)
            os.remove(dst)
            assert _decoder_main([src, dst]) == 0 and os.path.exists(dst)        # 1.1 by default
        tally["1.1 error cases"] += 2

    # Error reporting contract.
    exc = E(_patch(annex, 119, b"\x03\x09\x03\x02"), "table_sum", "message")
    assert exc.code == 14 and "119" in str(exc) and "frequencies" in str(exc)

    return tally


def _bits_to_f64(bits):
    return struct.unpack("<d", struct.pack("<Q", bits))[0]


def main() -> int:
    """Run the self-test and print what it checked."""
    tally = self_test()
    print("self-test passed: " + ", ".join(f"{n} {what}" for what, n in tally.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
