"""rANS encoder: tables sum correctly, and coded size is within 1% of the ideal code length."""

import numpy as np
import pytest
from hypothesis import given, strategies as st

from nncodec_rd import EntropySettings, UniformGrid, safe_open
from nncodec_rd.encoder.rans import (build_frequency_table, encode_chunk, frequency_table_bytes,
                                     ideal_code_length_bits)
from nncodec_rd.encoder.writer import NrdWriter, _cheapest_tables
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


def _written(tmp_path, name, indices, settings):
    """(bytes of chunk payloads and frequency tables, precision, chunks) of ``indices`` coded
    with ``settings``: the parts of a file that the precision changes (the file's own size moves
    in steps of 64 bytes, spec §4.7)."""
    path = tmp_path / f"{name}.nrd"
    with NrdWriter(path) as writer:
        writer.add_indices("t", indices, UniformGrid(0.01), "float32", settings=settings)
    with safe_open(path) as handle:
        body = handle.header.tensors[0].body
        assert np.array_equal(handle.get_indices("t"), indices)
        coded_bytes = sum(chunk.size for chunk in body.chunks) + frequency_table_bytes(
            np.array([table.frequencies for table in body.tables]))
        return coded_bytes, int(body.precision_bits), int(body.chunk_count)


@given(st.integers(0, 2**32 - 1), st.integers(1, 3000), st.floats(0.05, 20.0),
       st.sampled_from(["iid", "previous", "auto"]), st.integers(6, 16))
def test_a_chosen_precision_never_makes_the_file_larger(tmp_path_factory, seed, count, scale,
                                                        context, highest):
    """With ``choose_precision`` the writer keeps the precision (at most ``precision_bits``)
    whose estimated size is smallest, and the highest is among those tried; the estimate
    leaves out only the rounding of each lane's output to whole 16-bit words."""
    indices = np.round(np.random.default_rng(seed).laplace(scale=scale, size=count)).astype(
        np.int64)
    distinct = len(np.unique(indices))
    if distinct > 1 << highest:
        return  # more symbols than slots: the writer refuses any precision alike
    tmp_path = tmp_path_factory.mktemp("precision")
    settings = EntropySettings(precision_bits=highest, context_model=context, lane_count=2,
                               choose_precision=False)
    fixed_bytes, fixed_precision, chunks = _written(tmp_path, "fixed", indices, settings)
    chosen_bytes, chosen_precision, _ = _written(
        tmp_path, "chosen", indices, EntropySettings(precision_bits=highest, context_model=context,
                                                     lane_count=2, choose_precision=True))
    assert fixed_precision == highest and chosen_precision <= highest
    assert chosen_bytes <= fixed_bytes + 2 * 2 * chunks


def test_a_small_tensor_gets_a_lower_precision_and_a_smaller_file(tmp_path):
    """A grouped 3x3 convolution with 576 weights spread over 50 indices: at 14 bits most of its
    frequencies take two bytes of the header, at the chosen precision one; the file is a whole
    64-byte block smaller."""
    indices = np.round(np.random.default_rng(1).laplace(scale=6.0, size=(64, 9))).astype(np.int64)
    fixed_bytes, fixed_precision, _ = _written(tmp_path, "fixed", indices,
                                               EntropySettings(choose_precision=False))
    chosen_bytes, chosen_precision, _ = _written(tmp_path, "chosen", indices,
                                                 EntropySettings(choose_precision=True))
    assert fixed_precision == 14
    assert chosen_precision < 14 and chosen_bytes < fixed_bytes
    assert (tmp_path / "chosen.nrd").stat().st_size == (tmp_path / "fixed.nrd").stat().st_size - 64


def test_a_tie_goes_to_the_lower_precision(tmp_path):
    """Four equally frequent symbols code in 2 bits at every precision >= 2: the decoder's slot
    table (2^precision entries) is then smallest at 2."""
    indices = np.tile(np.arange(4), 250)
    _, precision, _ = _written(tmp_path, "tie", indices,
                               EntropySettings(context_model="iid", choose_precision=True))
    assert precision == 2


def test_a_skewed_layer_with_three_contexts_gets_a_small_slot_table():
    """Regression (issue 7): the digits CNN's 32 x 1024 hidden layer (5 bins, 0.55 bits per
    weight, three previous-index contexts; these are its counts) was coded at 14 bits, so each
    decode built 3 x 16 KB of slot table for 2.3 KB of payload. Its estimated cost is flat
    from 14 bits down to 12 and lowest at 11, which a search stopping two precisions past the
    best missed."""
    counts = np.array([[1490, 27009, 1119, 5], [252, 2611, 275, 1], [3, 3, 0, 0]])
    _, precision, frequencies = _cheapest_tables(counts, EntropySettings(choose_precision=True))
    assert precision == 11 and np.all(frequencies.sum(axis=1) == 1 << 11)
    _, precision, _ = _cheapest_tables(counts, EntropySettings(choose_precision=False))
    assert precision == 14
