"""Grid and transform descriptions as plain records (spec §6).

These say *what* a file stores, nothing more: dequantization itself is implemented separately by
each decoder, so that the decoders stay independent of the encoder.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class UniformGrid:
    """spec §6.1: value = step[g] * (index - zero_point[g]) for the rows of group g; with
    ``trellis``, spec §6.6 (format 1.1): value = step[g] * d, d = 2 q or 2 q - sgn(q) by the
    column's trellis state.

    Parameters
    ----------
    steps:
        One step (finite, > 0) per group; a single step for the whole tensor when
        ``rows_per_group`` is 0.
    zero_points:
        Optional integer zero point per group (index of the value 0).
    rows_per_group:
        Rows sharing a step; 0 means one group for the whole tensor, 1 means a step per row.
    trellis:
        The UNIFORM_TRELLIS grid (spec §6.6): no zero points.
    """

    steps: np.ndarray
    zero_points: np.ndarray | None = None
    rows_per_group: int = 0
    trellis: bool = False

    def __post_init__(self):
        object.__setattr__(self, "steps", np.atleast_1d(np.asarray(self.steps, dtype=np.float32)))
        if self.zero_points is not None:
            object.__setattr__(self, "zero_points",
                               np.atleast_1d(np.asarray(self.zero_points, dtype=np.int64)))


@dataclass(frozen=True)
class CodebookGrid:
    """spec §6.2: value = values[index - first_index] (a non-uniform grid)."""

    values: np.ndarray
    first_index: int = 0

    def __post_init__(self):
        object.__setattr__(self, "values", np.atleast_1d(np.asarray(self.values, dtype=np.float32)))


@dataclass(frozen=True)
class RightMatrixTransform:
    """spec §6.4: the dequantized rows are multiplied on the right by the matrix ``tensor``
    (the name of a float32 tensor of the same file)."""

    tensor: str
