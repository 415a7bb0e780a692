"""Hypothesis strategies for .nrd content: shapes, grids, coding settings and whole files.

Public so that implementers can property-test their own decoders::

    from hypothesis import given
    from conformance.strategies import nrd_files

    @given(nrd_files())
    def test_my_decoder(data):
        ...
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
from hypothesis import strategies as st

from nncodec_rd.encoder.writer import NrdWriter
from nncodec_rd.format.grids import CodebookGrid, EntropySettings, RightMatrixTransform, UniformGrid
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
def coded_tensors(draw):
    """(indices, grid, dtype name, settings) covering every coding option."""
    shape = draw(shapes())
    geometry = RowGeometry.of_shape(shape)
    spread = draw(st.sampled_from([0, 1, 3, 20, 300]))
    count = int(np.prod(shape, dtype=np.int64))
    values = draw(st.lists(st.integers(-spread, spread), min_size=count, max_size=count))
    indices = np.array(values, dtype=np.int64).reshape(shape)
    if draw(st.booleans()):
        rows_per_group = draw(st.integers(0, max(geometry.rows, 1)))
        groups = 1 if rows_per_group == 0 else max(1, -(-geometry.rows // rows_per_group))
        steps = draw(st.lists(st.floats(0.0009765625, 100.0, width=32), min_size=groups, max_size=groups))
        zero_points = None
        if draw(st.booleans()):
            zero_points = draw(st.lists(st.integers(-5, 5), min_size=groups, max_size=groups))
        grid = UniformGrid(steps, zero_points, rows_per_group)
    else:
        first = int(indices.min()) if count else 0
        size = (int(indices.max()) - first + 1 if count else 1) + draw(st.integers(0, 3))
        book = draw(st.lists(st.floats(-16384.0, 16384.0, width=32), min_size=size, max_size=size))
        grid = CodebookGrid(book, first)
    settings = EntropySettings(
        precision_bits=draw(st.integers(10, 16)),
        lane_count=draw(st.sampled_from([1, 2, 3, 4, 8, 32])),
        context_model=draw(st.sampled_from(["iid", "previous", "auto"])),
        context_count=draw(st.integers(2, 16)),
        symbols_per_chunk=draw(st.sampled_from([1, 7, 64, 1 << 18])),
        max_alphabet_size=draw(st.sampled_from([2, 5, 64, 4096])))
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
