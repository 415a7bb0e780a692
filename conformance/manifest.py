"""Manifests of the frozen conformance files, and what each file exercises.

A valid vector's manifest entry lists the SHA-256 of every decoded tensor (of its exact
little-endian bytes in the tensor's dtype, spec §6.5) with its dtype and shape, the spec sections
and the features the file exercises (computed from its bytes by :func:`features_of`, never
written by hand), and the file's own SHA-256. An invalid file's entry names the error code a
conforming decoder reports for it (spec §10) and the sections whose rule it breaks.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
import tempfile
from pathlib import Path

from nncodec_rd.format.constants import FEATURE_TRELLIS, minor_version_for
from nncodec_rd.format.errors import ErrorCode

from . import spec_literal_decoder
from .mutators import split_file

HERE = Path(__file__).resolve().parent
SPEC_PATH = HERE.parent / "spec" / "nrd-format.md"
VECTORS_MANIFEST = HERE / "vectors" / "manifest.json"
INVALID_MANIFEST = HERE / "invalid" / "manifest.json"

# Sections no file can exercise: the requirement words, and the error list (covered by the
# invalid files instead, code by code).
UNTESTABLE_SECTIONS = {"1.1", "10"}

# Every file has a preamble, a header with a metadata block and extension lists, tensor records
# within the limits, and is laid out and checksummed.
SECTIONS_OF_EVERY_FILE = ("1", "1.2", "1.3", "1.4", "2", "2.1", "2.3", "2.4", "2.5", "3", "3.1",
                          "3.2", "3.3", "4", "4.1", "4.2", "4.3", "4.4", "4.5", "4.7", "4.8",
                          "4.9", "5", "5.1", "5.2", "5.3", "8", "8.1", "8.2", "9")
SECTIONS_OF_FEATURE = {
    "payload:any": ("4.6", "5.4", "8.3"),
    "tensor:rans": ("2.2", "6", "6.5", "7", "7.1", "7.2", "7.3", "7.4", "7.6", "7.7"),
    "transform:none": ("6.3",),
    "grid:uniform": ("6.1",),
    "grid:codebook": ("6.2",),
    "grid:trellis": ("3.3", "6.1", "6.6"),
    "required:trellis": ("3.3",),
    "transform:right_matrix": ("6.4",),
    "escape:last_symbol": ("7.5",),
    "metadata:any": ("5.5",),
    "extension:file": ("3.4",),
    "extension:tensor": ("3.4", "5.6"),
    "annex:a": ("A",),
}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def spec_sections(spec_text: str | None = None) -> list[str]:
    """The numbered sections of the spec (``"4.7"``) and its normative annex ``"A"``."""
    text = spec_text if spec_text is not None else SPEC_PATH.read_text(encoding="utf-8")
    sections = re.findall(r"^#{2,3} (\d+(?:\.\d+)?) ", text, flags=re.MULTILINE)
    if re.search(r"^## Annex A ", text, flags=re.MULTILINE):
        sections.append("A")
    return sections


def spec_error_codes(spec_text: str | None = None) -> dict[int, str]:
    """The error codes of the spec's §10 table: code -> name."""
    text = spec_text if spec_text is not None else SPEC_PATH.read_text(encoding="utf-8")
    section = text.split("## 10 Errors", 1)[1].split("\n## ", 1)[0]
    return {int(code): name for code, name in re.findall(r"^\| (\d+) \| `(\w+)` \|", section,
                                                          flags=re.MULTILINE)}


def decode_both(data: bytes) -> dict[str, tuple[str, tuple, bytes]]:
    """Decode ``data`` with the spec-literal decoder and the Numba decoder; they must agree.

    Returns ``{name: (dtype name, shape, element bytes)}`` in file order.
    """
    from nncodec_rd.decoder.reader import NrdFile

    literal = spec_literal_decoder.decode_file(data)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "vector.nrd"
        path.write_bytes(data)
        with NrdFile(path) as handle:
            production = {name: handle.get_tensor(name) for name in handle.keys()}
    if list(literal) != list(production):
        raise AssertionError(f"the decoders list other tensors: {list(literal)} / "
                             f"{list(production)}")
    out = {}
    for name, (dtype_name, shape, raw) in literal.items():
        array = production[name]
        mine = array.view("u2").tobytes() if array.dtype.name == "bfloat16" else array.tobytes()
        if tuple(array.shape) != tuple(shape) or mine != raw:
            raise AssertionError(f"the decoders disagree on tensor {name!r}")
        out[name] = (dtype_name.lower(), tuple(shape), raw)
    return out


def tensor_entries(decoded) -> list[dict]:
    return [dict(name=name, dtype=dtype, shape=list(shape), sha256=sha256(raw))
            for name, (dtype, shape, raw) in decoded.items()]


def _value_features(dtype: str, raw: bytes) -> set[str]:
    """Special values among float elements: infinities, NaNs, subnormals, negative zero."""
    layouts = {"float32": ("<I", 4, 23, 0xFF), "float16": ("<H", 2, 10, 0x1F),
               "bfloat16": ("<H", 2, 7, 0xFF), "float64": ("<Q", 8, 52, 0x7FF)}
    if dtype not in layouts:
        return set()
    code, width, mantissa_bits, exponent_max = layouts[dtype]
    found = set()
    for (bits,) in struct.iter_unpack(code, raw):
        exponent = (bits >> mantissa_bits) & exponent_max
        mantissa = bits & ((1 << mantissa_bits) - 1)
        sign = bits >> (8 * width - 1)
        if exponent == exponent_max:
            found.add(f"value:{dtype}:{'nan' if mantissa else 'infinity'}")
        elif exponent == 0 and mantissa:
            found.add(f"value:{dtype}:subnormal")
        elif exponent == 0 and sign:
            found.add(f"value:{dtype}:negative_zero")
    return found


def _varint_lengths(frequencies) -> set[int]:
    return {1 if f < 128 else 2 if f < 16384 else 3 for f in frequencies}


def features_of(data: bytes, decoded) -> set[str]:
    """What a valid file exercises, read from its header and its decoded tensors."""
    header, payloads = split_file(data)
    found = set()
    if payloads:
        found.add("payload:any")
        if not payloads[-1]:
            found.add("payload:empty_last")
        if any(not payload for payload in payloads):
            found.add("payload:empty")
    minor_version, required_features = struct.unpack_from("<HI", data, 10)
    if minor_version > minor_version_for(required_features):
        found.add("version:later_minor")
    if required_features & FEATURE_TRELLIS:
        found.add("required:trellis")
    if header["metadata"]["entries"]:
        found.add("metadata:file")
    if header["extensions"]["extensions"]:
        found.add("extension:file")
    names = [record["name"] for record in header["tensors"]]
    for position, record in enumerate(header["tensors"]):
        name = record["name"]
        encoded_name = name.encode("utf-8")
        if len(encoded_name) == 4096:
            found.add("name:longest")
        if any(ord(character) > 127 for character in name):
            found.add("name:non_ascii")
        if record["metadata"]["entries"]:
            found.add("metadata:tensor")
        if record["extensions"]["extensions"]:
            found.add("extension:tensor")
        for entry in header["metadata"]["entries"] + record["metadata"]["entries"]:
            found.add("metadata:" + ["string", "int64", "float64", "bool", "bytes"][
                entry["value_type"] - 1])
            if entry["key"] == "":
                found.add("metadata:empty_key")
            if isinstance(entry["value"], float) and math.isnan(entry["value"]):
                found.add("metadata:float64_nan")
        shape = record["shape"]
        if len(shape) == 0:
            found.add("shape:0d")
        if len(shape) == 8:
            found.add("shape:rank_8")
        if any(d == 0 for d in shape):
            found.add("shape:empty")
        if shape and all(d == 1 for d in shape):
            found.add("shape:single_element")
        if any(d == 1 << 40 for d in shape):
            found.add("shape:dimension_2^40")
        dtype, _, raw = decoded[name]
        found |= _value_features(dtype, raw)
        if record["coding"] == 0:
            found.add("tensor:raw")
            found.add(f"raw:{dtype}")
            continue
        body = record["body"]
        found |= {"tensor:rans", f"reconstruct:{dtype}"}
        grid = body["grid"]
        if body["grid_kind"] in (1, 3):
            found.add("grid:uniform" if body["grid_kind"] == 1 else "grid:trellis")
            if grid["has_zero_point"] and any(grid["zero_points"]):
                found.add("grid:zero_point")
            if grid["rows_per_group"] >= 1 << 63:
                found.add("grid:rows_per_group_2^63_or_more")
            if grid["group_count"] > 1:
                found.add("grid:groups" if grid["rows_per_group"] > 1 else "grid:per_row")
        else:
            found.add("grid:codebook")
        if body["transform_kind"] == 1:
            found.add("transform:right_matrix")
            target = header["tensors"][body["transform_tensor"]]
            found.add("transform:matrix_raw" if target["coding"] == 0 else "transform:matrix_coded")
            if body["transform_tensor"] > position:
                found.add("transform:matrix_after")
            if body["coded_row_length"] == 0:
                found.add("transform:k_0")
        else:
            found.add("transform:none")
        found.add(["context:iid", "context:previous_index"][body["context_model"]])
        if body["context_count"] == 16:
            found.add("context:16_tables")
        if body["context_center"] != 0:
            found.add("context:center_not_0")
        lanes = body["lane_count"]
        found.add(f"lanes:{lanes}" if lanes in (1, 32) else "lanes:2-31")
        symbols_per_chunk = body["rows_per_chunk"] * body["coded_row_length"]
        if body["chunk_count"] and symbols_per_chunk < lanes:
            found.add("lanes:more_than_symbols")
        if body["chunk_count"] > 1:
            found.add("chunks:several")
        if body["chunk_count"] == 0:
            found.add("chunks:none")
        if body["escape_mode"] == 1:
            found.add("escape:last_symbol")
            if body["alphabet_size"] == 1:
                found.add("escape:only_escapes")
        if body["alphabet_size"] == 1:
            found.add("alphabet:1")
        if body["alphabet_size"] == 65536:
            found.add("alphabet:65536")
        if body["precision_bits"] in (1, 16):
            found.add(f"precision:{body['precision_bits']}")
        for table in body["tables"]:
            if 0 in table["frequencies"]:
                found.add("table:zero_frequency")
            found |= {f"varint:{n}_bytes" for n in _varint_lengths(table["frequencies"])}
    if len(set(names)) != len(names):
        raise AssertionError("duplicate names in a valid vector")
    return found


def sections_of(features: set[str], name: str) -> list[str]:
    sections = set(SECTIONS_OF_EVERY_FILE)
    for feature in features:
        sections.update(SECTIONS_OF_FEATURE.get(feature, ()))
    if "metadata:file" in features or "metadata:tensor" in features:
        sections.update(SECTIONS_OF_FEATURE["metadata:any"])
    if name == "annex_a_example":
        sections.update(SECTIONS_OF_FEATURE["annex:a"])
    return sorted(sections, key=_section_key)


def _section_key(section: str):
    return [int(part) if part.isdigit() else ord(part) - 1000 for part in section.split(".")]


# What the issue asks the vectors to exercise: every grid kind, dtype, context model, lane count
# range, chunking, escape, metadata type, extension, and the edge cases.
REQUIRED_FEATURES = {
    "grid:uniform", "grid:codebook", "grid:zero_point", "grid:groups", "grid:per_row",
    "grid:rows_per_group_2^63_or_more", "grid:trellis", "required:trellis",
    "reconstruct:float32", "reconstruct:float16", "reconstruct:bfloat16",
    *(f"raw:{d}" for d in ("float32", "float16", "bfloat16", "float64", "int8", "uint8", "int16",
                           "int32", "int64", "bool", "uint16", "uint32", "uint64")),
    "transform:none", "transform:right_matrix", "transform:matrix_raw", "transform:matrix_coded",
    "transform:matrix_after", "transform:k_0",
    "context:iid", "context:previous_index", "context:16_tables", "context:center_not_0",
    "lanes:1", "lanes:2-31", "lanes:32", "lanes:more_than_symbols",
    "chunks:several", "chunks:none", "escape:last_symbol", "escape:only_escapes",
    "alphabet:1", "alphabet:65536", "precision:1", "precision:16", "table:zero_frequency",
    "varint:1_bytes", "varint:2_bytes", "varint:3_bytes",
    "metadata:file", "metadata:tensor", "metadata:string", "metadata:int64", "metadata:float64",
    "metadata:bool", "metadata:bytes", "metadata:empty_key", "metadata:float64_nan",
    "extension:file", "extension:tensor", "version:later_minor",
    "shape:0d", "shape:empty", "shape:single_element", "shape:rank_8", "shape:dimension_2^40",
    "payload:empty", "payload:empty_last", "name:longest", "name:non_ascii",
    "value:float32:infinity", "value:float32:subnormal", "value:float32:negative_zero",
    "value:float32:nan", "value:float16:subnormal", "value:float16:infinity",
}


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def coverage_gaps(vectors: dict, invalid: dict, spec_text: str | None = None) -> list[str]:
    """What the frozen files leave uncovered: spec sections without a valid vector, error codes
    without an invalid file, required features without a vector. Empty when complete."""
    gaps = []
    covered = {section for entry in vectors["vectors"] for section in entry["sections"]}
    for section in spec_sections(spec_text):
        if section not in covered and section not in UNTESTABLE_SECTIONS:
            gaps.append(f"spec section {section} has no valid vector")
    codes = {entry["error_code"] for entry in invalid["files"]}
    for code, name in spec_error_codes(spec_text).items():
        if code not in codes:
            gaps.append(f"error {code} {name} has no invalid file")
    features = {feature for entry in vectors["vectors"] for feature in entry["features"]}
    gaps.extend(f"feature {feature} has no vector" for feature in sorted(REQUIRED_FEATURES - features))
    return gaps


def error_name(code: int) -> str:
    return ErrorCode(code).slug


def error_codes_of_both(data: bytes) -> tuple[int | None, int | None]:
    """The error code each decoder reports for ``data`` (None: it decoded the file)."""
    from nncodec_rd.decoder.reader import NrdFile
    from nncodec_rd.format.errors import NrdError

    try:
        spec_literal_decoder.decode_file(data)
        literal = None
    except spec_literal_decoder.SpecError as error:
        literal = error.code
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "file.nrd"
        path.write_bytes(data)
        try:
            with NrdFile(path) as handle:
                for name in handle.keys():
                    handle.get_tensor(name)
            production = None
        except NrdError as error:
            production = int(error.code)
    return literal, production
