"""Every file the writer writes conforms (issue 17, items 2 and 9): inputs that would break the
spec are refused with a typed EncoderError before anything is written, or written in a
conforming form; the writer checks its header with the reader's own rules before writing."""

import numpy as np
import pytest

from nncodec_rd.decoder.reader import NrdFile
from nncodec_rd.decoder.validation import validate_file
from nncodec_rd.encoder.writer import NrdWriter
from nncodec_rd.format.constants import Limits
from nncodec_rd.format.errors import EncoderError, ErrorCode
from nncodec_rd.format.grids import RightMatrixTransform, UniformGrid
from nncodec_rd.encoder.entropy import EntropySettings


def _refused(tmp_path, populate, metadata=None, match=None):
    path = tmp_path / "out.nrd"
    with pytest.raises(EncoderError, match=match) as caught:
        with NrdWriter(path, metadata=metadata) as writer:
            populate(writer)
    assert caught.value.code == ErrorCode.ENCODER_SETTINGS
    assert not path.exists() and list(tmp_path.iterdir()) == []
    return caught.value


@pytest.mark.parametrize("edge", [Limits.MAX_ABS_INDEX, -Limits.MAX_ABS_INDEX])
def test_an_escape_window_stays_within_the_index_range(tmp_path, edge):
    """spec §7.5, §9: the largest direct index of an escape window was allowed past 2^23 - 1."""
    sign = 1 if edge > 0 else -1
    indices = np.array([edge - sign * 3] * 50 + [edge] * 50 + [0, sign * 1000, edge - sign * 40],
                       np.int64).reshape(1, -1)
    path = tmp_path / "edge.nrd"
    with NrdWriter(path) as writer:
        writer.add_indices("w", indices, UniformGrid(1.0), "float32",
                           settings=EntropySettings(max_alphabet_size=16, context_model="iid"))
    assert validate_file(path) == []
    with NrdFile(path) as handle:
        assert np.array_equal(handle.get_indices("w"), indices)


def test_a_metadata_key_beyond_the_limit_is_refused(tmp_path):
    """spec §5.5, §9: keys of at most 256 bytes (file and tensor metadata)."""
    key = "k" * (Limits.MAX_METADATA_KEY_LENGTH_BYTES + 1)
    _refused(tmp_path, lambda w: w.add_raw("a", np.zeros(1, np.float32)), {key: "v"},
             match="256")
    _refused(tmp_path, lambda w: w.add_raw("a", np.zeros(1, np.float32), metadata={key: 1}),
             match="256")


def test_a_transform_that_names_its_own_tensor_is_refused(tmp_path):
    """spec §6.4: the transform tensor is another tensor."""
    _refused(tmp_path, lambda w: w.add_indices(
        "t", np.zeros((2, 2), np.int64), UniformGrid(1.0), "float32",
        transform=RightMatrixTransform("t")), match="itself")


def test_a_transform_through_a_transformed_tensor_is_refused(tmp_path):
    def populate(w):
        w.add_raw("basis", np.eye(2, dtype=np.float32))
        w.add_indices("m", np.zeros((2, 2), np.int64), UniformGrid(1.0), "float32",
                      transform=RightMatrixTransform("basis"))
        w.add_indices("t", np.zeros((2, 2), np.int64), UniformGrid(1.0), "float32",
                      transform=RightMatrixTransform("m"))
    _refused(tmp_path, populate)


def test_bool_elements_are_stored_as_0_or_1(tmp_path):
    """spec §5.3: a BOOL element is 0 or 1; NumPy bools viewed from other bytes are not."""
    flags = np.array([0, 1, 2, 255], np.uint8).view(bool)
    path = tmp_path / "bool.nrd"
    with NrdWriter(path) as writer:
        writer.add_raw("flags", flags)
    assert validate_file(path) == []
    with NrdFile(path) as handle:
        assert handle.get_tensor("flags").tolist() == [False, True, True, True]


@pytest.mark.parametrize("populate, metadata", [
    (lambda w: w.add_raw("bad\udc80name", np.zeros(1, np.float32)), None),
    (lambda w: w.add_raw("a", np.zeros(1, np.float32)), {"key": "lone \ud800 surrogate"}),
    (lambda w: w.add_raw("a", np.zeros(1, np.float32)), {"\ud800": "v"}),
    (lambda w: w.add_raw("a", np.zeros(1, np.float32), metadata={"k": "\udfff"}), None),
    (lambda w: w.add_raw("rank9", np.zeros((1,) * 9, np.float32)), None),
    (lambda w: w.add_indices("rank9", np.zeros((1,) * 9, np.int64), UniformGrid(1.0)), None),
], ids=["surrogate-name", "surrogate-value", "surrogate-key", "surrogate-tensor-metadata",
        "rank9-raw", "rank9-coded"])
def test_unencodable_input_is_an_encoder_error(tmp_path, populate, metadata):
    """construct errors and UnicodeEncodeError never leave the writer."""
    _refused(tmp_path, populate, metadata)


def test_the_head_check_applies_the_readers_rules():
    """check_written_head is the last gate: a header the reader would refuse is an EncoderError
    naming the reader's code and field."""
    from nncodec_rd.encoder.writer import check_written_head, metadata_entries
    from nncodec_rd.format.container import build_container_head

    header = dict(metadata=metadata_entries({"ok": 1}), tensor_count=0, tensors=[],
                  extensions=dict(extension_count=0, extensions=[]))
    header["metadata"]["entries"][0]["key"] = "k" * 300
    head = build_container_head(header)
    with pytest.raises(EncoderError, match="limit_exceeded.*header.metadata.entries"):
        check_written_head(head, len(head))
    header["metadata"]["entries"][0]["key"] = "ok"
    head = build_container_head(header)
    check_written_head(head, len(head))
    with pytest.raises(EncoderError, match="trailing_bytes"):
        check_written_head(head, len(head) + 1)
