"""load(save(x)) reproduces the quantized reconstruction bit for bit, for every grid kind, dtype,
context model, lane count, chunk size and escape setting (spec §6, §7).

The reference reconstruction is computed here with NumPy and ml_dtypes, independently of the
decoder's kernels.
"""

import ml_dtypes
import numpy as np
from hypothesis import example, given, strategies as st

from nncodec_rd import CodebookGrid, EntropySettings, RightMatrixTransform, UniformGrid, load_file, safe_open
from nncodec_rd.encoder.writer import NrdWriter
from nncodec_rd.conformance.strategies import coded_tensors, shapes
from nncodec_rd.format.layout import RowGeometry

DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}


def reference_values(indices, grid) -> np.ndarray:
    """spec §6.1/6.2 in NumPy: binary32 values of the indices."""
    shape = indices.shape
    geometry = RowGeometry.of_shape(shape)
    q = indices.reshape(geometry.rows, geometry.row_length).astype(np.int64)
    if isinstance(grid, CodebookGrid):
        return grid.values[q - grid.first_index].reshape(shape)
    groups = np.zeros(geometry.rows, dtype=np.int64) if grid.rows_per_group == 0 \
        else np.arange(geometry.rows) // grid.rows_per_group
    zero = np.zeros(len(grid.steps), np.int64) if grid.zero_points is None else grid.zero_points
    steps = grid.steps[groups][:, None]
    difference = (q - zero[groups][:, None]).astype(np.float32)
    return (steps * difference).astype(np.float32).reshape(shape)


@given(coded_tensors())
@example((np.zeros((), np.int64), UniformGrid(1.0), "float32", EntropySettings()))
@example((np.zeros((0, 5), np.int64), UniformGrid(1.0), "bfloat16", EntropySettings()))
@example((np.full((3, 3), 7, np.int64), UniformGrid(0.25), "float16",
          EntropySettings(precision_bits=16, lane_count=32)))
def test_coded_round_trip_is_bit_exact(tmp_path_factory, case):
    indices, grid, dtype, settings = case
    path = tmp_path_factory.mktemp("rt") / "t.nrd"
    with NrdWriter(path) as writer:
        writer.add_indices("t", indices, grid, dtype, settings=settings)
    expected = reference_values(indices, grid).astype(DTYPES[dtype])
    with safe_open(path) as handle:
        decoded = handle.get_tensor("t")
        assert decoded.dtype == np.dtype(DTYPES[dtype]) and decoded.shape == indices.shape
        assert decoded.tobytes() == expected.tobytes()
        assert np.array_equal(handle.get_indices("t"), indices)
        if indices.ndim >= 1 and indices.shape[0] > 1:
            rows = handle.get_rows("t", 1, indices.shape[0])
            assert rows.tobytes() == expected[1:].tobytes()
            into = np.full_like(expected[1:], 7)
            assert handle.get_rows("t", 1, indices.shape[0], out=into) is into
            assert into.tobytes() == expected[1:].tobytes()
        into = np.full_like(expected, 3)
        assert handle.get_tensor("t", out=into) is into and into.tobytes() == expected.tobytes()


@given(st.lists(st.tuples(st.sampled_from(["float32", "float16", "float64", "int8", "uint8",
                                           "int16", "int32", "int64", "bool", "uint16", "uint32",
                                           "uint64", "bfloat16"]), shapes()),
                min_size=1, max_size=4))
def test_raw_tensors_round_trip(tmp_path_factory, specs):
    rng = np.random.default_rng(len(specs))
    tensors = {}
    for position, (dtype, shape) in enumerate(specs):
        values = rng.integers(0, 2 if dtype == "bool" else 100, size=shape)
        tensors[f"t{position}"] = values.astype(DTYPES.get(dtype, dtype))
    path = tmp_path_factory.mktemp("raw") / "r.nrd"
    with NrdWriter(path) as writer:
        for name, array in tensors.items():
            writer.add_raw(name, array)
    decoded = load_file(path)
    for name, array in tensors.items():
        assert decoded[name].dtype == array.dtype and decoded[name].tobytes() == array.tobytes()


def test_transform_reconstruction_follows_the_summation_order(tmp_path, rng):
    coefficients = rng.integers(-6, 7, size=(5, 3))
    matrix = rng.standard_normal((3, 4)).astype(np.float32)
    path = tmp_path / "transform.nrd"
    with NrdWriter(path) as writer:
        writer.add_raw("basis", matrix)
        writer.add_indices("w", coefficients, UniformGrid(0.125), "float16",
                           transform=RightMatrixTransform("basis"))
    values = np.float32(0.125) * coefficients.astype(np.float32)
    expected = np.zeros((5, 4), np.float64)
    for k in range(3):  # sequential binary64 sums, k increasing (spec §6.4)
        expected = expected + values[:, k:k + 1].astype(np.float64) * matrix[k].astype(np.float64)
    expected = expected.astype(np.float32).astype(np.float16)
    with safe_open(path) as handle:
        assert handle.get_tensor("w").tobytes() == expected.tobytes()
        assert handle.get_rows("w", 2, 4).tobytes() == expected[2:4].tobytes()
        assert np.array_equal(handle.get_indices("w"), coefficients)


def test_save_file_codes_floats_and_keeps_other_tensors(tmp_path, rng):
    from nncodec_rd import save_file

    weights = rng.standard_normal((64, 32)).astype(np.float32)
    tensors = {"w": weights, "small": np.ones(3, np.float32), "ids": np.arange(4)}
    save_file(tensors, tmp_path / "m.nrd", metadata={"model_name": "m", "layers": 2})
    with safe_open(tmp_path / "m.nrd") as handle:
        assert handle.info("w").coding == "rans" and handle.info("small").coding == "raw"
        assert handle.metadata() == {"model_name": "m", "layers": 2}
        decoded = handle.get_tensor("w")
    step = np.sqrt(np.mean(weights.astype(np.float64) ** 2)) / 16
    assert np.max(np.abs(decoded - weights)) <= step / 2 * 1.001


def test_encoding_is_deterministic(tmp_path, rng):
    from nncodec_rd import save_file

    tensors = {"w": rng.standard_normal((100, 70)).astype(np.float32)}
    save_file(tensors, tmp_path / "a.nrd")
    save_file(tensors, tmp_path / "b.nrd")
    assert (tmp_path / "a.nrd").read_bytes() == (tmp_path / "b.nrd").read_bytes()


def test_grids_too_large_for_a_value_table_decode_the_same(tmp_path, rng, monkeypatch):
    """Per-row steps with a large alphabet skip the decoder's value table; same bytes either way."""
    from nncodec_rd.decoder import kernels

    indices = rng.integers(-3000, 3000, size=(600, 40))
    indices[5, 5] = 20000  # escaped
    grid = UniformGrid(rng.uniform(0.001, 1.0, size=600).astype(np.float32), rows_per_group=1)
    path = tmp_path / "big.nrd"
    with NrdWriter(path) as writer:
        writer.add_indices("w", indices, grid, "bfloat16",
                           settings=EntropySettings(max_alphabet_size=4096, symbols_per_chunk=5000))
    expected = reference_values(indices, grid).astype(ml_dtypes.bfloat16)
    assert 600 * 4096 > kernels.MAX_VALUE_TABLE_ENTRIES
    with safe_open(path) as handle:
        assert handle.get_tensor("w").tobytes() == expected.tobytes()


def test_decoding_into_a_wrong_buffer_is_refused(tmp_path):
    import pytest

    path = tmp_path / "o.nrd"
    with NrdWriter(path) as writer:
        writer.add_indices("w", np.zeros((4, 3), np.int64), UniformGrid(1.0), "float16")
    with safe_open(path) as handle:
        for bad in (np.zeros((4, 3), np.float32), np.zeros((3, 4), np.float16),
                    np.zeros((4, 6), np.float16)[:, ::2]):
            with pytest.raises(ValueError, match="out must be"):
                handle.get_tensor("w", out=bad)
