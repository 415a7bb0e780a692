"""The UNIFORM_TRELLIS grid (spec §6.6, format 1.1) in the reference decoder: against a
one-element-at-a-time reading of the spec, across chunks, row ranges and output dtypes; and a
1.0 reading refuses it."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nncodec_rd import safe_open
from nncodec_rd.encoder.entropy import EntropySettings
from nncodec_rd.encoder.writer import NrdWriter
from nncodec_rd.format.constants import FEATURE_TRELLIS
from nncodec_rd.format.container import parse_preamble, read_container
from nncodec_rd.format.errors import ErrorCode, FormatError, UnsupportedFeatureError
from nncodec_rd.format.grids import UniformGrid

NEXT = {0: (0, 2), 1: (2, 0), 2: (1, 3), 3: (3, 1)}  # spec §6.6's table


def spec_values(indices: np.ndarray, rows_per_chunk: int, steps, rows_per_group: int):
    """spec §6.6 element by element, in Python integers and NumPy float32 products."""
    rows, columns = indices.shape
    out = np.empty((rows, columns), np.float32)
    for c in range(columns):
        state = 0
        for r in range(rows):
            if r % rows_per_chunk == 0:
                state = 0
            q = int(indices[r, c])
            sign = (q > 0) - (q < 0)
            d = 2 * q if state <= 1 else 2 * q - sign
            group = r // rows_per_group if rows_per_group else 0
            out[r, c] = np.float32(steps[group]) * np.float32(d)
            state = NEXT[state][q % 2]
    return out


def write(path, indices, grid, dtype="float32", symbols_per_chunk=1 << 18, lanes=4):
    with NrdWriter(path, entropy=EntropySettings(symbols_per_chunk=symbols_per_chunk,
                                                 lane_count=lanes)) as writer:
        writer.add_indices("t", indices, grid, dtype)


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 17), columns=st.integers(1, 6), chunk_rows=st.integers(1, 7),
       groups=st.integers(0, 3), seed=st.integers(0, 2 ** 16))
def test_values_follow_the_spec_across_chunks_and_groups(tmp_path_factory, rows, columns,
                                                         chunk_rows, groups, seed):
    rng = np.random.default_rng(seed)
    indices = rng.integers(-6, 7, size=(rows, columns))
    rows_per_group = 0 if groups == 0 else max(1, -(-rows // groups))
    count = 1 if rows_per_group == 0 else -(-rows // rows_per_group)
    steps = rng.uniform(0.01, 3.0, size=count).astype(np.float32)
    path = tmp_path_factory.mktemp("t") / "t.nrd"
    write(path, indices, UniformGrid(steps, rows_per_group=rows_per_group, trellis=True),
          symbols_per_chunk=chunk_rows * columns)
    expected = spec_values(indices, chunk_rows, steps, rows_per_group)
    with safe_open(path) as handle:
        assert handle.format_version == "1.1"
        np.testing.assert_array_equal(handle.get_tensor("t"), expected)
        start, stop = sorted(rng.integers(0, rows + 1, size=2))
        np.testing.assert_array_equal(handle.get_rows("t", start, stop), expected[start:stop])
        np.testing.assert_array_equal(handle.get_indices("t"), indices)


def test_worked_example_of_the_spec(tmp_path):
    path = tmp_path / "t.nrd"
    write(path, np.array([[1], [1], [-1], [0]]), UniformGrid(0.5, trellis=True))
    with safe_open(path) as handle:
        assert handle.get_tensor("t").ravel().tolist() == [1.0, 0.5, -0.5, 0.0]
        assert handle.info("t").grid.startswith("trellis")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_outputs_round_the_trellis_values(tmp_path, dtype):
    indices = np.random.default_rng(3).integers(-40, 41, size=(9, 5))
    path = tmp_path / "t.nrd"
    write(path, indices, UniformGrid(0.013, trellis=True), dtype)
    plain = tmp_path / "f32.nrd"
    write(plain, indices, UniformGrid(0.013, trellis=True), "float32")
    with safe_open(path) as handle, safe_open(plain) as reference:
        values = reference.get_tensor("t")
        decoded = handle.get_tensor("t")
        if dtype == "float16":
            np.testing.assert_array_equal(decoded, values.astype(np.float16))
        else:  # round to nearest even on the upper 16 bits (spec §6.5), no NaN here
            bits = values.view(np.uint32).astype(np.uint64)
            expected = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
            assert np.array_equal(np.asarray(decoded).view(np.uint16), expected)


def test_a_1_0_reading_refuses_the_file_with_unsupported_feature(tmp_path):
    path = tmp_path / "t.nrd"
    write(path, np.ones((2, 2), np.int64), UniformGrid(0.5, trellis=True))
    data = path.read_bytes()
    assert parse_preamble(data).required_features == FEATURE_TRELLIS
    with pytest.raises(UnsupportedFeatureError) as error:
        read_container(data, known_features=0)
    assert error.value.code == ErrorCode.UNSUPPORTED_FEATURE
    assert error.value.field == "preamble.required_features"


def test_files_without_a_trellis_grid_stay_1_0(tmp_path):
    path = tmp_path / "t.nrd"
    write(path, np.ones((2, 2), np.int64), UniformGrid(0.5))
    with safe_open(path) as handle:
        assert handle.format_version == "1.0"
        assert handle.preamble.required_features == 0
    read_container(path.read_bytes(), known_features=0)  # a 1.0 decoder reads it


def test_a_trellis_grid_without_the_feature_bit_is_invalid(tmp_path):
    from nncodec_rd.conformance.mutators import assemble, split_file

    path = tmp_path / "t.nrd"
    write(path, np.ones((2, 2), np.int64), UniformGrid(0.5, trellis=True))
    header, payloads = split_file(path.read_bytes())
    with pytest.raises(FormatError) as error:
        read_container(assemble(header, payloads, required_features=0))
    assert error.value.code == ErrorCode.INVALID_VALUE
    assert error.value.field.endswith(".grid_kind")


def test_the_compiled_kernel_and_the_numpy_walk_agree(monkeypatch):
    from nncodec_rd.decoder import dispatch, kernels

    rng = np.random.default_rng(7)
    for rows, columns in ((1, 1), (9, 1), (40, 3), (5, 17)):
        indices = rng.integers(-9, 10, size=rows * columns)
        walked = kernels.trellis_levels_walk(indices, columns, rows)
        monkeypatch.setattr(dispatch, "TRELLIS_KERNEL_ROWS", 0)
        compiled = dispatch.trellis_levels(indices, columns, rows)
        monkeypatch.undo()
        np.testing.assert_array_equal(compiled, walked)
        expected = spec_values(indices.reshape(rows, columns), rows, [1.0], 0)
        np.testing.assert_array_equal(walked.reshape(rows, columns).astype(np.float32), expected)
