"""How much a quantization keeps of the weights: signal-to-quantization-noise ratios.

Every encode can compute these without data: for each coded tensor, the power of its weights
against the power of the error its decoded values carry, in dB. The command line prints the
overall figure (all coded weights' power against all their errors' power) and the lowest tensor,
and warns when the overall figure falls below :data:`WARN_BELOW_DB`.

How the threshold was chosen: ``python bench/sqnr_threshold.py`` encodes all-MiniLM-L6-v2 with
the data-free ``rtn`` over grids of 3 to 255 bins and steps of 2 to 1/32 times each tensor's RMS,
and measures the mean cosine of sentence embeddings against the original model
(``bench/results/sqnr_threshold.json``, one run). The overall SQNR predicted the cosine alike for
both kinds of grid: 4.0 dB (15 bins) gave 0.13, 10.8 dB 0.68, 16.1-16.8 dB 0.89-0.90, 21.8-22.8 dB
0.970-0.977, 28.9 dB 0.993 and 34.9 dB (the default step, RMS/16) 0.9986. The lowest tensor did
not: with 255 bins one layer sat at 8.1 dB in a model at cosine 0.970, since a grid spanning an
outlier leaves most weights on a few points. 20 dB separates the measured settings at cosine 0.90
or less from those at 0.97 or more.

Examples
--------
>>> import numpy as np
>>> report = SqnrReport()
>>> round(report.add("w", np.array([1.0, -1.0]), np.array([1.1, -0.9])), 6)
20.0
>>> round(report.overall_db, 6), report.lowest[0]
(20.0, 'w')
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

WARN_BELOW_DB = 20.0
"""A data-free encode whose overall SQNR is below this most likely breaks the model (the
measurement that sets it is in the module docstring)."""

CALIBRATED_WARN_BELOW_DB = 12.0
"""The same for calibrated encodes (``cerwu`` on a model folder), which spend their error where
the model is least sensitive, so a lower SQNR keeps the model working:
``python bench/sqnr_threshold_calibrated.py`` encodes all-MiniLM-L6-v2's folder at 1 to 1024
times the default λ (``bench/results/sqnr_threshold_calibrated.json``, one run): 22.1 dB gave
cosine 0.996, 15.9 dB 0.984, 9.5 dB 0.926, 3.7 dB 0.709. 12 dB separates the settings at 0.93 or
less from those at 0.98 or more."""


@dataclass
class SqnrReport:
    """Signal and noise power of each coded tensor, added with :meth:`add`."""

    tensors: dict = field(default_factory=dict)  # name -> (signal energy, noise energy)
    advice: str = "use a finer grid (more --bins, a smaller --relative-step)"
    """What the warning tells the user to change (the encoder's own option)."""
    warn_below_db: float = WARN_BELOW_DB
    evidence: str = "all-MiniLM-L6-v2 fell to cosine 0.90 at 16.8 dB"
    """The measurement behind ``warn_below_db``, quoted in the warning."""

    def add(self, name: str, original: np.ndarray, reconstruction: np.ndarray) -> float:
        """Record one tensor; returns its SQNR in dB."""
        original = np.asarray(original, dtype=np.float64)
        error = original - np.asarray(reconstruction, dtype=np.float64)
        signal, noise = float(np.sum(original ** 2)), float(np.sum(error ** 2))
        self.tensors[name] = (signal, noise)
        return _db(signal, noise)

    def add_rows(self, name: str, original: np.ndarray, reconstruct, rows_per_chunk: int = 0
                 ) -> float:
        """Record one matrix a block of rows at a time (no full-size temporaries for a large
        layer): ``reconstruct(rows)`` gives the decoded values of the slice ``rows``. Returns
        the tensor's SQNR in dB."""
        count = original.shape[0]
        step = rows_per_chunk or max(1, (1 << 20) // max(1, original[0].size if count else 1))
        signal = noise = 0.0
        for start in range(0, count, step):
            rows = slice(start, min(count, start + step))
            part = np.asarray(original[rows], dtype=np.float64)
            signal += float(np.sum(part ** 2))
            noise += float(np.sum((part - np.asarray(reconstruct(rows), dtype=np.float64)) ** 2))
        self.tensors[name] = (signal, noise)
        return _db(signal, noise)

    @property
    def overall_db(self) -> float:
        """All coded weights' power against all their errors' power."""
        return _db(sum(s for s, _ in self.tensors.values()),
                   sum(n for _, n in self.tensors.values()))

    @property
    def lowest(self) -> tuple[str, float] | None:
        """(name, dB) of the tensor with the lowest SQNR, or None with no tensor."""
        if not self.tensors:
            return None
        name = min(self.tensors, key=lambda n: _db(*self.tensors[n]))
        return name, _db(*self.tensors[name])

    def summary(self) -> str:
        """One line: overall and lowest SQNR."""
        if not self.tensors:
            return "no coded tensors"
        name, lowest = self.lowest
        return (f"weights SQNR {self.overall_db:.1f} dB overall, lowest {lowest:.1f} dB "
                f"({name})")

    def warning(self) -> str | None:
        """A one-line warning when the overall SQNR is below :data:`WARN_BELOW_DB`, else None."""
        if not self.tensors or self.overall_db >= self.warn_below_db:
            return None
        return (f"warning: the weights keep {self.overall_db:.1f} dB SQNR, below "
                f"{self.warn_below_db:g} dB: the decoded model is likely broken "
                f"({self.evidence}); {self.advice}")


def _db(signal: float, noise: float) -> float:
    if noise == 0:
        return math.inf
    if signal == 0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


__all__ = ["CALIBRATED_WARN_BELOW_DB", "SqnrReport", "WARN_BELOW_DB"]
