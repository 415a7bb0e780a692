"""issue 17: opening a file costs time and memory in proportion to its header, so a header
larger than ``max_header_bytes`` (100 MiB by default, as safetensors' 100 MB) is refused before
it is parsed, with ``output_too_large`` (the caller's bound, not a fault of the file)."""

import sys
from pathlib import Path

import pytest

import nncodec_rd
from nncodec_rd.cli import main
from nncodec_rd.decoder.reader import DEFAULT_MAX_HEADER_BYTES
from nncodec_rd.decoder.validation import validate_file
from nncodec_rd.format.errors import ErrorCode, OutputTooLargeError

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import header_parsing  # noqa: E402

sys.path.pop(0)


@pytest.fixture(scope="module")
def many_chunks(tmp_path_factory):
    path = tmp_path_factory.mktemp("header") / "chunks.nrd"
    path.write_bytes(header_parsing.chunk_file(2_000))  # a header of about 40 KB
    return path


def test_the_default_is_100_mib():
    assert DEFAULT_MAX_HEADER_BYTES == 100 * 2**20


def test_a_header_over_the_bound_is_refused_before_parsing(many_chunks):
    with pytest.raises(OutputTooLargeError) as raised:
        nncodec_rd.safe_open(many_chunks, max_header_bytes=10_000)
    error = raised.value
    assert error.code == ErrorCode.OUTPUT_TOO_LARGE and error.field == "preamble.header_size"
    assert error.limit == 10_000 and error.requested > 10_000
    with nncodec_rd.safe_open(many_chunks, max_header_bytes=None) as handle:
        assert handle.keys() == ["t"]
    with pytest.raises(OutputTooLargeError):
        nncodec_rd.load_file(many_chunks, max_header_bytes=10_000)
    faults = validate_file(many_chunks, max_header_bytes=10_000)
    assert [fault.code for fault in faults] == [ErrorCode.OUTPUT_TOO_LARGE]


@pytest.mark.parametrize("command", ["info", "validate"])
def test_the_command_line_says_it_in_one_line(many_chunks, capsys, command):
    assert main([command, str(many_chunks), "--max-header-bytes", "10K"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) <= 1 or command == "validate"
    assert main([command, str(many_chunks), "--max-header-bytes", "1M"]) in (0, 1)
