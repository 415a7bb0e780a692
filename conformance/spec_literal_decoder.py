#!/usr/bin/env python3
"""Educational, spec-literal decoder for the .nrd format, version 1.1.

Written from spec/nrd-format.md alone, in the manner of zstd's educational
decoder: clarity over speed, one section of this file per section of the
specification, in the specification's order, and every step cites the clause
it implements ("# spec §7.6").

    decode_file(data)          -> {name: (dtype_name, shape, element_bytes)}
    decode_indices(data, name) -> [index, ...]           (section 7)

    python conformance/spec_literal_decoder.py [--spec-version 1.0|1.1] INPUT.nrd OUTPUT.npz

By default it is a 1.1 decoder (spec §3.1: "a 1.1 decoder decodes both" 1.0
and 1.1 files).  decode_file(..., spec_version="1.0") (or --spec-version 1.0)
makes it a 1.0 decoder: bit 0 of required_features (§3.3) and grid_kind 3
(UNIFORM_TRELLIS, §6.6) are then unknown, so a file that uses them is
unsupported_feature, as a decoder written before 1.1 would report.
    python -m nncodec_rd.conformance.spec_literal_selftest    (its self-test, a file beside it)

All decoding arithmetic uses Python integers (exact, spec §2.4) and, where the
spec asks for binary64 arithmetic (§6.4), Python floats, which are IEEE 754
binary64 with round-to-nearest-even.  Rounding to binary32 / binary16 /
bfloat16 is done here by explicit integer manipulation of bit patterns.
NumPy is used only by the command line, to write the .npz file.

Python resolves names when a function runs, so a section may call a function
defined in a later section (e.g. every section raises SpecError, defined in
the section for §10).
"""

from __future__ import annotations

import bisect
import collections
import math
import struct
import sys
from dataclasses import dataclass, field


# =============================================================================
# spec §1  Scope and conformance
# =============================================================================
#
# §1.3 A conforming decoder
#   1. outputs exactly the bytes of section 6 for a conforming file;
#   2. otherwise reports an error (one of section 10) and outputs no tensor
#      that depends on the fault.  This decoder outputs nothing at all when it
#      finds a fault: decode_file() raises SpecError before returning anything;
#   3. checks every limit of section 9 before allocating memory sized by it;
#   4. never reads outside the file.  Every read below goes through a Reader
#      (section 2) whose window lies inside the file, or through a slice of a
#      payload that §4.7 has already shown to lie inside the file.
#
# §1.3 also lets a decoder decode a subset of tensors (decode_indices does),
# but "MUST check the whole preamble and header" -- so decode_indices runs
# every header step of §4.8 (1 to 11) before decoding the chosen tensor.
#
# Which code is reported: §1.3 leaves it open for files with several faults,
# but §4.9 fixes it where "one fault breaks several rules": "the first rule in
# this order decides the code".  This decoder applies the rules in exactly
# the order of §4.8 steps 1-12 and §4.9 and stops at the first that fails, so
# it reports the first broken rule in that order for every file.


# =============================================================================
# spec §2  Conventions
# =============================================================================

# spec §2.1 Byte order and integer types: "All multi-byte values are
# little-endian."
_FMT = {"u8": "<B", "u16": "<H", "u32": "<I", "u64": "<Q", "i32": "<i", "i64": "<q"}
_SIZE = {"u8": 1, "u16": 2, "u32": 4, "u64": 8, "i32": 4, "i64": 8}


class Reader:
    """Reads fields from data[pos:end], little-endian (spec §2.1).

    `end` is the end of the sized region being parsed: the Header (§4.3) or
    a *sized field* (§2.1).  Needing bytes beyond `end` is the region's
    `overrun_error`:

      * the Header: "header_size_mismatch if they end earlier or would run
        past it" (spec §4.3);
      * a sized field: "a content that needs more bytes than stated, are
        invalid_value" (spec §2.1).

    Every field read is remembered in `fields` (path -> absolute byte offset)
    so that later, semantic errors (§4.8 step 10) can name the field's offset.
    """

    def __init__(self, data, start, end, overrun_error, region_name, fields):
        self.data = data
        self.pos = start
        self.end = end
        self.overrun_error = overrun_error
        self.region_name = region_name
        self.fields = fields

    def remaining(self):
        return self.end - self.pos

    def take(self, n, path):
        """The next n bytes of the region, or the region's overrun error."""
        if n > self.end - self.pos:
            raise SpecError(
                self.overrun_error, path, self.pos,
                f"needs {n} bytes but only {self.end - self.pos} remain in {self.region_name}")
        self.fields.setdefault(path, self.pos)
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def int(self, kind, path):
        """One u8/u16/u32/u64/i32/i64 field (spec §2.1)."""
        return struct.unpack(_FMT[kind], self.take(_SIZE[kind], path))[0]

    def f32_bits(self, path):
        """One f32 field, returned as its 32-bit pattern (kept bit-exact)."""
        return self.int("u32", path)

    def varint(self, path):
        # spec §2.2 varint: "Unsigned LEB128: each byte carries seven value
        # bits, least significant group first; bit 7 of a byte is 1 when
        # another byte follows. In this format a varint has at most 3 bytes
        # and MUST be in its minimal form (its last byte is not 0x00 unless it
        # is the only byte). A longer or non-minimal varint is invalid_value."
        start = self.pos
        value = 0
        for i in range(3):
            byte = self.int("u8", path if i == 0 else f"{path}+{i}")
            value |= (byte & 0x7F) << (7 * i)
            if byte & 0x80 == 0:
                if i > 0 and byte == 0x00:
                    raise SpecError("invalid_value", path, start,
                                    "varint is not in its minimal form")
                return value
        raise SpecError("invalid_value", path, start, "varint is longer than 3 bytes")

    def string(self, path):
        """A `string (u16 size)` field (spec §2.1, §2.3); returns its bytes.

        spec §4.8 step 9 checks ill-formed UTF-8 while parsing, but the
        string lengths (tensor name, metadata key) are not among the counts
        step 9 limits: their limits are step-10 rules (spec §4.9 items 1 and
        2.1), checked by check_tensor_record / check_metadata_block."""
        size = self.int("u16", f"{path} (size)")
        at = self.pos
        raw = self.take(size, path)
        # spec §2.3 "Strings are UTF-8 without a terminator, and MUST be
        # well-formed UTF-8 as defined by RFC 3629 ... (invalid_value
        # otherwise). Any code point is allowed, U+0000 included."
        check_utf8(raw, path, at)
        return raw

    def sized(self, path):
        """A sized field: "a u32 byte count, then that many bytes holding
        exactly one X" (spec §2.1).  Returns a Reader over the X."""
        size = self.int("u32", f"{path} (size)")
        at = self.pos
        if size > self.end - self.pos:
            # spec §2.1 "The stated size itself is read from the enclosing
            # region: if the bytes it announces run past the end of the
            # Header, the error is the Header's, header_size_mismatch
            # (section 4.3); if they run past the end of an enclosing sized
            # field, it is that field's, invalid_value."  That is this
            # (enclosing) Reader's overrun_error.
            raise SpecError(self.overrun_error, f"{path} (size)", at - 4,
                            f"sized field of {size} bytes runs past the end of {self.region_name}")
        self.fields.setdefault(path, at)
        self.pos += size
        return Reader(self.data, at, at + size, "invalid_value", path, self.fields)

    def finish(self, path):
        """spec §2.1: "A sized field's content MUST fill its stated size
        exactly: bytes left over ... are invalid_value"; for the Header,
        spec §4.3: header_size_mismatch."""
        if self.pos != self.end:
            raise SpecError(self.overrun_error, path, self.pos,
                            f"{self.end - self.pos} bytes left over at the end of {self.region_name}")


def check_utf8(raw, path, at):
    # spec §2.3 Text: "well-formed UTF-8 as defined by RFC 3629 (no overlong
    # forms, no surrogate code points U+D800 to U+DFFF, nothing above
    # U+10FFFF; invalid_value otherwise)".  Python's strict UTF-8 decoder
    # rejects exactly these (and truncated / stray continuation bytes), i.e.
    # it accepts exactly the UTF-8 of RFC 3629; it accepts U+0000 ("Any code
    # point is allowed, U+0000 included").  The decoded text is not kept:
    # "Tensor names and metadata keys are compared byte for byte; no
    # normalization is applied" -- names and keys stay `bytes` throughout.
    try:
        raw.decode("utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise SpecError("invalid_value", path, at + exc.start, "not valid UTF-8") from None


# spec §2.4 Notation: "ceil(a / b) is integer division rounding up".
# "All integer arithmetic in this document is exact, on mathematical integers
# (no wrap-around)."  Python integers are exact, so every product and sum
# below is computed as the spec states it; where §2.4 prescribes a
# fixed-width-safe form (element_count, offset + size) that form is written
# out anyway, so that this file also shows how to do it in 64 bits.
def ceil_div(a, b):
    return -((-a) // b)


# spec §2.4: "RN32(x) is IEEE 754 rounding of the real number x to binary32,
# round to nearest, ties to even."  The rounding itself is generic; it is used
# for binary32 (§6.1, §6.4) and binary16 (§6.5).

@dataclass(frozen=True)
class BinaryFormat:
    bits: int        # total width
    precision: int   # significand bits, the implicit leading bit included
    emax: int        # largest exponent of a finite number (= bias)
    emin: int        # exponent of the smallest normal number (= 1 - bias)


BINARY16 = BinaryFormat(16, 11, 15, -14)
BINARY32 = BinaryFormat(32, 24, 127, -126)
BINARY64 = BinaryFormat(64, 53, 1023, -1022)


def split_finite(bits, fmt):
    """A finite IEEE pattern -> (sign, integer significand m, exponent e) with
    value = (-1)^sign * m * 2^e exactly."""
    frac_bits = fmt.precision - 1
    exp_field = (bits >> frac_bits) & ((1 << (fmt.bits - fmt.precision)) - 1)
    frac = bits & ((1 << frac_bits) - 1)
    sign = bits >> (fmt.bits - 1)
    if exp_field == 0:                       # zero or subnormal
        return sign, frac, fmt.emin - frac_bits
    return sign, frac | (1 << frac_bits), exp_field - fmt.emax - frac_bits


def is_nan(bits, fmt):
    frac_bits = fmt.precision - 1
    exp_all_ones = (1 << (fmt.bits - fmt.precision)) - 1
    return ((bits >> frac_bits) & exp_all_ones) == exp_all_ones and bits & ((1 << frac_bits) - 1) != 0


def is_inf(bits, fmt):
    frac_bits = fmt.precision - 1
    exp_all_ones = (1 << (fmt.bits - fmt.precision)) - 1
    return ((bits >> frac_bits) & exp_all_ones) == exp_all_ones and bits & ((1 << frac_bits) - 1) == 0


def round_exact(sign, m, e, fmt):
    """IEEE 754 round-to-nearest-ties-to-even of the exact real number
    (-1)^sign * m * 2^e (m >= 0 an integer) to `fmt`, returned as a bit
    pattern.  Subnormal results are produced; a result whose magnitude rounds
    beyond the largest finite number is infinity (IEEE 754 §7.4); zero keeps
    its sign."""
    p = fmt.precision
    sign_bit = sign << (fmt.bits - 1)
    inf_bits = sign_bit | (((1 << (fmt.bits - p)) - 1) << (p - 1))
    if m == 0:
        return sign_bit
    top = m.bit_length() - 1 + e             # floor(log2 |x|)
    exp = max(top, fmt.emin)                  # binade of the result (subnormals: emin)
    quantum = exp - (p - 1)                   # weight of the last significand bit
    shift = quantum - e
    if shift <= 0:
        sig = m << (-shift)                   # exact
    else:
        sig = m >> shift
        rest = m - (sig << shift)
        half = 1 << (shift - 1)
        if rest > half or (rest == half and sig & 1):   # ties to even
            sig += 1
    if sig == 1 << p:                         # carried into the next binade
        sig >>= 1
        exp += 1
    if exp > fmt.emax:                        # overflow: rounds to infinity
        return inf_bits
    if sig < 1 << (p - 1):                    # subnormal (exp == emin)
        return sign_bit | sig
    biased = exp + fmt.emax
    return sign_bit | (biased << (p - 1)) | (sig - (1 << (p - 1)))


def f32_from_bits(bits):
    """f64(): binary32 -> binary64 exactly (spec §6.4), as a Python float."""
    return struct.unpack("<f", struct.pack("<I", bits))[0]


def f64_bits(x):
    return struct.unpack("<Q", struct.pack("<d", x))[0]


def rn32_of_f64(x):
    """RN32 of a binary64 number (spec §2.4), as a binary32 bit pattern.
    (NaN is handled by the caller, spec §6.4.)"""
    bits = f64_bits(x)
    if is_inf(bits, BINARY64):
        return ((bits >> 63) << 31) | 0x7F800000
    sign, m, e = split_finite(bits, BINARY64)
    return round_exact(sign, m, e, BINARY32)


# spec §2.5 Reserved and unused: "A reserved field or bit MUST be written as 0,
# and a decoder MUST reject a file in which it is not 0 (reserved_value)".
def check_reserved(value, path, hdr):
    if value != 0:
        hdr.fail("reserved_value", path, f"reserved field is {value}, MUST be 0")


# =============================================================================
# spec §3  Versioning and extensions
# =============================================================================

# spec §3.1: "A decoder MUST reject a file whose major version it does not
# implement (unsupported_version)."  "A 1.0 decoder MUST NOT check
# minor_version: it MUST accept a file of any minor version 1.x (0 to 65535)"
# -- minor_version is therefore never checked, by either version of this
# decoder ("No step of section 4.8 looks at minor_version").
SUPPORTED_MAJOR_VERSION = 1

# spec §3.3 Required features:
#   | bit | feature | since | meaning |
#   | 0   | trellis | 1.1   | some tensor has grid_kind UNIFORM_TRELLIS (section 6.6) |
# "Version 1.0 defines no bit: a 1.0 decoder rejects a file with bit 0 set."
# "Bits 1 to 31 are not defined."
FEATURE_TRELLIS = 1 << 0


@dataclass(frozen=True)
class SpecVersion:
    """What a decoder of one version of the spec knows (spec §3.1: "This
    document defines 1.1: version 1.0 and the additions of 1.1, each marked
    "(1.1)" where it is defined")."""
    name: str
    known_required_features: int      # spec §3.3, §4.8 step 4
    known_grid_kinds: frozenset       # spec §6 GridKind, §3.2


# 1.0: no feature bit; GridKind UNIFORM (1) and CODEBOOK (2).
SPEC_1_0 = SpecVersion("1.0", 0, frozenset({1, 2}))
# 1.1: bit 0 (trellis); GridKind adds UNIFORM_TRELLIS (3), spec §6.6 "(1.1)".
SPEC_1_1 = SpecVersion("1.1", FEATURE_TRELLIS, frozenset({1, 2, 3}))
SPEC_VERSIONS = {"1.0": SPEC_1_0, "1.1": SPEC_1_1}
DEFAULT_SPEC_VERSION = "1.1"


def spec_version_of(spec_version):
    """"1.0" / "1.1" (or a SpecVersion) -> SpecVersion."""
    if isinstance(spec_version, SpecVersion):
        return spec_version
    if spec_version not in SPEC_VERSIONS:
        raise ValueError(f"spec_version must be one of {sorted(SPEC_VERSIONS)}, not {spec_version!r}")
    return SPEC_VERSIONS[spec_version]

# spec §3.4: "Version 1.0 defines no extension type."
KNOWN_EXTENSION_TYPES = frozenset()


def check_enum(value, enum, path, hdr):
    # spec §3.2: "An enumerated field holding a value this version does not
    # define means the file uses a feature of a later minor version: the
    # decoder MUST reject the file with unsupported_feature".
    if value not in enum:
        hdr.fail("unsupported_feature", path,
                 f"value {value} is not defined in version {hdr.version.name}")


def check_extensions(exts, hdr):
    # spec §4.9 item 2.7 (and item 3 for the file's list): "the record's
    # extensions, each: reserved flag bits (reserved_value), then required and
    # unknown (unsupported_feature)" -- i.e. extension by extension, both
    # rules for one extension before the next extension.
    for ext in exts:
        # spec §3.4 "Bits 1 to 15 of extension_flags are reserved, and are
        # checked (reserved_value) before the required bit, for every
        # extension, skipped ones included."  (§4.5, §2.5.)
        check_reserved(ext.flags & 0xFFFE, f"{ext.path}.extension_flags", hdr)
        if ext.type not in KNOWN_EXTENSION_TYPES:
            # spec §3.4: unknown type with bit 0 (required) set: "MUST reject
            # the file (unsupported_feature)"; "otherwise MUST skip it (its size
            # is known) and decode the file as if it were absent."
            if ext.flags & 1:
                hdr.fail("unsupported_feature", f"{ext.path}.extension_type",
                         f"unknown required extension type {ext.type}")


# =============================================================================
# spec §4  File structure
# =============================================================================

# spec §4.2 Preamble
MAGIC = bytes([0x89, 0x4E, 0x52, 0x44, 0x0D, 0x0A, 0x1A, 0x0A])
PREAMBLE_SIZE = 32


@dataclass
class Preamble:
    major_version: int
    minor_version: int
    required_features: int
    header_size: int
    header_crc32c: int
    reserved0: int


@dataclass
class Header:
    """The parsed Header (spec §4.3) plus what is needed to report errors."""
    data: bytes
    preamble: Preamble
    fields: dict                       # field path -> absolute byte offset
    version: SpecVersion = SPEC_1_1    # the spec version this decoder implements
    metadata: list = field(default_factory=list)
    tensors: list = field(default_factory=list)
    extensions: list = field(default_factory=list)

    def fail(self, name, path, detail):
        raise SpecError(name, path, self.fields.get(path), detail)


def read_preamble(data, spec_version=DEFAULT_SPEC_VERSION):
    """spec §4.8 steps 1 to 8."""
    version = spec_version_of(spec_version)
    # spec §4.8 step 1: "If the file has fewer than 32 bytes: if its first
    # min(length, 8) bytes equal the first min(length, 8) bytes of the magic
    # (an empty file included), truncated; else bad_magic."
    if len(data) < PREAMBLE_SIZE:
        n = min(len(data), len(MAGIC))
        if data[:n] == MAGIC[:n]:
            raise SpecError("truncated", "preamble", len(data),
                            f"file of {len(data)} bytes ends inside the 32-byte preamble")
        raise SpecError("bad_magic", "preamble.magic", 0, "file does not start with the signature")
    # spec §4.8 step 2: "magic differs from the signature: bad_magic."
    if data[0:8] != MAGIC:
        raise SpecError("bad_magic", "preamble.magic", 0, "file does not start with the signature")
    # spec §4.2 field layout.
    major, minor, features, header_size, crc, reserved0 = struct.unpack_from("<HHIQII", data, 8)
    pre = Preamble(major, minor, features, header_size, crc, reserved0)
    # spec §4.8 step 3: "major_version != 1: unsupported_version."
    if major != SUPPORTED_MAJOR_VERSION:
        raise SpecError("unsupported_version", "preamble.major_version", 8,
                        f"major version {major}, this decoder implements 1")
    # spec §4.8 step 4: "required_features has a bit this decoder does not
    # know: unsupported_feature."  spec §3.3: "A decoder MUST reject a file
    # with any bit it does not know set (unsupported_feature, section 4.8
    # step 4), so a decoder of an earlier version stops before the header."
    # A 1.1 decoder knows bit 0; a 1.0 decoder knows none.
    if features & ~version.known_required_features:
        raise SpecError("unsupported_feature", "preamble.required_features", 12,
                        f"required-feature bits 0x{features & ~version.known_required_features:08x} "
                        f"are not known to a {version.name} decoder")
    # spec §4.8 step 5: "_reserved0 != 0: reserved_value."
    if reserved0 != 0:
        raise SpecError("reserved_value", "preamble._reserved0", 28,
                        f"reserved field is {reserved0}, MUST be 0")
    # spec §4.8 step 6: "header_size > the limit of section 9: limit_exceeded."
    if header_size > LIMIT_HEADER_SIZE:
        raise SpecError("limit_exceeded", "preamble.header_size", 16,
                        f"header_size {header_size} exceeds 2^28 (§9)")
    # spec §4.8 step 7: "32 + header_size > file size: truncated."
    if PREAMBLE_SIZE + header_size > len(data):
        raise SpecError("truncated", "preamble.header_size", 16,
                        f"header ends at byte {PREAMBLE_SIZE + header_size}, file has {len(data)} bytes")
    # spec §4.8 step 8 / §8.2: "header_crc32c is the CRC-32C of the preamble's
    # bytes 0 ... 23 followed by the header's header_size bytes".
    computed = crc32c(data[0:24] + data[PREAMBLE_SIZE:PREAMBLE_SIZE + header_size])
    if computed != crc:
        raise SpecError("checksum_header", "preamble.header_crc32c", 24,
                        f"stored 0x{crc:08x}, computed 0x{computed:08x}")
    return pre


def parse_header(data, pre, spec_version=DEFAULT_SPEC_VERSION):
    """spec §4.8 step 9: "Parse the Header (sections 4.3 to 5.6), syntax only.
    While parsing, a decoder detects: regions overrun or not filled
    (header_size_mismatch at Header level, invalid_value inside a sized field,
    section 2.1); non-minimal or over-long varints and ill-formed UTF-8
    (invalid_value); and these counts above their limits of section 9, checked
    as soon as each is read and before anything it counts (limit_exceeded):
    entry_count, extension_count, tensor_count, rank, group_count,
    codebook_size, lane_count, context_count, alphabet_size, chunk_count.
    Nothing else is judged in this step: an unknown enumeration value does
    not stop the parse (every structure it selects is a sized field)."

    So the parse below raises only those errors; every other rule (name and
    key lengths, dimensions, element_count, precision_bits, has_zero_point,
    enumerations, ...) is applied in step 10 (check_semantics)."""
    fields = {}
    version = spec_version_of(spec_version)
    hdr = Header(data, pre, fields, version)
    r = Reader(data, PREAMBLE_SIZE, PREAMBLE_SIZE + pre.header_size,
               "header_size_mismatch", "the Header", fields)
    # spec §4.3 Header: metadata, tensor_count, tensors, extensions.
    hdr.metadata = parse_metadata(r, "header.metadata")
    tensor_count = r.int("u32", "header.tensor_count")
    check_limit(tensor_count, LIMIT_TENSOR_COUNT, "header.tensor_count", r.pos - 4)
    for i in range(tensor_count):
        hdr.tensors.append(parse_tensor_record(r, i, version))
    hdr.extensions = parse_extensions(r, "header.extensions")
    # spec §4.3: "The Header's structures MUST fill exactly header_size bytes
    # (header_size_mismatch if they end earlier or would run past it)."
    r.finish("header (end)")
    return hdr


# spec §4.4 Metadata blocks
def parse_metadata(r, path):
    entry_count = r.int("u32", f"{path}.entry_count")
    check_limit(entry_count, LIMIT_METADATA_ENTRIES, f"{path}.entry_count", r.pos - 4)
    return [parse_metadata_entry(r, f"{path}.entries[{i}]") for i in range(entry_count)]


# spec §4.5 Extension lists
@dataclass
class Extension:
    path: str
    type: int
    flags: int
    body_size: int


def parse_extensions(r, path):
    count = r.int("u16", f"{path}.extension_count")
    check_limit(count, LIMIT_EXTENSION_COUNT, f"{path}.extension_count", r.pos - 2)
    exts = []
    for i in range(count):
        p = f"{path}.extensions[{i}]"
        ext_type = r.int("u16", f"{p}.extension_type")
        flags = r.int("u16", f"{p}.extension_flags")
        body = r.sized(f"{p}.body")           # "u32 size, then bytes"
        body_size = body.remaining()
        body.pos = body.end                   # §5.6 "The body of an extension of unknown type is skipped."
        exts.append(Extension(p, ext_type, flags, body_size))
    return exts


# spec §4.6 Payloads: "The file's payload list is the payloads in header
# order: tensor 0's payloads (chunk 0, 1, ...), then tensor 1's, and so on."
def payload_list(hdr):
    refs = []
    for rec in hdr.tensors:
        refs.extend(rec.payloads())
    return refs


def check_layout(hdr):
    """spec §4.7 Layout, alignment and padding (spec §4.8 step 11), in the
    order of spec §4.9: "Step 11 checks, for each payload of the payload list
    in order: its offset (payload_layout), that it lies within the file
    (truncated), that the padding before it is zero (nonzero_padding); then
    bytes after the end (trailing_bytes)." """
    data = hdr.data
    F = len(data)
    # 1. "Let end = 32 + header_size."
    end = PREAMBLE_SIZE + hdr.preamble.header_size
    for ref in payload_list(hdr):
        # 1. "its offset MUST equal the smallest multiple of 64 that is >= end"
        expected = ceil_div(end, 64) * 64
        if ref.offset != expected:
            hdr.fail("payload_layout", f"{ref.path}.offset",
                     f"payload at offset {ref.offset}, canonical offset is {expected}")
        # 2. "Every payload MUST lie within the file (truncated otherwise)."
        # spec §2.4: "test size > F or offset > F - size instead of computing
        # the sum" (the same answer as offset + size > F, without overflow).
        if ref.size > F or ref.offset > F - ref.size:
            hdr.fail("truncated", f"{ref.path}.size",
                     f"payload [{ref.offset}, {ref.offset + ref.size}) runs past the end of the "
                     f"{len(data)}-byte file")
        # 3. "The bytes between 32 + header_size and the first payload, and
        #    between consecutive payloads, are padding and MUST be 0"
        for pos in range(end, ref.offset):
            if data[pos] != 0:
                raise SpecError("nonzero_padding", "padding", pos, f"padding byte is 0x{data[pos]:02x}")
        # 1. "then end = offset + size"
        end = ref.offset + ref.size
    # 4. "The file ends exactly at end after the last payload (or at
    #    32 + header_size if there is no payload); bytes after it are
    #    trailing_bytes."
    if len(data) > end:
        raise SpecError("trailing_bytes", "end of file", end,
                        f"{len(data) - end} bytes follow the end of the last payload")


def read_file_header(data, spec_version=DEFAULT_SPEC_VERSION):
    """spec §4.8 Reading a file (procedure), steps 1 to 11: everything that
    must be checked before any tensor is decoded."""
    data = bytes(data)
    pre = read_preamble(data, spec_version)             # steps 1-8
    hdr = parse_header(data, pre, spec_version)         # step 9
    check_semantics(hdr)                      # step 10
    check_layout(hdr)                         # step 11
    return hdr


def check_semantics(hdr):
    """spec §4.8 step 10: "Apply the semantic rules of sections 5 to 7 in the
    order of section 4.9."

    spec §4.9: "where one fault breaks several rules the first rule in this
    order decides the code. Step 10 checks, in order:
      1. the file's metadata block, entry by entry ...;
      2. each tensor record in file order, its rules in this order: ...;
      3. the file's extensions, as in 2.7."
    This decoder stops at the first rule that fails, so it reports the first
    rule in that order.  (Where §4.9 says that "the rest of this record is
    skipped" after a fault, a decoder that stops at the first fault skips it
    trivially; the rules that look at another record -- the §6.4 reference --
    look only at that record's field values, see check_transform_reference.)"""
    check_metadata_block(hdr.metadata, hdr)             # §4.9 item 1
    seen_names = {}
    for rec in hdr.tensors:                             # §4.9 item 2
        check_tensor_record(rec, hdr, seen_names)
    check_extensions(hdr.extensions, hdr)               # §4.9 item 3


# =============================================================================
# spec §5  Tensor records
# =============================================================================

# spec §5.2 TensorDtype, with the element sizes of §5.2.
DTYPES = {
    1: ("FLOAT32", 4), 2: ("FLOAT16", 2), 3: ("BFLOAT16", 2), 4: ("FLOAT64", 8),
    5: ("INT8", 1), 6: ("UINT8", 1), 7: ("INT16", 2), 8: ("INT32", 4),
    9: ("INT64", 8), 10: ("BOOL", 1), 11: ("UINT16", 2), 12: ("UINT32", 4),
    13: ("UINT64", 8),
}
DTYPE_FLOAT32, DTYPE_FLOAT16, DTYPE_BFLOAT16, DTYPE_BOOL = 1, 2, 3, 10

# spec §5.3 Coding
CODING_RAW, CODING_RANS = 0, 1
CODINGS = {CODING_RAW: "RAW", CODING_RANS: "RANS"}


@dataclass
class PayloadRef:
    # spec §5.4 PayloadRef
    path: str
    offset: int
    size: int
    crc32c: int


@dataclass
class TensorRecord:
    index: int
    path: str
    name: bytes
    dtype: int
    rank: int
    shape: tuple
    coding: int
    raw_payload: PayloadRef | None = None     # coding RAW
    rans: "RansBody | None" = None            # coding RANS
    metadata: list = field(default_factory=list)
    extensions: list = field(default_factory=list)

    # spec §5.1 Geometry and scan order
    @property
    def element_count(self):
        # "element_count = the product of its dimensions (1 for rank 0; 0 if
        # any dimension is 0)" -- exact (Python integers); its limit is
        # checked in step 10 (check_element_count, the §2.4 procedure).
        return math.prod(self.shape)

    @property
    def rows(self):
        # "rows = shape[0] if r >= 1, else 1"
        return self.shape[0] if self.rank >= 1 else 1

    @property
    def row_length(self):
        # "row_length = the product of shape[1] ... shape[r-1] (1 if r <= 1)"
        return math.prod(self.shape[1:]) if self.rank >= 2 else 1

    def payloads(self):
        # spec §4.6: "a raw tensor has one, a rANS-coded tensor has one per chunk".
        if self.coding == CODING_RAW:
            return [self.raw_payload]
        if self.coding == CODING_RANS:
            return list(self.rans.chunks)
        return []

    @property
    def display_name(self):
        return self.name.decode("utf-8")


def parse_tensor_record(r, index, version=SPEC_1_1):
    """spec §5.2 TensorRecord (syntax only, spec §4.8 step 9)."""
    p = f"header.tensors[{index}]"
    # name: "string (u16 size)".  Its length limit is a step-10 rule (§4.9
    # item 2.1); only its UTF-8 form is checked here (step 9).
    name = r.string(f"{p}.name")
    dtype = r.int("u8", f"{p}.dtype")
    rank = r.int("u8", f"{p}.rank")
    # spec §4.8 step 9: rank is one of the counts checked "as soon as each is
    # read and before anything it counts" (§9 rank <= 8).
    check_limit(rank, LIMIT_RANK, f"{p}.rank", r.pos - 1)
    # The dimensions and element_count are checked in step 10 (§4.9 item 2.3).
    shape = [r.int("u64", f"{p}.shape[{d}]") for d in range(rank)]
    coding = r.int("u8", f"{p}.coding")
    rec = TensorRecord(index, p, name, dtype, rank, tuple(shape), coding)
    # body: "u32 size, then RawBody or RansBody, by coding".
    body = r.sized(f"{p}.body")
    if coding == CODING_RAW:
        # spec §5.3 RawBody: payload, a PayloadRef (20 bytes).
        rec.raw_payload = parse_payload_ref(body, f"{p}.body.payload")
        body.finish(f"{p}.body")
    elif coding == CODING_RANS:
        rec.rans = parse_rans_body(body, f"{p}.body", version)
        body.finish(f"{p}.body")
    else:
        # spec §5.3 "An unknown coding is unsupported_feature (its body is a
        # sized field, so the record can still be parsed)."  Reported in step 10.
        body.pos = body.end
    rec.metadata = parse_metadata(r, f"{p}.metadata")
    rec.extensions = parse_extensions(r, f"{p}.extensions")
    return rec


def check_element_count(rec, hdr):
    """spec §4.9 item 2.3: "each dimension, in order, then element_count
    (limit_exceeded)", with element_count computed as spec §2.4 prescribes:
    "if any dimension is 0 the count is 0; otherwise, having checked each
    dimension <= 2^40, multiply in order and stop with limit_exceeded as soon
    as the running product would exceed 2^40 (test p > floor(2^40 / d) before
    computing p x d)." """
    p = rec.path
    for d, dim in enumerate(rec.shape):
        # spec §9 "each dimension 2^40" (inclusive).
        check_limit(dim, LIMIT_DIMENSION, f"{p}.shape[{d}]", hdr.fields.get(f"{p}.shape[{d}]"))
    if 0 in rec.shape:
        return 0
    prod = 1
    for dim in rec.shape:
        if prod > LIMIT_ELEMENT_COUNT // dim:
            hdr.fail("limit_exceeded", f"{p}.shape",
                     f"element_count of shape {list(rec.shape)} exceeds 2^40 (§9)")
        prod *= dim
    assert prod == rec.element_count
    return prod


def check_tensor_record(rec, hdr, seen_names):
    """spec §4.9 item 2: "each tensor record in file order, its rules in this
    order" -- items 2.1 to 2.7, cited below."""
    p = rec.path
    # 2.1 "name: empty (invalid_value), longer than the limit
    # (limit_exceeded), equal to an earlier tensor's name (duplicate_name)".
    # spec §5.2 "name is 1 to 4096 bytes"; §2.3 "compared byte for byte".
    if len(rec.name) == 0:
        hdr.fail("invalid_value", f"{p}.name", "tensor name is empty")
    if len(rec.name) > LIMIT_NAME_BYTES:
        hdr.fail("limit_exceeded", f"{p}.name (size)",
                 f"name of {len(rec.name)} bytes exceeds the limit of {LIMIT_NAME_BYTES} bytes (§9)")
    if rec.name in seen_names:
        hdr.fail("duplicate_name", f"{p}.name",
                 f"name {rec.name!r} already used by tensor {seen_names[rec.name]}")
    seen_names[rec.name] = rec.index
    # 2.2 "dtype known (unsupported_feature); if not, the rest of this record
    # is skipped".  spec §5.2 "dtype is a TensorDtype".
    check_enum(rec.dtype, DTYPES, f"{p}.dtype", hdr)
    # 2.3 "each dimension, in order, then element_count (limit_exceeded); on
    # a fault the rest of this record is skipped".
    element_count = check_element_count(rec, hdr)
    # 2.4 "coding known (unsupported_feature); if not, the rest of this
    # record is skipped".  spec §5.3.
    check_enum(rec.coding, CODINGS, f"{p}.coding", hdr)
    # 2.5 "RAW: payload.size (invalid_value). RANS, in the order of the
    # RansBody fields: ..." (check_rans_body).
    if rec.coding == CODING_RAW:
        # spec §5.3 "payload.size MUST equal element_count x the element size
        # (invalid_value)."
        expected = element_count * DTYPES[rec.dtype][1]
        if rec.raw_payload.size != expected:
            hdr.fail("invalid_value", f"{p}.body.payload.size",
                     f"raw payload of {rec.raw_payload.size} bytes, expected {expected}")
    else:
        check_rans_body(rec, hdr)
    # 2.6 "the record's metadata block, as in item 1".
    check_metadata_block(rec.metadata, hdr)
    # 2.7 "the record's extensions, each: reserved flag bits (reserved_value),
    # then required and unknown (unsupported_feature)".
    check_extensions(rec.extensions, hdr)


def decode_raw(rec, data):
    """spec §5.3 RAW: "Decoding a raw tensor outputs these bytes unchanged
    (NaN patterns included: only reconstructed values are canonicalized,
    section 6.5)."  The payload checksum has been verified by the caller
    (§4.8 step 12, §8.3)."""
    ref = rec.raw_payload
    payload = data[ref.offset:ref.offset + ref.size]
    if rec.dtype == DTYPE_BOOL:
        # spec §5.3 "A BOOL byte other than 0 or 1 is invalid_value; it is
        # detected when the tensor is decoded (step 12, after its checksum)."
        for i, byte in enumerate(payload):
            if byte not in (0, 1):
                raise SpecError("invalid_value", f"{rec.path} (BOOL element {i})", ref.offset + i,
                                f"BOOL byte is {byte}, MUST be 0 or 1")
    return payload


# spec §5.4 PayloadRef
def parse_payload_ref(r, path):
    offset = r.int("u64", f"{path}.offset")
    size = r.int("u64", f"{path}.size")
    crc = r.int("u32", f"{path}.crc32c")
    return PayloadRef(path, offset, size, crc)


# spec §5.5 Metadata entries
META_STRING, META_INT64, META_FLOAT64, META_BOOL, META_BYTES = 1, 2, 3, 4, 5
METADATA_TYPES = {1: "STRING", 2: "INT64", 3: "FLOAT64", 4: "BOOL", 5: "BYTES"}


@dataclass
class MetadataEntry:
    path: str
    key: bytes
    value_type: int
    value: bytes
    value_at: int


def parse_metadata_entry(r, path):
    # key: "string (u16 size)".  spec §5.5 "Keys are 0 to 256 bytes (the empty
    # key is allowed; limit_exceeded beyond)" -- a step-10 rule (§4.9 item 1);
    # only the key's UTF-8 form is checked while parsing (§4.8 step 9).
    key = r.string(f"{path}.key")
    value_type = r.int("u8", f"{path}.value_type")
    # value: "u32 size, then UTF-8 bytes or i64 or f64 or u8 or bytes, by
    # value_type".  The layout chosen by value_type is parsed here, so its
    # syntax faults are step-9 faults (§4.8 step 9): a value that does not
    # fill its stated size exactly (spec §2.1, "the size MUST be 8" / "MUST
    # be 1" of §5.5) and a STRING that is not well-formed UTF-8 are
    # invalid_value while parsing.  An unknown value_type does not stop the
    # parse: its value is a sized field and is skipped (§4.8 step 9, §5.3
    # note); it is reported in step 10 (§4.9 item 1).
    vp = f"{path}.value"
    value = r.sized(vp)
    at = value.pos
    if value_type == META_STRING:
        raw = value.take(value.remaining(), vp)      # "UTF-8 text (any size, possibly 0)"
        check_utf8(raw, vp, at)                      # §5.5 "A STRING value MUST be well-formed UTF-8"
    elif value_type in (META_INT64, META_FLOAT64):
        raw = value.take(8, vp)                      # "one i64" / "one f64" (the size MUST be 8)
    elif value_type == META_BOOL:
        raw = value.take(1, vp)                      # "one u8" (the size MUST be 1)
    else:
        raw = value.take(value.remaining(), vp)      # BYTES: "arbitrary bytes"; unknown: skipped
    value.finish(vp)                                 # §2.1: bytes left over are invalid_value
    return MetadataEntry(path, key, value_type, raw, at)


def check_metadata_block(entries, hdr):
    """spec §4.9 item 1 (and 2.6): "the ... metadata block, entry by entry
    (section 5.5): key length (limit_exceeded), key equal to an earlier key
    (duplicate_key), value_type known (unsupported_feature), BOOL value 0 or 1
    (invalid_value)". """
    seen_keys = set()
    for ent in entries:
        # "key length (limit_exceeded)": spec §5.5 "Keys are 0 to 256 bytes
        # (the empty key is allowed; limit_exceeded beyond)".
        if len(ent.key) > LIMIT_KEY_BYTES:
            hdr.fail("limit_exceeded", f"{ent.path}.key (size)",
                     f"key of {len(ent.key)} bytes exceeds the limit of {LIMIT_KEY_BYTES} bytes (§9)")
        # "key equal to an earlier key (duplicate_key)": spec §5.5 "unique
        # within their block, compared byte for byte".
        if ent.key in seen_keys:
            hdr.fail("duplicate_key", f"{ent.path}.key", f"key {ent.key!r} appears twice in its block")
        seen_keys.add(ent.key)
        # "value_type known (unsupported_feature)": spec §3.2 "(for value_type
        # of a metadata entry too)".
        check_enum(ent.value_type, METADATA_TYPES, f"{ent.path}.value_type", hdr)
        # "BOOL value 0 or 1 (invalid_value)": spec §5.5 "another byte value is
        # invalid_value".  (Its size was checked while parsing.)
        if ent.value_type == META_BOOL and ent.value[0] not in (0, 1):
            hdr.fail("invalid_value", f"{ent.path}.value", f"BOOL value {ent.value[0]}, MUST be 0 or 1")
        # spec §5.5 "Metadata never changes how tensors decode." and "a decoder
        # MUST NOT reject a file because one of [the recommended keys] has
        # another type": the recommended keys are not looked at.


# spec §5.6 Extensions: see parse_extensions (§4.5) and check_extensions (§3.4).


# =============================================================================
# spec §6  Grids and reconstruction
# =============================================================================

# GridKind (spec §6, "unknown value: unsupported_feature").  Which of them a
# decoder knows depends on its version (SpecVersion.known_grid_kinds, §3):
# UNIFORM_TRELLIS is an addition of 1.1 (§6.6).
GRID_UNIFORM, GRID_CODEBOOK, GRID_UNIFORM_TRELLIS = 1, 2, 3
GRID_KINDS = {GRID_UNIFORM: "UNIFORM", GRID_CODEBOOK: "CODEBOOK",
              GRID_UNIFORM_TRELLIS: "UNIFORM_TRELLIS"}

MAX_INDEX = (1 << 23) - 1          # "+-(2^23 - 1)", spec §6.1, §6.2, §7.2, §9


# spec §6.1 UNIFORM grid
@dataclass
class UniformGrid:
    path: str
    rows_per_group: int
    group_count: int
    has_zero_point: int
    steps: list                    # binary32 bit patterns
    zero_points: list              # i32


def parse_uniform_grid(r, path):
    rows_per_group = r.int("u64", f"{path}.rows_per_group")
    group_count = r.int("u32", f"{path}.group_count")
    # spec §9 "group_count 2^24", checked before the arrays it counts.
    check_limit(group_count, LIMIT_GROUP_COUNT, f"{path}.group_count", r.pos - 4)
    # has_zero_point "MUST be 0 or 1" is a step-10 rule (§6.1 check order,
    # §4.9 item 2.5); "Nothing else is judged in this step" (§4.8 step 9).
    has_zero_point = r.int("u8", f"{path}.has_zero_point")
    steps = [r.f32_bits(f"{path}.steps[{g}]") for g in range(group_count)]
    zero_points = []
    if has_zero_point != 0:
        # "zero_points | i32[see meaning]": "group_count values if
        # has_zero_point is not 0, else none."
        zero_points = [r.int("i32", f"{path}.zero_points[{g}]") for g in range(group_count)]
    return UniformGrid(path, rows_per_group, group_count, has_zero_point, steps, zero_points)


def check_uniform_grid(grid, rec, hdr, trellis=False):
    """spec §6.1: "These rules are checked in this order: group_count,
    has_zero_point, the steps in order, the zero points in order."

    With `trellis` (a UNIFORM_TRELLIS grid) the rules are those of §6.6 rule
    2: "the rules of section 6.1, in their order, except that has_zero_point
    MUST be 0 (invalid_value; there are no zero points)" -- the has_zero_point
    rule changes, in the same place of the order (§4.9 item 2.5: "the grid's
    rules in the order of its fields")."""
    # "The rows are those of the coded symbols ... without a transform these
    # are the tensor's rows, with one they are the rows of the coefficient
    # matrix (section 6.4), which are the same in number."
    rows = rec.rows
    # "group_count MUST equal 1 if rows_per_group is 0, else
    # max(1, ceil(rows / rows_per_group)) (invalid_value)."
    if grid.rows_per_group == 0:
        expected = 1
    else:
        expected = max(1, ceil_div(rows, grid.rows_per_group))
    if grid.group_count != expected:
        hdr.fail("invalid_value", f"{grid.path}.group_count",
                 f"group_count is {grid.group_count}, expected {expected}")
    if trellis:
        # spec §6.6 "has_zero_point MUST be 0 (invalid_value), so there are
        # no zero points."
        if grid.has_zero_point != 0:
            hdr.fail("invalid_value", f"{grid.path}.has_zero_point",
                     f"has_zero_point is {grid.has_zero_point}, MUST be 0 for UNIFORM_TRELLIS")
    # "has_zero_point MUST be 0 or 1" (invalid_value).
    elif grid.has_zero_point not in (0, 1):
        hdr.fail("invalid_value", f"{grid.path}.has_zero_point",
                 f"has_zero_point is {grid.has_zero_point}, MUST be 0 or 1")
    # "Every step MUST be finite and greater than zero (so +0.0 and -0.0 are
    # invalid; subnormal steps are valid)" (invalid_value).
    for g, bits in enumerate(grid.steps):
        if is_nan(bits, BINARY32) or is_inf(bits, BINARY32) or bits >> 31 or bits == 0:
            hdr.fail("invalid_value", f"{grid.path}.steps[{g}]",
                     f"step 0x{bits:08x} is not finite and > 0")
    # "every zero point MUST be within +-(2^23 - 1) (invalid_value)."
    for g, zp in enumerate(grid.zero_points):
        if abs(zp) > MAX_INDEX:
            hdr.fail("invalid_value", f"{grid.path}.zero_points[{g}]", f"zero point {zp} out of range")


def uniform_value(grid, q, row):
    """spec §6.1: value = RN32( steps[g] x f32(q - zero_points[g]) ).

    "compute the integer d = q - zero_points[g] exactly (|d| < 2^24, so it is
    exact in binary32), convert it to binary32, and multiply by the binary32
    step with one IEEE binary32 multiplication ... (Equivalently: the product
    of the two numbers computed exactly, then rounded once to binary32.)"
    The second form is what is computed: step = (-1)^s m 2^e exactly, so the
    product is (-1)^s m d 2^e exactly, rounded once by round_exact()."""
    g = group_of_row(grid, row)
    zp = grid.zero_points[g] if grid.has_zero_point else 0
    d = q - zp
    return step_times(grid.steps[g], d)


def group_of_row(grid, row):
    """spec §6.1: "if rows_per_group is 0 all rows form group 0; otherwise
    row r is in group floor(r / rows_per_group)." (also §6.6: "Groups and
    steps are those of section 6.1")"""
    return 0 if grid.rows_per_group == 0 else row // grid.rows_per_group


def step_times(step_bits, d):
    """RN32( step x f32(d) ) for a binary32 step (bit pattern) and an integer
    d with |d| < 2^24 (spec §6.1; §6.6 "the product is rounded once as in
    section 6.1")."""
    sign, m, e = split_finite(step_bits, BINARY32)          # sign is 0: step > 0
    prod_sign = sign ^ (1 if d < 0 else 0)
    # d = 0: +0.0 (f32(0) is +0, step is positive).
    return round_exact(prod_sign, m * abs(d), e, BINARY32)


# spec §6.2 CODEBOOK grid
@dataclass
class CodebookGrid:
    path: str
    codebook_size: int
    first_index: int
    values: list                   # binary32 bit patterns


def parse_codebook_grid(r, path):
    size = r.int("u32", f"{path}.codebook_size")
    # spec §9 "codebook_size 65536", checked before the array.
    check_limit(size, LIMIT_CODEBOOK_SIZE, f"{path}.codebook_size", r.pos - 4)
    first_index = r.int("i32", f"{path}.first_index")
    values = [r.f32_bits(f"{path}.values[{i}]") for i in range(size)]
    return CodebookGrid(path, size, first_index, values)


def check_codebook_grid(grid, hdr):
    # spec §6.2 "codebook_size MUST be at least 1; first_index and
    # first_index + codebook_size - 1 MUST be within +-(2^23 - 1); every value
    # MUST be finite (invalid_value; checked in this order, values in order)."
    if grid.codebook_size < 1:
        hdr.fail("invalid_value", f"{grid.path}.codebook_size", "codebook_size is 0")
    if abs(grid.first_index) > MAX_INDEX:
        hdr.fail("invalid_value", f"{grid.path}.first_index", f"first_index {grid.first_index} out of range")
    last = grid.first_index + grid.codebook_size - 1
    if abs(last) > MAX_INDEX:
        hdr.fail("invalid_value", f"{grid.path}.codebook_size", f"last index {last} out of range")
    for i, bits in enumerate(grid.values):
        if is_nan(bits, BINARY32) or is_inf(bits, BINARY32):
            hdr.fail("invalid_value", f"{grid.path}.values[{i}]", f"value 0x{bits:08x} is not finite")


def in_codebook(grid, q):
    """spec §6.2 "An index outside first_index ... first_index +
    codebook_size - 1 is index_out_of_range, detected as soon as the index is
    decoded (section 7.6), before the symbols after it."  The check itself is
    made in decode_chunk (§7.6), where the index is decoded."""
    return grid.first_index <= q <= grid.first_index + grid.codebook_size - 1


def codebook_value(grid, q):
    """spec §6.2 "The value of index q is codebook_values[q - first_index],
    bit for bit (a stored -0.0 stays -0.0)."  q was checked in §7.6."""
    return grid.values[q - grid.first_index]


def grid_value(rec, q, row):
    """The binary32 value (bit pattern) of index q in row `row` (spec §6.1,
    §6.2).  A UNIFORM_TRELLIS value depends on more than q and its row: see
    trellis_values (§6.6)."""
    grid = rec.rans.grid
    if rec.rans.grid_kind == GRID_UNIFORM:
        return uniform_value(grid, q, row)
    return codebook_value(grid, q)


# spec §6.3 Values of a tensor without transform.
def check_no_transform(rec, hdr):
    body = rec.rans
    # spec §9 "coded_row_length 2^40".  §6.4 and §4.9 place this limit only
    # under RIGHT_MATRIX; with NONE it can only be exceeded when rows is 0
    # (coded_row_length = row_length, and element_count <= 2^40 otherwise
    # bounds row_length).  §9 still says a decoder MUST reject a file beyond
    # the limits, so it is checked here too, at the same place as for
    # RIGHT_MATRIX (first after transform_kind).  (Not said by the spec: a
    # guess, noted as an open question.)
    check_limit(body.coded_row_length, LIMIT_CODED_ROW_LENGTH, f"{rec.path}.body.coded_row_length",
                hdr.fields.get(f"{rec.path}.body.coded_row_length"))
    # "With transform_kind NONE, coded_row_length MUST equal row_length
    # (invalid_value) and transform_tensor MUST be 0 (reserved_value)."
    # Checked in the order of this sentence (coded_row_length first), which
    # is also the order §6.4 / §4.9 give for RIGHT_MATRIX.
    if body.coded_row_length != rec.row_length:
        hdr.fail("invalid_value", f"{rec.path}.body.coded_row_length",
                 f"coded_row_length {body.coded_row_length} != row_length {rec.row_length}")
    check_reserved(body.transform_tensor, f"{rec.path}.body.transform_tensor", hdr)


# spec §6.4 Transform
TRANSFORM_NONE, TRANSFORM_RIGHT_MATRIX = 0, 1
TRANSFORM_KINDS = {TRANSFORM_NONE: "NONE", TRANSFORM_RIGHT_MATRIX: "RIGHT_MATRIX"}


def check_transform(rec, hdr):
    """spec §6.4, in the order of §4.9 item 2.5: "RIGHT_MATRIX:
    coded_row_length limit, then the reference"."""
    body = rec.rans
    # "coded_row_length MUST be at most 2^40 (limit_exceeded)."
    check_limit(body.coded_row_length, LIMIT_CODED_ROW_LENGTH, f"{rec.path}.body.coded_row_length",
                hdr.fields.get(f"{rec.path}.body.coded_row_length"))
    check_transform_reference(rec, hdr)


def check_transform_reference(rec, hdr):
    """spec §6.4: "transform_tensor MUST name another tensor T of the file (its
    position in tensors, 0-based, not this tensor, before or after it) whose
    record has dtype FLOAT32, rank 2, shape [K, row_length], and coding RAW,
    or RANS with transform_kind NONE (invalid_reference otherwise). This rule
    looks only at those field values of T's record; T's own faults are
    reported when T's record is checked. K may be 0"

    So an unknown dtype, coding or transform_kind of T is simply "not
    FLOAT32" / "not RAW or RANS" / "not NONE": invalid_reference here; T's
    unsupported_feature is reported only when (and if) T's own record is
    checked first, i.e. when T comes before this tensor."""
    body = rec.rans
    path = f"{rec.path}.body.transform_tensor"
    t = body.transform_tensor
    if t >= len(hdr.tensors) or t == rec.index:
        hdr.fail("invalid_reference", path, f"transform_tensor {t} is missing or the tensor itself")
    T = hdr.tensors[t]
    K = body.coded_row_length
    if T.dtype != DTYPE_FLOAT32:
        hdr.fail("invalid_reference", path, f"transform tensor {t} has dtype {T.dtype}, not FLOAT32")
    if T.rank != 2 or T.shape != (K, rec.row_length):
        hdr.fail("invalid_reference", path,
                 f"transform tensor {t} has shape {list(T.shape)}, expected [{K}, {rec.row_length}]")
    if T.coding == CODING_RAW:
        return
    if T.coding != CODING_RANS or T.rans.transform_kind != TRANSFORM_NONE:
        hdr.fail("invalid_reference", path,
                 f"transform tensor {t} is not RAW, nor RANS with transform_kind NONE")


def right_matrix_values(rec, coeff_values, t_values):
    """spec §6.4: element (r, j) of the tensor:

        s = +0.0 (binary64)
        for k = 0, 1, ..., K-1 in this order:
            s = RN64( s + f64(c[r, k]) x f64(t[k, j]) )
        value = RN32(s)   -- or, if s is NaN, the binary32 0x7FC00000

    f64() is exact; the product of two binary32 numbers is exact in binary64
    (24 + 24 significant bits, and no overflow or underflow is possible), so
    Python's float `*` computes it exactly; Python's float `+` is the IEEE
    binary64 addition, round to nearest, ties to even (RN64)."""
    rows, n_cols, K = rec.rows, rec.row_length, rec.rans.coded_row_length
    out = []
    if n_cols == 0:
        # No element: the loops below would still count through up to 2^40
        # rows of nothing (found by fuzzing; docs/fuzzing.md).
        return out
    for r in range(rows):
        for j in range(n_cols):
            s = 0.0
            for k in range(K):
                c = f32_from_bits(coeff_values[r * K + k])
                t = f32_from_bits(t_values[k * n_cols + j])
                s = s + c * t
            out.append(0x7FC00000 if math.isnan(s) else rn32_of_f64(s))
    return out


# spec §6.5 Output dtype
def float16_bits(v):
    """binary32 pattern v -> binary16 pattern: "round to nearest, ties to
    even, including subnormal results; a magnitude that rounds above 65504
    becomes +-infinity; +-0 and +-infinity keep their sign. A NaN becomes
    0x7E00." """
    if is_nan(v, BINARY32):
        return 0x7E00
    sign = v >> 31
    if is_inf(v, BINARY32):
        return (sign << 15) | 0x7C00
    s, m, e = split_finite(v, BINARY32)
    return round_exact(s, m, e, BINARY16)


def bfloat16_bits(v):
    """binary32 pattern b -> bfloat16: "If v is NaN the result is 0x7FC0;
    otherwise floor((b + 0x7FFF + (floor(b / 2^16) mod 2)) / 2^16) computed
    exactly" """
    if is_nan(v, BINARY32):
        return 0x7FC0
    return (v + 0x7FFF + ((v >> 16) % 2)) >> 16


def output_bytes(values, dtype):
    """spec §6.5: "The output of a tensor is its elements in row-major order in
    these encodings." """
    if dtype == DTYPE_FLOAT32:
        # "FLOAT32: the four bytes of v, little-endian."
        return b"".join(struct.pack("<I", v) for v in values)
    if dtype == DTYPE_FLOAT16:
        return b"".join(struct.pack("<H", float16_bits(v)) for v in values)
    if dtype == DTYPE_BFLOAT16:
        return b"".join(struct.pack("<H", bfloat16_bits(v)) for v in values)
    raise AssertionError("rANS dtype was checked in §5.3")


# spec §6.6 UNIFORM_TRELLIS grid (1.1)
#
# "Its grid has the UniformGrid layout and is parsed as one in step 9 of
# section 4.8, whatever the file's required_features": parse_uniform_grid.
# Its rules, in step 10: "1. the file sets bit 0 of required_features (section
# 3.3); otherwise invalid_value (reported on grid_kind)" (check_rans_body);
# "2. the rules of section 6.1, in their order, except that has_zero_point
# MUST be 0" (check_uniform_grid(trellis=True)).

# "| t[c] | NEXT[t[c]][0] | NEXT[t[c]][1] |"
TRELLIS_NEXT = (
    (0, 2),     # t = 0
    (2, 0),     # t = 1
    (1, 3),     # t = 2
    (3, 1),     # t = 3
)


def sgn(q):
    """"sgn(q) is 1, 0 or -1 as q is positive, zero or negative" """
    return 1 if q > 0 else (-1 if q < 0 else 0)


def trellis_values(rec, indices):
    """The binary32 values (bit patterns) of a UNIFORM_TRELLIS tensor's coded
    symbols, in symbol order (spec §6.6):

        "Each column c (0 <= c < coded_row_length) has a state t[c] in 0 ... 3.
        Within one chunk (section 7.1), the symbols are visited in order; for
        the symbol in row r and column c, with index q (after any escape,
        section 7.5) in group g:

            if t[c] <= 1:  d = 2 x q
            else:          d = 2 x q - sgn(q)
            value = RN32( steps[g] x f32(d) )
            t[c]  = NEXT[t[c]][q mod 2]

        Every state is 0 at the first row of each chunk, so chunks still
        decode independently; within a chunk the state of column c is
        carried from row to row, and columns do not affect each other."

    The rows and columns are those of the coded symbols (§6.1, §7.1): symbol
    i is in row floor(i / coded_row_length), column i mod coded_row_length;
    with a RIGHT_MATRIX transform these are the coefficient matrix's (§6.4
    takes these values as c[r, k])."""
    body = rec.rans
    grid = body.grid
    K = body.coded_row_length
    values = []
    i = 0                                          # symbol index in the tensor (§7.1)
    for k in range(body.chunk_count):
        # spec §7.1 "chunk k holds rows k x rows_per_chunk up to (not
        # including) min((k+1) x rows_per_chunk, rows)".
        n_k = chunk_symbol_count(rec, k)
        # "Every state is 0 at the first row of each chunk".  (A chunk has at
        # least one row, so K <= n_k: these K states are no larger than the
        # chunk's indices, already decoded.)
        t = [0] * K
        # "Within one chunk (section 7.1), the symbols are visited in order"
        for _ in range(n_k):
            r, c = i // K, i % K                   # "the symbol in row r and column c"
            q = indices[i]                         # "index q (after any escape)"
            g = group_of_row(grid, r)              # "in group g" (§6.1 groups)
            if t[c] <= 1:
                d = 2 * q                          # quantizer 0: even multiples of the step
            else:
                d = 2 * q - sgn(q)                 # quantizer 1: odd multiples, and 0
            # "|d| <= 2^24 - 2 (section 9), so f32(d) is exact, and the
            # product is rounded once as in section 6.1."
            assert abs(d) <= (1 << 24) - 2
            values.append(step_times(grid.steps[g], d))   # "value = RN32( steps[g] x f32(d) )"
            # "t[c] = NEXT[t[c]][q mod 2]" -- "q mod 2 is 0 or 1 (section 2.4:
            # -3 mod 2 = 1)"; Python's % is that non-negative remainder.
            t[c] = TRELLIS_NEXT[t[c]][q % 2]
            i += 1
    assert i == len(indices)
    return values


def decode_tensor(hdr, index, cache):
    """spec §4.8 step 12 for one tensor: "To decode a tensor, in this order:
    verify the checksum of each of its payloads, in payload order
    (checksum_payload); decode it (section 5.3 for a raw tensor; for a coded
    one, its chunks in order, section 7); if it has a transform, decode the
    transform tensor by this same step 12; then reconstruct (section 6)."

    Returns, for a RAW tensor, its payload bytes (§5.3: output unchanged);
    for a RANS tensor, its binary32 values (bit patterns) before the dtype
    rounding of §6.5.  A tensor decoded once (e.g. a transform matrix T that
    is also output in its own right) is not decoded again: a second decode
    would give the same bytes and find no new fault."""
    if index in cache:
        return cache[index]
    rec = hdr.tensors[index]
    if rec.coding == CODING_RAW:
        verify_payload_checksums(hdr, rec.payloads())               # checksums (§8.3)
        result = decode_raw(rec, hdr.data)                          # §5.3 (BOOL check)
    else:
        body = rec.rans
        # checksums, then the chunks in order (section 7).
        indices = decode_tensor_indices(hdr, rec)
        if body.transform_kind == TRANSFORM_RIGHT_MATRIX:
            # "if it has a transform, decode the transform tensor by this
            # same step 12" -- after this tensor's own chunks.
            t = decode_tensor(hdr, body.transform_tensor, cache)
            if isinstance(t, (bytes, bytearray)):
                # §6.4 "a raw T contributes its stored bits" (T is FLOAT32).
                t = list(struct.unpack(f"<{len(t) // 4}I", t))
        # "then reconstruct (section 6)".  Values of the coded symbols (the
        # coefficients if there is a transform): symbol i is in row
        # floor(i / coded_row_length) (§6.1, §7.1).
        K = body.coded_row_length
        if body.grid_kind == GRID_UNIFORM_TRELLIS:
            # spec §6.6: the value of an index depends on the indices before
            # it in its column (and chunk).
            coded = trellis_values(rec, indices)
        else:
            coded = [grid_value(rec, q, i // K) for i, q in enumerate(indices)]
        if body.transform_kind == TRANSFORM_NONE:
            # spec §6.3 "The tensor's element e is the value of the e-th
            # decoded index (section 6.1, 6.2 or 6.6)".
            result = coded
        else:
            result = right_matrix_values(rec, coded, t)
    cache[index] = result
    return result


# =============================================================================
# spec §7  Entropy coding
# =============================================================================

# spec §7.2 ContextModel and EscapeMode
CONTEXT_IID, CONTEXT_PREVIOUS_INDEX = 0, 1
CONTEXT_MODELS = {CONTEXT_IID: "IID", CONTEXT_PREVIOUS_INDEX: "PREVIOUS_INDEX"}
ESCAPE_NONE, ESCAPE_LAST_SYMBOL = 0, 1
ESCAPE_MODES = {ESCAPE_NONE: "NONE", ESCAPE_LAST_SYMBOL: "LAST_SYMBOL"}


# spec §7.2 RansBody
@dataclass
class RansBody:
    path: str
    grid_kind: int
    grid: object                  # UniformGrid (UNIFORM, UNIFORM_TRELLIS), CodebookGrid, or None (unknown kind)
    transform_kind: int
    transform_tensor: int
    coded_row_length: int
    precision_bits: int
    lane_count: int
    context_model: int
    context_count: int
    escape_mode: int
    reserved0: int
    context_center: int
    index_offset: int
    alphabet_size: int
    tables: list                  # context_count lists of alphabet_size frequencies
    rows_per_chunk: int
    chunk_count: int
    chunks: list                  # PayloadRef[chunk_count]


def parse_rans_body(r, p, version=SPEC_1_1):
    grid_kind = r.int("u8", f"{p}.grid_kind")
    # grid: "u32 size, then UniformGrid or CodebookGrid or UniformGrid, by
    # grid_kind" (§7.2; the second UniformGrid is UNIFORM_TRELLIS's, §6.6
    # "Its grid has the UniformGrid layout and is parsed as one in step 9").  A grid_kind the decoder's version does
    # not know is skipped (§4.8 step 9), whatever its value.
    g = r.sized(f"{p}.grid")
    if grid_kind not in version.known_grid_kinds:
        grid = None                # unknown: unsupported_feature in step 10
        g.pos = g.end
    elif grid_kind in (GRID_UNIFORM, GRID_UNIFORM_TRELLIS):
        grid = parse_uniform_grid(g, f"{p}.grid")
        g.finish(f"{p}.grid")
    else:                          # GRID_CODEBOOK
        grid = parse_codebook_grid(g, f"{p}.grid")
        g.finish(f"{p}.grid")
    transform_kind = r.int("u8", f"{p}.transform_kind")
    transform_tensor = r.int("u32", f"{p}.transform_tensor")
    coded_row_length = r.int("u64", f"{p}.coded_row_length")
    # precision_bits above 16 is limit_exceeded in step 10 (it is not one of
    # the counts of §4.8 step 9; §4.9 item 2.5 places it after the transform).
    precision_bits = r.int("u8", f"{p}.precision_bits")
    lane_count = r.int("u8", f"{p}.lane_count")
    # spec §7.2 "lane_count is 1 ... 32 (0: invalid_value; above 32:
    # limit_exceeded, while parsing)" -- §4.8 step 9; 0 is a step-10 rule.
    check_limit(lane_count, LIMIT_LANE_COUNT, f"{p}.lane_count", r.pos - 1)
    context_model = r.int("u8", f"{p}.context_model")
    context_count = r.int("u8", f"{p}.context_count")
    # spec §7.2 "context_count above 16 is limit_exceeded (while parsing)",
    # before the tables it counts (§4.8 step 9).
    check_limit(context_count, LIMIT_CONTEXT_COUNT, f"{p}.context_count", r.pos - 1)
    escape_mode = r.int("u8", f"{p}.escape_mode")
    reserved0 = r.int("u8", f"{p}._reserved0")
    context_center = r.int("i32", f"{p}.context_center")
    index_offset = r.int("i32", f"{p}.index_offset")
    alphabet_size = r.int("u32", f"{p}.alphabet_size")
    # spec §9 "alphabet_size 65536", a count of §4.8 step 9: checked before
    # the tables.
    check_limit(alphabet_size, LIMIT_ALPHABET_SIZE, f"{p}.alphabet_size", r.pos - 4)
    # tables: FrequencyTable[context_count]; frequencies: varint[alphabet_size].
    # (The number of tables is context_count whatever context_model says: an
    # unknown context_model does not stop the parse, §4.8 step 9.)
    tables = []
    for c in range(context_count):
        tables.append([r.varint(f"{p}.tables[{c}].frequencies[{s}]") for s in range(alphabet_size)])
    rows_per_chunk = r.int("u64", f"{p}.rows_per_chunk")
    chunk_count = r.int("u32", f"{p}.chunk_count")
    # spec §9 "chunk_count 2^24", checked before the entry-point table.
    check_limit(chunk_count, LIMIT_CHUNK_COUNT, f"{p}.chunk_count", r.pos - 4)
    chunks = [parse_payload_ref(r, f"{p}.chunks[{k}]") for k in range(chunk_count)]
    return RansBody(p, grid_kind, grid, transform_kind, transform_tensor, coded_row_length,
                    precision_bits, lane_count, context_model, context_count, escape_mode,
                    reserved0, context_center, index_offset, alphabet_size, tables,
                    rows_per_chunk, chunk_count, chunks)


def direct_count(body):
    """spec §7.5: "D = alphabet_size (NONE) or alphabet_size - 1 (LAST_SYMBOL)"."""
    return body.alphabet_size if body.escape_mode == ESCAPE_NONE else body.alphabet_size - 1


def check_rans_body(rec, hdr):
    """The rules of a RANS tensor record (spec §5.3, §6, §7) in the order of
    spec §4.9 item 2.5: "RANS, in the order of the RansBody fields: dtype is
    a reconstruction dtype; grid_kind known, then for UNIFORM_TRELLIS
    required_features bit 0 (section 6.6), then the grid's rules in the
    order of its fields (section 6.1, 6.2 or 6.6); transform_kind known, then
    section 6.3 (NONE) or 6.4 (RIGHT_MATRIX: coded_row_length limit, then the
    reference); precision_bits; lane_count; context_model known, then
    context_count for it; escape_mode known; _reserved0; alphabet_size;
    context_center; index_offset and the largest direct index; the frequency
    tables in order (table_sum, not checked when precision_bits is out of
    range); rows_per_chunk, chunk_count, symbols per chunk, each chunk's
    size". """
    body = rec.rans
    p = body.path
    # "dtype is a reconstruction dtype": spec §5.3 "dtype MUST be FLOAT32,
    # FLOAT16 or BFLOAT16 (invalid_value)."
    if rec.dtype not in (DTYPE_FLOAT32, DTYPE_FLOAT16, DTYPE_BFLOAT16):
        hdr.fail("invalid_value", f"{rec.path}.dtype",
                 f"a RANS tensor cannot have dtype {DTYPES[rec.dtype][0]}")
    # "grid_kind known" (spec §6 "GridKind (unknown value:
    # unsupported_feature)"), "then the grid's rules in the order of its
    # fields".
    check_enum(body.grid_kind, hdr.version.known_grid_kinds, f"{p}.grid_kind", hdr)
    if body.grid_kind == GRID_UNIFORM:
        check_uniform_grid(body.grid, rec, hdr)                     # §6.1
    elif body.grid_kind == GRID_UNIFORM_TRELLIS:
        # spec §4.9 item 2.5 "then for UNIFORM_TRELLIS required_features bit
        # 0 (section 6.6)"; §6.6 rule 1 "the file sets bit 0 of
        # required_features (section 3.3); otherwise invalid_value (reported
        # on grid_kind); a validator that goes on still applies the rules
        # below".  (§3.3: "A file with a UNIFORM_TRELLIS grid MUST set bit 0
        # (invalid_value, section 6.6)".)
        if not hdr.preamble.required_features & FEATURE_TRELLIS:
            hdr.fail("invalid_value", f"{p}.grid_kind",
                     "UNIFORM_TRELLIS grid in a file whose required_features lacks bit 0")
        check_uniform_grid(body.grid, rec, hdr, trellis=True)       # §6.6 (§6.1 rules)
    else:
        check_codebook_grid(body.grid, hdr)                         # §6.2
    # "transform_kind known" (spec §6.4 "TransformKind (unknown value:
    # unsupported_feature)"), "then section 6.3 (NONE) or 6.4".
    check_enum(body.transform_kind, TRANSFORM_KINDS, f"{p}.transform_kind", hdr)
    if body.transform_kind == TRANSFORM_NONE:
        check_no_transform(rec, hdr)                                # §6.3
    else:
        check_transform(rec, hdr)                                   # §6.4
    # "precision_bits": spec §7.2 "precision_bits is 1 ... 16 (0:
    # invalid_value, above 16: limit_exceeded)".
    if body.precision_bits == 0:
        hdr.fail("invalid_value", f"{p}.precision_bits", "precision_bits is 0")
    check_limit(body.precision_bits, LIMIT_PRECISION_BITS, f"{p}.precision_bits",
                hdr.fields.get(f"{p}.precision_bits"))
    # "lane_count": spec §7.2 "0: invalid_value" (above 32 was rejected while
    # parsing).
    if body.lane_count == 0:
        hdr.fail("invalid_value", f"{p}.lane_count", "lane_count is 0")
    # "context_model known, then context_count for it" (spec §7.2, §7.4).
    check_enum(body.context_model, CONTEXT_MODELS, f"{p}.context_model", hdr)
    if body.context_model == CONTEXT_IID and body.context_count != 1:
        # §7.4 "IID: context_count MUST be 1 (invalid_value)"
        hdr.fail("invalid_value", f"{p}.context_count",
                 f"IID needs context_count 1, not {body.context_count}")
    if body.context_model == CONTEXT_PREVIOUS_INDEX and body.context_count < 2:
        # §7.4 "PREVIOUS_INDEX: context_count MUST be at least 2
        # (invalid_value; above 16 it was already rejected while parsing)"
        hdr.fail("invalid_value", f"{p}.context_count",
                 f"PREVIOUS_INDEX needs context_count >= 2, not {body.context_count}")
    # "escape_mode known" (spec §7.2).
    check_enum(body.escape_mode, ESCAPE_MODES, f"{p}.escape_mode", hdr)
    # "_reserved0": spec §7.2 "_reserved0 is 0 (reserved_value)".
    check_reserved(body.reserved0, f"{p}._reserved0", hdr)
    # "alphabet_size": spec §7.2 "alphabet_size >= 1 (invalid_value)".
    if body.alphabet_size < 1:
        hdr.fail("invalid_value", f"{p}.alphabet_size", "alphabet_size is 0")
    # "context_center": spec §7.2 "context_center is within +-(2^23 - 1)".
    if abs(body.context_center) > MAX_INDEX:
        hdr.fail("invalid_value", f"{p}.context_center", f"context_center {body.context_center} out of range")
    # "index_offset and the largest direct index": spec §7.2 "and so are
    # index_offset and the largest direct index (section 7.5)
    # (invalid_value)".  spec §7.5: "With LAST_SYMBOL and alphabet_size 1
    # there is no direct index: ... of the index-range rules of section 7.2
    # only index_offset itself is checked."
    if abs(body.index_offset) > MAX_INDEX:
        hdr.fail("invalid_value", f"{p}.index_offset", f"index_offset {body.index_offset} out of range")
    D = direct_count(body)
    if D >= 1:
        largest = body.index_offset + D - 1
        if abs(largest) > MAX_INDEX:
            hdr.fail("invalid_value", f"{p}.alphabet_size", f"largest direct index {largest} out of range")
    # "the frequency tables in order (table_sum, ...)": spec §7.2 "Each
    # frequency table MUST sum to exactly 2^precision_bits (table_sum)."
    # ("not checked when precision_bits is out of range": it was rejected
    # above, so here it is always in range.)
    for c, freqs in enumerate(body.tables):
        if sum(freqs) != 1 << body.precision_bits:
            hdr.fail("table_sum", f"{p}.tables[{c}].frequencies[0]",
                     f"table {c} sums to {sum(freqs)}, not 2^{body.precision_bits}")
    # "rows_per_chunk, chunk_count": spec §7.1 "rows_per_chunk MUST be >= 1
    # and chunk_count MUST be ceil(rows / rows_per_chunk), or 0 when
    # rows x coded_row_length is 0 (invalid_value); note that this counts
    # coded symbols, not elements".
    if body.rows_per_chunk < 1:
        hdr.fail("invalid_value", f"{p}.rows_per_chunk", "rows_per_chunk is 0")
    rows = rec.rows
    # spec §2.4: rows and coded_row_length are both <= 2^40 by now; the
    # product is exact here (Python integers).
    expected = 0 if rows * body.coded_row_length == 0 else ceil_div(rows, body.rows_per_chunk)
    if body.chunk_count != expected:
        hdr.fail("invalid_value", f"{p}.chunk_count",
                 f"chunk_count is {body.chunk_count}, expected {expected}")
    # "symbols per chunk": spec §9 "symbols in one chunk 2^32".  Every chunk
    # but the last holds rows_per_chunk rows, the last at most that many, so
    # chunk 0 holds the most symbols and "symbols per chunk" is decided by
    # chunk 0: checking it first gives the same code as checking chunk by
    # chunk (symbols then size of each) would.
    for k in range(body.chunk_count):
        n_k = chunk_symbol_count(rec, k)
        if n_k > LIMIT_CHUNK_SYMBOLS:
            hdr.fail("limit_exceeded", f"{p}.chunks[{k}].offset", f"chunk of {n_k} symbols exceeds 2^32")
    # "each chunk's size": spec §9 "chunk size 2^32 bytes".
    for k, ref in enumerate(body.chunks):
        if ref.size > LIMIT_CHUNK_BYTES:
            hdr.fail("limit_exceeded", f"{p}.chunks[{k}].size", f"chunk of {ref.size} bytes exceeds 2^32")


# spec §7.1 Chunks
def chunk_symbol_count(rec, k):
    """"chunk k holds rows k x rows_per_chunk up to (not including)
    min((k+1) x rows_per_chunk, rows), i.e. n_k = (number of its rows) x
    coded_row_length symbols." """
    body = rec.rans
    first = k * body.rows_per_chunk
    last = min((k + 1) * body.rows_per_chunk, rec.rows)
    return (last - first) * body.coded_row_length


# spec §7.4 Frequency tables and contexts
class FrequencyTable:
    def __init__(self, freqs):
        self.freq = freqs
        # start_c(s) = f_c(0) + ... + f_c(s-1), start_c(0) = 0
        self.start = [0]
        for f in freqs:
            self.start.append(self.start[-1] + f)

    def symbol_of_slot(self, slot):
        """"Slot x belongs to the symbol s with start_c(s) <= x < start_c(s) +
        f_c(s); symbols of frequency 0 own no slot"."""
        # The last s with start(s) <= slot; it cannot have frequency 0, since
        # start(s+1) > slot.
        s = bisect.bisect_right(self.start, slot) - 1
        assert self.start[s] <= slot < self.start[s] + self.freq[s]
        return s


def context_of(body, p):
    """spec §7.4: IID: "ctx = 0 for every symbol".  PREVIOUS_INDEX: "Let p be
    the index decoded for symbol i - lane_count of the same chunk, the
    previous symbol of the same lane (for i < lane_count: p =
    context_center).  Then ctx = min(|p - context_center|, context_count - 1).
    The index is the final index after any escape (section 7.5)."

    The caller passes that p: decode_chunk keeps one p per lane (§7.6 p[l]),
    so p[i mod L] holds the index of symbol i - L, or context_center while
    the lane has decoded nothing yet in this chunk (i < L)."""
    if body.context_model == CONTEXT_IID:
        return 0
    return min(abs(p - body.context_center), body.context_count - 1)


# spec §7.3 Chunk payload and §7.6 Decoding a chunk (procedure)
STATE_LOW = 1 << 16          # "rANS states are integers in [2^16, 2^32)"


def decode_chunk(data, rec, k, trace=None):
    """Decode chunk k of a RANS tensor; returns its indices.  The payload
    checksum has been verified by the caller (§8.3, §4.8 step 12)."""
    body = rec.rans
    ref = body.chunks[k]
    where = f"chunk {k} of tensor {rec.index}"
    chunk = data[ref.offset:ref.offset + ref.size]      # inside the file (§4.7)
    L = body.lane_count
    n = body.precision_bits
    M = 1 << n
    n_k = chunk_symbol_count(rec, k)
    tables = [FrequencyTable(f) for f in body.tables]
    D = direct_count(body)
    lo, hi = body.index_offset, body.index_offset + D - 1       # the direct indices (§7.5)
    escape_symbol = body.alphabet_size - 1 if body.escape_mode == ESCAPE_LAST_SYMBOL else None
    # spec §7.6 "if the grid is CODEBOOK and q is outside it: error
    # index_out_of_range (section 6.2)".
    codebook = body.grid if body.grid_kind == GRID_CODEBOOK else None

    # spec §7.6 "check the chunk's size and lane states (section 7.3)".
    # spec §7.3: "A decoder checks, in this order, before reading anything
    # else of the chunk or allocating for it:
    # 1. the chunk has at least 4 bytes (stream_truncated);"
    if len(chunk) < 4:
        raise SpecError("stream_truncated", f"{where}.escape_count", ref.offset,
                        f"chunk of {len(chunk)} bytes has no room for escape_count")
    escape_count = struct.unpack_from("<I", chunk, 0)[0]
    # "2. it has at least 4 + 4 x escape_count + 4 x lane_count bytes
    # (stream_truncated);"
    fixed = 4 + 4 * escape_count + 4 * L
    if len(chunk) < fixed:
        raise SpecError("stream_truncated", where, ref.offset,
                        f"chunk of {len(chunk)} bytes is shorter than its fixed part of {fixed} bytes")
    # "3. the word stream, the bytes after lane_states, has an even number of
    # bytes (stream_trailing_data);"
    if (len(chunk) - fixed) % 2:
        raise SpecError("stream_trailing_data", f"{where}.words", ref.offset + fixed,
                        f"word area of {len(chunk) - fixed} bytes has odd size")
    # "4. each lane state, lane 0 first, is at least 2^16
    # (rans_state_out_of_range)."
    states_at = 4 + 4 * escape_count
    for l in range(L):
        state = struct.unpack_from("<I", chunk, states_at + 4 * l)[0]
        if state < STATE_LOW:
            raise SpecError("rans_state_out_of_range", f"{where}.lane_states[{l}]",
                            ref.offset + states_at + 4 * l,
                            f"initial state 0x{state:08x} is below 2^16")
    # spec §7.6 "read escape_count, escapes[], then lane_states[0 .. L-1]"
    # (only now is anything allocated for the chunk: escape_count is bounded
    # by the chunk's size, check 2).
    escapes = list(struct.unpack_from(f"<{escape_count}i", chunk, 4))
    lane_states = list(struct.unpack_from(f"<{L}I", chunk, states_at))
    x = list(lane_states)                      # "x[l] = lane_states[l]"
    w = fixed                                  # "w = position of the first word"
    # "p[l] = context_center for each lane l; e = 0" -- §7.4 "for i <
    # lane_count: p = context_center": every lane starts each chunk at the
    # center (chunks decode independently, §7.1).
    p = [body.context_center] * L
    e = 0
    out = []
    for i in range(n_k):
        l = i % L                              # "l = i mod L"
        # "ctx = context of symbol i (section 7.4, from p[l])": p[l] is the
        # index of symbol i - L, the previous symbol of the same lane.
        ctx = context_of(body, p[l])
        table = tables[ctx]
        before = x[l]
        slot = x[l] % M                        # "slot = x[l] mod 2^n"
        s = table.symbol_of_slot(slot)         # "s = the symbol of table ctx that slot belongs to"
        # "x[l] = f_ctx(s) * floor(x[l] / 2^n) + slot - start_ctx(s)"
        x[l] = table.freq[s] * (x[l] // M) + slot - table.start[s]
        after_step = x[l]
        word = None
        if x[l] < STATE_LOW:                   # "if x[l] < 2^16:"
            if w + 2 > len(chunk):             # "if no word is left at w: error stream_truncated"
                raise SpecError("stream_truncated", f"{where}.words", ref.offset + w,
                                f"symbol {i} needs a word but the word stream is exhausted")
            word = struct.unpack_from("<H", chunk, w)[0]
            x[l] = x[l] * STATE_LOW + word     # "x[l] = x[l] * 2^16 + (the u16 word at w)"
            w += 2                             # "w = w + 2"
        if s == escape_symbol:                 # "if s is the escape symbol:"
            if e == escape_count:              # "if e = escape_count: error escape_mismatch"
                raise SpecError("escape_mismatch", f"{where}.escapes", ref.offset + 4,
                                f"symbol {i} is an escape but no escape value is left")
            q = escapes[e]                     # "q = escapes[e]; e = e + 1"
            e += 1
            # "if q is a direct index or |q| > 2^23 - 1: error escape_mismatch"
            # (spec §7.5: "escape_mismatch, also for the range").  With
            # LAST_SYMBOL and alphabet_size 1 there is no direct index
            # (D = 0, lo > hi), so only the range applies.
            if lo <= q <= hi or abs(q) > MAX_INDEX:
                raise SpecError("escape_mismatch", f"{where}.escapes[{e - 1}]", ref.offset + 4 * e,
                                f"escaped index {q} is a direct index or out of range")
        else:
            q = s + body.index_offset          # "q = s + index_offset"
        # "if the grid is CODEBOOK and q is outside it: error
        # index_out_of_range" -- spec §6.2 "detected as soon as the index is
        # decoded (section 7.6), before the symbols after it" (and so before
        # the end-of-chunk checks of §7.7).
        if codebook is not None and not in_codebook(codebook, q):
            raise SpecError("index_out_of_range", f"{where} (symbol {i})", ref.offset,
                            f"index {q} is outside the codebook [{codebook.first_index}, "
                            f"{codebook.first_index + codebook.codebook_size - 1}]")
        # "output index q;  p[l] = q" -- the final index, after any escape
        # (§7.4 "The index is the final index after any escape"), becomes
        # the context of this lane's next symbol, i + L.
        out.append(q)
        p[l] = q
        if trace is not None:
            trace.append((i, l, before, slot, s, after_step, word, x[l], q))
    # spec §7.7 End of a chunk.
    # "1. every word MUST have been read (stream_trailing_data if any is left);"
    if w != len(chunk):
        raise SpecError("stream_trailing_data", f"{where}.words", ref.offset + w,
                        f"{(len(chunk) - w) // 2} words left after the last symbol")
    # "2. every lane state MUST equal 2^16 (rans_final_state);"
    for l in range(L):
        if x[l] != STATE_LOW:
            raise SpecError("rans_final_state", f"{where}.lane_states[{l}]",
                            ref.offset + 4 + 4 * escape_count + 4 * l,
                            f"lane {l} ends in state 0x{x[l]:08x}, not 2^16")
    # "3. every escape value MUST have been used, e = escape_count (escape_mismatch)."
    if e != escape_count:
        raise SpecError("escape_mismatch", f"{where}.escapes", ref.offset + 4,
                        f"{escape_count - e} escape values left unused")
    return out


def decode_tensor_indices(hdr, rec, trace=None):
    """All indices of a RANS tensor (spec §7.1: the symbols are in row-major
    order, split into chunks of whole rows): spec §4.8 step 12 "verify the
    checksum of each of its payloads, in payload order (checksum_payload);
    decode it (... for a coded one, its chunks in order, section 7)".  spec
    §4.9 "Within step 12 the order is given by sections 7.3, 7.6 and 7.7 for
    each chunk, chunk after chunk." """
    verify_payload_checksums(hdr, rec.payloads())          # spec §8.3, all chunks first
    out = []
    for k in range(rec.rans.chunk_count):
        out.extend(decode_chunk(hdr.data, rec, k, trace))
    return out


# =============================================================================
# spec §8  Integrity
# =============================================================================

# spec §8.1 CRC-32C: "polynomial 0x1EDC6F41 (bit-reflected 0x82F63B78),
# initial value 0xFFFFFFFF, input and output reflected, final XOR 0xFFFFFFFF."
def _make_crc32c_table():
    table = []
    for byte in range(256):
        c = byte
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C_TABLE = _make_crc32c_table()


def crc32c(data):
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


# spec §8.2 Header checksum: see read_preamble (§4.8 step 8).

# spec §8.3 Payload checksums: "A decoder MUST verify the checksum of every
# payload before using its contents (checksum_payload)."
def verify_payload_checksums(hdr, refs):
    for ref in refs:
        computed = crc32c(hdr.data[ref.offset:ref.offset + ref.size])
        if computed != ref.crc32c:
            hdr.fail("checksum_payload", f"{ref.path}.crc32c",
                     f"stored 0x{ref.crc32c:08x}, computed 0x{computed:08x}")


# =============================================================================
# spec §9  Limits
# =============================================================================
# "a decoder MUST reject a file beyond them with limit_exceeded, before
# allocating memory sized by the offending value. Every limit is inclusive (a
# value equal to the limit is allowed). The counts listed in section 4.8 step
# 9 are checked as soon as they are read; the others in step 10."
#
#   step 9 (parse):  header_size is step 6; entry_count, extension_count,
#                    tensor_count, rank, group_count, codebook_size,
#                    lane_count, context_count, alphabet_size, chunk_count.
#   step 10 (§4.9):  name and key lengths, each dimension, element_count,
#                    coded_row_length, precision_bits, symbols in one chunk,
#                    chunk size.

LIMIT_HEADER_SIZE = 1 << 28
LIMIT_TENSOR_COUNT = 1 << 20
LIMIT_NAME_BYTES = 4096
LIMIT_METADATA_ENTRIES = 65536
LIMIT_KEY_BYTES = 256
LIMIT_EXTENSION_COUNT = 256
LIMIT_RANK = 8
LIMIT_DIMENSION = 1 << 40
LIMIT_ELEMENT_COUNT = 1 << 40
LIMIT_CODED_ROW_LENGTH = 1 << 40
LIMIT_PRECISION_BITS = 16
LIMIT_LANE_COUNT = 32
LIMIT_CONTEXT_COUNT = 16
LIMIT_ALPHABET_SIZE = 65536
LIMIT_GROUP_COUNT = 1 << 24
LIMIT_CODEBOOK_SIZE = 65536
LIMIT_CHUNK_COUNT = 1 << 24
LIMIT_CHUNK_SYMBOLS = 1 << 32
LIMIT_CHUNK_BYTES = 1 << 32
# "absolute value of any index, zero point, context_center: 2^23 - 1
# (invalid_value beyond)" -- MAX_INDEX, section 6.


def check_limit(value, limit, path, offset):
    if value > limit:
        raise SpecError("limit_exceeded", path, offset, f"{value} exceeds the limit {limit} (§9)")


# =============================================================================
# spec §10  Errors
# =============================================================================

ERROR_CODES = {
    "bad_magic": 1,
    "unsupported_version": 2,
    "unsupported_feature": 3,
    "truncated": 4,
    "reserved_value": 5,
    "checksum_header": 6,
    "checksum_payload": 7,
    "invalid_value": 8,
    "header_size_mismatch": 9,
    # "Code 10 is unassigned."
    "payload_layout": 11,
    "nonzero_padding": 12,
    "trailing_bytes": 13,
    "table_sum": 14,
    "rans_state_out_of_range": 15,
    "stream_truncated": 16,
    "stream_trailing_data": 17,
    "rans_final_state": 18,
    "escape_mismatch": 19,
    "index_out_of_range": 20,
    "duplicate_name": 21,
    "duplicate_key": 22,
    "invalid_reference": 23,
    "limit_exceeded": 30,
}


class SpecError(Exception):
    """A fault of section 10.  `code` and `name` are the spec's; the message
    names the field and its absolute byte offset in the file (when the fault
    has one)."""

    def __init__(self, name, field_path, offset, detail):
        self.name = name
        self.code = ERROR_CODES[name]
        self.field = field_path
        self.offset = offset
        where = f"at byte offset {offset}" if offset is not None else "(no single byte offset)"
        super().__init__(f"{field_path} {where}: {detail}")


# =============================================================================
# Public interface
# =============================================================================

def check_output_bound(hdr, rec, max_output_bytes):
    """spec §9 note (informative): "The limits do not bound the output's size
    in practice (2^40 elements), and a chunk of a one-symbol table codes any
    number of symbols in a few bytes: a decoder serving untrusted files SHOULD
    let its caller bound the output size it accepts."

    Checked before anything of the tensor is decoded, on each list its
    decoding builds: the output (element_count elements, §5.1), the coded
    symbols (rows x coded_row_length, §7.1) and, with a transform, the matrix
    T's output (§6.4).  Sizes count the output's bytes per element (§5.2)."""
    sized = [(rec, rec.element_count)]
    if rec.coding == CODING_RANS:
        sized.append((rec, rec.rows * rec.rans.coded_row_length))
        if rec.rans.transform_kind == TRANSFORM_RIGHT_MATRIX:
            t = hdr.tensors[rec.rans.transform_tensor]
            sized.append((t, t.element_count))
    for r, count in sized:
        check_limit(count * DTYPES[r.dtype][1], max_output_bytes,
                    f"{r.path} (max_output_bytes)", None)


def decode_file(data, max_output_bytes=None, spec_version=DEFAULT_SPEC_VERSION):
    """Decode every tensor of an .nrd file, as a decoder of `spec_version`
    ("1.1", the default, or "1.0": see the module's docstring).

    Returns an ordered dict: name -> (dtype_name, shape, element_bytes), in
    header order; element_bytes are the little-endian elements of §5.3 / §6.5.
    Raises SpecError on the first fault found.  With `max_output_bytes` (None:
    no bound) a tensor beyond it raises SpecError limit_exceeded before it is
    decoded (check_output_bound)."""
    hdr = read_file_header(data, spec_version)   # spec §4.8 steps 1-11
    cache = {}
    out = collections.OrderedDict()
    # spec §4.8 step 12, tensor by tensor in header order.
    for rec in hdr.tensors:
        if max_output_bytes is not None:
            check_output_bound(hdr, rec, max_output_bytes)
        result = decode_tensor(hdr, rec.index, cache)
        if rec.coding == CODING_RAW:
            raw = result                         # §5.3 "these bytes unchanged"
        else:
            raw = output_bytes(result, rec.dtype)    # §6.5
        out[rec.display_name] = (DTYPES[rec.dtype][0], rec.shape, bytes(raw))
    return out


def _find_tensor(hdr, name):
    key = name.encode("utf-8") if isinstance(name, str) else bytes(name)
    for rec in hdr.tensors:
        if rec.name == key:
            return rec
    raise KeyError(f"no tensor named {name!r}")


def decode_indices(data, name, trace=None, spec_version=DEFAULT_SPEC_VERSION):
    """The decoded indices (section 7) of the rANS-coded tensor `name`, in
    symbol order.  Checks the whole preamble, header and layout first (§1.3,
    §4.8 steps 1-11), then the tensor's payload checksums and its chunks
    (the first part of step 12).  A codebook index_out_of_range is reported
    (spec §6.2: "detected as soon as the index is decoded (section 7.6)");
    the transform tensor is not decoded and nothing is reconstructed (the
    indices of a UNIFORM_TRELLIS tensor are those of §7, not its values)."""
    hdr = read_file_header(data, spec_version)
    rec = _find_tensor(hdr, name)
    if rec.coding != CODING_RANS:
        raise ValueError(f"tensor {name!r} is not rANS-coded")
    return decode_tensor_indices(hdr, rec, trace)


# =============================================================================
# Command line
# =============================================================================

_NPY_DTYPES = {
    "FLOAT32": "<f4", "FLOAT16": "<f2", "BFLOAT16": "<u2", "FLOAT64": "<f8",
    "INT8": "i1", "UINT8": "u1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8",
    "BOOL": "?", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8",
}


def _write_npz(tensors, path):
    """Write the decoded tensors to an .npz (BFLOAT16 as uint16 bit patterns).
    A zip of .npy members is written directly so that any tensor name works
    as a key."""
    import zipfile
    import numpy as np
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, (dtype_name, shape, raw) in tensors.items():
            arr = np.frombuffer(raw, dtype=np.dtype(_NPY_DTYPES[dtype_name])).reshape(shape)
            with zf.open(name + ".npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, arr, allow_pickle=False)  # frombuffer is contiguous; ascontiguousarray would make a 0-d tensor 1-d


def main(argv):
    usage = "usage: spec_literal_decoder.py [--spec-version 1.0|1.1] INPUT.nrd OUTPUT.npz"
    argv = list(argv)
    spec_version = DEFAULT_SPEC_VERSION
    if argv and argv[0].startswith("--spec-version"):
        if "=" in argv[0]:
            spec_version = argv.pop(0).split("=", 1)[1]
        elif len(argv) >= 2:
            argv.pop(0)
            spec_version = argv.pop(0)
        else:
            argv = []
    if len(argv) != 2 or spec_version not in SPEC_VERSIONS:
        print(usage, file=sys.stderr)
        return 2
    src, dst = argv
    with open(src, "rb") as fh:
        data = fh.read()
    try:
        tensors = decode_file(data, spec_version=spec_version)
    except SpecError as exc:
        print(f"error {exc.code} {exc.name}: {exc}", file=sys.stderr)
        return 1
    _write_npz(tensors, dst)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
