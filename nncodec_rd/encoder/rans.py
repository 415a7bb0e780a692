"""The rANS encoder and its frequency tables (spec §7, encoder side).

Models are separate from the coder: :func:`build_frequency_table` turns symbol counts into a table
that sums to ``2**precision_bits``; :func:`encode_chunk` codes symbols with given tables and contexts.
The decoder in :mod:`nncodec_rd.decoder` shares none of this code.
"""

from __future__ import annotations

import heapq
import math

import numpy as np

from ..format.constants import RANS_STATE_LOWER_BOUND, ContextModel
from ..format.errors import EncoderError
from .jit import cached_njit


def frequency_table_bytes(frequencies: np.ndarray) -> int:
    """Size of frequency tables in a header: varints (spec §2.2) of 1 byte below 128, 2 below
    16384, else 3."""
    frequencies = np.asarray(frequencies)
    return int(np.sum(np.where(frequencies < 128, 1, np.where(frequencies < 16384, 2, 3))))


def build_frequency_table(counts: np.ndarray, precision_bits: int) -> np.ndarray:
    """Quantize symbol ``counts`` to integer frequencies summing to ``2**precision_bits``.

    Every symbol with a non-zero count gets a frequency of at least 1; the rounding is then
    corrected greedily where it costs the fewest expected bits, so the table's code length for
    these counts is close to the empirical entropy. An all-zero ``counts`` puts all mass on
    symbol 0 (a valid table for a chunk with no symbols).

    Parameters
    ----------
    counts:
        Non-negative integer count of each symbol.
    precision_bits:
        1 ... 16.

    Returns
    -------
    numpy.ndarray of int64, same length as ``counts``.

    Raises
    ------
    EncoderError
        If more symbols occur than the precision has slots.
    """
    counts = np.asarray(counts, dtype=np.int64)
    total_slots = 1 << precision_bits
    present = counts > 0
    if present.sum() > total_slots:
        raise EncoderError(f"{int(present.sum())} distinct symbols do not fit a table of precision "
                           f"{precision_bits} bits; raise precision_bits or use escapes")
    total = int(counts.sum())
    frequencies = np.zeros(len(counts), dtype=np.int64)
    if total == 0:
        frequencies[0] = total_slots
        return frequencies
    scaled = counts.astype(np.float64) * total_slots / total
    frequencies[present] = np.maximum(1, np.floor(scaled[present])).astype(np.int64)
    surplus = int(frequencies.sum()) - total_slots
    # Each step moves one slot where the change in total code length (counts * log2 f) is best.
    if surplus < 0:
        heap = [(-counts[s] * math.log2((frequencies[s] + 1) / frequencies[s]), s)
                for s in np.flatnonzero(present)]
        heapq.heapify(heap)
        for _ in range(-surplus):
            _, s = heapq.heappop(heap)
            frequencies[s] += 1
            heapq.heappush(heap, (-counts[s] * math.log2((frequencies[s] + 1) / frequencies[s]), s))
    elif surplus > 0:
        heap = [(counts[s] * math.log2(frequencies[s] / (frequencies[s] - 1)), s)
                for s in np.flatnonzero(frequencies > 1)]
        heapq.heapify(heap)
        for _ in range(surplus):
            _, s = heapq.heappop(heap)
            frequencies[s] -= 1
            if frequencies[s] > 1:
                heapq.heappush(heap, (counts[s] * math.log2(frequencies[s] / (frequencies[s] - 1)), s))
    return frequencies


def context_of_previous(indices: np.ndarray, context_model: int, context_count: int,
                        context_center: int, lane_count: int) -> np.ndarray:
    """spec §7.4: the context of each symbol of one chunk.

    IID: always 0. PREVIOUS_INDEX: min(|p - context_center|, context_count - 1), where p is the
    index of the same lane's previous symbol (``lane_count`` positions earlier); the first symbol
    of each lane takes ``context_center`` as p (context 0).
    """
    contexts = np.zeros(len(indices), dtype=np.int32)
    if context_model == ContextModel.PREVIOUS_INDEX and len(indices) > lane_count:
        distance = np.abs(indices[:-lane_count].astype(np.int64) - context_center)
        contexts[lane_count:] = np.minimum(distance, context_count - 1)
    return contexts


@cached_njit()
def _encode_chunk_kernel(symbols, contexts, frequencies, starts, precision_bits, lane_count,
                         words):
    """Encode ``symbols`` backwards into ``words`` (filled from the end). Returns the index of the
    first word written and the final lane states, which are the decoder's initial states."""
    states = np.full(lane_count, RANS_STATE_LOWER_BOUND, dtype=np.uint64)
    position = len(words)
    for i in range(len(symbols) - 1, -1, -1):
        lane = i % lane_count
        symbol = symbols[i]
        context = contexts[i]
        frequency = np.uint64(frequencies[context, symbol])
        state = states[lane]
        # Renormalize so that the encoded state stays below 2^32 (one word at most, spec §7.6).
        if state >= (frequency << np.uint64(32 - precision_bits)):
            position -= 1
            words[position] = np.uint16(state & np.uint64(0xFFFF))
            state >>= np.uint64(16)
        state = ((state // frequency) << np.uint64(precision_bits)) + (state % frequency) \
            + np.uint64(starts[context, symbol])
        states[lane] = state
    return position, states


def encode_chunk(symbols: np.ndarray, contexts: np.ndarray, frequencies: np.ndarray,
                 precision_bits: int, lane_count: int) -> tuple[np.ndarray, np.ndarray]:
    """rANS-encode one chunk's symbols.

    Parameters
    ----------
    symbols, contexts:
        Symbol and context of each position (int32).
    frequencies:
        ``(context_count, alphabet_size)`` table; each row sums to ``2**precision_bits`` and every
        coded symbol has a non-zero frequency in its context.
    precision_bits, lane_count:
        As in the file.

    Returns
    -------
    (lane_states, words): uint32 initial decoder state of each lane, uint16 word stream.
    """
    frequencies = np.ascontiguousarray(frequencies, dtype=np.int64)
    starts = np.zeros_like(frequencies)
    starts[:, 1:] = np.cumsum(frequencies, axis=1)[:, :-1]
    symbols = np.ascontiguousarray(symbols, dtype=np.int32)
    contexts = np.ascontiguousarray(contexts, dtype=np.int32)
    if len(symbols) and np.any(frequencies[contexts, symbols] == 0):
        raise EncoderError("a symbol to encode has frequency 0 in its context's table")
    words = np.empty(len(symbols), dtype=np.uint16)
    first, states = _encode_chunk_kernel(symbols, contexts, frequencies, starts, precision_bits,
                                         lane_count, words)
    return states.astype(np.uint32), words[first:].copy()


def ideal_code_length_bits(symbols: np.ndarray, contexts: np.ndarray, frequencies: np.ndarray,
                           precision_bits: int) -> float:
    """-sum log2(f / 2^precision) over the symbols: the size an ideal coder would reach."""
    chosen = np.asarray(frequencies, dtype=np.float64)[contexts, symbols]
    return float(np.sum(precision_bits - np.log2(chosen)))
