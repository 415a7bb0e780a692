"""rANS encoder: tables sum correctly, and coded size is within 1% of the ideal code length."""

import numpy as np
import pytest
from hypothesis import given, strategies as st

from nncodec_rd import EntropySettings, UniformGrid, safe_open
from nncodec_rd.encoder.rans import build_frequency_table, encode_chunk, ideal_code_length_bits
from nncodec_rd.encoder.writer import NrdWriter
from nncodec_rd.format.errors import EncoderError


@given(st.lists(st.integers(0, 1000), min_size=1, max_size=300), st.integers(9, 16))
def test_frequency_tables_sum_to_the_precision_and_keep_every_symbol(counts, precision_bits):
    counts = np.array(counts)
    if (counts > 0).sum() > 1 << precision_bits:
        with pytest.raises(EncoderError):
            build_frequency_table(counts, precision_bits)
        return
    table = build_frequency_table(counts, precision_bits)
    assert table.sum() == 1 << precision_bits
    assert np.all(table[counts > 0] >= 1)
    if counts.sum():
        assert np.all(table[counts == 0] == 0)


def test_single_symbol_chunk_costs_no_words():
    table = np.array([[1 << 12]])
    states, words = encode_chunk(np.zeros(1000, np.int32), np.zeros(1000, np.int32), table, 12, 4)
    assert states.tolist() == [1 << 16] * 4 and len(words) == 0


@pytest.mark.parametrize("distribution, lanes, context", [
    ("laplace", 1, "iid"), ("laplace", 4, "iid"), ("gaussian", 8, "iid"),
    ("laplace", 4, "previous"), ("skewed", 2, "iid"),
])
def test_coded_size_is_within_one_percent_of_the_ideal(tmp_path, distribution, lanes, context):
    """Bound (issue 2): for >= 100,000 weights, the payload bytes are at most 1.01 x the ideal
    code length of the file's own tables, plus each chunk's fixed part (escape count and lane
    states, spec §7.3)."""
    rng = np.random.default_rng(3)
    size = (400, 300)
    if distribution == "laplace":
        indices = np.round(rng.laplace(scale=3.0, size=size))
    elif distribution == "gaussian":
        indices = np.round(rng.normal(scale=5.0, size=size))
    else:
        indices = (rng.random(size) < 0.03).astype(np.int64)
    indices = indices.astype(np.int64)
    path = tmp_path / "t.nrd"
    with NrdWriter(path) as writer:
        writer.add_indices("t", indices, UniformGrid(0.01), "float32",
                           settings=EntropySettings(lane_count=lanes, context_model=context,
                                                    symbols_per_chunk=30_000))
    with safe_open(path) as handle:
        body = handle.header.tensors[0].body
        frequencies = np.array([t.frequencies for t in body.tables])
        symbols = (indices.reshape(-1) - body.index_offset).astype(np.int32)
        ideal_bits = 0.0
        rows = body.rows_per_chunk
        for k in range(body.chunk_count):
            part = indices[k * rows:(k + 1) * rows].reshape(-1)
            contexts = np.zeros(len(part), np.int32)
            if body.context_model == 1:  # spec §7.4: the same lane's previous index
                previous = np.concatenate([[body.context_center] * lanes, part[:-lanes]])
                contexts = np.minimum(np.abs(previous - body.context_center),
                                      body.context_count - 1).astype(np.int32)
            chunk_symbols = symbols[k * rows * 300:(k + 1) * rows * 300]
            ideal_bits += ideal_code_length_bits(chunk_symbols, contexts, frequencies,
                                                 body.precision_bits)
        payload = sum(chunk.size for chunk in body.chunks)
        fixed = body.chunk_count * (4 + 4 * lanes)
        assert payload - fixed <= 1.01 * ideal_bits / 8, (payload, ideal_bits / 8)
        assert np.array_equal(handle.get_indices("t"), indices)
