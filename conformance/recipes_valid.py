"""The recipes of the valid conformance vectors (``vectors/<name>.v<version>.nrd``), in the order of
their manifest: each returns the bytes of one file, written by the reference encoder and, where
the encoder never writes a feature the spec allows, edited afterwards."""

from __future__ import annotations

import math
import struct

import numpy as np

from nncodec_rd.format.constants import FEATURE_TRELLIS
from nncodec_rd.format.grids import CodebookGrid, RightMatrixTransform, UniformGrid

from .annex_example import build_example
from .mutators import assemble, mutate_header, split_file
from .recipes import escape_only_file, laplace_indices, patch, recipe_entropy, vector, written


@vector("annex_a_example", "The worked example of Annex A: one float32 tensor, UNIFORM step 0.5, "
        "IID, one lane, precision 4.")
def _annex_a() -> bytes:
    return build_example()


@vector("uniform_per_tensor_float32", "A 16x64 Laplacian weight matrix, one UNIFORM step, IID "
        "context, 4 lanes, float32, two chunks.")
def _uniform_float32() -> bytes:
    settings = recipe_entropy(lane_count=4, context_model="iid", symbols_per_chunk=512)
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
    settings = recipe_entropy(lane_count=2, context_model="iid", max_alphabet_size=64)
    return written(lambda w: w.add_indices(
        "groups", indices, UniformGrid(steps, [0, 1, -2, 3], rows_per_group=3), "float16",
        settings=settings))


@vector("uniform_per_row_bfloat16", "One step per row (rows_per_group 1), bfloat16 output with "
        "round-to-nearest-even ties, PREVIOUS_INDEX context.")
def _uniform_per_row() -> bytes:
    indices = laplace_indices((6, 40), 1.5, 3)
    steps = [1.0 + 2.0 ** -8, 1.0 + 3 * 2.0 ** -8, 0.1, 1e-3, 7.25, 1.0 + 2.0 ** -9]
    settings = recipe_entropy(lane_count=1, context_model="previous", context_count=3)
    return written(lambda w: w.add_indices(
        "rows", indices, UniformGrid(steps, rows_per_group=1), "bfloat16", settings=settings))


@vector("uniform_rows_per_group_max", "UNIFORM grid with rows_per_group 2^64 - 1 (a u64 at its "
        "maximum: one group), the coded rows of a transform included.")
def _rows_per_group_max() -> bytes:
    def populate(w):
        w.add_indices("one_group", laplace_indices((3, 5), 1.0, 24),
                      UniformGrid(0.5, [1], rows_per_group=(1 << 64) - 1), "float32",
                      settings=recipe_entropy(lane_count=2, context_model="iid"))
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
    settings = recipe_entropy(lane_count=3, context_model="iid")

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
    settings = recipe_entropy(lane_count=2, context_model="iid")
    return written(lambda w: w.add_indices(
        "book", indices, CodebookGrid(values, first_index=-3), "float32", settings=settings))


@vector("codebook_bfloat16_previous", "CODEBOOK grid, bfloat16 output, PREVIOUS_INDEX context "
        "with 4 tables and 3 lanes, several chunks.")
def _codebook_previous() -> bytes:
    rng = np.random.default_rng(6)
    indices = np.cumsum(rng.integers(-1, 2, size=(12, 30)), axis=1).clip(0, 9)
    values = [0.0, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6]
    settings = recipe_entropy(lane_count=3, context_model="previous", context_count=4,
                               symbols_per_chunk=90)
    return written(lambda w: w.add_indices(
        "book", indices, CodebookGrid(values), "bfloat16", settings=settings))


@vector("previous_16_contexts", "PREVIOUS_INDEX with the largest context_count (16), a non-zero "
        "context_center, 2 lanes.")
def _previous_16() -> bytes:
    indices = laplace_indices((20, 50), 6.0, 7) + 40  # all positive: context_center is not 0
    settings = recipe_entropy(lane_count=2, context_model="previous", context_count=16,
                               symbols_per_chunk=400)
    return written(lambda w: w.add_indices(
        "shifted", indices, UniformGrid(0.05, [40]), "float32", settings=settings))


@vector("lanes_32_short_chunks", "32 lanes with chunks of fewer symbols than lanes (one row of 5 "
        "per chunk), and one chunk of many symbols per lane.")
def _lanes_32() -> bytes:
    settings_short = recipe_entropy(lane_count=32, context_model="iid", symbols_per_chunk=5)
    settings_long = recipe_entropy(lane_count=32, context_model="previous", context_count=2)

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
        w.add_indices("iid", indices, UniformGrid(0.01), "float32", settings=recipe_entropy(
            lane_count=4, context_model="iid", max_alphabet_size=16, symbols_per_chunk=120))
        w.add_indices("previous", indices, UniformGrid(0.01), "float32", settings=recipe_entropy(
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
                      settings=recipe_entropy(lane_count=4, context_model="iid"))
        w.add_indices("sevens", np.full((3, 3), 7), UniformGrid(0.5), "bfloat16",
                      settings=recipe_entropy(precision_bits=1, lane_count=1,
                                               context_model="iid"))
    return written(populate)


@vector("precision_1_two_symbols", "precision_bits 1: two symbols of frequency 1 each.")
def _precision_1() -> bytes:
    indices = np.array([[0, 1, 1, 0, 1], [1, 1, 0, 0, 0]])
    return written(lambda w: w.add_indices(
        "bits", indices, UniformGrid(1.0), "float32",
        settings=recipe_entropy(precision_bits=1, lane_count=1, context_model="iid")))


@vector("largest_alphabet", "The largest alphabet (65536 symbols) at precision_bits 16, with "
        "3-byte varint frequencies, on a small tensor.")
def _largest_alphabet() -> bytes:
    indices = np.array([[-32768, 32767, 0, 1], [0, 0, 1, -32768]], dtype=np.int64)
    return written(lambda w: w.add_indices(
        "wide", indices, UniformGrid(2.0 ** -10), "float32", settings=recipe_entropy(
            precision_bits=16, lane_count=2, context_model="iid", max_alphabet_size=65536)))


@vector("zero_d_empty_single", "0-d, empty and single-element tensors, coded and raw: shapes "
        "[], [0, 5], [5, 0] (rows without symbols: no chunk), [1], [1, 1, 1].")
def _degenerate_shapes() -> bytes:
    settings = recipe_entropy(lane_count=4, context_model="auto")

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
                      settings=recipe_entropy(lane_count=2, context_model="iid"))
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
                      settings=recipe_entropy(lane_count=3, symbols_per_chunk=7))
        w.add_raw("between", np.ones(3, np.float32))
        w.add_indices("b", laplace_indices((2, 100), 4.0, 20), UniformGrid(0.1), "float32",
                      settings=recipe_entropy(lane_count=8, symbols_per_chunk=1))
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
# Format 1.1: the UNIFORM_TRELLIS grid (spec §6.6)
# ---------------------------------------------------------------------------------------------

def _trellis_indices(shape, seed: int) -> np.ndarray:
    """Laplacian indices with every small index in every column somewhere, negative odd ones
    included (their parity is q mod 2 = 1, spec §6.6)."""
    indices = laplace_indices(shape, 2.0, seed)
    indices[:4, :4] = [[1, -3, 0, 2], [1, 3, -1, -2], [-1, 0, 5, -5], [0, 1, 1, 0]]
    return indices


@vector("trellis_float32_chunks", "UNIFORM_TRELLIS grid (1.1): 3 step groups over 23 rows, "
        "chunks of 5 rows (the states restart at each), PREVIOUS_INDEX context, 3 lanes, "
        "escapes, float32.")
def _trellis_float32() -> bytes:
    indices = _trellis_indices((23, 9), 40)
    indices[7, 2] = 700  # escaped
    settings = recipe_entropy(lane_count=3, context_model="previous", context_count=4,
                              symbols_per_chunk=45, max_alphabet_size=32)
    return written(lambda w: w.add_indices(
        "trellis", indices, UniformGrid([0.5, 0.03125, 3.0], rows_per_group=8, trellis=True),
        "float32", settings=settings))


@vector("trellis_half_and_transform", "UNIFORM_TRELLIS grids (1.1) beside a UNIFORM one: "
        "float16 and bfloat16 outputs, one step per row, and trellis coefficients of a "
        "RIGHT_MATRIX transform.")
def _trellis_half() -> bytes:
    indices = _trellis_indices((6, 20), 41)
    basis = np.random.default_rng(42).standard_normal((20, 7)).astype(np.float32)
    steps = [2.0 ** -15, 0.37, 1.0 + 2.0 ** -8, 100.0, 7.25, 1.0 + 2.0 ** -9]

    def populate(w):
        w.add_indices("half", indices, UniformGrid(steps, rows_per_group=1, trellis=True),
                      "float16", settings=recipe_entropy(lane_count=1, context_model="iid"))
        w.add_indices("brain", indices, UniformGrid(0.1, trellis=True), "bfloat16",
                      settings=recipe_entropy(lane_count=2, context_model="iid"))
        w.add_indices("plain", indices, UniformGrid(0.1), "float32")
        w.add_indices("projected", indices, UniformGrid(0.25, trellis=True), "float32",
                      transform=RightMatrixTransform("basis"))
        w.add_raw("basis", basis)
    return written(populate)


@vector("trellis_bit_unused", "required_features bit 0 (1.1) set in a file with no "
        "UNIFORM_TRELLIS grid: allowed (spec §3.3); a 1.0 decoder refuses it all the same.")
def _trellis_bit_unused() -> bytes:
    header, payloads = split_file(written(lambda w: w.add_indices(
        "w", laplace_indices((3, 5), 1.0, 43), UniformGrid(0.5), "float32")))
    return assemble(header, payloads, required_features=FEATURE_TRELLIS)

