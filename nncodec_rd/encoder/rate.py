"""The rate model the quantizers optimise: the code length of each index under the coder's own
static tables (spec §7), so that the rate the encoder minimises is the rate the file has.

A :class:`RateModel` is built from a tensor's current indices exactly as the writer builds its
i.i.d. table (:func:`nncodec_rd.encoder.rans.build_frequency_table`), and prices each index at
``precision_bits - log2(frequency)`` bits. The quantizers iterate "quantize, recount, rebuild" until
the indices stop changing (docs/algorithms.md §1, "An exact rate model").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .entropy import EntropySettings
from .rans import build_frequency_table, frequency_table_bytes

# Indices counted or priced at a time: a layer of 65 M weights needs no 500 MB temporaries.
COUNT_CHUNK = 1 << 22

# Bits an escaped index costs beyond its escape symbol: the int32 stored in the chunk (spec §7.6).
ESCAPE_VALUE_BITS = 32.0


@dataclass(frozen=True)
class RateModel:
    """Bits per index: ``cost_bits[k - first_index]`` for ``first_index <= k < first_index +
    len(cost_bits)``; ``outside_bits`` for any other index.

    ``slope_bits`` prices the distance beyond the table's range, so that indices just outside the
    current range are cheaper than far ones and the fixed-point iteration can widen the range.
    """

    first_index: int
    cost_bits: np.ndarray
    outside_bits: float
    table_bits: float = 0.0
    """Bits of the frequency table itself in the header (0 for models not built from indices)."""

    @classmethod
    def from_indices(cls, indices: np.ndarray, settings: EntropySettings | None = None,
                     margin: int = 2) -> "RateModel":
        """The i.i.d. table the writer would build for ``indices``, as bits per index.

        Indices that do not occur get the price of a frequency of one half slot, one bit more
        than the rarest possible symbol: a new symbol takes slots from the others.
        """
        settings = settings or EntropySettings()
        flat = np.asarray(indices, dtype=np.int64).reshape(-1)
        if flat.size == 0:
            return cls(0, np.zeros(1), float(settings.precision_bits + 1))
        low, high = int(flat.min()), int(flat.max())
        precision = settings.precision_bits
        if high - low + 1 > settings.max_alphabet_size:
            # Too wide for one table: keep the window the writer would code directly.
            values, counts = np.unique(flat, return_counts=True)
            order = np.argsort(-counts)[: settings.max_alphabet_size - 1]
            low, high = int(values[order].min()), int(values[order].max())
            flat = flat[(flat >= low) & (flat <= high)]
        counts = np.zeros(high - low + 1, dtype=np.int64)
        for start in range(0, flat.size, COUNT_CHUNK):  # no full-size temporary
            counts += np.bincount(flat[start:start + COUNT_CHUNK] - low,
                                  minlength=high - low + 1)
        frequencies = build_frequency_table(counts, precision).astype(np.float64)
        with np.errstate(divide="ignore"):
            cost = np.where(frequencies > 0, precision - np.log2(np.maximum(frequencies, 1)),
                            precision + 1.0)
        cost = np.concatenate([np.full(margin, precision + 1.0), cost,
                               np.full(margin, precision + 1.0)])
        return cls(low - margin, cost, float(precision + 1 + ESCAPE_VALUE_BITS),
                   8.0 * frequency_table_bytes(frequencies))

    @classmethod
    def flat(cls) -> "RateModel":
        """A model under which every index costs nothing: plain nearest rounding."""
        return cls(0, np.zeros(1), 0.0)

    def bits(self, indices: np.ndarray) -> np.ndarray:
        """Bits of each index under this model."""
        position = np.asarray(indices, dtype=np.int64) - self.first_index
        inside = (position >= 0) & (position < len(self.cost_bits))
        return np.where(inside, self.cost_bits[np.clip(position, 0, len(self.cost_bits) - 1)],
                        self.outside_bits)

    def total_bits(self, indices: np.ndarray) -> float:
        """Code length of ``indices`` under this model, tables and chunk overhead excluded."""
        indices = np.asarray(indices)
        if indices.size <= COUNT_CHUNK:
            return float(np.sum(self.bits(indices)))
        flat = indices.reshape(-1)
        return float(sum(np.sum(self.bits(flat[start:start + COUNT_CHUNK]))
                         for start in range(0, flat.size, COUNT_CHUNK)))
