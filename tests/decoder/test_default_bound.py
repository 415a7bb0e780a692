"""issue 17 item 5: bounded by default. A 21 KB conforming file declaring 4 TiB ended in NumPy's
untyped ``MemoryError`` (a traceback from ``nncodec-rd decode`` and ``validate``); now the default
``max_output_bytes`` refuses it with ``OutputTooLargeError`` (code ``output_too_large``), and a
``MemoryError`` within the bound becomes the same typed error."""

from pathlib import Path

import pytest

import nncodec_rd
from nncodec_rd.cli import main
from nncodec_rd.cli.common import byte_count
from nncodec_rd.decoder.reader import NrdFile
from nncodec_rd.format.errors import ErrorCode

REGRESSIONS = Path(__file__).resolve().parents[2] / "conformance" / "fuzz" / "regressions"
BOMB_4TIB = REGRESSIONS / "one_symbol_table_4TiB_output.nrd"
BOMB_1GIB = REGRESSIONS / "one_symbol_table_1GiB_output.nrd"


def test_the_4_tib_bomb_is_refused_by_default():
    with NrdFile(BOMB_4TIB) as handle:
        name = handle.keys()[0]
        with pytest.raises(nncodec_rd.OutputTooLargeError) as caught:
            handle.get_tensor(name)
    assert caught.value.code == ErrorCode.OUTPUT_TOO_LARGE
    assert caught.value.limit == nncodec_rd.DEFAULT_MAX_OUTPUT_BYTES
    with pytest.raises(nncodec_rd.OutputTooLargeError):
        nncodec_rd.load_file(BOMB_4TIB)


@pytest.mark.parametrize("command", ["decode", "validate"])
def test_the_cli_ends_the_4_tib_bomb_in_one_line(tmp_path, capsys, command):
    arguments = [command, str(BOMB_4TIB)]
    if command == "decode":
        arguments += ["-o", str(tmp_path / "out.npz")]
    assert main(arguments) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "output_too_large" in captured.out + captured.err
    assert not (tmp_path / "out.npz").exists()


def test_a_lower_bound_stops_the_1_gib_bomb_before_writing(tmp_path, capsys):
    out = tmp_path / "out.npz"
    assert main(["decode", str(BOMB_1GIB), "-o", str(out), "--max-output-bytes", "256M"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nncodec-rd: error: output_too_large")
    assert not out.exists()


def test_byte_counts_on_the_command_line():
    assert byte_count("1000") == 1000 and byte_count("512M") == 512 << 20
    assert byte_count("64GiB") == 64 << 30 and byte_count("none") is None
    with pytest.raises(Exception, match="expected bytes"):
        byte_count("-5")


def test_a_memory_error_within_the_bound_is_typed(tmp_path, monkeypatch, capsys):
    import numpy as np

    path = tmp_path / "w.nrd"
    nncodec_rd.save_file({"w": np.ones((16, 16), np.float32)}, path)

    def refuse(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(NrdFile, "_decode_rows", refuse)
    with NrdFile(path, max_output_bytes=None) as handle:
        with pytest.raises(nncodec_rd.OutputTooLargeError, match="could not allocate") as caught:
            handle.get_tensor("w")
        assert caught.value.limit is None and caught.value.requested == 16 * 16 * 4
        with pytest.raises(nncodec_rd.OutputTooLargeError):
            handle.get_rows("w", 0, 2)
    assert main(["decode", str(path), "-o", str(tmp_path / "w.npz")]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "output_too_large" in lines[0]
