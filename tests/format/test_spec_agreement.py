"""The written spec and the code agree: syntax tables, enumerations and the Annex A example."""

from pathlib import Path

import numpy as np

from nncodec_rd.conformance import annex_example
from nncodec_rd.format import spec_tables
from nncodec_rd.format.errors import ErrorCode
from nncodec_rd.format.syntax import ENUMERATIONS, STRUCTURES

SPEC = Path(__file__).resolve().parents[2] / "spec" / "nrd-format.md"


def test_every_structure_and_enumeration_has_a_table_in_the_spec():
    markers = spec_tables.markers_in(SPEC.read_text(encoding="utf-8"))
    assert {("syntax", name) for name in STRUCTURES} <= markers
    assert {("enum", name) for name in ENUMERATIONS} <= markers


def test_spec_tables_match_the_construct_declarations():
    assert spec_tables.main(["--check", "--spec", str(SPEC)]) == 0


def test_a_changed_declaration_is_detected(tmp_path):
    altered = SPEC.read_text(encoding="utf-8").replace("| `lane_count` | u8 |", "| `lane_count` | u16 |")
    path = tmp_path / "spec.md"
    path.write_text(altered, encoding="utf-8")
    assert spec_tables.main(["--check", "--spec", str(path)]) == 1


def test_every_error_code_is_listed_in_the_spec():
    text = SPEC.read_text(encoding="utf-8")
    for code in ErrorCode:
        if code in (ErrorCode.ENCODER_SETTINGS, ErrorCode.ENCODER_INPUT, ErrorCode.IO,
                    ErrorCode.OUTPUT_TOO_LARGE):
            continue  # library codes, not faults of a file
        assert f"| {int(code)} | `{code.slug}` |" in text, code


def test_annex_is_what_the_encoder_writes_now():
    assert annex_example.main(["--check", "--spec", str(SPEC)]) == 0


def test_annex_hex_decodes_to_the_printed_values(tmp_path):
    from nncodec_rd import load_file

    data, printed = annex_example.parse_annex(SPEC.read_text(encoding="utf-8"))
    path = tmp_path / "annex.nrd"
    path.write_bytes(data)
    decoded = load_file(path)["w"]
    assert decoded.dtype == np.float32
    assert np.array_equal(decoded.view(np.uint32), printed.view(np.uint32))
    expected = np.float32(annex_example.EXAMPLE_STEP) * annex_example.EXAMPLE_INDICES.astype(np.float32)
    assert np.array_equal(decoded, expected)


REGRESSIONS = Path(__file__).resolve().parents[2] / "conformance" / "fuzz" / "regressions"


def test_a_field_past_its_sized_field_is_that_fields_fault_where_the_header_also_ends():
    # spec §2.1: the innermost region holding a field is at fault. Found by fuzzing (both decoders
    # against each other): a chunk entry running past its tensor's body, which ends where the
    # Header ends, was reported as the Header's fault (header_size_mismatch) with the field path
    # "header.tensors.tensors.body.body.chunks.chunks.size.size"; the spec-literal decoder says
    # invalid_value at header.tensors[0].body.chunks[1].size.
    from nncodec_rd.conformance import spec_literal_decoder as literal
    from nncodec_rd.format.container import read_container
    from nncodec_rd.format.errors import NrdError

    data = (REGRESSIONS / "chunk_entry_past_body_at_header_end.nrd").read_bytes()
    try:
        literal.decode_file(data)
    except literal.SpecError as error:
        expected = error
    try:
        read_container(data)
    except NrdError as error:
        ours = error
    assert expected.name == "invalid_value" and ours.code == ErrorCode.INVALID_VALUE
    assert ours.field == "header.tensors[0].body.chunks[1].size" == expected.field
    assert ours.offset == expected.offset == 193
