"""Data-free quantization: round to nearest onto a uniform grid (the ``rtn`` method).

Model-aware methods (GPTQ, CERWU) live beside this module and need torch; this one needs only NumPy.
"""

from __future__ import annotations

import numpy as np

from ..format.errors import EncoderError
from ..format.grids import UniformGrid
from ..format.layout import RowGeometry

# A step of RMS/16 keeps the quantization noise about 35 dB below the weights' power.
DEFAULT_RELATIVE_STEP = 1.0 / 16.0


def choose_step(weights: np.ndarray, *, step: float | None = None,
                relative_step: float | None = None, bins: int | None = None) -> float:
    """The step of a symmetric uniform grid for ``weights``.

    Exactly one rule applies, in this order: an absolute ``step``; a ``bins`` count (odd, the grid
    spans the largest magnitude); a ``relative_step`` times the RMS of the weights (default 1/16).
    """
    if step is not None:
        if not (np.isfinite(step) and step > 0):
            raise EncoderError(f"step must be finite and > 0, not {step}")
        return float(np.float32(step))
    magnitude = float(np.max(np.abs(weights))) if weights.size else 0.0
    if bins is not None:
        if bins < 1 or bins % 2 == 0:
            raise EncoderError(f"bins must be a positive odd number (so 0 is on the grid), not {bins}")
        half = bins // 2
        chosen = magnitude / half if half and magnitude > 0 else 1.0
        # Round the step up so that the largest weight still lands within the bins.
        return float(np.nextafter(np.float32(chosen), np.float32(np.inf))) if half else chosen
    relative = DEFAULT_RELATIVE_STEP if relative_step is None else relative_step
    if not (np.isfinite(relative) and relative > 0):
        raise EncoderError(f"relative_step must be finite and > 0, not {relative}")
    rms = float(np.sqrt(np.mean(np.square(weights, dtype=np.float64)))) if weights.size else 0.0
    return float(np.float32(rms * relative)) if rms > 0 else 1.0


def quantize_rtn(weights: np.ndarray, *, step: float | None = None,
                 relative_step: float | None = None, bins: int | None = None,
                 per_row: bool = False) -> tuple[np.ndarray, UniformGrid]:
    """Round ``weights`` to the nearest point of a symmetric uniform grid.

    Parameters
    ----------
    weights:
        A float array of any shape.
    step, relative_step, bins:
        How the step is chosen, see :func:`choose_step`.
    per_row:
        One step per row (first dimension) instead of one per tensor.

    Returns
    -------
    (indices, grid): int64 indices of the same shape, and the grid to dequantize them with.
    """
    weights64 = np.asarray(weights, dtype=np.float64)
    if not np.all(np.isfinite(weights64)):
        raise EncoderError("weights contain NaN or infinity; they cannot be quantized")
    geometry = RowGeometry.of_shape(weights64.shape)
    if per_row and geometry.rows > 0:
        rows = weights64.reshape(geometry.rows, geometry.row_length)
        steps = np.array([choose_step(row, step=step, relative_step=relative_step, bins=bins)
                          for row in rows], dtype=np.float32)
        grid = UniformGrid(steps, rows_per_group=1)
        step_of_row = steps.astype(np.float64)[:, None]
        indices = np.rint(rows / step_of_row).astype(np.int64).reshape(weights64.shape)
    else:
        chosen = choose_step(weights64, step=step, relative_step=relative_step, bins=bins)
        grid = UniformGrid(np.float32(chosen))
        indices = np.rint(weights64 / np.float64(np.float32(chosen))).astype(np.int64)
    if bins is not None:
        np.clip(indices, -(bins // 2), bins // 2, out=indices)
    return indices, grid
