"""Numba kernels of the decoder: rANS chunk decoding, dequantization, dtype rounding (spec §6-§7).

Kernels never raise: they write an error code and the byte offset of the fault into a buffer the
wrapper allocated, and :mod:`nncodec_rd.decoder.reader` turns codes into exceptions. They share no
code with the encoder.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..format.constants import RANS_STATE_LOWER_BOUND, Limits
from ..format.errors import ErrorCode

# Output kinds of decode_chunks (what the kernel writes per element).
OUTPUT_INDEX = 0  # int32 index
OUTPUT_FLOAT32 = 1  # float32 value
OUTPUT_FLOAT16 = 2  # binary16 bits of the value
OUTPUT_BFLOAT16 = 3  # bfloat16 bits of the value

GRID_UNIFORM = 1
GRID_CODEBOOK = 2

# Error codes the kernels report: the spec's numbers, as plain ints Numba can compile in.
STREAM_TRUNCATED = int(ErrorCode.STREAM_TRUNCATED)
RANS_STATE_OUT_OF_RANGE = int(ErrorCode.RANS_STATE_OUT_OF_RANGE)
STREAM_TRAILING_DATA = int(ErrorCode.STREAM_TRAILING_DATA)
RANS_FINAL_STATE = int(ErrorCode.RANS_FINAL_STATE)
ESCAPE_MISMATCH = int(ErrorCode.ESCAPE_MISMATCH)
INDEX_OUT_OF_RANGE = int(ErrorCode.INDEX_OUT_OF_RANGE)

STATE_LOWER_BOUND = RANS_STATE_LOWER_BOUND
CANONICAL_NAN = np.array([0x7FC00000], dtype=np.uint32).view(np.float32)[0]
MAX_ABS_INDEX = Limits.MAX_ABS_INDEX


@njit(cache=True, inline="always")
def _read_u32(buffer, position):
    return (np.uint32(buffer[position]) | (np.uint32(buffer[position + 1]) << np.uint32(8))
            | (np.uint32(buffer[position + 2]) << np.uint32(16))
            | (np.uint32(buffer[position + 3]) << np.uint32(24)))


@njit(cache=True)
def float32_bits_to_float16_bits(bits):
    """IEEE 754 binary32 -> binary16, round to nearest, ties to even (spec §6.5)."""
    sign = np.uint16((bits >> np.uint32(16)) & np.uint32(0x8000))
    exponent = bits & np.uint32(0x7F800000)
    mantissa = bits & np.uint32(0x007FFFFF)
    if exponent == np.uint32(0x7F800000):
        if mantissa != 0:
            return np.uint16(0x7E00)  # every NaN becomes the canonical quiet NaN (spec §6.5)
        return np.uint16(sign | np.uint16(0x7C00))
    if exponent >= np.uint32(0x47800000):
        return np.uint16(sign | np.uint16(0x7C00))
    if exponent <= np.uint32(0x38000000):
        # Zero or subnormal in binary16.
        if exponent < np.uint32(0x33000000):
            return sign
        shift = np.uint32(126) - (exponent >> np.uint32(23))  # 14 ... 24
        significand = mantissa | np.uint32(0x00800000)
        half = significand >> shift
        remainder = significand & ((np.uint32(1) << shift) - np.uint32(1))
        halfway = np.uint32(1) << (shift - np.uint32(1))
        if remainder > halfway or (remainder == halfway and (half & np.uint32(1))):
            half += np.uint32(1)
        return np.uint16(sign | np.uint16(half))
    half_exponent = (exponent - np.uint32(0x38000000)) >> np.uint32(13)
    half = half_exponent | (mantissa >> np.uint32(13))
    remainder = mantissa & np.uint32(0x1FFF)
    if remainder > np.uint32(0x1000) or (remainder == np.uint32(0x1000) and (half & np.uint32(1))):
        half += np.uint32(1)  # may carry into the exponent, up to infinity: still correct
    return np.uint16(sign | np.uint16(half))


@njit(cache=True)
def float32_bits_to_bfloat16_bits(bits):
    """IEEE binary32 -> bfloat16, round to nearest, ties to even; NaN stays a quiet NaN."""
    if (bits & np.uint32(0x7F800000)) == np.uint32(0x7F800000) and (bits & np.uint32(0x007FFFFF)):
        return np.uint16(0x7FC0)  # every NaN becomes the canonical quiet NaN (spec §6.5)
    rounding = np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))
    return np.uint16((np.uint64(bits) + np.uint64(rounding)) >> np.uint64(16))


# Largest value table (groups x alphabet) built; beyond it values are computed per symbol.
MAX_VALUE_TABLE_ENTRIES = 1 << 20
_LOW32 = np.uint64(0xFFFFFFFF)
_HIGH_SHIFT = np.uint64(32)


def build_symbol_tables(frequencies: np.ndarray, precision_bits: int):
    """spec §7.4 as two lookup tables, contexts one after another.

    ``slot_symbols[context * 2^n + slot]`` is the symbol that owns ``slot`` (uint8 when the
    alphabet allows, so that the table stays in the first-level cache); ``symbol_info[context *
    alphabet_size + symbol]`` packs the symbol's frequency (low 32 bits) and start (high 32 bits).
    """
    context_count, alphabet_size = frequencies.shape
    dtype = np.uint8 if alphabet_size <= 256 else np.uint16
    slot_symbols = np.zeros(context_count << precision_bits, dtype=dtype)
    symbol_info = np.zeros(context_count * alphabet_size, dtype=np.uint64)
    _fill_symbol_tables(frequencies, precision_bits, slot_symbols, symbol_info)
    return slot_symbols, symbol_info


@njit(cache=True)
def _fill_symbol_tables(frequencies, precision_bits, slot_symbols, symbol_info):
    context_count, alphabet_size = frequencies.shape
    for context in range(context_count):
        start = 0
        base = context << precision_bits
        for symbol in range(alphabet_size):
            frequency = frequencies[context, symbol]
            slot_symbols[base + start:base + start + frequency] = symbol
            symbol_info[context * alphabet_size + symbol] = (np.uint64(frequency)
                                                             | (np.uint64(start) << _HIGH_SHIFT))
            start += frequency


@njit(cache=True)
def uniform_value(step, index, zero_point):
    """spec §6.1: RN32(step x f32(index - zero_point)); the difference is exact in binary32."""
    return step * np.float32(index - zero_point)


@njit(cache=True)
def _value_table32(alphabet_size, index_offset, grid_kind, group_count, steps, zero_points,
                   codebook, codebook_first):
    values = np.zeros(group_count * alphabet_size, dtype=np.float32)
    invalid = np.zeros(alphabet_size, dtype=np.uint8)
    for group in range(group_count):
        for symbol in range(alphabet_size):
            index = np.int64(symbol) + index_offset
            if grid_kind == GRID_UNIFORM:
                values[group * alphabet_size + symbol] = uniform_value(steps[group], index,
                                                                       zero_points[group])
            else:
                entry = index - codebook_first
                if entry < 0 or entry >= len(codebook):
                    invalid[symbol] = 1
                else:
                    values[group * alphabet_size + symbol] = codebook[entry]
    return values, invalid


def build_value_table(alphabet_size, index_offset, grid_kind, group_count, steps, zero_points,
                      codebook, codebook_first, output_kind):
    """What the kernel writes for each direct symbol in each group, in the output's dtype: the
    binary32 value, its binary16/bfloat16 pattern, or the index itself; plus which symbols fall
    outside a codebook. Each value is computed exactly as spec §6.1/§6.2 define it, so looking it
    up gives the same bits as computing it. The table is empty (values are then computed per
    symbol) when groups x alphabet exceeds MAX_VALUE_TABLE_ENTRIES."""
    if output_kind == OUTPUT_INDEX:
        # spec §6.2: direct symbols outside a codebook are flagged for the index output too, so
        # that get_indices refuses what get_tensor refuses (issue 17).
        table = (np.arange(alphabet_size, dtype=np.int64) + index_offset).astype(np.int32)
        _, invalid = _value_table32(alphabet_size, index_offset, grid_kind, 0, steps, zero_points,
                                    codebook, codebook_first)
        return table, invalid
    if group_count * alphabet_size > MAX_VALUE_TABLE_ENTRIES:
        empty = np.zeros(0, np.float32 if output_kind == OUTPUT_FLOAT32 else np.uint16)
        _, invalid = _value_table32(alphabet_size, index_offset, grid_kind, 0, steps, zero_points,
                                    codebook, codebook_first)
        return empty, invalid
    values, invalid = _value_table32(alphabet_size, index_offset, grid_kind, group_count, steps,
                                     zero_points, codebook, codebook_first)
    if output_kind == OUTPUT_FLOAT32:
        return values, invalid
    bits16 = np.empty(len(values), dtype=np.uint16)
    convert_float32_bits(values, output_kind, bits16)
    return bits16, invalid


@njit(cache=True)
def contexts_of_symbols(alphabet_size, index_offset, context_model, context_count,
                        context_center, escape_symbol):
    """spec §7.4: the context that follows each direct symbol (the escape symbol's depends on
    the escaped index and is computed when it occurs)."""
    contexts = np.zeros(alphabet_size, dtype=np.int64)
    if context_model == 1:
        for symbol in range(alphabet_size):
            if symbol == escape_symbol:
                continue
            distance = abs(np.int64(symbol) + index_offset - context_center)
            contexts[symbol] = min(distance, context_count - 1)
    return contexts


@njit(inline="always")
def _decode_chunk_body(buffer, chunk_offset, chunk_size, symbol_count, first_row, row_length,
                       lane_count, precision_bits, previous_index_context, context_count,
                       context_center, escape_symbol, index_offset, slot_symbols, symbol_info, symbol_contexts,
                       grid_kind, rows_per_group, steps, zero_points, codebook, codebook_first,
                       value_table, invalid_symbols, output_kind, out, out_start,
                       states, errors, chunk_number):
    """Decode one chunk (spec §7.3-§7.7). Inlined into one kernel per next_context model, where
    ``previous_index_context`` is a constant, so the IID kernel carries no next_context work."""
    end = chunk_offset + chunk_size
    # spec §7.3: the chunk's fixed part, in the order the spec gives.
    if chunk_size < 4:
        errors[chunk_number, 0] = STREAM_TRUNCATED
        errors[chunk_number, 1] = chunk_offset
        return
    escape_count = np.int64(_read_u32(buffer, chunk_offset))
    escape_position = chunk_offset + 4
    position = escape_position + 4 * escape_count
    if position + 4 * lane_count > end:
        errors[chunk_number, 0] = STREAM_TRUNCATED
        errors[chunk_number, 1] = chunk_offset
        return
    if (end - position - 4 * lane_count) % 2 != 0:
        errors[chunk_number, 0] = STREAM_TRAILING_DATA
        errors[chunk_number, 1] = end - 1
        return
    for lane in range(lane_count):
        state = np.uint64(_read_u32(buffer, position))
        if state < STATE_LOWER_BOUND:
            errors[chunk_number, 0] = RANS_STATE_OUT_OF_RANGE
            errors[chunk_number, 1] = position
            return
        states[lane] = state
        position += 4
    alphabet_size = len(symbol_contexts)
    one_value = np.zeros(1, dtype=np.float32)
    one_bits = one_value.view(np.uint32)
    slot_mask = np.uint64((1 << precision_bits) - 1)
    shift = np.uint64(precision_bits)
    use_value_table = len(value_table) > 0 or output_kind == OUTPUT_INDEX
    check_codebook = len(invalid_symbols) > 0  # empty unless a decodable symbol is outside
    escapes_used = 0
    lane = 0
    row = first_row
    group = row // rows_per_group if rows_per_group > 0 else 0
    value_base = group * alphabet_size if output_kind != OUTPUT_INDEX else 0
    # spec §7.4: each lane's next_context comes from its own previous index (context_center at first,
    # which is next_context 0), so lanes do not wait for one another.
    lane_slot_bases = np.zeros(lane_count, dtype=np.uint64)
    lane_info_bases = np.zeros(lane_count, dtype=np.uint64)
    last_word = end - 2  # reads are clamped here; a read past the end is caught just after
    rows_in_chunk = symbol_count // row_length if row_length > 0 else 0
    i = 0
    for _ in range(rows_in_chunk):
        for _ in range(row_length):
            # spec §7.6: one decoding step of lane i mod lane_count.
            state = states[lane]
            state_slot = state & slot_mask
            if previous_index_context:
                symbol = np.int64(slot_symbols[lane_slot_bases[lane] + state_slot])
                symbol_entry = symbol_info[lane_info_bases[lane] + np.uint64(symbol)]
            else:
                symbol = np.int64(slot_symbols[state_slot])
                symbol_entry = symbol_info[symbol]
            state = (symbol_entry & _LOW32) * (state >> shift) + state_slot - (symbol_entry >> _HIGH_SHIFT)
            # Renormalize without a branch: the word is read (from a clamped position) and used
            # only if the state fell below 2^16.
            need = state < STATE_LOWER_BOUND
            read_at = min(position, last_word)
            word = np.uint64(buffer[read_at]) | (np.uint64(buffer[read_at + 1]) << np.uint64(8))
            if need:
                state = (state << np.uint64(16)) | word
            states[lane] = state
            position += 2 * np.int64(need)
            if position > end:
                errors[chunk_number, 0] = STREAM_TRUNCATED
                errors[chunk_number, 1] = end
                return
            decoded_lane = lane
            lane += 1
            if lane == lane_count:
                lane = 0
            target = out_start + i
            i += 1
            if symbol != escape_symbol:
                if previous_index_context:
                    next_context = symbol_contexts[symbol]
                    lane_slot_bases[decoded_lane] = np.uint64(next_context << precision_bits)
                    lane_info_bases[decoded_lane] = np.uint64(next_context * alphabet_size)
                if use_value_table:
                    if check_codebook and invalid_symbols[symbol]:
                        errors[chunk_number, 0] = INDEX_OUT_OF_RANGE
                        errors[chunk_number, 1] = chunk_offset
                        return
                    out[target] = value_table[value_base + symbol]
                    continue
                index = symbol + index_offset
            else:
                # spec §7.5: an escape takes the chunk's next escaped index.
                if escapes_used >= escape_count:
                    errors[chunk_number, 0] = ESCAPE_MISMATCH
                    errors[chunk_number, 1] = chunk_offset
                    return
                index = np.int64(np.int32(_read_u32(buffer, escape_position + 4 * escapes_used)))
                escapes_used += 1
                if (index >= index_offset and index < index_offset + escape_symbol) \
                        or index > MAX_ABS_INDEX or index < -MAX_ABS_INDEX:
                    errors[chunk_number, 0] = ESCAPE_MISMATCH
                    errors[chunk_number, 1] = escape_position + 4 * (escapes_used - 1)
                    return
                if previous_index_context:
                    next_context = min(abs(index - context_center), context_count - 1)
                    lane_slot_bases[decoded_lane] = np.uint64(next_context << precision_bits)
                    lane_info_bases[decoded_lane] = np.uint64(next_context * alphabet_size)
            # The value computed from the index (escapes, and grids too large for a table).
            if output_kind == OUTPUT_INDEX:
                out[target] = index
                continue
            if grid_kind == GRID_UNIFORM:
                value = uniform_value(steps[group], index, zero_points[group])
            else:
                entry_index = index - codebook_first
                if entry_index < 0 or entry_index >= len(codebook):
                    errors[chunk_number, 0] = INDEX_OUT_OF_RANGE
                    errors[chunk_number, 1] = chunk_offset
                    return
                value = codebook[entry_index]
            if output_kind == OUTPUT_FLOAT32:
                out[target] = value
            else:
                one_value[0] = value
                if output_kind == OUTPUT_FLOAT16:
                    out[target] = float32_bits_to_float16_bits(one_bits[0])
                else:
                    out[target] = float32_bits_to_bfloat16_bits(one_bits[0])
        row += 1
        if rows_per_group > 0 and row % rows_per_group == 0:
            group += 1
            if output_kind != OUTPUT_INDEX:
                value_base = group * alphabet_size
    # spec §7.7: the end of the chunk.
    if position != end:
        errors[chunk_number, 0] = STREAM_TRAILING_DATA
        errors[chunk_number, 1] = position
        return
    for lane in range(lane_count):
        if states[lane] != STATE_LOWER_BOUND:
            errors[chunk_number, 0] = RANS_FINAL_STATE
            errors[chunk_number, 1] = end
            return
    if escapes_used != escape_count:
        errors[chunk_number, 0] = ESCAPE_MISMATCH
        errors[chunk_number, 1] = chunk_offset


@njit(cache=True)
def _decode_chunk_iid(buffer, chunk_offset, chunk_size, symbol_count, first_row, row_length,
                      lane_count, precision_bits, context_count, context_center, escape_symbol,
                      index_offset, slot_symbols, symbol_info, symbol_contexts, grid_kind, rows_per_group, steps,
                      zero_points, codebook, codebook_first, value_table,
                      invalid_symbols, output_kind, out, out_start, states, errors, chunk_number):
    _decode_chunk_body(buffer, chunk_offset, chunk_size, symbol_count, first_row, row_length,
                       lane_count, precision_bits, False, context_count, context_center,
                       escape_symbol, index_offset, slot_symbols, symbol_info, symbol_contexts, grid_kind,
                       rows_per_group, steps, zero_points, codebook, codebook_first, value_table,
                       invalid_symbols, output_kind, out, out_start, states,
                       errors, chunk_number)


@njit(cache=True)
def _decode_chunk_previous(buffer, chunk_offset, chunk_size, symbol_count, first_row, row_length,
                           lane_count, precision_bits, context_count, context_center,
                           escape_symbol, index_offset, slot_symbols, symbol_info, symbol_contexts, grid_kind,
                           rows_per_group, steps, zero_points, codebook, codebook_first,
                           value_table, invalid_symbols, output_kind, out,
                           out_start, states, errors, chunk_number):
    _decode_chunk_body(buffer, chunk_offset, chunk_size, symbol_count, first_row, row_length,
                       lane_count, precision_bits, True, context_count, context_center,
                       escape_symbol, index_offset, slot_symbols, symbol_info, symbol_contexts, grid_kind,
                       rows_per_group, steps, zero_points, codebook, codebook_first, value_table,
                       invalid_symbols, output_kind, out, out_start, states,
                       errors, chunk_number)


_U1 = np.uint64(1)
_U2 = np.uint64(2)
_U4 = np.uint64(4)
_U8 = np.uint64(8)
_U16 = np.uint64(16)


@njit(inline="always")
def _lane_step(state, slot_base, info_base, slot_symbols, symbol_info, slot_mask, shift):
    """spec §7.6, one lane's step up to renormalisation, in the table whose slots start at
    ``slot_base`` and symbols at ``info_base``: the symbol that owns the state's slot, and the
    state it leaves."""
    state_slot = state & slot_mask
    symbol = slot_symbols[slot_base + state_slot]
    symbol_entry = symbol_info[info_base + symbol]
    state = (symbol_entry & _LOW32) * (state >> shift) + state_slot - (symbol_entry >> _HIGH_SHIFT)
    return symbol, state


@njit(inline="always")
def _renormalize(state, buffer, position):
    """spec §7.6: a state below 2^16 takes the u16 word at ``position`` (a uint64, so that
    indexing needs no negative-index fix-up), without a branch; the word is read either way,
    so the caller must know that two bytes are left there."""
    need = state < STATE_LOWER_BOUND
    word = np.uint64(buffer[position]) | (np.uint64(buffer[position + _U1]) << _U8)
    if need:
        state = (state << _U16) | word
    return state, position + (np.uint64(need) << _U1)


@njit(inline="always")
def _decode_chunk_4lanes_body(buffer, chunk_offset, chunk_size, symbol_count, first_row,
                              row_length, precision_bits, previous_index_context, escape_symbol,
                              slot_symbols, symbol_info, next_slot_bases, next_info_bases,
                              alphabet_size, rows_per_group, value_table, out, out_start):
    """_decode_chunk_4lanes for one context model and, with ``escape_symbol`` -1, for no
    escape symbol: both are constants where it is inlined, so the IID copy carries no context
    work and the copy without escapes no escape test."""
    end = np.uint64(chunk_offset + chunk_size)
    # spec §7.3 (a fault here: False, and the general kernel reports it).
    if chunk_size < 4 + 16 or _read_u32(buffer, chunk_offset) != 0:
        return False
    if (chunk_size - 4 - 16) % 2 != 0:
        return False
    position = np.uint64(chunk_offset + 4)
    state0 = np.uint64(_read_u32(buffer, position))
    state1 = np.uint64(_read_u32(buffer, position + _U4))
    state2 = np.uint64(_read_u32(buffer, position + _U8))
    state3 = np.uint64(_read_u32(buffer, position + np.uint64(12)))
    if min(min(state0, state1), min(state2, state3)) < STATE_LOWER_BOUND:
        return False
    position += _U16
    # spec §7.4: each lane starts in table 0 (the context of context_center); with IID the
    # bases stay 0.
    slot_base0 = slot_base1 = slot_base2 = slot_base3 = np.uint64(0)
    info_base0 = info_base1 = info_base2 = info_base3 = np.uint64(0)
    slot_mask = np.uint64((1 << precision_bits) - 1)
    shift = np.uint64(precision_bits)
    escape_seen = False  # with no escaped index in the chunk, an escape symbol is a fault
    rows_in_chunk = symbol_count // row_length if row_length > 0 else 0
    row = first_row
    stop_row = first_row + rows_in_chunk
    target = np.uint64(out_start)
    while row < stop_row:
        # Rows of one step group share a part of the value table (spec §6.1).
        if rows_per_group > 0:
            group = row // rows_per_group
            segment_stop = min(stop_row, (group + 1) * rows_per_group)
            value_base = group * alphabet_size
        else:
            segment_stop = stop_row
            value_base = 0
        values = value_table[value_base:value_base + alphabet_size]
        segment_end = target + np.uint64((segment_stop - row) * row_length)
        # Whole rounds of four symbols, lane 0 first, as many as cannot run out of words (a
        # round reads at most 8 bytes); then again from where the words got to.
        while True:
            rounds = min((segment_end - target) >> np.uint64(2), (end - position) >> np.uint64(3))
            if rounds == 0:
                break
            for _ in range(np.int64(rounds)):
                symbol0, state0 = _lane_step(state0, slot_base0, info_base0, slot_symbols,
                                             symbol_info, slot_mask, shift)
                state0, position = _renormalize(state0, buffer, position)
                symbol1, state1 = _lane_step(state1, slot_base1, info_base1, slot_symbols,
                                             symbol_info, slot_mask, shift)
                state1, position = _renormalize(state1, buffer, position)
                symbol2, state2 = _lane_step(state2, slot_base2, info_base2, slot_symbols,
                                             symbol_info, slot_mask, shift)
                state2, position = _renormalize(state2, buffer, position)
                symbol3, state3 = _lane_step(state3, slot_base3, info_base3, slot_symbols,
                                             symbol_info, slot_mask, shift)
                state3, position = _renormalize(state3, buffer, position)
                if previous_index_context:
                    # spec §7.4: the next table of each lane, from the index just decoded.
                    slot_base0 = next_slot_bases[symbol0]
                    info_base0 = next_info_bases[symbol0]
                    slot_base1 = next_slot_bases[symbol1]
                    info_base1 = next_info_bases[symbol1]
                    slot_base2 = next_slot_bases[symbol2]
                    info_base2 = next_info_bases[symbol2]
                    slot_base3 = next_slot_bases[symbol3]
                    info_base3 = next_info_bases[symbol3]
                if escape_symbol >= 0:
                    escape_seen |= ((symbol0 == escape_symbol) | (symbol1 == escape_symbol)
                                    | (symbol2 == escape_symbol) | (symbol3 == escape_symbol))
                out[target] = values[symbol0]
                out[target + _U1] = values[symbol1]
                out[target + _U2] = values[symbol2]
                out[target + np.uint64(3)] = values[symbol3]
                target += _U4
        # The rest of the segment one symbol at a time, each read checked; the lanes turn
        # round so that lane 0's variables stay the next lane's.
        while target < segment_end:
            symbol0, state0 = _lane_step(state0, slot_base0, info_base0, slot_symbols,
                                         symbol_info, slot_mask, shift)
            if state0 < STATE_LOWER_BOUND:
                if position + _U2 > end:
                    return False
                state0, position = _renormalize(state0, buffer, position)
            if previous_index_context:
                slot_base0 = next_slot_bases[symbol0]
                info_base0 = next_info_bases[symbol0]
            escape_seen |= symbol0 == escape_symbol
            out[target] = values[symbol0]
            target += _U1
            state0, state1, state2, state3 = state1, state2, state3, state0
            if previous_index_context:
                slot_base0, slot_base1, slot_base2, slot_base3 = (slot_base1, slot_base2,
                                                                  slot_base3, slot_base0)
                info_base0, info_base1, info_base2, info_base3 = (info_base1, info_base2,
                                                                  info_base3, info_base0)
        row = segment_stop
    # spec §7.7 (escape_count is 0, so no escape may have been decoded).
    return (position == end and not escape_seen and state0 == STATE_LOWER_BOUND
            and state1 == STATE_LOWER_BOUND and state2 == STATE_LOWER_BOUND
            and state3 == STATE_LOWER_BOUND)


@njit(cache=True)
def _decode_chunk_4lanes(buffer, chunk_offset, chunk_size, symbol_count, first_row, row_length,
                         precision_bits, previous_index_context, escape_symbol, slot_symbols,
                         symbol_info, next_slot_bases, next_info_bases, alphabet_size,
                         rows_per_group, value_table, out, out_start):
    """The common case of the chunk kernels, fast: 4 lanes, no escaped index in the chunk,
    every output looked up in ``value_table`` (``rows_per_group`` 0: one table for every row),
    no codebook check; ``escape_symbol`` -1 when no escape symbol can be decoded. With
    ``previous_index_context`` (spec §7.4) a lane whose symbol is ``s`` next uses the table
    whose slots start at ``next_slot_bases[s]`` and symbols at ``next_info_bases[s]``.

    Returns True when the chunk decoded and passed every check of spec §7.3-§7.7; False as
    soon as anything is unusual (a fault, an escape), without saying what: the caller then
    decodes the chunk again with the general kernel, which finds the first fault and its byte
    offset, so errors stay exactly the general kernel's.

    Why it is faster: the four lanes' states (and tables) live in registers, the lanes staying
    in one order within each round of four symbols, and rounds read words without clamping or
    a per-symbol end check while at least 8 bytes, the most a round can read, are left."""
    # Four inlined copies, each with its constants (see _decode_chunk_4lanes_body).
    if previous_index_context:
        if escape_symbol < 0:
            return _decode_chunk_4lanes_body(
                buffer, chunk_offset, chunk_size, symbol_count, first_row, row_length,
                precision_bits, True, -1, slot_symbols, symbol_info, next_slot_bases,
                next_info_bases, alphabet_size, rows_per_group, value_table, out, out_start)
        return _decode_chunk_4lanes_body(
            buffer, chunk_offset, chunk_size, symbol_count, first_row, row_length,
            precision_bits, True, escape_symbol, slot_symbols, symbol_info, next_slot_bases,
            next_info_bases, alphabet_size, rows_per_group, value_table, out, out_start)
    if escape_symbol < 0:
        return _decode_chunk_4lanes_body(
            buffer, chunk_offset, chunk_size, symbol_count, first_row, row_length,
            precision_bits, False, -1, slot_symbols, symbol_info, next_slot_bases,
            next_info_bases, alphabet_size, rows_per_group, value_table, out, out_start)
    return _decode_chunk_4lanes_body(
        buffer, chunk_offset, chunk_size, symbol_count, first_row, row_length,
        precision_bits, False, escape_symbol, slot_symbols, symbol_info, next_slot_bases,
        next_info_bases, alphabet_size, rows_per_group, value_table, out, out_start)


@njit(cache=True, parallel=True)
def decode_chunks(buffer, chunk_offsets, chunk_sizes, chunk_first_rows, chunk_symbol_counts,
                  chunk_out_starts, row_length, lane_count, precision_bits, context_model,
                  context_count, context_center, escape_symbol, index_offset, slot_symbols,
                  symbol_info, symbol_contexts, grid_kind, rows_per_group, steps, zero_points, codebook,
                  codebook_first, value_table, invalid_symbols, output_kind, out,
                  errors):
    """Decode independent chunks in parallel into ``out``: float32 values, binary16/bfloat16
    patterns (uint16) or int32 indices, per ``output_kind``; ``value_table`` has ``out``'s dtype.
    ``errors[k] = (code, byte offset)`` for chunk k; code 0 means success."""
    # The fast kernel's case (see _decode_chunk_4lanes); each chunk may still fall back.
    fast = lane_count == 4 and len(value_table) > 0 and len(invalid_symbols) == 0
    alphabet_size = len(symbol_contexts)
    # An escape symbol of frequency 0 in every table is never decoded: the fast kernel need
    # not look for it.
    fast_escape = -1
    if escape_symbol >= 0:
        for context in range(len(symbol_info) // alphabet_size):
            if (symbol_info[context * alphabet_size + escape_symbol] & _LOW32) != 0:
                fast_escape = escape_symbol
    # spec §7.4: the table that follows each direct symbol, as the bases of its two parts.
    next_slot_bases = np.zeros(alphabet_size, dtype=np.uint64)
    next_info_bases = np.zeros(alphabet_size, dtype=np.uint64)
    if context_model == 1:
        for symbol in range(alphabet_size):
            next_slot_bases[symbol] = np.uint64(symbol_contexts[symbol] << precision_bits)
            next_info_bases[symbol] = np.uint64(symbol_contexts[symbol] * alphabet_size)
    fast_rows_per_group = rows_per_group if output_kind != OUTPUT_INDEX else 0
    for k in prange(len(chunk_offsets)):
        if fast and _decode_chunk_4lanes(buffer, chunk_offsets[k], chunk_sizes[k],
                                         chunk_symbol_counts[k], chunk_first_rows[k],
                                         row_length, precision_bits, context_model == 1,
                                         fast_escape, slot_symbols, symbol_info,
                                         next_slot_bases, next_info_bases, alphabet_size,
                                         fast_rows_per_group, value_table, out,
                                         chunk_out_starts[k]):
            continue
        states = np.empty(lane_count, dtype=np.uint64)
        if context_model == 1:
            _decode_chunk_previous(buffer, chunk_offsets[k], chunk_sizes[k],
                                   chunk_symbol_counts[k], chunk_first_rows[k], row_length,
                                   lane_count, precision_bits, context_count, context_center,
                                   escape_symbol, index_offset, slot_symbols, symbol_info, symbol_contexts,
                                   grid_kind, rows_per_group, steps, zero_points, codebook,
                                   codebook_first, value_table, invalid_symbols,
                                   output_kind, out, chunk_out_starts[k], states, errors, k)
        else:
            _decode_chunk_iid(buffer, chunk_offsets[k], chunk_sizes[k], chunk_symbol_counts[k],
                              chunk_first_rows[k], row_length, lane_count, precision_bits,
                              context_count, context_center, escape_symbol, index_offset,
                              slot_symbols, symbol_info, symbol_contexts, grid_kind, rows_per_group, steps,
                              zero_points, codebook, codebook_first, value_table,
                              invalid_symbols, output_kind, out, chunk_out_starts[k], states,
                              errors, k)


@njit(cache=True, parallel=True)
def right_matrix_product(coefficients, matrix, output_kind, out_f32, out_u16):
    """spec §6.4: out[r, j] = sum_k coefficients[r, k] * matrix[k, j], each product and the running
    sum in binary64, k in increasing order, then rounded once to binary32 (and then to the dtype)."""
    rows, inner = coefficients.shape
    columns = matrix.shape[1]
    for r in prange(rows):
        # A whole row of running sums, k outermost: every sum still takes its products in
        # increasing k, one rounding each (spec §6.4), but the matrix is read row by row and
        # the j loop has independent lanes that vectorize (no reassociation, no FMA).
        totals = np.zeros(columns, dtype=np.float64)
        for k in range(inner):
            coefficient = np.float64(coefficients[r, k])
            for j in range(columns):
                totals[j] += coefficient * np.float64(matrix[k, j])
        row_bits = np.empty(columns, dtype=np.float32)
        for j in range(columns):
            if totals[j] != totals[j]:
                row_bits[j] = CANONICAL_NAN  # spec §6.4: one NaN pattern for every decoder
            else:
                row_bits[j] = np.float32(totals[j])
        if output_kind == OUTPUT_FLOAT32:
            for j in range(columns):
                out_f32[r * columns + j] = row_bits[j]
        else:
            bits = row_bits.view(np.uint32)
            for j in range(columns):
                if output_kind == OUTPUT_FLOAT16:
                    out_u16[r * columns + j] = float32_bits_to_float16_bits(bits[j])
                else:
                    out_u16[r * columns + j] = float32_bits_to_bfloat16_bits(bits[j])


@njit(cache=True)
def convert_float32_bits(values, output_kind, out_u16):
    """Round float32 values to binary16 or bfloat16 bits."""
    bits = values.view(np.uint32)
    for i in range(len(bits)):
        if output_kind == OUTPUT_FLOAT16:
            out_u16[i] = float32_bits_to_float16_bits(bits[i])
        else:
            out_u16[i] = float32_bits_to_bfloat16_bits(bits[i])
