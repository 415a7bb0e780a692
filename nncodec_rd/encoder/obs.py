"""The OBS column sweep: rate-constrained Optimal Brain Surgeon quantization of one layer onto a
given grid (docs/algorithms.md §1).

Four methods (:mod:`nncodec_rd.encoder.methods`) share this sweep, told apart by what their
method object states (``error_feedback``, ``rate_aware``, ``folds_quadratic_rate``):

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

:func:`quantize_on_grid` is a pure function of its inputs (weights, Hessian, λ, settings, grid),
so layers can be quantized in any order or on a process pool. The problem and result records
are in :mod:`nncodec_rd.encoder.problem`, the factorisations in :mod:`nncodec_rd.encoder.linalg`,
the choice of the grid in :mod:`nncodec_rd.encoder.grid_choice`.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
from numba import prange

from .jit import cached_njit
from .linalg import cerwu_shifted_hessian, cerwu_target, factor_with_retries
from .problem import (LayerProblem, LayerResult, LazyReconstruction, blocks_within, is_large,
                      layer_distortion, row_blocks)
from .rate import RateModel

if TYPE_CHECKING:  # annotations only: the settings module imports the methods, which import this
    from .settings import QuantizerSettings

# Candidate indices tried per weight, walking from the nearest index towards zero.
MAX_CANDIDATES = 48


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



def layer_factors(problem: LayerProblem, settings: QuantizerSettings):
    """``(factors, curvature)``: per Hessian group (damped Hessian, U, dead mask, damping, column
    order), or None without a Hessian; and each weight's curvature. The sweeps of this module
    and of :mod:`nncodec_rd.encoder.trellis` use them.

    They do not depend on λ, so they are kept on the problem for the next λ.
    """
    rows, columns = problem.weights.shape
    if problem.hessian is None:
        return None, np.broadcast_to(np.ones(1), (rows, columns))  # a view: no memory
    key = ("factors", settings.act_order, settings.damping,
           settings.quantization_method.error_feedback)
    if key not in problem.cache:
        problem.cache[key] = _factor_groups(problem, settings)
    return problem.cache[key]


def _factor_groups(problem: LayerProblem, settings: QuantizerSettings):
    rows, columns = problem.weights.shape
    rows_per_group = rows // problem.groups
    # One group of a large layer: every row has the same curvatures, so one row, broadcast (a
    # 32,000 x 2,048 head would otherwise keep a 500 MB array of copies).
    shared = problem.groups == 1 and is_large(rows, columns)
    factors, curvature = [], np.empty((1 if shared else rows, columns))
    for group, hessian in enumerate(problem.hessian):
        order = (np.argsort(-np.diagonal(hessian), kind="stable") if settings.act_order
                 else np.arange(columns))
        permuted = hessian[np.ix_(order, order)]
        damped, upper, dead, used = factor_with_retries(permuted, settings.damping)
        factors.append((damped, upper, dead, used, order))
        part = slice(group * rows_per_group, (group + 1) * rows_per_group)
        if not settings.quantization_method.error_feedback:
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


CHANNEL_STEP_CLASS_RATIO = 2.0 ** 0.5
"""Per-row steps of a method that folds the rate into the Hessian are rounded to the layer's
one step times powers of this: rows of a class share one factor of ``H + μI``."""

CHANNEL_STEP_CLASS_RANGE = 8.0
"""... and kept within this factor of it either way: at most 13 classes from the λ rule (and
19 once ``per_channel="rd"`` scales a row's step by √2^-2 … √2^4), as many factorisations."""


def lambda_rule_steps(problem: LayerProblem, settings: QuantizerSettings) -> np.ndarray:
    """The layer's step(s) by the λ rule (:func:`choose_steps` with the layer's curvatures).

    With a step per row, a method that folds the quadratic rate (``cerwu``) and a Hessian, the
    steps are rounded to :data:`CHANNEL_STEP_CLASS_RATIO` classes around the layer's one step:
    the folded rate ``μ`` depends on the step, and each distinct ``μ`` costs a Cholesky
    factorisation of ``H + μI``."""
    curvature = layer_factors(problem, settings)[1]
    steps = choose_steps(problem, settings, curvature)
    if (len(steps) > 1 and problem.hessian is not None and settings.step is None
            and settings.quantization_method.folds_quadratic_rate):
        one = float(choose_steps(problem, replace(settings, per_channel=False), curvature)[0])
        limit = math.log(CHANNEL_STEP_CLASS_RANGE, CHANNEL_STEP_CLASS_RATIO)
        exponents = np.clip(np.rint(np.log(steps / one) / math.log(CHANNEL_STEP_CLASS_RATIO)),
                            -limit, limit)
        steps = (one * CHANNEL_STEP_CLASS_RATIO ** exponents).astype(np.float32)
    return steps


def quantize_on_grid(problem: LayerProblem, settings: QuantizerSettings, steps: np.ndarray,
                     index_range: tuple[np.ndarray, np.ndarray] | None = None) -> LayerResult:
    """Quantize one layer with ``settings.quantization_method`` onto the given grid: ``steps``
    (one, or one per row) and optionally ``index_range = (low, high)``, the indices each row may
    take.

    Rows share the Hessian and the rate model within a pass, so a layer of more than
    :data:`~nncodec_rd.encoder.problem.LARGE_LAYER_ELEMENTS` weights is swept
    :data:`~nncodec_rd.encoder.problem.CHUNK_ELEMENTS` weights of rows at a time: the same
    decisions, with no full-size temporaries besides the transformed targets (a language
    model's head of 65 M weights needed about ten 500 MB copies at once).
    """
    rows, columns = problem.weights.shape
    factors, _ = layer_factors(problem, settings)
    steps = np.asarray(steps, dtype=np.float32).reshape(-1)
    row_steps = np.broadcast_to(steps.astype(np.float64), (rows,)) if len(steps) == 1 \
        else steps.astype(np.float64)
    scaled = _ScaledRows(problem.weights, row_steps)  # index units, made a row block at a time
    row_scale = np.ones(rows) if problem.row_scale is None else problem.row_scale
    low, high = _row_ranges(index_range, rows)
    chunks = row_blocks(rows, columns)
    indices = np.empty((rows, columns), dtype=np.int64)  # nearest rounding first
    for part in chunks:
        indices[part] = np.clip(np.rint(scaled[part]), low[part, None], high[part, None])
    rate = RateModel.from_indices(indices, settings.entropy)
    method = settings.quantization_method
    rate_aware = method.rate_aware
    rate_weight = settings.lam / (row_scale * row_steps ** 2) if rate_aware else np.zeros(rows)
    used_damping = settings.damping
    if not method.error_feedback or (factors is None and not rate_aware):
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
        gamma = 1.0 / (math.log(2) * variance) if method.folds_quadratic_rate and variance > 0 \
            else 0.0
        rows_per_group = rows // problem.groups
        sweeps = []  # per row block: its rows, its target in sweep order, U, the column order
        for group, (damped, upper, dead, used, order) in enumerate(factors):
            used_damping = max(used_damping, used)
            group_rows = slice(group * rows_per_group, (group + 1) * rows_per_group)
            if gamma == 0:
                for part in blocks_within(chunks, group_rows):
                    target = scaled[part][:, order]
                    target[:, dead] = 0.0
                    sweeps.append((part, target, upper, order))
                continue
            # The folded rate μ = γ λ / (s_r Δ_r²) is a row's: rows of equal rate weight (one
            # step for the layer, or the step classes of lambda_rule_steps) share one H + μI
            # and its factor.
            eigen_key = ("eigen", settings.act_order, settings.damping, group)
            if eigen_key not in problem.cache:
                problem.cache[eigen_key] = np.linalg.eigh(damped)
            eigen = problem.cache[eigen_key]
            for weight in np.unique(rate_weight[group_rows]):
                mu = float(weight) * gamma
                shifted_upper = factor_with_retries(cerwu_shifted_hessian(damped, mu), 0.0)[1]
                for part in blocks_within(chunks, group_rows):
                    rows_of_class = np.flatnonzero(rate_weight[part] == weight) + part.start
                    if rows_of_class.size == 0:
                        continue
                    if rows_of_class.size == part.stop - part.start:
                        rows_of_class = part  # all of them: a view, not a copy
                    target = scaled[rows_of_class][:, order]
                    target[:, dead] = 0.0
                    sweeps.append((rows_of_class, cerwu_target(target, mu, eigen),
                                   shifted_upper, order))
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
    reconstruction = LazyReconstruction(lambda rows: indices[rows],
                                        row_steps.astype(np.float32).astype(np.float64),
                                        indices.shape)
    final_rate = RateModel.from_indices(indices, settings.entropy)
    return LayerResult(indices=indices, steps=steps, passes=passes, damping=used_damping,
                       distortion=layer_distortion(problem, reconstruction),
                       rate_bits=final_rate.total_bits(indices))



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
