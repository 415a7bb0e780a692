"""NrdFile under faults and settings (issue 17, item 3): get_indices checks the codebook range
like get_tensor (spec §6.2), get_tensor(out=...) never leaves a mix of decoded and unwritten
chunks, and threads= restores Numba's thread count."""

import numba
import numpy as np
import pytest

from nncodec_rd.conformance import generate
from nncodec_rd.conformance.mutators import assemble, split_file
from nncodec_rd.decoder.reader import NrdFile
from nncodec_rd.encoder.writer import NrdWriter
from nncodec_rd.format.errors import CorruptStreamError, ErrorCode
from nncodec_rd.format.grids import CodebookGrid
from nncodec_rd.encoder.entropy import EntropySettings


def _write(tmp_path, data: bytes):
    path = tmp_path / "file.nrd"
    path.write_bytes(data)
    return path


def _error_of(call):
    with pytest.raises(CorruptStreamError) as caught:
        call()
    return caught.value.code, caught.value.field, caught.value.offset


def test_get_indices_refuses_a_direct_index_outside_the_codebook(tmp_path):
    path = generate.INVALID_FOLDER / "codebook_index_out_of_range.v1.nrd"
    with NrdFile(path) as handle:
        expected = _error_of(lambda: handle.get_tensor("book"))
        assert expected[0] == ErrorCode.INDEX_OUT_OF_RANGE
        assert _error_of(lambda: handle.get_indices("book")) == expected


def test_get_indices_refuses_an_escaped_index_outside_the_codebook(tmp_path):
    indices = np.array([[0, 1, 2, 1, 0, 2, 39, 1]], np.int64)
    written = tmp_path / "book.nrd"
    with NrdWriter(written) as writer:
        writer.add_indices("book", indices, CodebookGrid(np.arange(40, dtype=np.float32)),
                           settings=EntropySettings(max_alphabet_size=4, context_model="iid",
                                                    lane_count=1))
    header, payloads = split_file(written.read_bytes())
    body = header["tensors"][0]["body"]
    assert body["escape_mode"] == 1 and body["index_offset"] == 0 and body["alphabet_size"] == 4
    body["grid"].update(codebook_size=3, codebook_values=[0.0, 1.0, 2.0])  # 39 now outside
    path = _write(tmp_path, assemble(header, payloads))
    with NrdFile(path) as handle:
        expected = _error_of(lambda: handle.get_tensor("book"))
        assert expected[0] == ErrorCode.INDEX_OUT_OF_RANGE
        assert _error_of(lambda: handle.get_indices("book")) == expected


def test_a_fault_leaves_no_mix_in_the_callers_buffer(tmp_path):
    """Chunk 0 decodes, chunk 1 runs out of words: ``out`` must not keep chunk 0's values
    beside whatever chunk 1 wrote; it is zeroed (documented in get_tensor)."""
    header, payloads = split_file(generate.invalid_base())
    payloads[1] = payloads[1][:-2]
    path = _write(tmp_path, assemble(header, payloads))
    with NrdFile(path) as handle:
        out = np.full((4, 12), 7.0, np.float32)
        with pytest.raises(CorruptStreamError):
            handle.get_tensor("coded", out=out)
        assert np.all(out == 0)
        rows = np.full((4, 12), 7.0, np.float32)
        with pytest.raises(CorruptStreamError):
            handle.get_rows("coded", 0, 4, out=rows)
        assert np.all(rows == 0)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 Numba threads")
@pytest.mark.parametrize("threads", [1, 2])
def test_threads_restores_numbas_thread_count(threads):
    path = generate.VECTORS_FOLDER / "small_model.v1.nrd"
    before = numba.get_num_threads()
    numba.set_num_threads(2 if threads == 1 else 1)
    try:
        expected = numba.get_num_threads()
        with NrdFile(path, threads=threads) as handle:
            for name in handle.keys():
                handle.get_tensor(name)
            handle.get_indices("fc1.weight")
            assert numba.get_num_threads() == expected
    finally:
        numba.set_num_threads(before)
