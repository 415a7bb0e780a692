"""The command line's promise under crafted inputs (issue 17, items 9 and 10): every malformed
input to ``encode`` ends in exit status 1 and one line ``nncodec-rd: error: ...`` on stderr,
never a traceback, and nothing is written; tensors are never silently lost or merged."""

import json
import struct
import zipfile

import numpy as np
import pytest

from nncodec_rd.cli import main
from nncodec_rd.encoder.writer import NrdWriter
from nncodec_rd.format.grids import UniformGrid


def _safetensors(header, data: bytes = b"") -> bytes:
    """A safetensors file: 8-byte little-endian header size, header bytes, data."""
    encoded = header if isinstance(header, bytes) else json.dumps(header).encode("utf-8")
    return struct.pack("<Q", len(encoded)) + encoded + data


def _entry(shape=(1,), offsets=(0, 4), dtype="F32"):
    return {"dtype": dtype, "shape": shape, "data_offsets": offsets}


FOUR = b"\0" * 4


def _npz_member(name: str, npy: bytes) -> bytes:
    import io

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(name, npy)
    return buffer.getvalue()


def _npy_header(descr: str, shape: tuple) -> bytes:
    buffer = __import__("io").BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False,
                                                  "shape": shape})
    return buffer.getvalue()


def _valid_npz() -> bytes:
    import io

    buffer = io.BytesIO()
    np.savez(buffer, a=np.arange(1000, dtype=np.float32), b=np.ones((30, 30), np.float32))
    return buffer.getvalue()


CRAFTED = {
    # safetensors headers that are not a JSON object
    "header_list": (".safetensors", _safetensors(b"[]")),
    "header_null": (".safetensors", _safetensors(b"null")),
    "header_number": (".safetensors", _safetensors(b"3")),
    "header_huge_number": (".safetensors", _safetensors(b"1e400")),
    "header_string": (".safetensors", _safetensors(b'"weights"')),
    "header_not_utf8": (".safetensors", _safetensors(b'{"\xff": 1}')),
    "header_truncated": (".safetensors", struct.pack("<Q", 100) + b'{"a":'),
    "header_size_huge": (".safetensors", struct.pack("<Q", 1 << 62) + b"{}"),
    "file_short": (".safetensors", b"\x01\x00"),
    "nested_brackets": (".safetensors", _safetensors(b"[" * 100_000 + b"]" * 100_000)),
    "nested_objects": (".safetensors", _safetensors(b'{"a":' * 100_000 + b"1" + b"}" * 100_000)),
    # entries that are not tensor descriptions
    "entry_number": (".safetensors", _safetensors({"a": 5})),
    "entry_list": (".safetensors", _safetensors({"a": [1, 2]})),
    "entry_null": (".safetensors", _safetensors({"a": None})),
    "entry_empty": (".safetensors", _safetensors({"a": {}})),
    # data_offsets
    "offsets_one": (".safetensors", _safetensors({"a": _entry(offsets=[0])}, FOUR)),
    "offsets_three": (".safetensors", _safetensors({"a": _entry(offsets=[0, 4, 8])}, FOUR)),
    "offsets_strings": (".safetensors", _safetensors({"a": _entry(offsets=["0", "4"])}, FOUR)),
    "offsets_null": (".safetensors", _safetensors({"a": _entry(offsets=None)}, FOUR)),
    "offsets_number": (".safetensors", _safetensors({"a": _entry(offsets=4)}, FOUR)),
    "offsets_float": (".safetensors", _safetensors({"a": _entry(offsets=[0, 4.0])}, FOUR)),
    "offsets_reversed": (".safetensors", _safetensors({"a": _entry(offsets=[4, 0])}, FOUR)),
    "offsets_beyond": (".safetensors", _safetensors({"a": _entry(offsets=[0, 400])}, FOUR)),
    "offsets_negative": (".safetensors", _safetensors({"a": _entry(offsets=[-4, 0])}, FOUR)),
    "offsets_2_70": (".safetensors", _safetensors({"a": _entry(offsets=[0, 1 << 70])}, FOUR)),
    # shapes
    "shape_negative": (".safetensors", _safetensors({"a": _entry(shape=[-1, -1])}, FOUR)),
    "shape_negative_one": (".safetensors", _safetensors({"a": _entry(shape=[-1])}, FOUR)),
    "shape_float": (".safetensors", _safetensors({"a": _entry(shape=[1.5])}, FOUR)),
    "shape_string": (".safetensors", _safetensors({"a": _entry(shape=["1"])}, FOUR)),
    "shape_number": (".safetensors", _safetensors({"a": _entry(shape=1)}, FOUR)),
    "shape_null": (".safetensors", _safetensors({"a": _entry(shape=None)}, FOUR)),
    "shape_2_70": (".safetensors", _safetensors({"a": _entry(shape=[1 << 70])}, FOUR)),
    "shape_2_70_times_0": (".safetensors",
                           _safetensors({"a": _entry(shape=[1 << 70, 0], offsets=[0, 0])})),
    "shape_2_32_squared": (".safetensors",
                           _safetensors({"a": _entry(shape=[1 << 32, 1 << 32], offsets=[0, 0])})),
    "rank_9": (".safetensors", _safetensors({"a": _entry(shape=[1] * 9)}, FOUR)),
    # dtypes and metadata
    "dtype_list": (".safetensors", _safetensors({"a": _entry(dtype=["F32"])}, FOUR)),
    "dtype_dict": (".safetensors", _safetensors({"a": _entry(dtype={"F": 32})}, FOUR)),
    "dtype_unknown": (".safetensors", _safetensors({"a": _entry(dtype="F128")}, FOUR)),
    "metadata_list": (".safetensors", _safetensors({"__metadata__": ["a"], "a": _entry()}, FOUR)),
    "metadata_string": (".safetensors", _safetensors({"__metadata__": "a", "a": _entry()}, FOUR)),
    "metadata_nested": (".safetensors",
                        _safetensors({"__metadata__": {"k": {"x": 1}}, "a": _entry()}, FOUR)),
    "metadata_key_300_bytes": (".safetensors",
                               _safetensors({"__metadata__": {"k" * 300: "v"}, "a": _entry()},
                                            FOUR)),
    # Unicode that has no UTF-8 form
    "surrogate_name": (".safetensors",
                       _safetensors(b'{"\\ud800": {"dtype": "F32", "shape": [1], '
                                    b'"data_offsets": [0, 4]}}', FOUR)),
    "surrogate_metadata": (".safetensors",
                           _safetensors(b'{"__metadata__": {"k": "\\udfff"}, "a": {"dtype": '
                                        b'"F32", "shape": [1], "data_offsets": [0, 4]}}', FOUR)),
    # item 10: duplicate keys would silently drop a tensor or a metadata entry
    "duplicate_tensor": (".safetensors",
                         _safetensors(b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": '
                                      b'[0, 4]}, "a": {"dtype": "F32", "shape": [1], '
                                      b'"data_offsets": [4, 8]}}', FOUR * 2)),
    "duplicate_metadata_key": (".safetensors",
                               _safetensors(b'{"__metadata__": {"k": "1", "k": "2"}, "a": '
                                            b'{"dtype": "F32", "shape": [1], "data_offsets": '
                                            b'[0, 4]}}', FOUR)),
    "duplicate_metadata": (".safetensors",
                           _safetensors(b'{"__metadata__": {"k": "1"}, "__metadata__": {}, "a": '
                                        b'{"dtype": "F32", "shape": [1], "data_offsets": '
                                        b'[0, 4]}}', FOUR)),
    # .npz
    "npz_truncated": (".npz", _valid_npz()[:1500]),
    "npz_empty_file": (".npz", b""),
    "npz_not_zip": (".npz", b"PK\x03\x04 not really"),
    "npz_10_12_floats": (".npz", _npz_member("big.npy", _npy_header("<f4", (10 ** 12,)))),
    "npz_member_short": (".npz", _npz_member("a.npy", _npy_header("<f4", (10,)) + b"\0" * 8)),
    "npz_member_not_npy": (".npz", _npz_member("a.npy", b"hello")),
    "npz_object_member": (".npz", _npz_member("a.npy", _npy_header("|O", (1,)) + b"\0" * 8)),
    "npz_member_rank_9": (".npz", _npz_member("a.npy", _npy_header("<f4", (1,) * 9) + FOUR)),
    "npz_duplicate_member": (".npz", _npz_member("a.npy", _npy_header("<f4", (1,)) + FOUR)
                             [:0] or None),
}


def _duplicate_member_npz() -> bytes:
    import io
    import warnings

    buffer = io.BytesIO()
    member = _npy_header("<f4", (1,)) + FOUR
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns of the duplicate name it writes
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr("a.npy", member)
            archive.writestr("a.npy", member)
    return buffer.getvalue()


CRAFTED["npz_duplicate_member"] = (".npz", _duplicate_member_npz())


def _one_error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err[-2000:]
    assert lines[0].startswith("nncodec-rd: error: "), lines[0]
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_a_crafted_input_to_encode_gives_one_line_and_exit_1(tmp_path, capsys, case):
    suffix, data = CRAFTED[case]
    source = tmp_path / f"input{suffix}"
    source.write_bytes(data)
    output = tmp_path / "out.nrd"
    status = main(["encode", str(source), "-o", str(output)])
    line = _one_error_line(capsys.readouterr().err)
    assert status == 1
    assert str(source) in line or "encoder_settings" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == [source.name]


def _nrd_with_names(tmp_path, names):
    path = tmp_path / "names.nrd"
    with NrdWriter(path) as writer:
        for position, name in enumerate(names):
            writer.add_raw(name, np.full(2, position, np.float32))
    return path


@pytest.mark.parametrize("names, suffix", [
    (["a\0x", "a\0y"], ".npz"),
    (["a\0x"], ".npz"),
    (["__metadata__", "b"], ".safetensors"),
], ids=["nul-collapse-npz", "nul-npz", "metadata-name-safetensors"])
def test_decode_refuses_names_its_output_cannot_hold(tmp_path, capsys, names, suffix):
    """item 10: NUL in a name is cut by zipfile (two tensors become one member); a tensor named
    ``__metadata__`` makes an invalid safetensors file and loses the file's metadata."""
    path = _nrd_with_names(tmp_path, names)
    output = tmp_path / f"out{suffix}"
    status = main(["decode", str(path), "-o", str(output)])
    line = _one_error_line(capsys.readouterr().err)
    assert status == 1 and not output.exists()
    assert "name" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_a_tensor_named_metadata_still_decodes_to_npz(tmp_path, capsys):
    path = _nrd_with_names(tmp_path, ["__metadata__", "b"])
    output = tmp_path / "out.npz"
    assert main(["decode", str(path), "-o", str(output)]) == 0
    with np.load(output) as archive:
        assert sorted(archive.files) == ["__metadata__", "b"]


@pytest.mark.parametrize("case", ["nested_brackets", "npz_10_12_floats", "surrogate_name"])
def test_a_crafted_input_in_a_real_process_gives_one_line(tmp_path, case):
    """The same promise from a separate process: no warning, no traceback, exit status 1."""
    import subprocess
    import sys

    suffix, data = CRAFTED[case]
    source = tmp_path / f"input{suffix}"
    source.write_bytes(data)
    completed = subprocess.run([sys.executable, "-m", "nncodec_rd", "encode", str(source), "-o",
                                str(tmp_path / "out.nrd")], capture_output=True, text=True,
                               timeout=300)
    assert completed.returncode == 1
    _one_error_line(completed.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == [source.name]
