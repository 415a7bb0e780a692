"""validate_file lists every fault of a file: all semantic faults of the header, every damaged
payload, every chunk that fails to decode."""


import numpy as np

from nncodec_rd.conformance import generate
from nncodec_rd.conformance.mutators import assemble, mutate_header, split_file
from nncodec_rd.decoder.validation import validate_file
from nncodec_rd.format.errors import ErrorCode


def _write(tmp_path, data: bytes):
    path = tmp_path / "file.nrd"
    path.write_bytes(data)
    return path


def test_a_conforming_file_has_no_fault(tmp_path):
    assert validate_file(_write(tmp_path, generate.invalid_base())) == []


def test_every_damaged_chunk_is_listed(tmp_path):
    header, payloads = split_file(generate.invalid_base())
    payloads[0] = payloads[0] + b"\0\0"   # words left over in chunk 0
    payloads[1] = payloads[1][:-2]        # words run out in chunk 1
    faults = validate_file(_write(tmp_path, assemble(header, payloads)))
    assert [(f.code, f.field) for f in faults] == [
        (ErrorCode.STREAM_TRAILING_DATA, "header.tensors[0].body.chunks[0]"),
        (ErrorCode.STREAM_TRUNCATED, "header.tensors[0].body.chunks[1]")]


def test_every_bad_checksum_is_listed_and_its_tensor_not_decoded(tmp_path):
    data = bytearray(generate.invalid_base())
    header, _ = split_file(bytes(data))
    for ref in (header["tensors"][0]["body"]["chunks"][1], header["tensors"][2]["body"]["payload"]):
        data[ref["offset"]] ^= 0x40
    faults = validate_file(_write(tmp_path, bytes(data)))
    assert [f.code for f in faults] == [ErrorCode.CHECKSUM_PAYLOAD] * 2
    assert faults[0].field == "header.tensors[0].body.chunks[1].crc32c"


def test_header_faults_are_all_listed(tmp_path):
    def change(header, payloads):
        header["tensors"][0]["body"]["_reserved0"] = 1
        header["tensors"][1]["name"] = "coded"
    faults = validate_file(_write(tmp_path, mutate_header(generate.invalid_base(), change)))
    assert {f.code for f in faults} == {ErrorCode.RESERVED_VALUE, ErrorCode.DUPLICATE_NAME}


def test_a_syntax_fault_ends_the_list(tmp_path):
    faults = validate_file(_write(tmp_path, b"PK\x03\x04" + bytes(40)))
    assert [f.code for f in faults] == [ErrorCode.BAD_MAGIC]


def test_a_declared_tensor_beyond_the_bound_is_a_fault_not_an_allocation(tmp_path):
    from nncodec_rd.encoder.writer import NrdWriter
    from nncodec_rd.format.grids import UniformGrid

    path = tmp_path / "zeros.nrd"
    with NrdWriter(path) as writer:
        writer.add_indices("zeros", np.zeros((64, 1024), np.int64), UniformGrid(1.0))
    faults = validate_file(path, max_output_bytes=1000)
    assert faults and all(f.code == ErrorCode.OUTPUT_TOO_LARGE for f in faults)
    assert validate_file(path) == []


def test_an_unreadable_path_is_an_io_fault(tmp_path):
    assert [f.code for f in validate_file(tmp_path / "missing.nrd")] == [ErrorCode.IO]


def test_a_wrong_checksum_of_an_empty_payload_sharing_an_offset_is_listed(tmp_path):
    """issue 17 item 1: two zero-size payloads share an offset (spec §4.7); the second's CRC-32C
    is wrong. Checked payloads were remembered by (offset, size) alone, so it passed."""
    data = (generate.INVALID_FOLDER / "payload_checksum_wrong_shared_offset.v1.nrd").read_bytes()
    faults = validate_file(_write(tmp_path, data))
    assert [(f.code, f.field) for f in faults] == [
        (ErrorCode.CHECKSUM_PAYLOAD, "header.tensors[1].body.payload.crc32c")]
