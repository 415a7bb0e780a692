"""One layer's quantization problem and what a method makes of it (docs/algorithms.md §1).

:class:`LayerProblem` holds a layer's weights (float64, ``(rows, columns)``), its Hessian and
optional row weights; :class:`LayerResult` the grid indices a method chose, their steps and the
layer's distortion and rate. :func:`layer_distortion` is the loss every method is judged by.
Layers of more than :data:`LARGE_LAYER_ELEMENTS` weights are worked on in blocks of rows
(:func:`row_blocks`), so that no full-size temporary exists besides the weights themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..format.errors import EncoderError
from ..format.grids import UniformGrid

LARGE_LAYER_ELEMENTS = 1 << 24
"""Layers of more weights than this are quantized by blocks of rows
(:func:`nncodec_rd.encoder.obs.quantize_on_grid`); smaller ones in one block, exactly as a whole."""

CHUNK_ELEMENTS = 1 << 22
"""Weights per block of rows of a large layer."""


@dataclass
class LayerProblem:
    """One layer to quantize.

    Parameters
    ----------
    weights:
        ``(rows, columns)``: one row per output, one column per input (a convolution's kernel
        flattened as ``in_channels/groups × kernel``).
    hessian:
        ``(columns, columns)``, or ``(groups, columns, columns)`` for a grouped convolution whose
        rows split evenly into groups; ``None`` means the identity (no calibration data).
    row_scale:
        Optional ``(rows,)`` weight of each row's loss (an embedding's token frequencies).
    trellis_allowed:
        Whether the rows and columns are those of the stored tensor, as a trellis grid needs
        (spec §6.6: its state runs down the stored columns); False for a layer stored
        transposed.
    """

    weights: np.ndarray
    hessian: np.ndarray | None = None
    row_scale: np.ndarray | None = None
    trellis_allowed: bool = True
    cache: dict = field(default_factory=dict, repr=False, compare=False)  # λ-independent factors

    def __post_init__(self):
        self.weights = np.asarray(self.weights, dtype=np.float64)
        if self.weights.ndim != 2:
            raise EncoderError(f"layer weights must be a (rows, columns) matrix, not shape "
                               f"{self.weights.shape}")
        if not np.all(np.isfinite(self.weights)):
            raise EncoderError("weights contain NaN or infinity; they cannot be quantized")
        rows, columns = self.weights.shape
        if self.hessian is not None:
            hessian = np.asarray(self.hessian, dtype=np.float64)
            if hessian.ndim == 2:
                hessian = hessian[None]
            if hessian.shape[1:] != (columns, columns) or rows % hessian.shape[0]:
                raise EncoderError(f"a Hessian of shape {self.hessian.shape} does not fit weights "
                                   f"of shape {self.weights.shape}")
            if not np.all(np.isfinite(hessian)):
                raise EncoderError("the Hessian contains NaN or infinity")
            self.hessian = hessian
        if self.row_scale is not None:
            self.row_scale = np.asarray(self.row_scale, dtype=np.float64).reshape(-1)
            if self.row_scale.shape != (rows,) or np.any(self.row_scale <= 0):
                raise EncoderError("row_scale needs one positive weight per row")

    @property
    def groups(self) -> int:
        """Number of independent row groups (1 unless the Hessian is per group)."""
        return 1 if self.hessian is None else self.hessian.shape[0]



@dataclass
class LayerResult:
    """What :func:`~nncodec_rd.encoder.methods.quantize_layer` returns.

    Attributes
    ----------
    indices:
        ``(rows, columns)`` int64 grid indices; the weights are ``steps[r] * indices[r]``.
    steps:
        float32, one per tensor (shape ``(1,)``) or one per row.
    distortion:
        ``½ Σ_r s_r (w_r − ŵ_r) H (w_r − ŵ_r)ᵀ`` with the undamped Hessian (identity if none).
    rate_bits:
        Code length of the indices under their own i.i.d. table (no tables or chunk overhead).
    passes:
        Rate-model passes made.
    damping:
        The damping fraction finally used.
    zero_points:
        ``None``, or one per step: the file stores ``indices + zero_points`` with these zero
        points (spec §6.1), so a grid of B bins stores the indices 0 … B − 1.
    bins:
        The number of bins of a bounded grid, ``None`` if any index is allowed.
    grid:
        How the grid was chosen, in a few words (``grid_choice="rd"`` names the candidate).
    trellis_offsets:
        ``None``, or for a trellis grid (spec §6.6) ``d − 2q`` of each index (-1, 0 or 1, one
        byte each): the weights are ``steps[0] * (2 * indices + trellis_offsets)``.
    trellis_rows_per_chunk:
        The chunk height the trellis restarted at (the writer's must be the same).
    """

    indices: np.ndarray
    steps: np.ndarray
    distortion: float
    rate_bits: float
    passes: int
    damping: float
    zero_points: np.ndarray | None = None
    bins: int | None = None
    grid: str = "λ rule"
    trellis_offsets: np.ndarray | None = None
    trellis_rows_per_chunk: int | None = None

    @property
    def trellis(self) -> bool:
        """Whether the indices are on a trellis grid (spec §6.6)."""
        return self.trellis_offsets is not None

    def level_rows(self, rows=slice(None)) -> np.ndarray:
        """What the steps multiply in ``rows``: the trellis levels ``d``, or the indices."""
        if self.trellis_offsets is None:
            return self.indices[rows]
        return 2 * self.indices[rows] + self.trellis_offsets[rows]

    @property
    def levels(self) -> np.ndarray:
        """:meth:`level_rows` of every row."""
        return self.level_rows()

    def dequantized(self, rows=slice(None)) -> np.ndarray:
        """The decoded weights of ``rows`` (float32 steps times the levels, as float32, the
        product a decoder makes, spec §6.1 and §6.6)."""
        steps = self.steps.astype(np.float32)
        return self.level_rows(rows).astype(np.float32) * (
            steps[rows, None] if len(steps) > 1 else steps[0])

    def stored_indices_and_grid(self):
        """The indices as the file stores them and their grid (steps, zero points)."""
        rows_per_group = 1 if len(self.steps) > 1 else 0
        if self.trellis:
            return self.indices, UniformGrid(self.steps, rows_per_group=rows_per_group,
                                             trellis=True)
        if self.zero_points is None:
            return self.indices, UniformGrid(self.steps, rows_per_group=rows_per_group)
        shift = self.zero_points[:, None] if len(self.zero_points) > 1 else self.zero_points[0]
        return (self.indices + shift,
                UniformGrid(self.steps, zero_points=self.zero_points,
                            rows_per_group=rows_per_group))



class LazyReconstruction:
    """A layer's decoded weights in float64, ``levels × row step`` (the levels of
    :meth:`LayerResult.level_rows`: the indices, or a trellis grid's levels), made a row range
    at a time (what :func:`layer_distortion` reads of a large layer), or whole by
    ``np.asarray``.

    ``level_rows(rows)`` gives the levels of a slice of rows; ``row_steps`` one step per row.
    """

    def __init__(self, level_rows, row_steps: np.ndarray, shape: tuple):
        self.level_rows, self.row_steps, self.shape = level_rows, row_steps, shape

    def __getitem__(self, rows):
        return self.level_rows(rows) * self.row_steps[rows][:, None]

    def __array__(self, dtype=None, copy=None):
        whole = self[slice(None)]
        return whole if dtype is None else whole.astype(dtype)

    def __rsub__(self, other):
        return other - np.asarray(self)


def expected_noise_distortion(problem: LayerProblem, variance: float) -> float:
    """The mean of :func:`layer_distortion` over reconstructions ``W + N`` whose noise ``N`` has
    independent entries of ``variance``: ``½ σ² Σ_r s_r tr(H_g(r))``.

    >>> problem = LayerProblem(np.zeros((2, 3)), np.diag([1.0, 2.0, 3.0]))
    >>> expected_noise_distortion(problem, 0.5)  # ½ · 0.5 · (2 rows · trace 6)
    3.0
    """
    rows, columns = problem.weights.shape
    scale = np.ones(rows) if problem.row_scale is None else problem.row_scale
    if problem.hessian is None:
        return 0.5 * variance * columns * float(np.sum(scale))
    rows_per_group = rows // problem.groups
    return 0.5 * variance * float(sum(
        np.trace(hessian) * np.sum(scale[group * rows_per_group:(group + 1) * rows_per_group])
        for group, hessian in enumerate(problem.hessian)))


def layer_distortion(problem: LayerProblem, reconstruction: np.ndarray) -> float:
    """``½ Σ_r s_r (w_r − ŵ_r) H_g(r) (w_r − ŵ_r)ᵀ`` with the undamped Hessian."""
    scale = np.ones(len(problem.weights)) if problem.row_scale is None else problem.row_scale
    if problem.hessian is None:
        # Rows by blocks: no (rows, columns) temporaries for an embedding of millions of rows.
        rows, columns = problem.weights.shape
        step = max(1, (1 << 20) // max(columns, 1))
        return float(sum(0.5 * np.sum(scale[start:start + step, None]
                                      * (problem.weights[start:start + step]
                                         - reconstruction[start:start + step]) ** 2)
                         for start in range(0, rows, step)))
    rows, columns = problem.weights.shape
    rows_per_group = rows // problem.groups
    total = 0.0
    if is_large(rows, columns):
        # By blocks of rows: a head of 65 M weights would need five 500 MB temporaries.
        chunks = row_blocks(rows, columns)
        for group, hessian in enumerate(problem.hessian):
            group_rows = slice(group * rows_per_group, (group + 1) * rows_per_group)
            for part in blocks_within(chunks, group_rows):
                difference = problem.weights[part] - reconstruction[part]
                total += 0.5 * float(np.sum(scale[part, None] * (difference @ hessian)
                                            * difference))
        return total
    difference = problem.weights - reconstruction
    for group, hessian in enumerate(problem.hessian):
        part = slice(group * rows_per_group, (group + 1) * rows_per_group)
        total += 0.5 * float(np.sum(scale[part, None] * (difference[part] @ hessian)
                                    * difference[part]))
    return total



def is_large(rows: int, columns: int) -> bool:
    """Whether a layer of ``rows`` × ``columns`` weights is worked on in blocks of rows (more
    than :data:`LARGE_LAYER_ELEMENTS` weights)."""
    return rows * columns > LARGE_LAYER_ELEMENTS


def row_blocks(rows: int, columns: int) -> list[slice]:
    """The blocks of rows a layer is processed in: one for a layer up to
    :data:`LARGE_LAYER_ELEMENTS` weights."""
    if not is_large(rows, columns):
        return [slice(0, rows)]
    step = max(1, CHUNK_ELEMENTS // max(columns, 1))
    return [slice(start, min(rows, start + step)) for start in range(0, rows, step)]


def blocks_within(chunks: list[slice], rows: slice) -> list[slice]:
    """The parts of ``chunks`` inside ``rows`` (a group of rows)."""
    parts = []
    for chunk in chunks:
        start, stop = max(chunk.start, rows.start), min(chunk.stop, rows.stop)
        if start < stop:
            parts.append(slice(start, stop))
    return parts


def row_distortions(problem: LayerProblem, reconstruction: np.ndarray) -> np.ndarray:
    """Each row's share ``½ s_r (w_r − ŵ_r) H (w_r − ŵ_r)ᵀ`` of :func:`layer_distortion` (whole
    arrays: for the layers of a per-row step choice, grouped convolutions, which are small)."""
    rows = problem.weights.shape[0]
    scale = np.ones(rows) if problem.row_scale is None else problem.row_scale
    difference = problem.weights - reconstruction
    if problem.hessian is None:
        return 0.5 * scale * np.sum(difference ** 2, axis=1)
    rows_per_group = rows // problem.groups
    out = np.empty(rows)
    for group, hessian in enumerate(problem.hessian):
        part = slice(group * rows_per_group, (group + 1) * rows_per_group)
        out[part] = 0.5 * scale[part] * np.sum((difference[part] @ hessian) * difference[part],
                                               axis=1)
    return out
