"""The right-matrix product's work is bounded (issue 17, item 6): a file of a few hundred bytes
can declare a product of hours (one-symbol tables code any number of coefficients)."""

import builtins
from pathlib import Path

import numpy as np
import pytest

import nncodec_rd
from nncodec_rd.cli import main
from nncodec_rd.decoder.reader import DEFAULT_MAX_TRANSFORM_WORK, NrdFile
from nncodec_rd.encoder.writer import NrdWriter
from nncodec_rd.format.errors import ErrorCode, OutputTooLargeError
from nncodec_rd.format.grids import RightMatrixTransform, UniformGrid


def transform_file(path, rows=64, inner=48, columns=40):
    """Coefficients (rows x inner) times a matrix (inner x columns): work rows*inner*columns."""
    rng = np.random.default_rng(0)
    with NrdWriter(path) as writer:
        writer.add_indices("m", rng.integers(-3, 4, (inner, columns)), UniformGrid(np.float32(0.1)))
        writer.add_indices("w", rng.integers(-3, 4, (rows, inner)), UniformGrid(np.float32(0.05)),
                           transform=RightMatrixTransform("m"))
    return rows * inner * columns


def test_a_product_beyond_the_bound_is_refused_before_any_work(tmp_path):
    path = tmp_path / "t.nrd"
    work = transform_file(path)
    with NrdFile(path, max_transform_work=work - 1) as handle:
        with pytest.raises(OutputTooLargeError) as raised:
            handle.get_tensor("w")
        assert raised.value.code == ErrorCode.OUTPUT_TOO_LARGE
        assert raised.value.requested == work and raised.value.limit == work - 1
        assert handle.get_rows("w", 0, 1).shape == (1, 40)  # one row's product is within it
    with NrdFile(path, max_transform_work=work) as handle:
        exact = handle.get_tensor("w")
    with NrdFile(path, max_transform_work=None) as handle:
        assert np.array_equal(handle.get_tensor("w"), exact)
    assert np.array_equal(nncodec_rd.load_file(path)["w"], exact)  # the default allows it


def test_the_default_bound_is_on_and_checked():
    assert DEFAULT_MAX_TRANSFORM_WORK == 1 << 38
    with pytest.raises(ValueError, match="max_transform_work"):
        NrdFile("unused.nrd", max_transform_work=-1)


@pytest.mark.parametrize("command", ["decode", "validate"])
def test_the_command_line_says_it_in_one_line(tmp_path, capsys, command):
    path = tmp_path / "t.nrd"
    transform_file(path)
    argv = [command, str(path), "--max-transform-work", "1000"]
    if command == "decode":
        argv += ["-o", str(tmp_path / "t.npz")]
    code = main(argv)
    captured = capsys.readouterr()
    assert code != 0
    text = captured.err + captured.out
    assert "output_too_large" in text and "max_transform_work" in text
    assert not (tmp_path / "t.npz").exists()


REGRESSIONS = Path(__file__).resolve().parents[2] / "conformance" / "fuzz" / "regressions"


def test_a_product_of_no_columns_does_no_work_whatever_its_rows(monkeypatch):
    # Found by fuzzing: a 384-byte file whose tensor is 2^32 rows of nothing made both decoders
    # count through every row (3 s here, 5 minutes in the spec-literal decoder).
    from nncodec_rd.conformance import spec_literal_decoder as literal
    from nncodec_rd.decoder import dispatch, kernels

    def no_product_kernel(kernel, *arguments):
        assert kernel is not kernels.right_matrix_rows, "the product kernel ran for no element"
        return original(kernel, *arguments)

    original = dispatch.call
    monkeypatch.setattr(dispatch, "call", no_product_kernel)
    path = REGRESSIONS / "transform_2_32_rows_no_columns.nrd"
    with NrdFile(path) as handle:
        assert handle.get_tensor("t0").shape == (1 << 32, 0)
    def short_range(*arguments):  # the spec-literal decoder's loops count through range()
        counted = builtins.range(*arguments)
        assert len(counted) < 1 << 24, f"a loop of {len(counted)} steps"
        return counted

    monkeypatch.setattr(literal, "range", short_range, raising=False)
    decoded = literal.decode_file(path.read_bytes())
    assert decoded["t0"][1] == (1 << 32, 0) and decoded["t0"][2] == b""
