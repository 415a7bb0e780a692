"""The recipes of the frozen conformance files: valid vectors and invalid files.

Each recipe is a small function that returns the bytes of one file, written by the reference
encoder (``NrdWriter``) and, where the encoder never writes a feature the spec allows (optional
extensions, a later minor version, an alphabet of escapes only), edited afterwards through
:mod:`conformance.mutators`. Recipes carry a version: the file on disk is
``vectors/<name>.v<version>.nrd`` (or ``invalid/...``) and is never overwritten with other bytes.

``python -m conformance.generate --check`` fails when a recipe would now give other bytes than
the frozen file (the encoder changed: keep the old file, add a recipe with a new version);
``--write`` writes files that do not exist yet and refreshes the manifests. The manifests record
what each file is for (the spec sections and features it exercises, computed from its bytes), the
SHA-256 of every decoded tensor, and for invalid files the error code a decoder must report.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import struct
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nncodec_rd.encoder.writer import NrdWriter
from nncodec_rd.format.checksum import crc32c
from nncodec_rd.format.constants import RANS_STATE_LOWER_BOUND
from nncodec_rd.format.errors import ErrorCode
from nncodec_rd.format.grids import CodebookGrid, EntropySettings, RightMatrixTransform, UniformGrid

from .annex_example import build_example, field_rows
from .mutators import assemble, mutate_header, refresh_header_checksum, split_file

HERE = Path(__file__).resolve().parent
VECTORS_FOLDER = HERE / "vectors"
INVALID_FOLDER = HERE / "invalid"


@dataclass(frozen=True)
class Recipe:
    """How one frozen file is made."""

    name: str
    version: int
    description: str
    build: object  # () -> bytes
    error: ErrorCode | None = None  # invalid files: the code a decoder must report
    sections: tuple[str, ...] = ()  # invalid files: the spec sections whose rule is broken

    @property
    def file_name(self) -> str:
        return f"{self.name}.v{self.version}.nrd"


VALID: list[Recipe] = []
INVALID: list[Recipe] = []


def vector(name: str, description: str, version: int = 1):
    """Register a valid-vector recipe."""
    def register(function):
        VALID.append(Recipe(name, version, description, function))
        return function
    return register


def invalid(name: str, error: ErrorCode, sections: tuple[str, ...], description: str,
            version: int = 1):
    """Register an invalid-file recipe; ``build`` is given the bytes of the base file."""
    def register(function):
        INVALID.append(Recipe(name, version, description, function, error, sections))
        return function
    return register


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------

def written(populate, metadata: dict | None = None) -> bytes:
    """The bytes NrdWriter writes after ``populate(writer)``."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "vector.nrd")
        with NrdWriter(path, metadata=metadata) as writer:
            populate(writer)
        return Path(path).read_bytes()


def patch(data: bytes, offset: int, new: bytes, *, fix_checksum: bool = True) -> bytes:
    """``data`` with ``new`` written at ``offset`` (same length), header checksum refreshed."""
    out = data[:offset] + new + data[offset + len(new):]
    return refresh_header_checksum(out) if fix_checksum else out


def field_offset(data: bytes, path: str) -> tuple[int, int]:
    """(start, end) of the field at ``path`` (as Annex A names fields) in ``data``."""
    for start, end, field_path, _ in field_rows(data):
        if field_path == path:
            return start, end
    raise KeyError(path)


def patch_field(data: bytes, path: str, new: bytes, **options) -> bytes:
    """``data`` with the field at ``path`` replaced by ``new``, which has the field's size."""
    start, end = field_offset(data, path)
    if len(new) != end - start:
        raise ValueError(f"{path} is {end - start} bytes, not {len(new)}")
    return patch(data, start, new, **options)


def laplace_indices(shape, scale: float, seed: int) -> np.ndarray:
    """Rounded Laplacian indices: the shape of quantized weights."""
    rng = np.random.default_rng(seed)
    return np.round(rng.laplace(scale=scale, size=shape)).astype(np.int64)


def escape_only_file(name: str, values: np.ndarray, lane_count: int, step: float) -> bytes:
    """A file of one float32 tensor whose alphabet is the escape symbol alone (spec §7.5): every
    lane stays at 2^16, no word is written, and the indices are the escape values, in one chunk.
    """
    base = written(lambda w: w.add_indices(
        name, np.zeros(values.shape, np.int64), UniformGrid(step), "float32",
        settings=EntropySettings(lane_count=lane_count, context_model="iid")))
    header, _ = split_file(base)
    body = header["tensors"][0]["body"]
    body.update(escape_mode=1, alphabet_size=1, index_offset=0,
                tables=[dict(frequencies=[1 << body["precision_bits"]])])
    flat = values.reshape(-1)
    chunk = (struct.pack("<I", len(flat)) + flat.astype("<i4").tobytes()
             + struct.pack(f"<{lane_count}I", *([RANS_STATE_LOWER_BOUND] * lane_count)))
    return assemble(header, [chunk])


# ---------------------------------------------------------------------------------------------
# Valid vectors
# ---------------------------------------------------------------------------------------------

@vector("annex_a_example", "The worked example of Annex A: one float32 tensor, UNIFORM step 0.5, "
        "IID, one lane, precision 4.")
def _annex_a() -> bytes:
    return build_example()


@vector("uniform_per_tensor_float32", "A 16x64 Laplacian weight matrix, one UNIFORM step, IID "
        "context, 4 lanes, float32, two chunks.")
def _uniform_float32() -> bytes:
    settings = EntropySettings(lane_count=4, context_model="iid", symbols_per_chunk=512)
    return written(lambda w: w.add_indices(
        "layer.weight", laplace_indices((16, 64), 2.5, 1), UniformGrid(0.0123), "float32",
        settings=settings))


@vector("uniform_groups_zero_points_float16",
        "UNIFORM grid with rows_per_group 3 over 10 rows (a short last group), zero points, "
        "float16 output including subnormal results and overflow to infinity.")
def _uniform_groups() -> bytes:
    indices = laplace_indices((10, 24), 3.0, 2)
    indices[0, :4] = [1, -1, 2, 7]
    indices[9, :3] = [30000, -30000, 5]
    steps = [2.0 ** -20, 0.37, 1.5, 3.0]  # group 0: float16 subnormals; group 3: beyond 65504
    settings = EntropySettings(lane_count=2, context_model="iid", max_alphabet_size=64)
    return written(lambda w: w.add_indices(
        "groups", indices, UniformGrid(steps, [0, 1, -2, 3], rows_per_group=3), "float16",
        settings=settings))


@vector("uniform_per_row_bfloat16", "One step per row (rows_per_group 1), bfloat16 output with "
        "round-to-nearest-even ties, PREVIOUS_INDEX context.")
def _uniform_per_row() -> bytes:
    indices = laplace_indices((6, 40), 1.5, 3)
    steps = [1.0 + 2.0 ** -8, 1.0 + 3 * 2.0 ** -8, 0.1, 1e-3, 7.25, 1.0 + 2.0 ** -9]
    settings = EntropySettings(lane_count=1, context_model="previous", context_count=3)
    return written(lambda w: w.add_indices(
        "rows", indices, UniformGrid(steps, rows_per_group=1), "bfloat16", settings=settings))


@vector("uniform_rows_per_group_max", "UNIFORM grid with rows_per_group 2^64 - 1 (a u64 at its "
        "maximum: one group), the coded rows of a transform included.")
def _rows_per_group_max() -> bytes:
    def populate(w):
        w.add_indices("one_group", laplace_indices((3, 5), 1.0, 24),
                      UniformGrid(0.5, [1], rows_per_group=(1 << 64) - 1), "float32",
                      settings=EntropySettings(lane_count=2, context_model="iid"))
        w.add_raw("basis", np.eye(2, 3, dtype=np.float32))
        w.add_indices("projected", laplace_indices((4, 2), 1.0, 25),
                      UniformGrid(0.25, rows_per_group=1 << 63), "float16",
                      transform=RightMatrixTransform("basis"))
    return written(populate)


@vector("uniform_subnormal_and_huge_steps", "Subnormal and huge binary32 steps: subnormal, "
        "zero-signed and infinite float32 values from a UNIFORM grid.")
def _uniform_extremes() -> bytes:
    tiny = laplace_indices((4, 8), 2.0, 4)
    huge = np.array([[-3, -2, -1, 0, 1, 2, 3, 4]] * 2)
    settings = EntropySettings(lane_count=3, context_model="iid")

    def populate(w):
        w.add_indices("tiny", tiny, UniformGrid(float(np.float32(1e-45))), "float32",
                      settings=settings)
        w.add_indices("huge", huge, UniformGrid(float(np.float32(1.5e38))), "float32",
                      settings=settings)
    return written(populate)


@vector("codebook_float32", "CODEBOOK grid with a negative first_index and a stored -0.0, "
        "float32 output, IID context.")
def _codebook_float32() -> bytes:
    values = [-1.75, -0.5, -0.0, 0.25, 0.3333333, 2.0, 1e-40]
    indices = np.random.default_rng(5).integers(-3, 4, size=(7, 9))
    settings = EntropySettings(lane_count=2, context_model="iid")
    return written(lambda w: w.add_indices(
        "book", indices, CodebookGrid(values, first_index=-3), "float32", settings=settings))


@vector("codebook_bfloat16_previous", "CODEBOOK grid, bfloat16 output, PREVIOUS_INDEX context "
        "with 4 tables and 3 lanes, several chunks.")
def _codebook_previous() -> bytes:
    rng = np.random.default_rng(6)
    indices = np.cumsum(rng.integers(-1, 2, size=(12, 30)), axis=1).clip(0, 9)
    values = [0.0, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6]
    settings = EntropySettings(lane_count=3, context_model="previous", context_count=4,
                               symbols_per_chunk=90)
    return written(lambda w: w.add_indices(
        "book", indices, CodebookGrid(values), "bfloat16", settings=settings))


@vector("previous_16_contexts", "PREVIOUS_INDEX with the largest context_count (16), a non-zero "
        "context_center, 2 lanes.")
def _previous_16() -> bytes:
    indices = laplace_indices((20, 50), 6.0, 7) + 40  # all positive: context_center is not 0
    settings = EntropySettings(lane_count=2, context_model="previous", context_count=16,
                               symbols_per_chunk=400)
    return written(lambda w: w.add_indices(
        "shifted", indices, UniformGrid(0.05, [40]), "float32", settings=settings))


@vector("lanes_32_short_chunks", "32 lanes with chunks of fewer symbols than lanes (one row of 5 "
        "per chunk), and one chunk of many symbols per lane.")
def _lanes_32() -> bytes:
    settings_short = EntropySettings(lane_count=32, context_model="iid", symbols_per_chunk=5)
    settings_long = EntropySettings(lane_count=32, context_model="previous", context_count=2)

    def populate(w):
        w.add_indices("short", laplace_indices((9, 5), 1.0, 8), UniformGrid(0.5), "float32",
                      settings=settings_short)
        w.add_indices("long", laplace_indices((40, 33), 1.0, 9), UniformGrid(0.5), "float16",
                      settings=settings_long)
    return written(populate)


@vector("escapes_iid_and_previous", "Indices outside the alphabet window escaped (LAST_SYMBOL) "
        "with IID and with PREVIOUS_INDEX contexts (the escaped value drives the next context).")
def _escapes() -> bytes:
    indices = laplace_indices((8, 60), 2.0, 10)
    indices[0, 0], indices[3, 7], indices[3, 8], indices[7, 59] = 500, -8388607, 8388607, -90

    def populate(w):
        w.add_indices("iid", indices, UniformGrid(0.01), "float32", settings=EntropySettings(
            lane_count=4, context_model="iid", max_alphabet_size=16, symbols_per_chunk=120))
        w.add_indices("previous", indices, UniformGrid(0.01), "float32", settings=EntropySettings(
            lane_count=2, context_model="previous", context_count=3, max_alphabet_size=9))
    return written(populate)


@vector("escape_only_alphabet", "alphabet_size 1 with LAST_SYMBOL: every index is an escape "
        "value, no direct index, no rANS word.")
def _escape_only() -> bytes:
    indices = np.array([[5, -7, 123], [0, 8388607, -8388607]], dtype=np.int64)
    return escape_only_file("escaped", indices, lane_count=2, step=0.25)


@vector("one_symbol_all_zero", "An all-zero tensor: a one-symbol alphabet whose chunk has no "
        "word; also a one-symbol table at precision_bits 1.")
def _all_zero() -> bytes:
    def populate(w):
        w.add_indices("zeros", np.zeros((30, 17), np.int64), UniformGrid(0.1), "float32",
                      settings=EntropySettings(lane_count=4, context_model="iid"))
        w.add_indices("sevens", np.full((3, 3), 7), UniformGrid(0.5), "bfloat16",
                      settings=EntropySettings(precision_bits=1, lane_count=1,
                                               context_model="iid"))
    return written(populate)


@vector("precision_1_two_symbols", "precision_bits 1: two symbols of frequency 1 each.")
def _precision_1() -> bytes:
    indices = np.array([[0, 1, 1, 0, 1], [1, 1, 0, 0, 0]])
    return written(lambda w: w.add_indices(
        "bits", indices, UniformGrid(1.0), "float32",
        settings=EntropySettings(precision_bits=1, lane_count=1, context_model="iid")))


@vector("largest_alphabet", "The largest alphabet (65536 symbols) at precision_bits 16, with "
        "3-byte varint frequencies, on a small tensor.")
def _largest_alphabet() -> bytes:
    indices = np.array([[-32768, 32767, 0, 1], [0, 0, 1, -32768]], dtype=np.int64)
    return written(lambda w: w.add_indices(
        "wide", indices, UniformGrid(2.0 ** -10), "float32", settings=EntropySettings(
            precision_bits=16, lane_count=2, context_model="iid", max_alphabet_size=65536)))


@vector("zero_d_empty_single", "0-d, empty and single-element tensors, coded and raw: shapes "
        "[], [0, 5], [5, 0] (rows without symbols: no chunk), [1], [1, 1, 1].")
def _degenerate_shapes() -> bytes:
    settings = EntropySettings(lane_count=4, context_model="auto")

    def populate(w):
        w.add_indices("scalar", np.array(-3), UniformGrid(0.75), "float32", settings=settings)
        w.add_indices("no_rows", np.zeros((0, 5), np.int64), UniformGrid(1.0), "float16",
                      settings=settings)
        w.add_indices("empty_rows", np.zeros((5, 0), np.int64), UniformGrid(1.0), "bfloat16",
                      settings=settings)
        w.add_indices("single", np.array([4]), CodebookGrid([0.0, 1.0, 2.0, 3.0, 4.5]),
                      "float32", settings=settings)
        w.add_indices("cube", np.array([[[2]]]), UniformGrid(3.0, [1]), "float16",
                      settings=settings)
        w.add_raw("raw_scalar", np.array(2.5, np.float32))
        w.add_raw("raw_empty", np.zeros((0, 3), np.int32))
    return written(populate)


@vector("largest_dimension_and_rank", "The largest dimension the limits allow (2^40) in empty "
        "tensors, coded and raw, and a tensor of the largest rank (8).")
def _largest_dimension() -> bytes:
    def populate(w):
        w.add_indices("tall", np.zeros((1 << 40, 0), np.int64), UniformGrid(1.0), "float32")
        w.add_raw("wide", np.zeros((0, 1 << 40), np.uint8))
        w.add_indices("rank8", laplace_indices((1, 2, 1, 2, 1, 3, 1, 2), 1.0, 11),
                      UniformGrid(0.5), "float32",
                      settings=EntropySettings(lane_count=2, context_model="iid"))
    return written(populate)


@vector("raw_every_dtype", "One raw tensor of each of the 13 dtypes, including a float32 NaN "
        "with payload bits and negative zero (raw bytes are output unchanged).")
def _raw_every_dtype() -> bytes:
    import ml_dtypes

    rng = np.random.default_rng(12)
    floats = np.array([1.5, -0.0, np.inf, 3.25e-42], np.float32)
    nan_payload = np.array([0x7FA12345, 0xFFC00001], dtype=np.uint32).view(np.float32)

    def populate(w):
        w.add_raw("float32", np.concatenate([floats, nan_payload]))
        w.add_raw("float16", np.array([[65504, -6.1e-5], [np.nan, 0.333]], np.float16))
        w.add_raw("bfloat16", np.array([1.0, -2.5, 3e38, 1e-39], dtype=ml_dtypes.bfloat16))
        w.add_raw("float64", np.array([np.pi, -1e-310, 1e308]))
        for name in ("int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64"):
            info = np.iinfo(name)
            w.add_raw(name, np.array([info.min, info.max, 0, 1], dtype=name))
        w.add_raw("bool", rng.integers(0, 2, size=(3, 3)).astype(bool))
    return written(populate)


@vector("transform_raw_basis", "RIGHT_MATRIX transform whose matrix is a raw float32 tensor "
        "stored after the coefficients; outputs in float32 and float16 (double rounding).")
def _transform_raw() -> bytes:
    rng = np.random.default_rng(13)
    basis = rng.standard_normal((6, 10)).astype(np.float32)
    basis[0, 0] = np.float32(1e30)  # products and sums far apart in magnitude
    coefficients = laplace_indices((5, 6), 2.0, 14)

    def populate(w):
        w.add_indices("projected", coefficients, UniformGrid([0.5, 0.25], rows_per_group=3),
                      "float32", transform=RightMatrixTransform("basis"))
        w.add_indices("projected_half", coefficients, UniformGrid(0.125), "float16",
                      transform=RightMatrixTransform("basis"))
        w.add_raw("basis", basis)
    return written(populate)


@vector("transform_coded_basis", "RIGHT_MATRIX transform whose matrix is itself rANS-coded "
        "(transform NONE) and stored before the coefficients, with a CODEBOOK coefficient grid.")
def _transform_coded() -> bytes:
    basis_indices = laplace_indices((4, 7), 3.0, 15)
    coefficients = np.random.default_rng(16).integers(0, 4, size=(3, 4))

    def populate(w):
        w.add_indices("basis", basis_indices, UniformGrid(0.1), "float32")
        w.add_indices("coefficients", coefficients, CodebookGrid([-1.0, -0.25, 0.25, 1.0]),
                      "bfloat16", transform=RightMatrixTransform("basis"))
    return written(populate)


@vector("transform_k0", "RIGHT_MATRIX with K = 0 coefficients per row: every element is +0.0 "
        "and the coefficient tensor has no chunk.")
def _transform_k0() -> bytes:
    def populate(w):
        w.add_raw("basis", np.zeros((0, 4), np.float32))
        w.add_indices("nothing", np.zeros((3, 0), np.int64), UniformGrid(1.0), "float32",
                      transform=RightMatrixTransform("basis"))
    return written(populate)


@vector("metadata_every_type", "File and tensor metadata of every value type: empty key, a key "
        "with U+0000, non-ASCII text, NaN and infinite FLOAT64, extreme INT64, empty BYTES, the "
        "standard keys.")
def _metadata() -> bytes:
    metadata = {"model_name": "conformance", "source": "generated", "license": "CC0-1.0",
                "framework": "numpy", "encoder": "nncodec-rd", "encoder_settings": "{}",
                "": "empty key", "nul\u0000key": "value with \u0000 inside",
                "unicode": "\u00e9t\u00e9 \u2603 \U0001f600", "int_min": -(1 << 63),
                "int_max": (1 << 63) - 1, "nan": math.nan, "infinity": -math.inf, "yes": True,
                "no": False, "blob": bytes(range(256)), "nothing": b"", "empty_text": ""}

    def populate(w):
        w.add_raw("bias", np.arange(4, dtype=np.float32), metadata={"original_dtype": "float32",
                                                                    "note": 1.25})
        w.add_indices("weight", laplace_indices((4, 4), 1.0, 17), UniformGrid(0.5), "float16",
                      metadata={"original_dtype": "float32", "original_dtype2": 16})
    return written(populate, metadata)


@vector("unknown_optional_extensions", "Optional extensions of unknown types in the file's and a "
        "tensor's extension list: decoders skip them.")
def _optional_extensions() -> bytes:
    base = written(lambda w: w.add_indices(
        "weight", laplace_indices((3, 5), 1.0, 18), UniformGrid(0.5), "float32"))

    def change(header, payloads):
        header["extensions"] = dict(extension_count=2, extensions=[
            dict(extension_type=0x7A01, extension_flags=0, body=b"future data"),
            dict(extension_type=0xFFFF, extension_flags=0, body=b"")])
        header["tensors"][0]["extensions"] = dict(extension_count=1, extensions=[
            dict(extension_type=0x0001, extension_flags=0, body=bytes(range(40)))])
    return mutate_header(base, change)


@vector("later_minor_version", "minor_version 7: a 1.0 decoder reads any 1.x file that uses only "
        "what it knows.")
def _later_minor() -> bytes:
    base = written(lambda w: w.add_raw("x", np.arange(5, dtype=np.int16)))
    return patch(base, 10, struct.pack("<H", 7))


@vector("many_chunks", "One row per chunk over 50 rows (50 entry points), mixed with a raw "
        "tensor between coded ones.")
def _many_chunks() -> bytes:
    def populate(w):
        w.add_indices("a", laplace_indices((50, 7), 1.0, 19), UniformGrid(0.1), "float32",
                      settings=EntropySettings(lane_count=3, symbols_per_chunk=7))
        w.add_raw("between", np.ones(3, np.float32))
        w.add_indices("b", laplace_indices((2, 100), 4.0, 20), UniformGrid(0.1), "float32",
                      settings=EntropySettings(lane_count=8, symbols_per_chunk=1))
    return written(populate)


@vector("names_unicode_and_longest", "Tensor names with non-ASCII characters, a 4096-byte name "
        "(the limit) and names that differ only in case.")
def _names() -> bytes:
    def populate(w):
        w.add_raw("caf\u00e9.\u2603", np.zeros(2, np.float32))
        w.add_raw("n" * 4096, np.zeros(1, np.uint8))
        w.add_raw("Layer", np.zeros(1, np.uint8))
        w.add_raw("layer", np.ones(1, np.uint8))
    return written(populate)


@vector("empty_payload_last", "A zero-size payload at the end: the file ends with the padding up "
        "to its aligned offset (spec 4.7).")
def _empty_last() -> bytes:
    def populate(w):
        w.add_raw("data", np.arange(3, dtype=np.uint8))
        w.add_raw("nothing", np.zeros(0, np.float32))
    return written(populate)


@vector("small_model", "A small MLP as the encoder writes it by default (auto context, 4 lanes, "
        "precision 14): two coded weight matrices with per-row steps, raw biases.")
def _small_model() -> bytes:
    rng = np.random.default_rng(21)

    def populate(w):
        w.add_indices("fc1.weight", laplace_indices((32, 48), 2.0, 22),
                      UniformGrid(rng.uniform(0.005, 0.02, 32), rows_per_group=1), "float32")
        w.add_raw("fc1.bias", rng.standard_normal(32).astype(np.float32))
        w.add_indices("fc2.weight", laplace_indices((10, 32), 1.2, 23),
                      UniformGrid(0.02), "float16")
        w.add_raw("fc2.bias", rng.standard_normal(10).astype(np.float32))
    return written(populate, {"model_name": "mlp-32-10", "framework": "numpy"})


# ---------------------------------------------------------------------------------------------
# Invalid files. Each breaks one rule of a small base file; the comments name the rule.
# ---------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def invalid_base() -> bytes:
    """A small file with a 2-chunk coded tensor with escapes and PREVIOUS_INDEX contexts, a
    codebook tensor, a raw tensor, file and tensor metadata."""
    indices = laplace_indices((4, 12), 2.0, 30)
    indices[0, 0] = 300  # escaped
    settings = EntropySettings(symbols_per_chunk=24, max_alphabet_size=16, lane_count=2,
                               context_model="previous", context_count=3)

    def populate(w):
        w.add_indices("coded", indices, UniformGrid(0.1), "float32", settings=settings,
                      metadata={"original_dtype": "float32"})
        w.add_indices("book", np.array([[0, 1], [2, 1]]), CodebookGrid([-1.0, 0.0, 1.0]),
                      "float16", settings=EntropySettings(context_model="iid", lane_count=1))
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
                                           settings=EntropySettings(precision_bits=16,
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
                                           settings=EntropySettings(lane_count=1,
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
# Writing and checking the frozen files
# ---------------------------------------------------------------------------------------------

def valid_entry(recipe: Recipe, data: bytes) -> dict:
    """The manifest entry of a valid vector, computed from its bytes (both decoders must agree)."""
    from . import manifest

    decoded = manifest.decode_both(data)
    features = manifest.features_of(data, decoded)
    return dict(name=recipe.name, version=recipe.version, file=recipe.file_name,
                size_bytes=len(data), file_sha256=manifest.sha256(data),
                description=recipe.description,
                sections=manifest.sections_of(features, recipe.name),
                features=sorted(features), tensors=manifest.tensor_entries(decoded))


def invalid_entry(recipe: Recipe, data: bytes) -> dict:
    """The manifest entry of an invalid file; both decoders must report its code."""
    from . import manifest

    codes = manifest.error_codes_of_both(data)
    if codes != (int(recipe.error), int(recipe.error)):
        raise AssertionError(f"{recipe.name}: the decoders report {codes}, the recipe says "
                             f"{int(recipe.error)} {recipe.error.slug}")
    return dict(name=recipe.name, version=recipe.version, file=recipe.file_name,
                size_bytes=len(data), file_sha256=manifest.sha256(data),
                description=recipe.description, error_code=int(recipe.error),
                error_name=recipe.error.slug, sections=list(recipe.sections))


def frozen_differences(folder: Path, recipes: list[Recipe]) -> list[str]:
    """Recipes whose output differs from their frozen file (or whose file is missing)."""
    problems = []
    for recipe in recipes:
        path = folder / recipe.file_name
        if not path.exists():
            problems.append(f"{path.name}: missing (run python -m conformance.generate --write)")
        elif path.read_bytes() != recipe.build():
            problems.append(f"{path.name}: the encoder now writes other bytes; keep this file and "
                            f"add a recipe version {recipe.version + 1} instead of regenerating")
    names = {recipe.file_name for recipe in recipes}
    problems.extend(f"{path.name}: no recipe makes this file" for path in sorted(folder.glob("*.nrd"))
                    if path.name not in names)
    return problems


def write_files(folder: Path, recipes: list[Recipe], entry, manifest_path: Path, key: str) -> None:
    """Write missing files (never overwrite a frozen one) and the manifest."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for recipe in recipes:
        data = recipe.build()
        path = folder / recipe.file_name
        if path.exists() and path.read_bytes() != data:
            raise SystemExit(f"{path}: frozen and different from what the recipe makes now; add a "
                             f"recipe version {recipe.version + 1}")
        if not path.exists():
            path.write_bytes(data)
        entries.append(entry(recipe, data))
    document = {"format_version": "1.0", key: entries}
    manifest_path.write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n",
                             encoding="utf-8")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", action="store_true",
                        help="write missing files and the manifests")
    action.add_argument("--check", action="store_true",
                        help="fail if a recipe no longer makes its frozen file")
    arguments = parser.parse_args(argv)
    from . import manifest

    if arguments.write:
        write_files(VECTORS_FOLDER, VALID, valid_entry, manifest.VECTORS_MANIFEST, "vectors")
        write_files(INVALID_FOLDER, INVALID, invalid_entry, manifest.INVALID_MANIFEST, "files")
    problems = (frozen_differences(VECTORS_FOLDER, VALID)
                + frozen_differences(INVALID_FOLDER, INVALID))
    gaps = manifest.coverage_gaps(manifest.load(manifest.VECTORS_MANIFEST),
                                  manifest.load(manifest.INVALID_MANIFEST))
    for line in problems + gaps:
        print(line, file=sys.stderr)
    if not problems and not gaps:
        print(f"{len(VALID)} vectors and {len(INVALID)} invalid files match their recipes; every "
              f"spec section and error code is covered")
    return 1 if problems or gaps else 0


if __name__ == "__main__":
    sys.exit(main())
