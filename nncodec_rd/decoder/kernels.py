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


@njit(cache=True)
def build_slot_tables(frequencies, precision_bits):
    """For each context: the symbol owning each of the 2^precision slots, and cumulative starts."""
    context_count, alphabet_size = frequencies.shape
    slot_count = 1 << precision_bits
    slot_symbol = np.zeros((context_count, slot_count), dtype=np.int32)
    starts = np.zeros((context_count, alphabet_size), dtype=np.int64)
    for context in range(context_count):
        start = 0
        for symbol in range(alphabet_size):
            starts[context, symbol] = start
            for slot in range(start, start + frequencies[context, symbol]):
                slot_symbol[context, slot] = symbol
            start += frequencies[context, symbol]
    return slot_symbol, starts


@njit(cache=True)
def _decode_one_chunk(buffer, chunk_offset, chunk_size, symbol_count, first_row, row_length,
                      lane_count, precision_bits, context_model, context_count, context_center,
                      escape_symbol, index_offset, frequencies, slot_symbol, starts,
                      grid_kind, rows_per_group, steps, zero_points, codebook, codebook_first,
                      output_kind, out_index, out_f32, out_u16, out_start, scratch, states,
                      errors, chunk_number):
    end = chunk_offset + chunk_size
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
    # spec §7.3 then §7.6: the word area's size is checked before the lane states.
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
    mask = np.uint64((1 << precision_bits) - 1)
    shift = np.uint64(precision_bits)
    previous = np.int64(context_center)
    escapes_used = 0
    lane = 0
    row = first_row
    column = 0
    group = 0
    if grid_kind == GRID_UNIFORM and rows_per_group > 0:
        group = row // rows_per_group
    for i in range(symbol_count):
        context = 0
        if context_model == 1:
            distance = previous - context_center
            if distance < 0:
                distance = -distance
            context = distance if distance < context_count - 1 else context_count - 1
        state = states[lane]
        slot = state & mask
        symbol = slot_symbol[context, slot]
        state = np.uint64(frequencies[context, symbol]) * (state >> shift) + slot \
            - np.uint64(starts[context, symbol])
        if state < STATE_LOWER_BOUND:
            if position + 2 > end:
                errors[chunk_number, 0] = STREAM_TRUNCATED
                errors[chunk_number, 1] = end
                return
            state = (state << np.uint64(16)) | (np.uint64(buffer[position])
                                                | (np.uint64(buffer[position + 1]) << np.uint64(8)))
            position += 2
        states[lane] = state
        lane += 1
        if lane == lane_count:
            lane = 0
        if symbol == escape_symbol:
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
        else:
            index = np.int64(symbol) + index_offset
        previous = index
        if output_kind == OUTPUT_INDEX:
            out_index[out_start + i] = index
        else:
            if grid_kind == GRID_UNIFORM:
                difference = index - zero_points[group]
                value = steps[group] * np.float32(difference)
            else:
                entry = index - codebook_first
                if entry < 0 or entry >= len(codebook):
                    errors[chunk_number, 0] = INDEX_OUT_OF_RANGE
                    errors[chunk_number, 1] = chunk_offset
                    return
                value = codebook[entry]
            if output_kind == OUTPUT_FLOAT32:
                out_f32[out_start + i] = value
            else:
                scratch[i] = value
        column += 1
        if column == row_length:
            column = 0
            row += 1
            if grid_kind == GRID_UNIFORM and rows_per_group > 0:
                group = row // rows_per_group
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
        return
    if output_kind == OUTPUT_FLOAT16 or output_kind == OUTPUT_BFLOAT16:
        bits = scratch[:symbol_count].view(np.uint32)
        for i in range(symbol_count):
            if output_kind == OUTPUT_FLOAT16:
                out_u16[out_start + i] = float32_bits_to_float16_bits(bits[i])
            else:
                out_u16[out_start + i] = float32_bits_to_bfloat16_bits(bits[i])


@njit(cache=True, parallel=True)
def decode_chunks(buffer, chunk_offsets, chunk_sizes, chunk_first_rows, chunk_symbol_counts,
                  chunk_out_starts, row_length, lane_count, precision_bits, context_model,
                  context_count, context_center, escape_symbol, index_offset, frequencies,
                  slot_symbol, starts, grid_kind, rows_per_group, steps, zero_points, codebook,
                  codebook_first, output_kind, out_index, out_f32, out_u16, errors):
    """Decode independent chunks in parallel into the output arrays (one is used, per
    ``output_kind``). ``errors[k] = (code, byte offset)`` for chunk k; code 0 means success."""
    chunk_total = len(chunk_offsets)
    for k in prange(chunk_total):
        states = np.empty(lane_count, dtype=np.uint64)
        scratch_size = chunk_symbol_counts[k] if output_kind >= OUTPUT_FLOAT16 else 0
        scratch = np.empty(scratch_size, dtype=np.float32)
        _decode_one_chunk(buffer, chunk_offsets[k], chunk_sizes[k], chunk_symbol_counts[k],
                          chunk_first_rows[k], row_length, lane_count, precision_bits,
                          context_model, context_count, context_center, escape_symbol,
                          index_offset, frequencies, slot_symbol, starts, grid_kind,
                          rows_per_group, steps, zero_points, codebook, codebook_first,
                          output_kind, out_index, out_f32, out_u16, chunk_out_starts[k], scratch,
                          states, errors, k)


@njit(cache=True, parallel=True)
def right_matrix_product(coefficients, matrix, output_kind, out_f32, out_u16):
    """spec §6.4: out[r, j] = sum_k coefficients[r, k] * matrix[k, j], each product and the running
    sum in binary64, k in increasing order, then rounded once to binary32 (and then to the dtype)."""
    rows, inner = coefficients.shape
    columns = matrix.shape[1]
    for r in prange(rows):
        row_bits = np.empty(columns, dtype=np.float32)
        for j in range(columns):
            total = 0.0
            for k in range(inner):
                total += np.float64(coefficients[r, k]) * np.float64(matrix[k, j])
            if total != total:
                row_bits[j] = CANONICAL_NAN  # spec §6.4: one NaN pattern for every decoder
            else:
                row_bits[j] = np.float32(total)
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
