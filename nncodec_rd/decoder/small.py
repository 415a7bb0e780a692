"""Tiny tensors without compiling: spec §6-§7 in Python and NumPy, for chunks of few symbols.

Compiling a kernel takes seconds (and loading the first one from the cache, Numba's start-up,
0.3 s); decoding a few thousand symbols in Python takes milliseconds. :func:`decode_small`
decodes the chunks of a tensor of at most :data:`SMALL_TENSOR_SYMBOLS` symbols. It gives the
kernels' bits for every valid chunk (tests compare both on every conformance vector); at the
first thing it does not expect (any fault) it returns False without saying what, and the caller
decodes the tensor with the kernels, which report the fault with its error code and byte
offset, so errors stay exactly the kernels'.
"""

from __future__ import annotations

import numpy as np

from ..format.constants import RANS_STATE_LOWER_BOUND, Limits
from . import kernels

#: Tensors of at most this many symbols are decoded here rather than by a compiled kernel
#: (about 0.8 us a symbol: 3 ms for the largest), while their kernel is not loaded.
SMALL_TENSOR_SYMBOLS = 4096
#: Symbols decoded here per process at most (about 0.4 s); beyond, a file of many small
#: tensors is better served by loading (or compiling) the kernel once.
PROCESS_BUDGET_SYMBOLS = 500_000
_spent = 0


def worth_it(symbols: int) -> bool:
    """Whether a tensor of ``symbols`` symbols should be decoded here (the caller also checks
    that its kernel is not loaded); counts them against the process's budget."""
    global _spent
    if symbols > SMALL_TENSOR_SYMBOLS or _spent + symbols > PROCESS_BUDGET_SYMBOLS:
        return False
    _spent += symbols
    return True


def _chunk_indices(data: bytes, offset: int, size: int, symbol_count: int, decoder) -> list | None:
    """The indices of one chunk (spec §7.3-§7.7), or None at any fault."""
    lanes = decoder.lane_count
    bits = decoder.precision_bits
    mask = (1 << bits) - 1
    lower = RANS_STATE_LOWER_BOUND
    end = offset + size
    if size < 4:
        return None
    escape_count = int.from_bytes(data[offset:offset + 4], "little")
    escape_position = offset + 4
    position = escape_position + 4 * escape_count
    if position + 4 * lanes > end or (end - position - 4 * lanes) % 2:
        return None
    states = [int.from_bytes(data[position + 4 * lane:position + 4 * lane + 4], "little")
              for lane in range(lanes)]
    if min(states, default=lower) < lower:
        return None
    position += 4 * lanes
    frequencies = decoder.frequencies.tolist()
    starts = [[0] * len(row) for row in frequencies]
    owners = []
    for context, row in enumerate(frequencies):
        total, owner = 0, []
        for symbol, frequency in enumerate(row):
            starts[context][symbol] = total
            owner.extend([symbol] * frequency)
            total += frequency
        owners.append(owner)
    escape_symbol = decoder.escape_symbol
    index_offset = decoder.index_offset
    previous = decoder.context_model == 1
    center, last_context = decoder.context_center, decoder.context_count - 1
    contexts = [0] * lanes
    count = (symbol_count // decoder.row_length) * decoder.row_length if decoder.row_length else 0
    indices = [0] * count
    escapes_used = 0
    for i in range(count):
        lane = i % lanes
        context = contexts[lane]
        state = states[lane]
        slot = state & mask
        owner = owners[context]
        if slot >= len(owner):
            return None
        symbol = owner[slot]
        state = frequencies[context][symbol] * (state >> bits) + slot - starts[context][symbol]
        if state < lower:
            if position + 2 > end:
                return None
            state = (state << 16) | int.from_bytes(data[position:position + 2], "little")
            position += 2
        states[lane] = state
        if symbol == escape_symbol:
            if escapes_used >= escape_count:
                return None
            at = escape_position + 4 * escapes_used
            index = int.from_bytes(data[at:at + 4], "little", signed=True)
            escapes_used += 1
            if (index_offset <= index < index_offset + escape_symbol
                    or abs(index) > Limits.MAX_ABS_INDEX):
                return None
        else:
            index = symbol + index_offset
        if previous:
            contexts[lane] = min(abs(index - center), last_context)
        indices[i] = index
    if position != end or any(state != lower for state in states) or escapes_used != escape_count:
        return None
    return indices


def _values(decoder, indices: np.ndarray, first_row: int) -> np.ndarray | None:
    """spec §6.1-§6.2, §6.5: the output of ``indices`` (rows from ``first_row``) in the
    kernels' output dtype, or None if an index falls outside a codebook."""
    kind = decoder.output_kind
    if decoder.grid_kind == kernels.GRID_CODEBOOK:
        entries = indices - decoder.codebook_first
        outside = (entries < 0) | (entries >= len(decoder.codebook))
        if kind == kernels.OUTPUT_INDEX:
            # The kernels refuse a direct symbol outside the codebook (escaped indices are
            # checked by the reader), when such a symbol can be decoded at all.
            if len(decoder.invalid_symbols):
                symbols = indices - decoder.index_offset
                direct = (symbols >= 0) & (symbols < len(decoder.invalid_symbols))
                if np.any(decoder.invalid_symbols[symbols[direct]]):
                    return None
            return indices.astype(np.int32)
        if outside.any():
            return None
        values = decoder.codebook[entries]
    else:
        if kind == kernels.OUTPUT_INDEX:
            return indices.astype(np.int32)
        rows = first_row + np.arange(len(indices)) // max(decoder.row_length, 1)
        groups = rows // decoder.rows_per_group if decoder.rows_per_group > 0 else rows * 0
        values = kernels.uniform_values(decoder.steps[groups], indices,
                                        decoder.zero_points[groups])
    if kind == kernels.OUTPUT_FLOAT32:
        return values.astype(np.float32)
    return kernels.float32_to_half_bits(values, kind)


def decode_small(decoder, buffer: np.ndarray, offsets, sizes, first_rows, counts, out_starts,
                 out: np.ndarray) -> bool:
    """Decode the chunks of a small tensor into ``out`` (flat, the kernels' output dtype) with
    :class:`~nncodec_rd.decoder.reader.ChunkDecoder` ``decoder``'s tables. Returns False, with
    ``out`` partly written, at the first fault or anything unexpected."""
    for k in range(len(offsets)):
        offset, size = int(offsets[k]), int(sizes[k])
        if offset < 0 or offset + size > len(buffer):
            return False
        data = buffer[offset:offset + size].tobytes()
        indices = _chunk_indices(data, 0, size, int(counts[k]), decoder)
        if indices is None:
            return False
        values = _values(decoder, np.array(indices, dtype=np.int64), int(first_rows[k]))
        if values is None:
            return False
        start = int(out_starts[k])
        out[start:start + len(values)] = values
    return True
