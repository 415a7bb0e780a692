"""NrdFile(max_output_bytes=...): a caller's bound on what a decode allocates (spec §9 note).

A chunk of a one-symbol table codes any number of symbols in 20 bytes, so a file of a few hundred
bytes can declare a tensor of 2^40 elements; the bound refuses it before allocating.
"""

import numpy as np
import pytest

from nncodec_rd.conformance.fuzz import seeds
from nncodec_rd.decoder.reader import DEFAULT_MAX_OUTPUT_BYTES, NrdFile
from nncodec_rd.encoder.writer import NrdWriter
from nncodec_rd.format.errors import ErrorCode, LimitExceededError, OutputTooLargeError
from nncodec_rd.format.grids import RightMatrixTransform, UniformGrid


def one_symbol_file(tmp_path, rows: int, columns: int, rows_per_chunk: int) -> str:
    """A conforming file whose tensor ``w`` is ``rows x columns`` zeros from a one-symbol table."""
    path = tmp_path / "big.nrd"
    path.write_bytes(seeds.one_symbol_file(rows, columns, rows_per_chunk))
    return str(path)


def test_a_two_to_the_forty_element_tensor_is_refused_before_allocating(tmp_path):
    # 2^40 elements (the spec's limit) in 256 chunks of 2^32 symbols: a 17 KB file.
    path = one_symbol_file(tmp_path, 1 << 20, 1 << 20, 1 << 12)
    with NrdFile(path, max_output_bytes=64 << 20) as handle:
        assert handle.info("w").element_count == 1 << 40
        with pytest.raises(OutputTooLargeError) as caught:
            handle.get_tensor("w")
        error = caught.value
        assert isinstance(error, LimitExceededError) and isinstance(error, ValueError)
        assert error.code == ErrorCode.OUTPUT_TOO_LARGE and error.code.slug == "output_too_large"
        assert error.requested == 4 << 40 and error.limit == 64 << 20
        assert "max_output_bytes" in str(error) and error.field == "header.tensors[0]"
        # A row range within the bound decodes, but only if its chunks do: a chunk here holds
        # 2^12 rows (16 GiB), so even one row needs the whole chunk's buffer.
        with pytest.raises(OutputTooLargeError, match="decoded chunks"):
            handle.get_rows("w", 0, 1)


def test_row_ranges_within_the_bound_decode(tmp_path):
    path = one_symbol_file(tmp_path, 1 << 12, 1 << 12, 16)  # 64 MiB in chunks of 256 KiB
    with NrdFile(path, max_output_bytes=1 << 20) as handle:
        with pytest.raises(OutputTooLargeError):
            handle.get_tensor("w")
        rows = handle.get_rows("w", 32, 96)
        assert rows.shape == (64, 1 << 12) and not rows.any()
        out = np.ones((16, 1 << 12), np.float32)
        assert handle.get_rows("w", 16, 32, out=out) is out and not out.any()


def test_the_bound_is_inclusive_and_none_is_unbounded(tmp_path):
    path = one_symbol_file(tmp_path, 64, 64, 16)  # 16 KiB of output
    with NrdFile(path, max_output_bytes=64 * 64 * 4) as handle:
        assert handle.get_tensor("w").shape == (64, 64)
    with NrdFile(path, max_output_bytes=64 * 64 * 4 - 1) as handle:
        with pytest.raises(OutputTooLargeError):
            handle.get_tensor("w")
    with NrdFile(path, max_output_bytes=None) as handle:
        assert handle.max_output_bytes is None and handle.get_tensor("w").shape == (64, 64)
    with NrdFile(path) as handle:
        assert handle.max_output_bytes == DEFAULT_MAX_OUTPUT_BYTES <= 64 << 30
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="max_output_bytes"):
            NrdFile(path, max_output_bytes=bad)


@pytest.mark.parametrize("dtype", ["float32", "int8", "bfloat16"])
def test_raw_and_transformed_tensors_are_bounded_too(tmp_path, dtype):
    import ml_dtypes

    path = tmp_path / "mixed.nrd"
    raw = np.ones((32, 32), ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)
    with NrdWriter(path) as writer:
        writer.add_raw("raw", raw)
        writer.add_raw("basis", np.eye(4, 64, dtype=np.float32))
        writer.add_indices("product", np.ones((16, 4), np.int64), UniformGrid(0.5), "float32",
                           transform=RightMatrixTransform("basis"))
    with NrdFile(path, max_output_bytes=raw.nbytes) as handle:
        assert np.array_equal(handle.get_tensor("raw"), raw)
    with NrdFile(path, max_output_bytes=raw.nbytes - 1) as handle:
        with pytest.raises(OutputTooLargeError, match="'raw': the output"):
            handle.get_tensor("raw")
        assert handle.get_rows("raw", 0, 1).shape == (1, 32)
    with NrdFile(path, max_output_bytes=16 * 64 * 4 - 1) as handle:  # the product's output
        with pytest.raises(OutputTooLargeError, match="'product': the output"):
            handle.get_tensor("product")
        assert handle.get_rows("product", 0, 8).shape == (8, 64)
    with NrdFile(path, max_output_bytes=4 * 64 * 4 - 1) as handle:  # the matrix it needs
        with pytest.raises(OutputTooLargeError, match="'basis'"):
            handle.get_rows("product", 0, 1)
