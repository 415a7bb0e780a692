"""Rate-constrained Optimal Brain Surgeon quantization of one layer (docs/algorithms.md §1).

Four named methods share one column sweep:

``rtn``
    Round each weight to the nearest grid point.
``optq``
    GPTQ: quantize column by column, and after each column move the not-yet-quantized weights
    to compensate the error (the OBS update), λ = 0 in the decisions.
``optq-rd``
    The same sweep, but each decision minimises distortion + λ · (its code length under the
    coder's own table) instead of distortion alone.
``cerwu``
    ``optq-rd`` on the transformed problem: the quadratic part (γ/2)q² of a Gaussian rate model is
    folded into the Hessian (H' = H + μI, W' = W H H'⁻¹) and the decisions see only the rest of
    the rate, R(q) − (γ/2)q². Identical to ``optq-rd`` when the Hessian is diagonal.

Everything works in *index units*: a row ``r`` with step Δ_r holds ``w / Δ_r``. The layer's loss
is ``½ Σ_r s_r Δ_r² (w_r − q_r) H (w_r − q_r)ᵀ + λ R(q)`` with ``s_r`` an optional row weight
(token frequencies for embeddings), so a row's decision weight for the rate is
``λ / (s_r Δ_r²)``.

One global λ also sets each layer's step: at high rate a uniform quantizer on weights of
curvature h loses ``h Δ² / 24`` per weight and each halving of Δ costs one bit, so the slope
dD/dR equals −λ when ``Δ² = 12 λ / (ln 2 · h)``. Every layer then works at the same slope, which
is the optimal bit allocation across layers; the rate-aware decisions refine it where the
high-rate picture fails (near zero, at low rates).

:func:`quantize_layer` is a pure function of its inputs (weights, Hessian, λ, settings), so
layers can be quantized in any order or on a process pool.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from numba import prange

from ..format.errors import EncoderError
from ..format.grids import EntropySettings, UniformGrid
from .jit import cached_njit
from .methods import (DEFAULT_GRID_CHOICE, GRID_CHOICES, METHODS,  # noqa: F401 (re-exported)
                      model_entropy_settings, resolved_grid_choice)
from .rate import RateModel

# Candidate indices tried per weight, walking from the nearest index towards zero.
MAX_CANDIDATES = 48


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
    """

    weights: np.ndarray
    hessian: np.ndarray | None = None
    row_scale: np.ndarray | None = None
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
class QuantizerSettings:
    """How :func:`quantize_layer` works.

    Parameters
    ----------
    method:
        ``"rtn"``, ``"optq"``, ``"optq-rd"``, ``"cerwu"``, or the transform methods
        ``"transform"`` and ``"transform+cerwu"`` (:mod:`nncodec_rd.encoder.transform`).
    lam:
        The rate–distortion trade-off λ (loss units per bit), > 0. It sets the grid step of every
        layer (see the module docstring) and, for ``optq-rd`` and ``cerwu``, weighs the rate in
        each decision.
    per_channel:
        One step per output row instead of one per tensor (with ``cerwu`` only for layers without
        a Hessian, since its transformed problem shares H + μI across rows).
    step:
        An absolute step for every row, overriding the λ rule.
    grid_scale:
        Multiplies the step the λ rule gives: below 1 a finer grid, leaving more of the rate to
        the rate-aware decisions.
    act_order:
        Quantize columns in order of decreasing Hessian diagonal (GPTQ's "act-order").
    damping:
        Added to the Hessian's diagonal, as a fraction of its mean diagonal. Raised ×10 and ×100
        when the Cholesky factorisation fails.
    block_size:
        Columns per lazy-update block (GPTQ's lazy batch).
    max_passes:
        Quantize–recount–rebuild passes of the rate model (docs/algorithms.md §1). The second pass
        brings most of the gain: on a 768×384 heavy-tailed layer, a third lowered the objective
        by under 0.1% at 2.7 bits per weight, for 50% more time.
    entropy:
        The coder's settings, whose table the rate model reproduces; by default each tensor's
        probability precision is chosen by size (``EntropySettings(choose_precision=True)``).
    grid_choice:
        ``"fixed"``: every layer's step from the λ rule, any index allowed. ``"rd"``: each layer
        tries several grids (step scales around the λ rule, and bounded grids of ``grid_bins``
        bins with a zero point, their step from the weights' clipped range) and keeps the one
        with the least ``D/λ + R`` (:mod:`nncodec_rd.encoder.grid_choice`). ``"auto"`` (the
        default): ``"rd"`` except for ``rtn``, where it lost on the benchmarks.
    grid_bins:
        The odd numbers of bins ``"rd"`` tries for layers with one step.
    grid_search_below_bits:
        ``"rd"`` searches only layers that the λ rule codes at fewer bits per weight than this.
    """

    method: str = "cerwu"
    lam: float = 1e-6
    per_channel: bool = False
    step: float | None = None
    grid_scale: float = 1.0
    act_order: bool = True
    damping: float = 0.01
    block_size: int = 128
    max_passes: int = 2
    entropy: EntropySettings = field(default_factory=model_entropy_settings)
    grid_choice: str = DEFAULT_GRID_CHOICE
    grid_bins: tuple = (3, 5, 7, 15, 31)
    grid_search_below_bits: float = 2.0

    def __post_init__(self):
        if self.method not in METHODS:
            raise EncoderError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if not (math.isfinite(self.lam) and self.lam > 0):
            raise EncoderError(f"lam must be finite and > 0, not {self.lam}")
        if self.step is not None and not (math.isfinite(self.step) and self.step > 0):
            raise EncoderError(f"step must be finite and > 0, not {self.step}")
        if not (math.isfinite(self.grid_scale) and self.grid_scale > 0):
            raise EncoderError(f"grid_scale must be finite and > 0, not {self.grid_scale}")
        if self.grid_choice not in GRID_CHOICES:
            raise EncoderError(f"unknown grid_choice {self.grid_choice!r}; choose one of "
                               f"{', '.join(GRID_CHOICES)}")
        if any(int(bins) != bins or bins < 3 or bins % 2 == 0 for bins in self.grid_bins):
            raise EncoderError(f"grid_bins must be odd numbers >= 3 (so 0 is a grid point), not "
                               f"{self.grid_bins}")
        if self.block_size < 1 or self.max_passes < 1 or self.damping < 0:
            raise EncoderError("block_size and max_passes must be >= 1 and damping >= 0")


@dataclass
class LayerResult:
    """What :func:`quantize_layer` returns.

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

    def stored_indices_and_grid(self):
        """The indices as the file stores them and their grid (steps, zero points)."""
        rows_per_group = 1 if len(self.steps) > 1 else 0
        if self.zero_points is None:
            return self.indices, UniformGrid(self.steps, rows_per_group=rows_per_group)
        shift = self.zero_points[:, None] if len(self.zero_points) > 1 else self.zero_points[0]
        return (self.indices + shift,
                UniformGrid(self.steps, zero_points=self.zero_points,
                            rows_per_group=rows_per_group))


def damped_hessian(hessian: np.ndarray, damping: float) -> tuple[np.ndarray, np.ndarray]:
    """``hessian`` with dead inputs (zero diagonal) set to 1 and ``damping`` × its mean diagonal
    added to the diagonal; also returns the mask of dead inputs (their weights are set to 0)."""
    result = np.array(hessian, dtype=np.float64, copy=True)
    diagonal = np.diagonal(result).copy()
    dead = diagonal <= 0
    result[dead, :] = 0.0
    result[:, dead] = 0.0
    diagonal[dead] = 1.0
    alive = diagonal[~dead]
    mean_diagonal = float(alive.mean()) if alive.size else 1.0
    np.fill_diagonal(result, diagonal + damping * mean_diagonal)
    return result, dead


def inverse_cholesky_upper(hessian: np.ndarray) -> np.ndarray:
    """Upper Cholesky factor ``U`` of ``hessian⁻¹`` (``hessian⁻¹ = Uᵀ U``); raises
    ``numpy.linalg.LinAlgError`` if the matrix is not positive definite.

    With ``J`` the reversal permutation and ``J H J = L Lᵀ``: ``H⁻¹ = (J L⁻¹ J)ᵀ (J L⁻¹ J)`` and
    ``J L⁻¹ J`` is upper triangular, so one factorisation and one triangular inverse suffice
    (no explicit inverse of ``H``).
    """
    # a copy, not np.ascontiguousarray: a 1 x 1 view counts as contiguous and keeps its
    # negative strides, which torch refuses
    reversed_hessian = torch.from_numpy(hessian[::-1, ::-1].copy())
    lower, info = torch.linalg.cholesky_ex(reversed_hessian)
    if int(info) != 0:
        raise np.linalg.LinAlgError("not positive definite")
    identity = torch.eye(len(hessian), dtype=lower.dtype)
    inverse_lower = torch.linalg.solve_triangular(lower, identity, upper=False)
    return inverse_lower.numpy()[::-1, ::-1].copy()


def factor_with_retries(hessian: np.ndarray, damping: float) -> tuple[np.ndarray, np.ndarray,
                                                                        np.ndarray, float]:
    """Damp and factor ``hessian``: (damped Hessian, U, dead-input mask, damping used).

    Retries with 10× and 100× the damping before raising :class:`EncoderError`.
    """
    for attempt in (damping, damping * 10, damping * 100):
        damped, dead = damped_hessian(hessian, max(attempt, 1e-12))
        try:
            upper = inverse_cholesky_upper(damped)
        except np.linalg.LinAlgError:
            continue
        if np.all(np.isfinite(upper)) and np.all(np.diagonal(upper) > 0):
            return damped, upper, dead, attempt
    raise EncoderError(f"the Hessian is not positive definite even with {100 * damping:g} × its "
                       f"mean diagonal added; check the calibration data (NaN, too few samples?)")


def cerwu_transform(weights: np.ndarray, hessian: np.ndarray, mu: float,
                    eigen: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray,
                                                                             np.ndarray]:
    """The transformed problem of CERWU: ``(W H (H + μI)⁻¹, H + μI)``.

    For any ``Q``: ``½ (W−Q) H (W−Q)ᵀ + (μ/2) Q Qᵀ`` equals ``½ (W'−Q) H' (W'−Q)ᵀ`` plus a term
    that does not depend on ``Q`` (row by row), so the sweep on the transformed problem minimises
    distortion plus the quadratic part of the rate. ``eigen``, the eigendecomposition
    ``(values, vectors)`` of ``hessian``, makes the product two matrix products for any μ.
    """
    if eigen is None:
        eigen = np.linalg.eigh(hessian)
    return cerwu_target(weights, mu, eigen), cerwu_shifted_hessian(hessian, mu)


def cerwu_shifted_hessian(hessian: np.ndarray, mu: float) -> np.ndarray:
    """``H + μI``, the Hessian of CERWU's transformed problem (:func:`cerwu_transform`)."""
    return hessian + mu * np.eye(len(hessian))


def cerwu_target(weights: np.ndarray, mu: float, eigen: tuple[np.ndarray, np.ndarray]
                 ) -> np.ndarray:
    """``W H (H + μI)⁻¹`` from the eigendecomposition of ``H`` (:func:`cerwu_transform`); row
    by row, so a large layer is transformed a block of rows at a time."""
    values, vectors = eigen
    return ((weights @ vectors) * (values / (values + mu))) @ vectors.T


@cached_njit(inline="always")
def _price(k, cost_bits, first_index, outside_bits, half_gamma, low, high):
    if k < low or k > high:
        return np.inf  # outside the grid's bins: not a candidate
    position = k - first_index
    if 0 <= position < len(cost_bits):
        bits = cost_bits[position]
    else:
        bits = outside_bits
    return bits - half_gamma * k * k


@cached_njit(parallel=True)
def _sweep_block(block, upper, rate_weight, cost_bits, first_index, outside_bits, half_gamma,
                 low_index, high_index, indices, errors):
    """Quantize the columns of ``block`` (rows × width, index units) in order, with OBS updates
    inside the block. Rows are independent here, so they run in parallel.

    Each decision minimises ``(w − k)² + 2 U_jj² · rate_weight[r] · price(k)``, i.e. the OBS loss
    increment ``½ (w − k)² / U_jj²`` plus the row's weighted rate, scaled by ``2 U_jj²``, over
    the indices ``low_index[r] <= k <= high_index[r]`` (a range that holds 0).
    """
    rows, width = block.shape
    for r in prange(rows):
        weight = rate_weight[r]
        low = low_index[r]
        high = high_index[r]
        for j in range(width):
            w = block[r, j]
            d = upper[j, j]
            q = min(max(np.int64(np.rint(w)), low), high)
            if weight > 0.0:
                scale = 2.0 * d * d * weight
                toward = -1 if q > 0 else 1
                best = q - toward if q != 0 else q + 1  # one step away from zero
                best_cost = (w - best) ** 2 + scale * _price(best, cost_bits, first_index,
                                                             outside_bits, half_gamma, low, high)
                if q == 0:
                    other = np.int64(-1)
                    cost = (w - other) ** 2 + scale * _price(other, cost_bits, first_index,
                                                             outside_bits, half_gamma, low, high)
                    if cost < best_cost:
                        best, best_cost = other, cost
                k = q
                for _ in range(MAX_CANDIDATES):
                    cost = (w - k) ** 2 + scale * _price(k, cost_bits, first_index, outside_bits,
                                                         half_gamma, low, high)
                    if cost < best_cost:
                        best, best_cost = k, cost
                    if k == 0:
                        break
                    k += toward
                if k != 0:
                    cost = w * w + scale * _price(np.int64(0), cost_bits, first_index,
                                                  outside_bits, half_gamma, low, high)
                    if cost < best_cost:
                        best, best_cost = np.int64(0), cost
                q = best
            indices[r, j] = q
            error = (w - q) / d
            errors[r, j] = error
            for m in range(j + 1, width):
                block[r, m] -= error * upper[j, m]


def obs_sweep(weights: np.ndarray, upper: np.ndarray, rate_weight: np.ndarray,
              rate: RateModel, half_gamma: float = 0.0, block_size: int = 128,
              index_range: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """The column sweep with lazy block updates (GPTQ), over all rows at once.

    Parameters
    ----------
    weights:
        ``(rows, columns)`` in index units, columns already in sweep order.
    upper:
        Upper Cholesky factor of the inverse Hessian, in the same column order.
    rate_weight:
        ``(rows,)`` weight of the rate in each row's decisions; 0 gives plain nearest rounding
        (GPTQ).
    rate:
        Bits per index.
    half_gamma:
        γ/2 of CERWU: the quadratic part of the rate already inside the transformed Hessian.
    index_range:
        ``(low, high)``, each ``(rows,)``: the indices each row may take (a grid with a bounded
        number of bins); ``None`` means any index.

    Returns
    -------
    ``(rows, columns)`` int64 indices.
    """
    work = np.array(weights, dtype=np.float64, copy=True)
    rows, columns = work.shape
    indices = np.zeros((rows, columns), dtype=np.int64)
    rate_weight = np.ascontiguousarray(rate_weight, dtype=np.float64)
    cost_bits = np.ascontiguousarray(rate.cost_bits, dtype=np.float64)
    low, high = _row_ranges(index_range, rows)
    for start in range(0, columns, block_size):
        stop = min(start + block_size, columns)
        block = np.ascontiguousarray(work[:, start:stop])
        errors = np.zeros_like(block)
        block_indices = np.zeros(block.shape, dtype=np.int64)
        _sweep_block(block, np.ascontiguousarray(upper[start:stop, start:stop]), rate_weight,
                     cost_bits, np.int64(rate.first_index), float(rate.outside_bits),
                     float(half_gamma), low, high, block_indices, errors)
        indices[:, start:stop] = block_indices
        if stop < columns:
            work[:, stop:] -= errors @ upper[start:stop, stop:]
    return indices


# Any index the format can hold (spec §9): the range of a grid without a bound on its bins.
UNBOUNDED_INDEX = (1 << 23) - 1


def _row_ranges(index_range, rows: int) -> tuple[np.ndarray, np.ndarray]:
    if index_range is None:
        return (np.full(rows, -UNBOUNDED_INDEX, dtype=np.int64),
                np.full(rows, UNBOUNDED_INDEX, dtype=np.int64))
    low, high = index_range
    return (np.ascontiguousarray(np.broadcast_to(low, (rows,)), dtype=np.int64),
            np.ascontiguousarray(np.broadcast_to(high, (rows,)), dtype=np.int64))


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
    if rows * columns > LARGE_LAYER_ELEMENTS:
        # By blocks of rows: a head of 65 M weights would need five 500 MB temporaries.
        chunks = _row_chunks(rows, columns)
        for group, hessian in enumerate(problem.hessian):
            group_rows = slice(group * rows_per_group, (group + 1) * rows_per_group)
            for part in _within(chunks, group_rows):
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


def _curvatures(problem: LayerProblem, settings: QuantizerSettings):
    """Per group: (damped Hessian, U, dead mask, damping, order) and each weight's curvature.

    They do not depend on λ, so they are kept on the problem for the next λ.
    """
    rows, columns = problem.weights.shape
    if problem.hessian is None:
        return None, np.broadcast_to(np.ones(1), (rows, columns))  # a view: no memory
    key = ("factors", settings.act_order, settings.damping, settings.method == "rtn")
    if key not in problem.cache:
        problem.cache[key] = _factor_groups(problem, settings)
    return problem.cache[key]


def _factor_groups(problem: LayerProblem, settings: QuantizerSettings):
    rows, columns = problem.weights.shape
    rows_per_group = rows // problem.groups
    # One group of a large layer: every row has the same curvatures, so one row, broadcast (a
    # 32,000 x 2,048 head would otherwise keep a 500 MB array of copies).
    shared = problem.groups == 1 and rows * columns > LARGE_LAYER_ELEMENTS
    factors, curvature = [], np.empty((1 if shared else rows, columns))
    for group, hessian in enumerate(problem.hessian):
        order = (np.argsort(-np.diagonal(hessian), kind="stable") if settings.act_order
                 else np.arange(columns))
        permuted = hessian[np.ix_(order, order)]
        damped, upper, dead, used = factor_with_retries(permuted, settings.damping)
        factors.append((damped, upper, dead, used, order))
        part = slice(group * rows_per_group, (group + 1) * rows_per_group)
        if settings.method == "rtn":
            per_column = np.diagonal(damped)
        else:
            per_column = 1.0 / np.diagonal(upper) ** 2  # the OBS cost of a unit error
        curvature[slice(None) if shared else part, order] = per_column[None, :]
    if shared:
        curvature = np.broadcast_to(curvature, (rows, columns))
    return factors, curvature


def choose_steps(problem: LayerProblem, settings: QuantizerSettings,
                 curvature: np.ndarray) -> np.ndarray:
    """The step(s) of the λ rule ``Δ² = grid_scale² · 12 λ / (ln 2 · mean curvature)``."""
    rows = problem.weights.shape[0]
    if settings.step is not None:
        return np.full(rows if settings.per_channel else 1, settings.step, dtype=np.float32)
    scale = np.ones(rows) if problem.row_scale is None else problem.row_scale
    if settings.per_channel:
        # Row by row blocks: the same per-row means without a second (rows, columns) array.
        step = max(1, (1 << 20) // max(curvature.shape[1], 1))
        mean_curvature = np.concatenate([
            (curvature[start:start + step] * scale[start:start + step, None]).mean(axis=1)
            for start in range(0, rows, step)]) if rows else np.zeros(0)
    elif curvature.strides[0] == 0:  # one row, broadcast (_factor_groups): no full product
        mean_curvature = np.array([curvature[0].mean() * scale.mean()])
    else:
        mean_curvature = np.array([(curvature * scale[:, None]).mean()])
    mean_curvature = np.maximum(mean_curvature, 1e-30)
    steps = settings.grid_scale * np.sqrt(12.0 * settings.lam / (math.log(2) * mean_curvature))
    return np.maximum(steps, np.finfo(np.float32).tiny).astype(np.float32)


def quantize_layer(problem: LayerProblem, settings: QuantizerSettings) -> LayerResult:
    """Quantize one layer with ``settings.method`` (module docstring); a pure function.

    The transform methods (:mod:`nncodec_rd.encoder.transform`) return a
    :class:`~nncodec_rd.encoder.transform.TransformLayerResult` instead.
    """
    if settings.method in ("transform", "transform+cerwu"):
        from .transform import quantize_layer_transform

        return quantize_layer_transform(problem, settings)
    rows, columns = problem.weights.shape
    if settings.method == "cerwu" and problem.hessian is not None and (
            settings.per_channel or problem.row_scale is not None):
        raise EncoderError("cerwu needs one step and one weight for all rows of a layer with a "
                           "Hessian (per_channel=False): its transformed Hessian H + μI is shared "
                           "by all rows")
    if resolved_grid_choice(settings.grid_choice, settings.method) == "rd":
        from .grid_choice import quantize_layer_choosing_grid

        return quantize_layer_choosing_grid(problem, settings)
    return quantize_on_grid(problem, settings, lambda_rule_steps(problem, settings))


def lambda_rule_steps(problem: LayerProblem, settings: QuantizerSettings) -> np.ndarray:
    """The layer's step(s) by the λ rule (:func:`choose_steps` with the layer's curvatures)."""
    return choose_steps(problem, settings, _curvatures(problem, settings)[1])


def quantize_on_grid(problem: LayerProblem, settings: QuantizerSettings, steps: np.ndarray,
                     index_range: tuple[np.ndarray, np.ndarray] | None = None) -> LayerResult:
    """Quantize one layer with ``settings.method`` onto the given grid: ``steps`` (one, or one
    per row) and optionally ``index_range = (low, high)``, the indices each row may take.

    Rows share the Hessian and the rate model within a pass, so a layer of more than
    :data:`LARGE_LAYER_ELEMENTS` weights is swept :data:`CHUNK_ELEMENTS` weights of rows at a
    time: the same decisions, with no full-size temporaries besides the transformed targets
    (a language model's head of 65 M weights needed about ten 500 MB copies at once).
    """
    rows, columns = problem.weights.shape
    factors, _ = _curvatures(problem, settings)
    steps = np.asarray(steps, dtype=np.float32).reshape(-1)
    row_steps = np.broadcast_to(steps.astype(np.float64), (rows,)) if len(steps) == 1 \
        else steps.astype(np.float64)
    scaled = _ScaledRows(problem.weights, row_steps)  # index units, made a row block at a time
    row_scale = np.ones(rows) if problem.row_scale is None else problem.row_scale
    low, high = _row_ranges(index_range, rows)
    chunks = _row_chunks(rows, columns)
    indices = np.empty((rows, columns), dtype=np.int64)  # nearest rounding first
    for part in chunks:
        indices[part] = np.clip(np.rint(scaled[part]), low[part, None], high[part, None])
    rate = RateModel.from_indices(indices, settings.entropy)
    rate_aware = settings.method in ("optq-rd", "cerwu")
    rate_weight = settings.lam / (row_scale * row_steps ** 2) if rate_aware else np.zeros(rows)
    used_damping = settings.damping
    if settings.method == "rtn" or (factors is None and not rate_aware):
        passes = 1
    elif factors is None:
        # Identity Hessian: no coupling between weights, so every method is a per-weight
        # rate-distortion decision (and cerwu equals optq-rd exactly).
        identity = np.ones((1, 1))
        passes = 0
        for passes in range(1, settings.max_passes + 1):
            previous = indices
            indices = _sweep_rows_independently(scaled, rate_weight, rate, identity,
                                                (low, high))
            rate = RateModel.from_indices(indices, settings.entropy)
            changed = _count_changed(indices, previous, chunks)
            del previous
            if changed <= 1e-3 * indices.size:
                break
    else:
        variance = _variance(scaled, chunks)
        gamma = 1.0 / (math.log(2) * variance) if settings.method == "cerwu" and variance > 0 \
            else 0.0
        rows_per_group = rows // problem.groups
        sweeps = []  # per row block: its rows, its target in sweep order, U, the column order
        for group, (damped, upper, dead, used, order) in enumerate(factors):
            used_damping = max(used_damping, used)
            group_rows = slice(group * rows_per_group, (group + 1) * rows_per_group)
            eigen = mu = None
            if gamma > 0:
                # Row weights are all equal here (checked above).
                eigen_key = ("eigen", settings.act_order, settings.damping, group)
                if eigen_key not in problem.cache:
                    problem.cache[eigen_key] = np.linalg.eigh(damped)
                eigen, mu = problem.cache[eigen_key], float(rate_weight[0]) * gamma
                upper = factor_with_retries(cerwu_shifted_hessian(damped, mu), 0.0)[1]
            for part in _within(chunks, group_rows):
                target = scaled[part][:, order]
                target[:, dead] = 0.0
                if eigen is not None:
                    target = cerwu_target(target, mu, eigen)
                sweeps.append((part, target, upper, order))
        passes = 0
        for passes in range(1, (settings.max_passes if rate_aware else 1) + 1):
            changed = 0
            for part, target, upper, order in sweeps:
                swept = _unpermute(obs_sweep(target, upper, rate_weight[part], rate, gamma / 2,
                                             settings.block_size, (low[part], high[part])),
                                   order)
                changed += int(np.count_nonzero(swept != indices[part]))
                indices[part] = swept
                del swept
            if not rate_aware:
                break
            rate = RateModel.from_indices(indices, settings.entropy)
            if changed <= 1e-3 * indices.size:
                break
        del sweeps
    reconstruction = _LazyReconstruction(indices, row_steps.astype(np.float32).astype(np.float64))
    final_rate = RateModel.from_indices(indices, settings.entropy)
    return LayerResult(indices=indices, steps=steps, passes=passes, damping=used_damping,
                       distortion=layer_distortion(problem, reconstruction),
                       rate_bits=final_rate.total_bits(indices))


LARGE_LAYER_ELEMENTS = 1 << 24
"""Layers of more weights than this are quantized by blocks of rows (:func:`quantize_on_grid`);
smaller ones in one block, exactly as a whole."""

CHUNK_ELEMENTS = 1 << 22
"""Weights per block of rows of a large layer."""


def _row_chunks(rows: int, columns: int) -> list[slice]:
    """The blocks of rows a layer is processed in: one for a layer up to
    :data:`LARGE_LAYER_ELEMENTS` weights."""
    if rows * columns <= LARGE_LAYER_ELEMENTS:
        return [slice(0, rows)]
    step = max(1, CHUNK_ELEMENTS // max(columns, 1))
    return [slice(start, min(rows, start + step)) for start in range(0, rows, step)]


def _within(chunks: list[slice], rows: slice) -> list[slice]:
    """The parts of ``chunks`` inside ``rows`` (a group of rows)."""
    parts = []
    for chunk in chunks:
        start, stop = max(chunk.start, rows.start), min(chunk.stop, rows.stop)
        if start < stop:
            parts.append(slice(start, stop))
    return parts


class _ScaledRows:
    """``weights / row_steps[:, None]`` (the weights in index units), made for the rows asked."""

    def __init__(self, weights: np.ndarray, row_steps: np.ndarray):
        self.weights, self.row_steps = weights, row_steps
        self.shape = weights.shape

    def __getitem__(self, rows):
        return self.weights[rows] / self.row_steps[rows][:, None]


def _variance(scaled: _ScaledRows, chunks: list[slice]) -> float:
    """The variance of all scaled weights (two passes over the row blocks for a large layer)."""
    if len(chunks) == 1:
        part = scaled[chunks[0]]
        return float(np.var(part)) if part.size else 0.0
    count = scaled.shape[0] * scaled.shape[1]
    mean = sum(float(np.sum(scaled[part])) for part in chunks) / count
    return sum(float(np.sum((scaled[part] - mean) ** 2)) for part in chunks) / count


def _count_changed(indices: np.ndarray, previous: np.ndarray, chunks: list[slice]) -> int:
    return sum(int(np.count_nonzero(indices[part] != previous[part])) for part in chunks)


class _LazyReconstruction:
    """``indices * steps[:, None]`` made on demand, a row range at a time (what
    :func:`layer_distortion` reads), or whole by ``np.asarray``."""

    def __init__(self, indices: np.ndarray, row_steps: np.ndarray):
        self.indices, self.row_steps = indices, row_steps
        self.shape = indices.shape

    def __getitem__(self, rows):
        return self.indices[rows] * self.row_steps[rows][:, None]

    def __array__(self, dtype=None, copy=None):
        whole = self.indices * self.row_steps[:, None]
        return whole if dtype is None else whole.astype(dtype)

    def __rsub__(self, other):
        return other - np.asarray(self)


def _unpermute(indices: np.ndarray, order: np.ndarray) -> np.ndarray:
    result = np.empty_like(indices)
    result[:, order] = indices
    return result


def _sweep_rows_independently(scaled, rate_weight, rate, identity, index_range=None,
                              chunk_elements: int = 1 << 20):
    """Per-weight rate-distortion decisions (a sweep whose inverse-Hessian factor is 1).

    Rows are independent here, so they are decided ``chunk_elements`` weights at a time: the
    sweep's per-weight work arrays stay a few MB whatever the layer's size (an embedding of
    32,000 × 2,048 would otherwise need about 3 GB of them).
    """
    rows, columns = scaled.shape
    cost_bits = np.ascontiguousarray(rate.cost_bits, np.float64)
    low_rows, high_rows = _row_ranges(index_range, rows)
    indices = np.empty((rows, columns), dtype=np.int64)
    step = max(1, chunk_elements // max(columns, 1))
    for start in range(0, rows, step):
        part = slice(start, min(rows, start + step))
        flat = np.array(scaled[part].reshape(-1, 1), dtype=np.float64)  # a copy the sweep edits
        weight = np.repeat(rate_weight[part], columns)
        low, high = (np.repeat(bound[part], columns) for bound in (low_rows, high_rows))
        chunk_indices = np.zeros(flat.shape, dtype=np.int64)
        errors = np.zeros_like(flat)
        _sweep_block(flat, identity, weight, cost_bits, np.int64(rate.first_index),
                     float(rate.outside_bits), 0.0, low, high, chunk_indices, errors)
        indices[part] = chunk_indices.reshape(-1, columns)
    return indices
