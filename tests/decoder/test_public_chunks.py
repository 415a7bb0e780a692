"""The decoder's public methods for callers that keep tensors compressed (the lazy torch
layers): chunk payloads checked and copied, decoding tables; and the decoders a handle keeps
between row ranges, shared safely by threads."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import nncodec_rd
from nncodec_rd.decoder.reader import NrdFile
from nncodec_rd.format.checksum import crc32c


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    rng = np.random.default_rng(5)
    tensors = {f"w{i}": (rng.standard_normal((64, 48)) * 0.05).astype(np.float32)
               for i in range(6)}
    tensors["raw"] = np.arange(10, dtype=np.int32)
    path = tmp_path_factory.mktemp("chunks") / "f.nrd"
    nncodec_rd.save_file(tensors, path)
    return path


def test_chunk_payloads_are_the_files_bytes_with_their_checksums(path):
    data = path.read_bytes()
    with NrdFile(path) as handle:
        payload, starts, sizes = handle.chunk_payloads("w1")
        chunks = handle.record("w1").body.chunks
        assert len(sizes) == len(chunks) and starts[0] == 0
        for k in range(len(chunks)):
            ref = chunks[k]
            piece = payload[starts[k]:starts[k] + sizes[k]].tobytes()
            assert piece == data[ref.offset:ref.offset + ref.size]
            assert crc32c(piece) == ref.crc32c
        assert handle.chunk_decoder("w1").row_length == 48


def test_a_raw_tensor_has_no_chunks_to_give(path):
    with NrdFile(path) as handle:
        for method in (handle.chunk_payloads, handle.chunk_decoder):
            with pytest.raises(ValueError, match="not a rANS-coded tensor"):
                method("raw")


def test_threads_sharing_a_handle_read_what_one_thread_reads(path):
    with NrdFile(path) as handle:
        expected = {name: handle.get_tensor(name) for name in handle.keys() if name != "raw"}

        def rows(job):
            name, start = job
            return name, start, handle.get_rows(name, start, start + 8)

        # More tensors than the handle keeps decoders for, read in many row ranges at once.
        jobs = [(name, start) for start in range(0, 64, 8) for name in expected] * 3
        with ThreadPoolExecutor(8) as pool:
            for name, start, got in pool.map(rows, jobs):
                np.testing.assert_array_equal(got, expected[name][start:start + 8])
