"""Hypothesis strategies for .nrd content: shapes, grids, coding settings and whole files.

Public so that implementers can property-test their own decoders::

    from hypothesis import given
    from nncodec_rd.conformance.strategies import damaged_files, nrd_files

    @given(nrd_files())
    def test_my_decoder_round_trips(data):
        ...                      # decode, compare with the reference decoder

    @given(damaged_files())
    def test_my_decoder_rejects_damage_cleanly(data):
        ...                      # decode: the outcome must be a clean error or a clean decode

:func:`damaged_files` edits valid files and repairs their checksums where the edit would
otherwise stop at the checksum, so that the damage reaches the semantic checks (spec §4.8 step
10), the layout (step 11) and the rANS decoder (§7).
"""

from __future__ import annotations

import os
import random
import tempfile

import numpy as np
from hypothesis import strategies as st

from nncodec_rd.encoder.writer import NrdWriter
from nncodec_rd.format.constants import Limits
from nncodec_rd.format.grids import CodebookGrid, RightMatrixTransform, UniformGrid
from nncodec_rd.encoder.entropy import EntropySettings
from nncodec_rd.format.layout import RowGeometry

RAW_DTYPES = ["float32", "float16", "float64", "int8", "uint8", "int16", "int32", "int64", "bool",
              "uint16", "uint32", "uint64", "bfloat16"]


@st.composite
def shapes(draw):
    rank = draw(st.integers(0, 3))
    dims = draw(st.lists(st.integers(0, 9), min_size=rank, max_size=rank))
    if draw(st.booleans()):
        dims = [max(d, 1) for d in dims]
    return tuple(dims)


@st.composite
def frequency_tables(draw, alphabet_size: int | None = None, precision_bits: int | None = None):
    """(precision_bits, frequencies): a table of spec §7.4, summing to 2^precision_bits, with
    zero frequencies allowed (at least one symbol has a non-zero frequency)."""
    precision_bits = precision_bits or draw(st.integers(1, Limits.MAX_PRECISION_BITS))
    alphabet_size = alphabet_size or draw(st.integers(1, 64))
    total = 1 << precision_bits
    cuts = sorted(draw(st.lists(st.integers(0, total), min_size=alphabet_size - 1,
                                max_size=alphabet_size - 1)))
    frequencies = [b - a for a, b in zip([0] + cuts, cuts + [total])]
    return precision_bits, frequencies


@st.composite
def grids(draw, rows: int, first_index: int = -8, last_index: int = 8):
    """A UniformGrid (per-tensor, grouped or per-row steps, optional zero points) for ``rows``
    rows, or a CodebookGrid covering the indices ``first_index ... last_index``."""
    if draw(st.booleans()):
        rows_per_group = draw(st.integers(0, max(rows, 1)))
        groups = 1 if rows_per_group == 0 else max(1, -(-rows // rows_per_group))
        steps = draw(st.lists(st.floats(0.0009765625, 100.0, width=32), min_size=groups,
                              max_size=groups))
        zero_points = None
        if draw(st.booleans()):
            zero_points = draw(st.lists(st.integers(-5, 5), min_size=groups, max_size=groups))
        return UniformGrid(steps, zero_points, rows_per_group)
    size = last_index - first_index + 1 + draw(st.integers(0, 3))
    book = draw(st.lists(st.floats(-16384.0, 16384.0, width=32), min_size=size, max_size=size))
    return CodebookGrid(book, first_index)


@st.composite
def coded_tensors(draw):
    """(indices, grid, dtype name, settings) covering every coding option."""
    shape = draw(shapes())
    geometry = RowGeometry.of_shape(shape)
    spread = draw(st.sampled_from([0, 1, 3, 20, 300]))
    count = int(np.prod(shape, dtype=np.int64))
    values = draw(st.lists(st.integers(-spread, spread), min_size=count, max_size=count))
    indices = np.array(values, dtype=np.int64).reshape(shape)
    first = int(indices.min()) if count else 0
    last = int(indices.max()) if count else 0
    grid = draw(grids(geometry.rows, first, last))
    settings = EntropySettings(
        precision_bits=draw(st.integers(10, 16)),
        lane_count=draw(st.sampled_from([1, 2, 3, 4, 8, 32])),
        context_model=draw(st.sampled_from(["iid", "previous", "auto"])),
        context_count=draw(st.integers(2, 16)),
        symbols_per_chunk=draw(st.sampled_from([1, 7, 64, 1 << 18])),
        max_alphabet_size=draw(st.sampled_from([2, 5, 64, 4096])),
        choose_precision=draw(st.booleans()))
    return indices, grid, draw(st.sampled_from(["bfloat16", "float16", "float32"])), settings



@st.composite
def raw_tensors(draw):
    """A NumPy array of any raw dtype and shape."""
    import ml_dtypes

    dtype = draw(st.sampled_from(RAW_DTYPES))
    shape = draw(shapes())
    values = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).integers(
        0, 2 if dtype == "bool" else 100, size=shape)
    return values.astype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)


@st.composite
def nrd_files(draw, max_tensors: int = 4):
    """The bytes of a valid .nrd file mixing coded, raw and transformed tensors and metadata."""
    folder = tempfile.mkdtemp()
    path = os.path.join(folder, "generated.nrd")
    metadata = draw(st.dictionaries(st.text(max_size=8), st.one_of(
        st.text(max_size=12), st.integers(-2**63, 2**63 - 1), st.booleans(),
        st.floats(allow_nan=False), st.binary(max_size=8)), max_size=3))
    try:
        with NrdWriter(path, metadata=metadata) as writer:
            for position in range(draw(st.integers(1, max_tensors))):
                kind = draw(st.sampled_from(["coded", "coded", "raw", "transform"]))
                name = f"t{position}"
                if kind == "coded":
                    indices, grid, dtype, settings = draw(coded_tensors())
                    writer.add_indices(name, indices, grid, dtype, settings=settings,
                                       metadata={"original_dtype": dtype})
                elif kind == "raw":
                    writer.add_raw(name, draw(raw_tensors()))
                else:
                    rows, inner, columns = (draw(st.integers(0, 4)) for _ in range(3))
                    matrix = np.random.default_rng(position).standard_normal((inner, columns))
                    writer.add_raw(name + ".basis", matrix.astype(np.float32))
                    coefficients = np.array(draw(st.lists(st.integers(-9, 9), min_size=rows * inner,
                                                          max_size=rows * inner)), dtype=np.int64).reshape(rows, inner)
                    writer.add_indices(name, coefficients, UniformGrid(0.5),
                                       draw(st.sampled_from(["float32", "float16", "bfloat16"])),
                                       transform=RightMatrixTransform(name + ".basis"))
        with open(path, "rb") as stream:
            return stream.read()
    finally:
        if os.path.exists(path):
            os.unlink(path)
        os.rmdir(folder)


DAMAGE_KINDS = ("flip_bit", "truncate", "append", "header_bytes", "header_field", "payload_bytes")
EDGE_VALUES = (0, 1, 2, 3, 15, 16, 17, 32, 33, 255, 256, 65535, 65536, 65537, (1 << 23) - 1,
               1 << 23, (1 << 24) + 1, (1 << 32) - 1, 1 << 32, (1 << 40) + 1, -1, -(1 << 23))


@st.composite
def damaged_files(draw, files=None, kinds=DAMAGE_KINDS):
    """The bytes of a valid file (from ``files``, default :func:`nrd_files`) with one kind of
    damage: a flipped bit; a truncation; appended bytes; overwritten header bytes or one integer
    header field set to an edge value, header checksum repaired; overwritten payload bytes,
    payload checksums repaired. The result is usually, not always, invalid."""
    from .mutators import assemble, integer_fields, refresh_header_checksum, split_file

    data = draw(files if files is not None else nrd_files(max_tensors=3))
    kind = draw(st.sampled_from(kinds))

    spread = random.Random(draw(st.integers(0, (1 << 64) - 1)))

    def position(low: int, high: int) -> int:
        # Hypothesis favours small integers (here: the magic); positions are spread evenly.
        return spread.randint(low, high)

    header_size = int.from_bytes(data[16:24], "little")
    if kind == "flip_bit":
        at = position(0, len(data) - 1)
        return data[:at] + bytes([data[at] ^ (1 << draw(st.integers(0, 7)))]) + data[at + 1:]
    if kind == "truncate":
        return data[:position(0, len(data) - 1)]
    if kind == "append":
        return data + draw(st.binary(min_size=1, max_size=80))
    header, payloads = split_file(data)
    if kind == "header_field":
        fields = list(integer_fields(header))
        path = draw(st.sampled_from(fields))
        target = header
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = draw(st.sampled_from(EDGE_VALUES))
        try:
            return assemble(header, payloads, fix_offsets=draw(st.booleans()))
        except Exception:  # the value does not fit its field: damage the bytes instead
            kind = "header_bytes"
    if kind == "payload_bytes" and any(payloads):
        which = draw(st.sampled_from([i for i, p in enumerate(payloads) if p]))
        payload = bytearray(payloads[which])
        start = position(0, len(payload) - 1)
        replacement = draw(st.binary(min_size=1, max_size=8))
        payload[start:start + len(replacement)] = replacement
        if draw(st.booleans()):
            payload = payload[:position(0, len(payload))]
        payloads[which] = bytes(payload)
        return assemble(header, payloads)
    start = position(32, 32 + header_size - 1)
    replacement = draw(st.binary(min_size=1, max_size=4))
    damaged = data[:start] + replacement + data[start + len(replacement):]
    return refresh_header_checksum(damaged[:len(data)])
