"""The fast 4-lane kernels (kernels.decode_fast_*, tried first by dispatch.decode_chunks) against
the general chunk kernels: the same bytes for every chunk that decodes, the same error code and
byte offset for every chunk that does not, on random chunks of both context models, damaged or
not."""

import struct

import numpy as np
from hypothesis import given, settings, strategies as st

from nncodec_rd.conformance.strategies import frequency_tables
from nncodec_rd.decoder import dispatch, kernels
from nncodec_rd.decoder.reader import ChunkDecoder
from nncodec_rd.encoder.rans import encode_chunk


def _damage(draw, payload: bytes) -> bytes:
    """One fault of the kinds a chunk can have, or none."""
    kind = draw(st.sampled_from(["none", "none", "flip", "truncate", "append", "escapes"]))
    data = bytearray(payload)
    if kind == "flip" and data:
        position = draw(st.integers(0, len(data) - 1))
        data[position] ^= 1 << draw(st.integers(0, 7))
    elif kind == "truncate" and data:
        del data[draw(st.integers(0, len(data) - 1)):]
    elif kind == "append":
        data += bytes(draw(st.lists(st.integers(0, 255), min_size=1, max_size=4)))
    elif kind == "escapes" and len(data) >= 4:
        data[0:4] = struct.pack("<I", draw(st.integers(0, 3)))
    return bytes(data)


def _contexts(symbols, escaped_index, index_offset, escape_symbol, lane_count, context_count,
              context_center):
    """spec §7.4 (PREVIOUS_INDEX): the table of each symbol, from its lane's previous index."""
    contexts = np.zeros(len(symbols), np.int32)
    for i in range(lane_count, len(symbols)):
        previous = symbols[i - lane_count]
        index = escaped_index if previous == escape_symbol else previous + index_offset
        contexts[i] = min(abs(index - context_center), context_count - 1)
    return contexts


@st.composite
def chunk_sets(draw):
    """Chunks of one tensor (4 lanes mostly, either context model, any tables, escapes or not,
    step groups), each possibly damaged, laid out at odd offsets in one buffer."""
    alphabet_size = draw(st.sampled_from([1, 2, 3, 7, 40, 255, 256, 257, 300]))
    context_model = draw(st.sampled_from([0, 1]))
    context_count = draw(st.integers(2, 4)) if context_model == 1 else 1
    precision_bits = draw(st.integers(1, 16))
    frequencies = [draw(frequency_tables(alphabet_size=alphabet_size,
                                         precision_bits=precision_bits))[1]
                   for _ in range(context_count)]
    escape_symbol = alphabet_size - 1 if draw(st.booleans()) else -1
    lane_count = draw(st.sampled_from([4, 4, 4, 1, 3, 8]))
    row_length = draw(st.integers(1, 13))
    rows_per_chunk = draw(st.integers(0, 6))
    chunk_count = draw(st.integers(1, 3))
    index_offset = -(alphabet_size // 2)
    context_center = draw(st.integers(index_offset, index_offset + alphabet_size - 1))
    escaped_index = index_offset + alphabet_size + 5  # outside the direct indices (spec §7.5)
    buffer = bytearray(draw(st.binary(min_size=0, max_size=3)))
    offsets, sizes, intact = [], [], []
    for _ in range(chunk_count):
        count = rows_per_chunk * row_length
        symbols = np.zeros(count, np.int32)
        for i in range(count):  # each symbol drawn from those its table can code
            context = _contexts(symbols[:i + 1], escaped_index, index_offset, escape_symbol,
                                lane_count, context_count, context_center)[i]
            usable = [s for s, f in enumerate(frequencies[context]) if f]
            symbols[i] = draw(st.sampled_from(usable))
        contexts = _contexts(symbols, escaped_index, index_offset, escape_symbol, lane_count,
                             context_count, context_center)
        escapes = b""
        if escape_symbol >= 0 and draw(st.booleans()):
            escaped = int(np.sum(symbols == escape_symbol))
            escapes = struct.pack(f"<{escaped}i", *([escaped_index] * escaped))
        states, words = encode_chunk(symbols, contexts, np.array(frequencies), precision_bits,
                                     lane_count)
        payload = (struct.pack("<I", len(escapes) // 4) + escapes
                   + states.astype("<u4").tobytes() + words.astype("<u2").tobytes())
        damaged = _damage(draw, payload)
        intact.append(damaged == payload)
        offsets.append(len(buffer))
        sizes.append(len(damaged))
        buffer += damaged + bytes(draw(st.integers(0, 3)))
    rows = rows_per_chunk * chunk_count
    rows_per_group = draw(st.integers(0, max(rows, 1)))
    group_count = 1 if rows_per_group == 0 else max(1, -(-rows // rows_per_group))
    output_kind = draw(st.sampled_from([kernels.OUTPUT_FLOAT32, kernels.OUTPUT_FLOAT16,
                                        kernels.OUTPUT_INDEX]))
    return dict(buffer=np.frombuffer(bytes(buffer), dtype=np.uint8), offsets=offsets,
                sizes=sizes, intact=intact, rows_per_chunk=rows_per_chunk, row_length=row_length,
                lane_count=lane_count, precision_bits=precision_bits, frequencies=frequencies,
                context_model=context_model, context_count=context_count,
                context_center=context_center, escape_symbol=escape_symbol,
                index_offset=index_offset, rows_per_group=rows_per_group,
                group_count=group_count, output_kind=output_kind,
                seed=draw(st.integers(0, 2**32 - 1)))


def _decode(case, decoder, use_fast):
    """dispatch.decode_chunks over the case's chunks: (output bytes per chunk, errors)."""
    chunk_count = len(case["offsets"])
    count = case["rows_per_chunk"] * case["row_length"]
    chunks = np.zeros((chunk_count, 5), np.int64)
    chunks[:, kernels.C_OFFSET] = case["offsets"]
    chunks[:, kernels.C_SIZE] = case["sizes"]
    chunks[:, kernels.C_FIRST_ROW] = np.arange(chunk_count) * case["rows_per_chunk"]
    chunks[:, kernels.C_SYMBOL_COUNT] = count
    chunks[:, kernels.C_OUT_START] = np.arange(chunk_count) * count
    dtype = {kernels.OUTPUT_FLOAT32: np.float32, kernels.OUTPUT_INDEX: np.int32}.get(
        case["output_kind"], np.uint16)
    out = np.zeros(chunk_count * count, dtype)
    errors = np.zeros((chunk_count, 2), np.int64)
    tables = kernels.with_slot_tables(
        decoder.kernel_tables,
        *kernels.build_symbol_tables(decoder.frequencies, decoder.precision_bits))
    batch = kernels.chunk_batch(case["buffer"], chunks, out, errors)
    dispatch.decode_chunks(tables, batch, threads=2, use_fast=use_fast)
    parts = [out[k * count:(k + 1) * count].tobytes() for k in range(chunk_count)]
    return parts, errors, tables, batch


@settings(max_examples=400, deadline=None)
@given(chunk_sets())
def test_fast_kernel_agrees_with_the_general_kernels(case):
    alphabet_size = len(case["frequencies"][0])
    chunk_count = len(case["offsets"])
    frequencies = np.array(case["frequencies"], np.int64)
    symbol_contexts = kernels.contexts_of_symbols(
        alphabet_size, case["index_offset"], case["context_model"], case["context_count"],
        case["context_center"], case["escape_symbol"])
    rng = np.random.default_rng(case["seed"])
    steps = rng.uniform(0.001, 10, case["group_count"]).astype(np.float32)
    zero_points = rng.integers(-3, 4, case["group_count"]).astype(np.int64)
    value_table, invalid_symbols = kernels.build_value_table(
        alphabet_size, case["index_offset"], kernels.GRID_UNIFORM, case["group_count"], steps,
        zero_points, np.zeros(0, np.float32), 0, case["output_kind"])
    decoder = ChunkDecoder("chunks", case["row_length"], case["lane_count"],
                           case["precision_bits"], case["context_model"], case["context_count"],
                           case["context_center"], case["escape_symbol"], case["index_offset"],
                           frequencies, symbol_contexts, kernels.GRID_UNIFORM,
                           case["rows_per_group"], steps, zero_points, np.zeros(0, np.float32),
                           0, value_table, invalid_symbols[:0], case["output_kind"])
    fast_parts, errors_fast, tables, batch = _decode(case, decoder, True)
    general_parts, errors_general, _, _ = _decode(case, decoder, False)
    assert errors_fast.tolist() == errors_general.tolist()
    for k in range(chunk_count):
        if errors_general[k, 0] == 0:  # what a failed chunk leaves in the output is unspecified
            assert fast_parts[k] == general_parts[k]
    # The fast kernel itself accepts every intact chunk it is meant for (it is not just
    # falling back every time).
    kernel = dispatch.FAST_KERNELS[(case["context_model"] == 1,
                                    tables.fast_escape_symbol >= 0)]
    for k in range(chunk_count):
        if (case["lane_count"] == 4 and case["intact"][k] and errors_general[k, 0] == 0
                and struct.unpack_from("<I", case["buffer"], case["offsets"][k])[0] == 0):
            errors = np.zeros((chunk_count, 2), np.int64)
            kernel(tables, batch._replace(out=batch.out.copy(), errors=errors),
                   np.array([k], np.int64))
            assert errors[k, 0] == 0
