"""Every structure of nncodec_rd.format.syntax parses what it builds and builds what it parses."""

import pytest
from construct import ConstructError

from nncodec_rd.format.constants import Limits
from nncodec_rd.format.syntax import (
    CodebookGrid,
    Extension,
    FrequencyTable,
    Header,
    Metadata,
    PayloadRef,
    Preamble,
    RansChunk,
    UniformGrid,
    VarUInt,
)
from nncodec_rd.format.container import to_plain

PREAMBLE = dict(major_version=1, minor_version=0, required_features=0, header_size=5,
                header_crc32c=0xDEADBEEF, _reserved0=0)


def roundtrip(structure, value, **context):
    data = structure.build(value, **context)
    parsed = structure.parse(data, **context)
    assert structure.build(to_plain(parsed), **context) == data
    return data, parsed


def test_preamble_is_32_bytes_and_round_trips():
    data, parsed = roundtrip(Preamble, PREAMBLE)
    assert len(data) == 32 == Preamble.sizeof()
    assert data[:8] == b"\x89NRD\r\n\x1a\n"
    assert parsed.header_size == 5 and parsed.header_crc32c == 0xDEADBEEF


def test_metadata_of_every_type_round_trips():
    entries = [dict(key="s", value_type=1, value="text é"), dict(key="i", value_type=2, value=-5),
               dict(key="f", value_type=3, value=0.25), dict(key="b", value_type=4, value=1),
               dict(key="x", value_type=5, value=b"\x00\xff")]
    _, parsed = roundtrip(Metadata, dict(entry_count=5, entries=entries))
    assert [e.value for e in parsed.entries] == ["text é", -5, 0.25, 1, b"\x00\xff"]


def test_unknown_metadata_type_parses_as_bytes():
    data = Metadata.build(dict(entry_count=1, entries=[dict(key="k", value_type=9, value=b"ab")]))
    parsed = Metadata.parse(data)
    assert parsed.entries[0].value_type == 9 and parsed.entries[0].value == b"ab"


def test_grids_and_payload_ref_round_trip():
    roundtrip(UniformGrid, dict(rows_per_group=2, group_count=2, has_zero_point=1,
                                steps=[0.5, 0.25], zero_points=[3, -3]))
    roundtrip(UniformGrid, dict(rows_per_group=0, group_count=1, has_zero_point=0, steps=[1.0],
                                zero_points=[]))
    roundtrip(CodebookGrid, dict(codebook_size=3, first_index=-1, codebook_values=[-1.5, 0.0, 2.0]))
    data, _ = roundtrip(PayloadRef, dict(offset=64, size=10, crc32c=7))
    assert len(data) == 20


def test_frequency_table_uses_the_enclosing_alphabet_size():
    data = FrequencyTable.build(dict(frequencies=[1, 200, 65536]), alphabet_size=3)
    assert data == bytes([1, 0xC8, 0x01, 0x80, 0x80, 0x04])
    assert list(FrequencyTable.parse(data, alphabet_size=3).frequencies) == [1, 200, 65536]


@pytest.mark.parametrize("encoded", [b"\x80\x00", b"\x80\x80\x80\x01", b"\x81\x80\x00"])
def test_varint_rejects_non_minimal_or_long_forms(encoded):
    with pytest.raises(ConstructError):
        VarUInt(3).parse(encoded)


def test_chunk_reads_lane_states_from_the_tensor():
    value = dict(escape_count=1, escapes=[-9], lane_states=[65536, 70000], words=[1, 2, 3])
    data = RansChunk.build(value, lane_count=2)
    assert len(data) == 4 + 4 + 8 + 6
    parsed = RansChunk.parse(data, lane_count=2)
    assert list(parsed.lane_states) == [65536, 70000] and list(parsed.words) == [1, 2, 3]


def test_extension_and_empty_header_round_trip():
    roundtrip(Extension, dict(extension_type=7, extension_flags=1, body=b"xyz"))
    data, parsed = roundtrip(Header, dict(metadata=dict(entry_count=0, entries=[]), tensor_count=0,
                                          tensors=[], extensions=dict(extension_count=0,
                                                                      extensions=[])))
    assert data == bytes(10)


def test_counts_beyond_limits_are_rejected_before_their_arrays():
    data = (Limits.MAX_TENSOR_COUNT + 1).to_bytes(4, "little")
    with pytest.raises(ConstructError, match="exceeds the limit"):
        Header.parse(bytes(4) + data)
