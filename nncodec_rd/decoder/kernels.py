"""Numba kernels of the decoder: rANS chunk decoding, dequantization, dtype rounding (spec §6-§7).

Kernels never raise: they write an error code and the byte offset of the fault into a buffer the
wrapper allocated, and :mod:`nncodec_rd.decoder.reader` turns codes into exceptions. They share no
code with the encoder.

Every chunk kernel takes three arguments: a tensor's tables and geometry (:class:`ChunkTables`,
built by :func:`chunk_tables` and :func:`with_slot_tables`), what one call reads and writes
(:class:`ChunkBatch`, built by :func:`chunk_batch`) and the numbers of the chunks to decode.
Named fields instead of positional arguments: two arguments of one type cannot be swapped
unnoticed, and the argument list is declared once.
"""

from __future__ import annotations

from typing import NamedTuple, get_type_hints

import numpy as np
from numba import njit

from ..format.constants import RANS_STATE_LOWER_BOUND, TRELLIS_NEXT_STATE, Limits
from ..format.errors import ErrorCode

# Output kinds of the chunk kernels (what they write per element; ChunkTables.output_kind).
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

# Why kernels are not cached (no writable cache folder), or None: see _jit.
CACHE_PROBLEM: str | None = None


def _jit(**options):
    """``njit(cache=True, **options)``, or without the cache when Numba finds no writable cache
    folder (read-only site-packages, an unwritable NUMBA_CACHE_DIR and home): decoding then
    still works, and compiles in every process (CACHE_PROBLEM says why)."""
    def decorate(function):
        global CACHE_PROBLEM
        try:
            return njit(cache=True, **options)(function)
        except RuntimeError as error:  # "cannot cache function ...: no locator available"
            CACHE_PROBLEM = str(error)
            return njit(cache=False, **options)(function)
    return decorate


STATE_LOWER_BOUND = RANS_STATE_LOWER_BOUND
CANONICAL_NAN = np.array([0x7FC00000], dtype=np.uint32).view(np.float32)[0]
MAX_ABS_INDEX = Limits.MAX_ABS_INDEX


@_jit()
def _read_u32(buffer, position):
    return (np.uint32(buffer[position]) | (np.uint32(buffer[position + 1]) << np.uint32(8))
            | (np.uint32(buffer[position + 2]) << np.uint32(16))
            | (np.uint32(buffer[position + 3]) << np.uint32(24)))


@_jit(nogil=True)
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


@_jit()
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

class ChunkTables(NamedTuple):
    """One tensor's decoding tables and geometry, for one output width: the first argument of
    every chunk kernel. Numba takes a named tuple of integers and arrays as one argument and
    compiles one signature per tuple of field types, so the field types are fixed (build it
    with :func:`chunk_tables`) and the only type that varies is ``value_table``'s, which has the
    output's width: one signature of each kernel per width serves every file."""

    # Rows (spec §5.2).
    row_length: int  # coded row length: symbols per row
    # Entropy coding (spec §7.2-§7.5).
    lane_count: int
    precision_bits: int
    alphabet_size: int
    context_model: int  # 0: IID, 1: PREVIOUS_INDEX
    context_count: int
    context_center: int
    escape_symbol: int  # -1: none
    fast_escape_symbol: int  # the escape symbol if some table can decode it, else -1
    index_offset: int
    # Grid and output (spec §6.1-§6.2, §6.5).
    grid_kind: int  # GRID_UNIFORM or GRID_CODEBOOK
    rows_per_group: int  # rows of one step group (0: one group for every row)
    fast_rows_per_group: int  # the fast kernel's rows per value-table part (0 for indices)
    codebook_first: int
    output_kind: int  # OUTPUT_INDEX, OUTPUT_FLOAT32, OUTPUT_FLOAT16 or OUTPUT_BFLOAT16
    wide_slots: int  # 1: the slot table is slot_words (alphabets over 256 symbols)
    # spec §7.4 as lookup tables (see build_symbol_tables), contexts one after another.
    slot_bytes: np.ndarray  # uint8 symbol of each slot; empty with wide_slots
    slot_words: np.ndarray  # uint16 symbol of each slot; empty without wide_slots
    symbol_info: np.ndarray  # uint64: frequency (low 32 bits) and start (high 32 bits)
    symbol_contexts: np.ndarray  # int64 context that follows each direct symbol
    next_slot_bases: np.ndarray  # uint64: where the slots of that context start
    next_info_bases: np.ndarray  # uint64: where the symbol_info of that context starts
    # The grid, for values computed per symbol (escapes, value tables left out).
    steps: np.ndarray  # float32, one per step group
    zero_points: np.ndarray  # int64, one per step group
    codebook: np.ndarray  # float32
    # What each direct symbol writes, per step group (see build_value_table), as output words:
    # uint32 (float32 bits, int32 indices) or uint16 (binary16/bfloat16 patterns).
    value_table: np.ndarray
    invalid_symbols: np.ndarray  # uint8: direct symbols outside a codebook; empty: no check


# chunk_tables' arguments: the scalar fields of ChunkTables, and the arrays it takes as they are
# with their dtypes.
SCALAR_FIELDS = tuple(name for name, kind in get_type_hints(ChunkTables).items()
                      if kind is int and name != "wide_slots")
TABLE_ARRAY_DTYPES = {"symbol_contexts": np.int64, "next_slot_bases": np.uint64,
                      "next_info_bases": np.uint64, "steps": np.float32, "zero_points": np.int64,
                      "codebook": np.float32, "invalid_symbols": np.uint8}


def chunk_tables(*, value_table: np.ndarray, **fields) -> ChunkTables:
    """The kernels' :class:`ChunkTables`, every field in its one type (Python ints, C-contiguous
    arrays of the dtypes it documents), so that no call compiles a signature of its own:
    ``fields`` are the :data:`SCALAR_FIELDS` and the arrays of :data:`TABLE_ARRAY_DTYPES`;
    ``value_table`` (float32, int32 or uint16) becomes output words. The slot tables are left
    empty: :func:`with_slot_tables` adds them (they are built at each decode, not held)."""
    arrays = {name: np.ascontiguousarray(fields.pop(name), dtype)
              for name, dtype in TABLE_ARRAY_DTYPES.items()}
    words = np.uint32 if value_table.dtype.itemsize == 4 else np.uint16
    return ChunkTables(**{name: int(value) for name, value in fields.items()}, **arrays,
                       wide_slots=0, slot_bytes=np.zeros(0, np.uint8),
                       slot_words=np.zeros(0, np.uint16), symbol_info=np.zeros(0, np.uint64),
                       value_table=np.ascontiguousarray(value_table).view(words))


def with_slot_tables(tables: ChunkTables, slot_symbols: np.ndarray,
                     symbol_info: np.ndarray) -> ChunkTables:
    """``tables`` with the lookup tables of :func:`build_symbol_tables`: ``slot_symbols``
    (uint8, or uint16 for alphabets over 256 symbols) becomes ``slot_bytes`` or
    ``slot_words``."""
    wide = slot_symbols.dtype == np.uint16
    slots = np.ascontiguousarray(slot_symbols, np.uint16 if wide else np.uint8)
    return tables._replace(wide_slots=int(wide),
                           slot_bytes=np.zeros(0, np.uint8) if wide else slots,
                           slot_words=slots if wide else np.zeros(0, np.uint16),
                           symbol_info=np.ascontiguousarray(symbol_info, np.uint64))


class ChunkBatch(NamedTuple):
    """What one call of a chunk kernel reads and writes (its second argument): build it with
    :func:`chunk_batch`."""

    buffer: np.ndarray  # uint8, read-only: the bytes holding the chunks (a file, or payloads)
    chunks: np.ndarray  # int64, one row per chunk: columns C_OFFSET ... C_OUT_START
    out: np.ndarray  # output words, the width of ChunkTables.value_table
    errors: np.ndarray  # int64 (chunks, 2): error code (0: none) and byte offset, per chunk


def chunk_batch(buffer: np.ndarray, chunks: np.ndarray, out: np.ndarray,
                errors: np.ndarray) -> ChunkBatch:
    """The kernels' :class:`ChunkBatch`: ``buffer`` as a read-only view (a mapped file is
    read-only, and each signature costs seconds of compiling on first use), ``out`` (flat,
    4- or 2-byte elements) as uint32 or uint16 words."""
    if buffer.flags.writeable:
        buffer = buffer.view()
        buffer.flags.writeable = False
    flat = out.reshape(-1)
    return ChunkBatch(buffer, chunks, flat.view(np.uint32 if out.dtype.itemsize == 4
                                                else np.uint16), errors)


# Columns of the chunk table: one row per chunk.
C_OFFSET, C_SIZE, C_FIRST_ROW, C_SYMBOL_COUNT, C_OUT_START = range(5)
# errors[k, 0] of a chunk the fast kernel left to the general one.
RETRY = -1


def build_symbol_tables(frequencies: np.ndarray, precision_bits: int):
    """spec §7.4 as two lookup tables, contexts one after another.

    ``slot_symbols[context * 2^n + slot]`` is the symbol that owns ``slot`` (uint8 when the
    alphabet allows, so that the table stays in the first-level cache); ``symbol_info[context *
    alphabet_size + symbol]`` packs the symbol's frequency (low 32 bits) and start (high 32 bits).
    Plain NumPy: nothing to compile.
    """
    frequencies = np.asarray(frequencies, dtype=np.int64)
    context_count, alphabet_size = frequencies.shape
    dtype = np.uint8 if alphabet_size <= 256 else np.uint16
    slot_symbols = np.zeros(context_count << precision_bits, dtype=dtype)
    starts = np.zeros_like(frequencies)
    if alphabet_size:
        np.cumsum(frequencies[:, :-1], axis=1, out=starts[:, 1:])
    symbols = np.arange(alphabet_size, dtype=dtype)
    size = 1 << precision_bits
    for context in range(context_count):
        filled = np.repeat(symbols, frequencies[context])
        slot_symbols[context * size:context * size + len(filled)] = filled
    symbol_info = (frequencies.astype(np.uint64)
                   | (starts.astype(np.uint64) << _HIGH_SHIFT)).reshape(-1)
    return slot_symbols, symbol_info


@_jit()
def uniform_value(step, index, zero_point):
    """spec §6.1: RN32(step x f32(index - zero_point)); the difference is exact in binary32."""
    return step * np.float32(index - zero_point)


def uniform_values(steps, indices, zero_points) -> np.ndarray:
    """spec §6.1 in NumPy: RN32(step x f32(index - zero_point)), elementwise (the difference
    is exact in binary32 for indices within the normative limits)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return (np.asarray(steps, np.float32)
                * (np.asarray(indices, np.int64) - zero_points).astype(np.float32))


TRELLIS_NEXT = np.array(TRELLIS_NEXT_STATE, dtype=np.int8)  # spec §6.6

@_jit(nogil=True)
def trellis_levels_rows(indices, row_length, next_state, levels):
    """spec §6.6's levels ``d`` of one chunk (flat, row-major), element by element: each
    column's state starts at 0 and follows its indices down the rows; a state of 0 or 1 takes
    quantizer 0 (``d = 2 q``), 2 or 3 quantizer 1 (``d = 2 q - sgn(q)``). The compiled kernel
    for chunks of many rows (:func:`nncodec_rd.decoder.dispatch.trellis_levels`)."""
    state = np.zeros(max(row_length, 1), dtype=np.int8)
    for i in range(len(indices)):
        column = i % row_length
        q = np.int64(indices[i])
        if state[column] >= 2 and q != 0:
            levels[i] = 2 * q - (1 if q > 0 else -1)
        else:
            levels[i] = 2 * q
        state[column] = next_state[state[column], q & 1]


def trellis_levels_walk(indices: np.ndarray, row_length: int, row_count: int) -> np.ndarray:
    """:func:`trellis_levels_rows` in NumPy, a row at a time: nothing to compile, for chunks of
    few rows.

    >>> trellis_levels_walk(np.array([1, 1, -1, 0]), 1, 4).tolist()
    [2, 1, -1, 0]
    """
    rows = np.asarray(indices, dtype=np.int64).reshape(row_count, row_length)
    levels = np.empty((row_count, row_length), dtype=np.int64)
    state = np.zeros(row_length, dtype=np.int8)
    for r in range(row_count):
        q = rows[r]
        levels[r] = 2 * q - np.where(state >= 2, np.sign(q), 0)
        state = TRELLIS_NEXT[state, q & 1]  # q & 1 is q mod 2 for negative q too
    return levels.reshape(-1)


def trellis_values(levels: np.ndarray, row_length: int, first_row: int, row_count: int,
                   steps: np.ndarray, rows_per_group: int) -> np.ndarray:
    """spec §6.6 for one chunk: the binary32 values of its ``levels`` (``row_count`` rows of
    ``row_length``, flat, from row ``first_row`` of the tensor): ``RN32(step x f32(d))``
    (``|d| < 2^24``, exact in binary32) with the step of each row's group.

    >>> trellis_values(np.array([2, 1, -1, 0]), 1, 0, 4, np.float32([0.5]), 0).tolist()
    [1.0, 0.5, -0.5, 0.0]
    """
    levels = np.asarray(levels).astype(np.float32)
    rows = np.arange(first_row, first_row + row_count)
    groups = rows // rows_per_group if rows_per_group > 0 else np.zeros(row_count, np.int64)
    row_steps = np.asarray(steps, dtype=np.float32)[groups]
    return (levels.reshape(row_count, row_length) * row_steps[:, None]).reshape(-1)


def float32_to_half_bits(values: np.ndarray, output_kind: int) -> np.ndarray:
    """float32 values -> binary16 or bfloat16 bit patterns (uint16), round to nearest, ties to
    even, every NaN the canonical quiet NaN (spec §6.5): NumPy's exact arithmetic, the same bits
    as :func:`float32_bits_to_float16_bits` and :func:`float32_bits_to_bfloat16_bits`."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    nan = np.isnan(values)
    if output_kind == OUTPUT_FLOAT16:
        with np.errstate(over="ignore", invalid="ignore"):
            bits = values.astype(np.float16).view(np.uint16)
        bits[nan] = 0x7E00
        return bits
    wide = values.view(np.uint32).astype(np.uint64)
    bits = ((wide + np.uint64(0x7FFF) + ((wide >> np.uint64(16)) & np.uint64(1)))
            >> np.uint64(16)).astype(np.uint16)
    bits[nan] = 0x7FC0
    return bits


def _value_table32(alphabet_size, index_offset, grid_kind, group_count, steps, zero_points,
                   codebook, codebook_first):
    indices = np.arange(alphabet_size, dtype=np.int64) + index_offset
    if grid_kind == GRID_UNIFORM:
        values = uniform_values(np.repeat(np.asarray(steps, np.float32)[:group_count],
                                          alphabet_size),
                                np.tile(indices, group_count),
                                np.repeat(np.asarray(zero_points, np.int64)[:group_count],
                                          alphabet_size))
        invalid = np.zeros(alphabet_size, dtype=np.uint8)
        return values, invalid
    entries = indices - codebook_first
    outside = (entries < 0) | (entries >= len(codebook))
    values = np.zeros(group_count * alphabet_size, dtype=np.float32)
    if group_count:
        row = np.where(outside, 0, np.asarray(codebook, np.float32)[np.clip(
            entries, 0, max(len(codebook) - 1, 0))] if len(codebook) else 0)
        values[:] = np.tile(np.asarray(row, np.float32), group_count)
    return values, outside.astype(np.uint8)


def build_value_table(alphabet_size, index_offset, grid_kind, group_count, steps, zero_points,
                      codebook, codebook_first, output_kind):
    """What the kernel writes for each direct symbol in each group, in the output's dtype: the
    binary32 value, its binary16/bfloat16 pattern, or the index itself; plus which symbols fall
    outside a codebook. Each value is computed exactly as spec §6.1/§6.2 define it, so looking it
    up gives the same bits as computing it. The table is empty (values are then computed per
    symbol) when groups x alphabet exceeds MAX_VALUE_TABLE_ENTRIES. Plain NumPy."""
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
    return float32_to_half_bits(values, output_kind), invalid


def contexts_of_symbols(alphabet_size, index_offset, context_model, context_count,
                        context_center, escape_symbol):
    """spec §7.4: the context that follows each direct symbol (the escape symbol's depends on
    the escaped index and is computed when it occurs). Plain NumPy."""
    contexts = np.zeros(alphabet_size, dtype=np.int64)
    if context_model == 1 and alphabet_size:
        distance = np.abs(np.arange(alphabet_size, dtype=np.int64) + index_offset - context_center)
        contexts[:] = np.minimum(distance, context_count - 1)
        if 0 <= escape_symbol < alphabet_size:
            contexts[escape_symbol] = 0
    return contexts


@_jit()
def _slot_symbol(slot_bytes, slot_words, wide_slots, position):
    """The symbol at ``position`` of the slot table: ``slot_bytes`` (uint8) for alphabets of
    at most 256 symbols, ``slot_words`` (uint16) with ``wide_slots``; the other one is empty.
    Two arrays of fixed types, so that one signature serves both."""
    if wide_slots:
        return np.uint64(slot_words[position])
    return np.uint64(slot_bytes[position])


@_jit()
def _decode_chunk_body(tables, batch, chunk_number, states):
    """Decode chunk ``chunk_number`` of ``batch`` (spec §7.3-§7.7) into ``batch.out``, writing
    ``batch.errors[chunk_number]`` on a fault; ``states`` holds the lanes' states. The general
    kernel is the slow path (escapes, other lane counts, faults), so the context model is a flag
    here rather than a compiled variant: one compile serves both models."""
    buffer, out, errors = batch.buffer, batch.out, batch.errors
    chunk = batch.chunks[chunk_number]
    chunk_offset, chunk_size, first_row = chunk[C_OFFSET], chunk[C_SIZE], chunk[C_FIRST_ROW]
    symbol_count, out_start = chunk[C_SYMBOL_COUNT], chunk[C_OUT_START]
    row_length = tables.row_length
    lane_count = tables.lane_count
    precision_bits = tables.precision_bits
    previous_index_context = tables.context_model == 1
    context_count = tables.context_count
    context_center = tables.context_center
    escape_symbol = tables.escape_symbol
    index_offset = tables.index_offset
    grid_kind = tables.grid_kind
    rows_per_group = tables.rows_per_group
    codebook_first = tables.codebook_first
    output_kind = tables.output_kind
    wide_slots = tables.wide_slots != 0
    alphabet_size = tables.alphabet_size
    slot_bytes, slot_words, symbol_info = tables.slot_bytes, tables.slot_words, tables.symbol_info
    symbol_contexts, value_table = tables.symbol_contexts, tables.value_table
    steps, zero_points, codebook = tables.steps, tables.zero_points, tables.codebook
    invalid_symbols = tables.invalid_symbols
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
                symbol = np.int64(_slot_symbol(slot_bytes, slot_words, wide_slots,
                                               lane_slot_bases[lane] + state_slot))
                symbol_entry = symbol_info[lane_info_bases[lane] + np.uint64(symbol)]
            else:
                symbol = np.int64(_slot_symbol(slot_bytes, slot_words, wide_slots, state_slot))
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
            target = np.uint64(out_start + i)
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
                out[target] = np.uint32(index & 0xFFFFFFFF)
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
            one_value[0] = value
            if output_kind == OUTPUT_FLOAT32:
                out[target] = one_bits[0]
            elif output_kind == OUTPUT_FLOAT16:
                out[target] = np.uint32(float32_bits_to_float16_bits(one_bits[0]))
            else:
                out[target] = np.uint32(float32_bits_to_bfloat16_bits(one_bits[0]))
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


@_jit(nogil=True)
def decode_general(tables, batch, chunk_ids):
    """The general chunk kernel (spec §7.3-§7.7): decodes chunks ``chunk_ids`` of ``batch``
    (:class:`ChunkBatch`) with ``tables`` (:class:`ChunkTables`) and every check, writing
    ``batch.errors[k] = (code, byte offset)`` (code 0: success). One compiled signature per
    output width (uint32 or uint16 words, as ``tables.value_table`` and ``batch.out``)."""
    states = np.empty(max(tables.lane_count, 1), dtype=np.uint64)
    for j in range(len(chunk_ids)):
        k = chunk_ids[j]
        batch.errors[k, 0] = 0
        batch.errors[k, 1] = 0
        _decode_chunk_body(tables, batch, k, states)


_U1 = np.uint64(1)
_U2 = np.uint64(2)
_U4 = np.uint64(4)
_U8 = np.uint64(8)
_U16 = np.uint64(16)


@_jit()
def _lane_step(state, slot_base, info_base, slot_bytes, slot_words, wide_slots, symbol_info,
               slot_mask, shift):
    """spec §7.6, one lane's step up to renormalisation, in the table whose slots start at
    ``slot_base`` and symbols at ``info_base``: the symbol that owns the state's slot, and the
    state it leaves."""
    state_slot = state & slot_mask
    symbol = _slot_symbol(slot_bytes, slot_words, wide_slots, slot_base + state_slot)
    symbol_entry = symbol_info[info_base + symbol]
    state = (symbol_entry & _LOW32) * (state >> shift) + state_slot - (symbol_entry >> _HIGH_SHIFT)
    return symbol, state


@_jit()
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
def _decode_chunk_4lanes_body(tables, batch, chunk_number, previous_index_context,
                              escape_symbol):
    """The fast kernel for chunk ``chunk_number`` of ``batch``, for one context model and, with
    ``escape_symbol`` -1, for no escape symbol: both are constants where it is inlined, so the
    IID copy carries no context work and the copy without escapes no escape test.

    ``batch.out`` and ``tables.value_table`` have the output's width (uint32 bits of float32
    values or int32 indices, or uint16 binary16/bfloat16 patterns): each compiled signature has
    one width, so that the store needs no test (a test per store costs a third of the speed).

    The common case of the chunk kernels, fast: 4 lanes, no escaped index in the chunk, every
    output looked up in ``value_table`` (``fast_rows_per_group`` 0: one table for every row), no
    codebook check; ``escape_symbol`` -1 when no escape symbol can be decoded. With
    ``previous_index_context`` (spec §7.4) a lane whose symbol is ``s`` next uses the table
    whose slots start at ``next_slot_bases[s]`` and symbols at ``next_info_bases[s]``.

    Returns True when the chunk decoded and passed every check of spec §7.3-§7.7; False as
    soon as anything is unusual (a fault, an escape), without saying what: the caller then
    decodes the chunk again with the general kernel, which finds the first fault and its byte
    offset, so errors stay exactly the general kernel's.

    Why it is faster: the four lanes' states (and tables) live in registers, the lanes staying
    in one order within each round of four symbols, and rounds read words without clamping or
    a per-symbol end check while at least 8 bytes, the most a round can read, are left."""
    row_length = tables.row_length
    precision_bits = tables.precision_bits
    alphabet_size = tables.alphabet_size
    rows_per_group = tables.fast_rows_per_group
    wide_slots = tables.wide_slots != 0
    slot_bytes, slot_words, symbol_info = tables.slot_bytes, tables.slot_words, tables.symbol_info
    next_slot_bases, next_info_bases = tables.next_slot_bases, tables.next_info_bases
    value_table = tables.value_table
    buffer, out = batch.buffer, batch.out
    chunk = batch.chunks[chunk_number]
    chunk_offset, chunk_size, first_row = chunk[C_OFFSET], chunk[C_SIZE], chunk[C_FIRST_ROW]
    symbol_count, out_start = chunk[C_SYMBOL_COUNT], chunk[C_OUT_START]
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
    escape = np.uint64(escape_symbol) if escape_symbol >= 0 else np.uint64(0xFFFFFFFF)
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
                symbol0, state0 = _lane_step(state0, slot_base0, info_base0, slot_bytes,
                                             slot_words, wide_slots, symbol_info, slot_mask, shift)
                state0, position = _renormalize(state0, buffer, position)
                symbol1, state1 = _lane_step(state1, slot_base1, info_base1, slot_bytes,
                                             slot_words, wide_slots, symbol_info, slot_mask, shift)
                state1, position = _renormalize(state1, buffer, position)
                symbol2, state2 = _lane_step(state2, slot_base2, info_base2, slot_bytes,
                                             slot_words, wide_slots, symbol_info, slot_mask, shift)
                state2, position = _renormalize(state2, buffer, position)
                symbol3, state3 = _lane_step(state3, slot_base3, info_base3, slot_bytes,
                                             slot_words, wide_slots, symbol_info, slot_mask, shift)
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
                    escape_seen |= ((symbol0 == escape) | (symbol1 == escape)
                                    | (symbol2 == escape) | (symbol3 == escape))
                out[target] = values[symbol0]
                out[target + _U1] = values[symbol1]
                out[target + _U2] = values[symbol2]
                out[target + np.uint64(3)] = values[symbol3]
                target += _U4
        # The rest of the segment one symbol at a time, each read checked; the lanes turn
        # round so that lane 0's variables stay the next lane's.
        while target < segment_end:
            symbol0, state0 = _lane_step(state0, slot_base0, info_base0, slot_bytes, slot_words,
                                         wide_slots, symbol_info, slot_mask, shift)
            if state0 < STATE_LOWER_BOUND:
                if position + _U2 > end:
                    return False
                state0, position = _renormalize(state0, buffer, position)
            if previous_index_context:
                slot_base0 = next_slot_bases[symbol0]
                info_base0 = next_info_bases[symbol0]
            escape_seen |= symbol0 == escape
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


# The fast kernels' entry points, one per context model and escape case (constants of the
# inlined body, so that each compiles without the other cases' work); each has one compiled
# signature per output width. A chunk one cannot take gets errors[k, 0] = RETRY for the general
# kernel.


@_jit(nogil=True)
def decode_fast_iid(tables, batch, chunk_ids):
    """The fast 4-lane kernel (see _decode_chunk_4lanes_body), IID model, no escape symbol to
    look for: decodes chunks ``chunk_ids`` of ``batch`` (:class:`ChunkBatch`) with ``tables``
    (:class:`ChunkTables`)."""
    for k in chunk_ids:
        if not _decode_chunk_4lanes_body(tables, batch, k, False, -1):
            batch.errors[k, 0] = RETRY


@_jit(nogil=True)
def decode_fast_iid_escape(tables, batch, chunk_ids):
    """:func:`decode_fast_iid` for the IID model with an escape symbol that can be decoded."""
    for k in chunk_ids:
        if not _decode_chunk_4lanes_body(tables, batch, k, False, tables.fast_escape_symbol):
            batch.errors[k, 0] = RETRY


@_jit(nogil=True)
def decode_fast_previous(tables, batch, chunk_ids):
    """:func:`decode_fast_iid` for the PREVIOUS_INDEX model, no escape symbol to look for."""
    for k in chunk_ids:
        if not _decode_chunk_4lanes_body(tables, batch, k, True, -1):
            batch.errors[k, 0] = RETRY


@_jit(nogil=True)
def decode_fast_previous_escape(tables, batch, chunk_ids):
    """:func:`decode_fast_iid` for the PREVIOUS_INDEX model with an escape symbol that can be
    decoded."""
    for k in chunk_ids:
        if not _decode_chunk_4lanes_body(tables, batch, k, True, tables.fast_escape_symbol):
            batch.errors[k, 0] = RETRY


@_jit(nogil=True)
def right_matrix_rows(coefficients, matrix, output_kind, out_f32, out_u16, row_start, row_stop):
    """spec §6.4 for rows ``row_start:row_stop``: out[r, j] = sum_k coefficients[r, k] *
    matrix[k, j], each product and the running sum in binary64, k in increasing order, then
    rounded once to binary32 (and then to the dtype). Serial and without the GIL: the caller
    runs row ranges on threads (:func:`nncodec_rd.decoder.dispatch.right_matrix_product`)."""
    inner = coefficients.shape[1]
    columns = matrix.shape[1]
    totals = np.zeros(columns, dtype=np.float64)
    row_bits = np.empty(columns, dtype=np.float32)
    bits = row_bits.view(np.uint32)
    for r in range(row_start, row_stop):
        # A whole row of running sums, k outermost: every sum still takes its products in
        # increasing k, one rounding each (spec §6.4), but the matrix is read row by row and
        # the j loop has independent lanes that vectorize (no reassociation, no FMA).
        totals[:] = 0.0
        for k in range(inner):
            coefficient = np.float64(coefficients[r, k])
            for j in range(columns):
                totals[j] += coefficient * np.float64(matrix[k, j])
        for j in range(columns):
            if totals[j] != totals[j]:
                row_bits[j] = CANONICAL_NAN  # spec §6.4: one NaN pattern for every decoder
            else:
                row_bits[j] = np.float32(totals[j])
        if output_kind == OUTPUT_FLOAT32:
            for j in range(columns):
                out_f32[r * columns + j] = row_bits[j]
        else:
            for j in range(columns):
                if output_kind == OUTPUT_FLOAT16:
                    out_u16[r * columns + j] = float32_bits_to_float16_bits(bits[j])
                else:
                    out_u16[r * columns + j] = float32_bits_to_bfloat16_bits(bits[j])
