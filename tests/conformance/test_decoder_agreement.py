"""The Numba decoder and the spec-literal decoder (written from spec/ alone) output identical
bytes for every generated file, and reject damaged files with the same error code."""

import numpy as np
from hypothesis import given, settings, strategies as st

from nncodec_rd.conformance import spec_literal_decoder as literal
from nncodec_rd.conformance.strategies import nrd_files
from nncodec_rd.decoder.reader import NrdFile
from nncodec_rd.format.errors import NrdError


def ours(data: bytes, tmp_path) -> dict:
    path = tmp_path / "f.nrd"
    path.write_bytes(data)
    with NrdFile(path) as handle:
        out = {}
        for name in handle.keys():
            tensor = handle.get_tensor(name)
            out[name] = (tuple(tensor.shape), np.ascontiguousarray(tensor).tobytes())
        return out


@given(nrd_files())
def test_both_decoders_output_identical_bytes(tmp_path_factory, data):
    expected = ours(data, tmp_path_factory.mktemp("agree"))
    decoded = literal.decode_file(data)
    assert list(decoded) == list(expected)
    for name, (dtype, shape, raw) in decoded.items():
        assert (tuple(shape), raw) == expected[name], name


@settings(max_examples=300)
@given(nrd_files(max_tensors=2), st.data())
def test_both_decoders_reject_a_flipped_byte_with_the_same_code(tmp_path_factory, data, draw):
    position = draw.draw(st.integers(0, len(data) - 1))
    damaged = bytearray(data)
    damaged[position] ^= 1 << draw.draw(st.integers(0, 7))
    damaged = bytes(damaged)
    try:
        expected = ("ok", ours(damaged, tmp_path_factory.mktemp("flip")))
    except NrdError as error:
        expected = ("error", int(error.code))
    try:
        decoded = literal.decode_file(damaged)
        actual = ("ok", {n: (tuple(s), raw) for n, (_, s, raw) in decoded.items()})
    except literal.SpecError as error:
        actual = ("error", error.code)
    assert actual == expected
