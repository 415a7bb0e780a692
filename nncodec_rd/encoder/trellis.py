"""Trellis-coded quantization inside the OBS sweep (format 1.1, spec §6.6; docs/algorithms.md
§1, "Trellis-coded quantization").

The UNIFORM_TRELLIS grid gives every column of a tensor a four-state machine: in states 0 and 1
an index ``q`` means the level ``d = 2q`` (quantizer 0, the even multiples of the step Δ), in
states 2 and 3 ``d = 2q − sgn(q)`` (quantizer 1, the odd multiples and 0), and the parity of
``q`` moves the state. The state runs *down* a column, across rows, and restarts at each chunk.

That direction is what lets the OBS sweep stay exact. The sweep quantizes a layer column by
column; within one column the rows' losses are independent (each row's error is
``(w_r − d_r)² / U_jj²`` plus its rate), so the best levels of a whole column over the trellis's
paths (each state trying the two levels of its quantizer around the target, the next one out
and 0) are found by a Viterbi search over the rows, and the OBS update then moves
the not-yet-quantized columns as for any other grid. Column order (``act_order``) is free, since
the trellis does not run along it.

Each index is priced by the coder's own table (:class:`~nncodec_rd.encoder.rate.RateModel`), as in
``optq-rd``; the tables are rebuilt between passes. The union of the two quantizers is a grid of
step Δ, each quantizer one of step 2Δ: the index of a level costs about the bits of the coarse
grid while the level itself sits on the fine one.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..format.constants import TRELLIS_NEXT_STATE
from .jit import cached_njit
from .obs import lambda_rule_steps, layer_factors
from .problem import (CHUNK_ELEMENTS, LayerProblem, LayerResult, LazyReconstruction,
                      layer_distortion)
from .rate import RateModel

TRELLIS_STEP_FACTOR = 0.6
"""The trellis step Δ as a fraction of the λ rule's step for a uniform grid. Measured on
all-MiniLM-L6-v2's Linear layers (D/λ + R against the factor, 0.45 to 0.8, at λ from 6e-7 to
6e-4): the least objective lay at 0.6 to 0.65 at every λ; each quantizer's own step is 2Δ."""

_NEXT = np.array(TRELLIS_NEXT_STATE, dtype=np.int64)


@cached_njit(inline="always")
def _level(q, quantizer):
    """spec §6.6: the level d of index ``q`` in ``quantizer`` (0 or 1)."""
    if quantizer == 0 or q == 0:
        return 2 * q
    return 2 * q - 1 if q > 0 else 2 * q + 1


@cached_njit(inline="always")
def _price(q, cost_bits, first_index, outside_bits):
    position = q - first_index
    if 0 <= position < len(cost_bits):
        return cost_bits[position]
    return outside_bits


@cached_njit()
def _column_viterbi(targets, rate_scale, cost_bits, first_index, outside_bits, segment_rows,
                    next_state, indices, levels, back_index, back_state):
    """The levels of one column of all rows: the least ``Σ_r (t_r − d_r)² + rate_scale_r ·
    bits(q_r)`` over the trellis's paths, which restart at state 0 every ``segment_rows`` rows
    (a chunk). Four candidates per state: the two nearest levels of its quantizer, one more
    away, and 0."""
    rows = targets.shape[0]
    candidates = np.zeros(4, np.int64)
    cost = np.empty(4)
    new_cost = np.empty(4)
    for start in range(0, rows, segment_rows):
        stop = min(rows, start + segment_rows)
        cost[:] = np.inf
        cost[0] = 0.0
        for r in range(start, stop):
            new_cost[:] = np.inf
            t = targets[r]
            for state in range(4):
                if cost[state] == np.inf:
                    continue
                quantizer = state >> 1
                if quantizer == 0:
                    nearest = np.int64(np.floor(t / 2.0))
                else:
                    nearest = np.int64(np.floor((t + 1.0) / 2.0)) if t >= 0 else \
                        np.int64(np.floor((t - 1.0) / 2.0))
                candidates[0] = nearest
                candidates[1] = nearest + 1
                candidates[2] = nearest - 1 if t < 0 else nearest + 2
                candidates[3] = 0
                for c in range(4):
                    q = candidates[c]
                    d = _level(q, quantizer)
                    total = cost[state] + (t - d) ** 2 + rate_scale[r] * _price(
                        q, cost_bits, first_index, outside_bits)
                    following = next_state[state, q & 1]
                    if total < new_cost[following]:
                        new_cost[following] = total
                        back_index[r, following] = q
                        back_state[r, following] = state
            cost[:] = new_cost
        state = np.argmin(cost)
        for r in range(stop - 1, start - 1, -1):
            q = back_index[r, state]
            previous = back_state[r, state]
            indices[r] = q
            levels[r] = _level(q, previous >> 1)
            state = previous


@cached_njit()
def _trellis_sweep(work, upper, rate_weight, cost_bits, first_index, outside_bits,
                   segment_rows, next_state, block_size, update, indices, levels):
    """The OBS sweep of :func:`nncodec_rd.encoder.obs.obs_sweep` with a Viterbi search per
    column (rows × columns, index units, columns in sweep order). ``update`` False: an
    identity Hessian, no error feedback."""
    rows, columns = work.shape
    column_indices = np.zeros(rows, np.int64)
    column_levels = np.zeros(rows, np.int64)
    back_index = np.zeros((rows, 4), np.int64)
    back_state = np.zeros((rows, 4), np.int64)
    rate_scale = np.empty(rows)
    for start in range(0, columns, block_size):
        stop = min(columns, start + block_size)
        errors = np.zeros((rows, stop - start))
        for j in range(start, stop):
            d = upper[j, j] if update else 1.0
            for r in range(rows):
                rate_scale[r] = 2.0 * d * d * rate_weight[r]
            _column_viterbi(work[:, j].copy(), rate_scale, cost_bits, first_index, outside_bits,
                            segment_rows, next_state, column_indices, column_levels, back_index,
                            back_state)
            for r in range(rows):
                indices[r, j] = column_indices[r]
                levels[r, j] = column_levels[r]
                if update:
                    error = (work[r, j] - column_levels[r]) / d
                    errors[r, j - start] = error
                    for m in range(j + 1, stop):
                        work[r, m] -= error * upper[j, m]
        if update and stop < columns:
            work[:, stop:] -= errors @ np.ascontiguousarray(upper[start:stop, stop:])


def trellis_applies(problem: LayerProblem, settings) -> bool:
    """Whether ``quantize_trellis`` can code this layer: one step, one Hessian for all rows (a
    grouped convolution's groups sweep their columns in orders of their own), rows in the
    stored tensor's order, and a method with error feedback or rate-aware decisions."""
    method = settings.quantization_method
    return (problem.trellis_allowed and problem.groups == 1 and settings.per_channel is False
            and (method.error_feedback or method.rate_aware)
            and problem.weights.size > 0)


def quantize_trellis(problem: LayerProblem, settings) -> LayerResult:
    """Quantize one layer onto a UNIFORM_TRELLIS grid (spec §6.6) of step
    :data:`TRELLIS_STEP_FACTOR` × the λ rule's, with the Viterbi-per-column OBS sweep; the
    decisions weigh each index's bits under the coder's table, rebuilt between passes
    (``settings.max_passes``). The trellis restarts at each chunk of the writer's
    ``settings.entropy``. Rows are swept a block of whole chunks at a time: besides the indices,
    the result keeps one byte per weight (``d − 2q``), and no other full-size array is made.

    >>> from nncodec_rd.encoder.settings import QuantizerSettings
    >>> rng = np.random.default_rng(0)
    >>> problem = LayerProblem(rng.normal(size=(8, 6)), np.eye(6))
    >>> result = quantize_trellis(problem, QuantizerSettings(method="optq-rd", lam=1e-3))
    >>> bool(np.all(np.abs(result.levels - 2 * result.indices) <= 1))  # d is 2q or 2q ± 1
    True
    """
    rows, columns = problem.weights.shape
    one_step = float(lambda_rule_steps(problem, replace(settings, per_channel=False))[0])
    step = max(np.float32(TRELLIS_STEP_FACTOR * one_step), np.finfo(np.float32).tiny)
    factors, _ = layer_factors(problem, settings)
    if factors is None or not settings.quantization_method.error_feedback:
        upper, dead, order, update = np.eye(1), np.zeros(columns, bool), np.arange(columns), False
        used_damping = settings.damping
    else:
        _, upper, dead, used_damping, order = factors[0]
        update = True
    upper = np.ascontiguousarray(upper)
    row_scale = np.ones(rows) if problem.row_scale is None else problem.row_scale
    rate_weight = (settings.lam / (row_scale * float(step) ** 2)
                   if settings.quantization_method.rate_aware else np.zeros(rows))
    segment_rows = settings.entropy.rows_per_chunk(rows, columns)
    # Blocks of whole chunks: the same decisions as one block, with bounded work arrays.
    block_rows = max(1, CHUNK_ELEMENTS // max(columns, 1) // segment_rows) * segment_rows
    blocks = [slice(start, min(rows, start + block_rows)) for start in range(0, rows, block_rows)]
    indices = np.empty((rows, columns), dtype=np.int64)
    for part in blocks:  # a first table: every weight on quantizer 0's grid of step 2Δ
        indices[part] = np.rint(problem.weights[part] / (2.0 * float(step)))
    offsets = np.zeros((rows, columns), dtype=np.int8)  # d − 2q: -1, 0 or 1
    passes = 0
    for passes in range(1, settings.max_passes + 1):
        rate = RateModel.from_indices(indices, settings.entropy)
        changed = 0
        for part in blocks:
            target = (problem.weights[part] / float(step))[:, order]
            target[:, dead] = 0.0
            block_indices = np.zeros(target.shape, np.int64)
            block_levels = np.zeros(target.shape, np.int64)
            _trellis_sweep(np.ascontiguousarray(target), upper,
                           np.ascontiguousarray(rate_weight[part], dtype=np.float64),
                           np.ascontiguousarray(rate.cost_bits, np.float64),
                           np.int64(rate.first_index), float(rate.outside_bits),
                           np.int64(segment_rows), _NEXT, np.int64(settings.block_size),
                           update, block_indices, block_levels)
            swept = np.empty_like(block_indices)
            swept[:, order] = block_indices
            changed += int(np.count_nonzero(swept != indices[part]))
            indices[part] = swept
            offsets[part, order] = block_levels - 2 * block_indices
            del target, block_indices, block_levels, swept
        if not settings.quantization_method.rate_aware or changed <= 1e-3 * indices.size:
            break
    steps = np.array([step], dtype=np.float32)
    final_rate = RateModel.from_indices(indices, settings.entropy)
    result = LayerResult(indices=indices, steps=steps, passes=passes, damping=used_damping,
                         distortion=0.0, rate_bits=final_rate.total_bits(indices),
                         grid="trellis", trellis_offsets=offsets,
                         trellis_rows_per_chunk=segment_rows)
    # float64 levels × step, as the plain grids' distortion is measured (obs.quantize_on_grid)
    result.distortion = layer_distortion(problem, LazyReconstruction(
        result.level_rows, np.full(rows, float(steps[0])), indices.shape))
    return result
