"""Per-layer grid choice by rate–distortion: mixed precision and zero-point grids
(docs/algorithms.md §2, after Metz, Bichler and Dupret).

:func:`quantize_on_chosen_grid` is the entry point of the methods that quantize a layer on one
grid (``rtn``, ``optq``, ``optq-rd``, ``cerwu``): the λ rule's grid, or with
``grid_choice="rd"`` the best of several.

The λ rule of :mod:`nncodec_rd.encoder.obs` gives every layer the step that is optimal at high
rate. Low-rate layers, heavy tails and asymmetric weights move the optimum, so with
``grid_choice="rd"`` each layer tries a few grids and keeps the one whose quantized layer has the
least ``D/λ + R`` (distortion in the layer's loss over its λ, plus the bits of its indices and of
its frequency table), the same slope every other decision of the encoder works at:

* **Unbounded grids** (any index): the λ-rule step times a scale, searched downhill in steps
  of √2 (from 1/8 to 8) and then refined by 2^(±1/4).
* **Bounded grids of B bins** (B odd): the finest grid of B bins that holds 0 and spans the
  weights' range ``[min(w, 0), max(w, 0)]``, whole or clipped to 60%. Its zero point is the bin
  of 0, so the file stores the indices 0 … B − 1 (spec §6.1); weights beyond the span are
  clipped to the last bins. The quantizer's decisions are restricted to those B indices. Bounded grids are tried only for layers with one step, and only where
  their step is within a factor 0.5 … 4 of the λ-rule step (elsewhere they are far off the
  slope and cannot win).

The search runs only for layers that the λ rule codes at fewer than ``grid_search_below_bits``
(default 2) bits per weight: above that the high-rate approximation behind the rule holds, and
on all-MiniLM-L6-v2 (3 bits per weight on average) the searched layers kept the λ rule's step
or one within 2^(±1/4) of it, with no gain at equal fidelity (``docs/grid-choice.md``).

Each candidate is a full run of the layer's method (``rtn``, ``optq``, ``optq-rd`` or ``cerwu``),
so the choice costs several quantizations per layer; the λ-independent factors (Cholesky, the
eigendecomposition of CERWU) are computed once per layer and shared.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from ..format.errors import EncoderError
from .obs import CHANNEL_STEP_CLASS_RATIO, lambda_rule_steps, quantize_on_grid
from .problem import LayerProblem, LayerResult, row_distortions
from .rate import RateModel
from .trellis import quantize_trellis, trellis_applies

if TYPE_CHECKING:  # annotations only: the settings module imports the methods, which import this
    from .settings import QuantizerSettings

# A zero point is an i32 in the header (spec §6.1).
ZERO_POINT_BITS = 32.0
# Bounded grids span the weights' range, or this share of it (clipping the tails).
CLIP_FRACTIONS = (1.0, 0.6)
# The search of unbounded grids stops at steps 2^±3 times the λ rule's.
MAX_SCALE_EXPONENT = 3.0
# Bounded grids whose step is this far from the λ-rule step are not tried.
STEP_RATIO_RANGE = (0.5, 4.0)


@dataclass(frozen=True)
class GridCandidate:
    """One grid a layer may take.

    ``bins`` None: an unbounded grid whose step is the λ-rule step times ``step_scale``.
    ``bins`` B: B bins spanning ``clip`` times the weights' range, with a zero point.
    """

    step_scale: float = 1.0
    bins: int | None = None
    clip: float = 1.0

    def describe(self) -> str:
        """A few words for summaries: ``step x1.41`` or ``15 bins (range x0.6)``."""
        if self.bins is None:
            return f"step x{self.step_scale:.3g}"
        return f"{self.bins} bins" + (f" (range x{self.clip:g})" if self.clip != 1 else "")


@dataclass
class GridTrial:
    """A candidate grid and what the layer's method made of it."""

    candidate: GridCandidate
    result: LayerResult
    objective_bits: float


def objective_bits(result: LayerResult, lam: float, settings: QuantizerSettings) -> float:
    """``D/λ + R`` of a quantized layer: its distortion over λ, the bits of its indices under
    their own table, the table's bits, and the zero points' bits."""
    table_bits = RateModel.from_indices(result.indices, settings.entropy).table_bits
    zero_point_bits = 0.0 if result.zero_points is None else ZERO_POINT_BITS * len(
        result.zero_points)
    return result.distortion / lam + result.rate_bits + table_bits + zero_point_bits


def bounded_grid(weights: np.ndarray, bins: int, clip: float) -> tuple[float, int]:
    """``(step, zero_point)`` of the finest grid of ``bins`` bins that holds 0 and spans
    ``clip`` × ``[min(w, 0), max(w, 0)]``: the zero point (0 … bins − 1) is the bin of 0."""
    low = clip * min(float(weights.min()), 0.0) if weights.size else 0.0
    high = clip * max(float(weights.max()), 0.0) if weights.size else 0.0
    if high - low <= 0:
        return 1.0, bins // 2
    best = None
    for zero_point in range(bins):
        below, above = zero_point, bins - 1 - zero_point  # bins each side of 0
        if (low < 0 and below == 0) or (high > 0 and above == 0):
            continue
        step = max(-low / below if below else 0.0, high / above if above else 0.0)
        if best is None or step < best[0]:
            best = (step, zero_point)
    step, zero_point = best
    # Rounded up to float32 so that the stored step still spans the range.
    step32 = np.float32(step)
    if float(step32) < step:
        step32 = np.nextafter(step32, np.float32(np.inf))
    return float(step32), zero_point


def try_candidate(problem: LayerProblem, settings: QuantizerSettings, base_steps: np.ndarray,
                  candidate: GridCandidate) -> GridTrial:
    """Quantize the layer on ``candidate``'s grid and score it."""
    if candidate.bins is None:
        steps = np.maximum(base_steps.astype(np.float64) * candidate.step_scale,
                           np.finfo(np.float32).tiny).astype(np.float32)
        result = quantize_on_grid(problem, settings, steps)
    else:
        step, zero_point = bounded_grid(problem.weights, candidate.bins, candidate.clip)
        low, high = np.array([-zero_point]), np.array([candidate.bins - 1 - zero_point])
        result = quantize_on_grid(problem, settings, np.array([step], dtype=np.float32),
                                  (low, high))
        result.zero_points = np.array([zero_point], dtype=np.int64)
        result.bins = candidate.bins
    return GridTrial(candidate, result, objective_bits(result, settings.lam, settings))


def bounded_candidates(problem: LayerProblem, settings: QuantizerSettings,
                       base_steps: np.ndarray) -> list[GridCandidate]:
    """The bounded grids worth trying: one-step layers only, steps near the λ rule's."""
    if len(base_steps) != 1 or problem.weights.size == 0:
        return []
    low_ratio, high_ratio = STEP_RATIO_RANGE
    candidates = []
    for bins in settings.grid_bins:
        for clip in CLIP_FRACTIONS:
            step, _ = bounded_grid(problem.weights, int(bins), clip)
            if low_ratio <= step / float(base_steps[0]) <= high_ratio:
                candidates.append(GridCandidate(bins=int(bins), clip=clip))
    return candidates


def search_grids(problem: LayerProblem, settings: QuantizerSettings) -> list[GridTrial]:
    """Every grid tried for the layer, in the order tried (see the module docstring); only the
    λ rule's where that codes the layer at more than ``settings.grid_search_below_bits`` bits
    per weight."""
    fixed = replace(settings, grid_choice="fixed")
    base_steps = lambda_rule_steps(problem, fixed)
    trials: dict[float, GridTrial] = {}

    def scaled(exponent: float) -> GridTrial:
        key = round(exponent, 6)
        if key not in trials:
            trials[key] = try_candidate(problem, fixed, base_steps,
                                        GridCandidate(step_scale=2.0 ** exponent))
        return trials[key]

    rule = scaled(0.0)
    weights = max(problem.weights.size, 1)
    if rule.result.rate_bits / weights > settings.grid_search_below_bits:
        return [rule]  # a high-rate layer: the λ rule's step is the optimum there
    # Steps of √2 from the λ rule, downhill (to at most 8 times or an eighth of the λ-rule
    # step), then a finer look either side of the best.
    for exponent in (-0.5, 0.5):
        scaled(exponent)
    while True:
        best = min(trials, key=lambda key: trials[key].objective_bits)
        if best == min(trials) and best > -MAX_SCALE_EXPONENT:
            scaled(best - 0.5)
        elif best == max(trials) and best < MAX_SCALE_EXPONENT:
            scaled(best + 0.5)
        else:
            break
    best = min(trials, key=lambda key: trials[key].objective_bits)
    scaled(best - 0.25)
    scaled(best + 0.25)
    bounded = [try_candidate(problem, fixed, base_steps, candidate)
               for candidate in bounded_candidates(problem, fixed, base_steps)]
    return list(trials.values()) + bounded


def quantize_layer_choosing_grid(problem: LayerProblem,
                                 settings: QuantizerSettings) -> LayerResult:
    """Quantize one layer on the grid with the least ``D/λ + R`` among those
    :func:`search_grids` tries; the result records the grid chosen (``grid``)."""
    trials = search_grids(problem, settings)
    if len(trials) == 1:
        return trials[0].result  # not searched: "λ rule"
    best = min(trials, key=lambda trial: trial.objective_bits)
    best.result.grid = best.candidate.describe()
    return best.result



STEP_BITS = 32.0
"""A step is a float32 in the header (spec §6.1): each step beyond a layer's first costs this."""


def quantize_on_chosen_grid(problem: LayerProblem, settings: QuantizerSettings) -> LayerResult:
    """Quantize one layer with ``settings.quantization_method`` on the λ rule's grid
    (``grid_choice`` ``"fixed"``) or on the grid :func:`quantize_layer_choosing_grid` picks
    (``"rd"``); ``"auto"`` is what the method states. With ``per_channel="rd"`` the layer is
    quantized with one step and with a step per row, and keeps the one of least ``D/λ + R``
    with the extra steps' bits counted (:func:`choose_channel_steps`). The entry point of the
    methods built on the OBS sweep (:mod:`nncodec_rd.encoder.methods`)."""
    if (settings.quantization_method.folds_quadratic_rate and problem.hessian is not None
            and problem.row_scale is not None):
        raise EncoderError(f"{settings.method} needs one weight for all rows of a layer with a "
                           f"Hessian (row_scale=None): its H + μI would need a factorisation "
                           f"per row")
    if settings.per_channel == "rd":
        return choose_channel_steps(problem, settings)
    if settings.quantization_method.resolved_grid_choice(settings.grid_choice) == "rd":
        result = quantize_layer_choosing_grid(problem, settings)
    else:
        result = quantize_on_grid(problem, settings, lambda_rule_steps(problem, settings))
    if settings.trellis and trellis_applies(problem, settings):
        # The same D/λ + R rule between the trellis grid and the grid chosen above.
        candidate = quantize_trellis(problem, settings)
        if objective_bits(candidate, settings.lam, settings) \
                < objective_bits(result, settings.lam, settings):
            return candidate
    return result


ROW_SCALE_EXPONENTS = (-2, -1, 0, 1, 2, 3, 4)
"""Each row's step is the λ rule's times :data:`~nncodec_rd.encoder.obs.CHANNEL_STEP_CLASS_RATIO`
(√2) to these powers: a half to four times it."""


def choose_channel_steps(problem: LayerProblem, settings: QuantizerSettings) -> LayerResult:
    """One step for the layer, or one per row (output channel), whichever has the least
    ``D/λ + R``: the indices' and tables' bits (:func:`objective_bits`) plus
    :data:`STEP_BITS` for each step beyond the first. A layer of one row keeps one step.

    Only layers whose rows do not share one Hessian are tried: grouped and depthwise
    convolutions, whose groups see inputs of different scales. Rows of one Hessian get the same
    λ-rule step whatever their own scale (the equal-slope optimum at high rate, and with rate-
    aware decisions close to it at low rate): in trials on such layers whose rows' scales spanned
    up to 300 times, at 0.1 to 8 bits per weight, per-row steps never beat one step once their
    table was counted, while groups whose inputs differed in scale did
    (``tests/encoder/test_grid_choice.py`` keeps both cases).

    The layer is quantized once for each scale of :data:`ROW_SCALE_EXPONENTS` around the
    per-row λ-rule steps, each row takes the scale of its least ``D_r/λ + R_r`` (its own
    distortion and its indices' bits under that run's table), and the layer is quantized once
    more with those steps. For ``cerwu`` the steps stay in the classes of
    :data:`~nncodec_rd.encoder.obs.CHANNEL_STEP_CLASS_RATIO`. The choice costs about nine
    quantizations of a grouped layer (small ones, as a rule).
    """
    one = quantize_on_chosen_grid(problem, replace(settings, per_channel=False))
    rows = problem.weights.shape[0]
    if rows < 2 or settings.step is not None or (problem.groups == 1
                                                 and problem.row_scale is None):
        return one
    fixed = replace(settings, per_channel=True, grid_choice="fixed")
    base = lambda_rule_steps(problem, fixed).astype(np.float64)
    row_objectives = []
    for exponent in ROW_SCALE_EXPONENTS:
        steps = (base * CHANNEL_STEP_CLASS_RATIO ** exponent).astype(np.float32)
        trial = quantize_on_grid(problem, fixed, steps)
        rate = RateModel.from_indices(trial.indices, settings.entropy)
        reconstruction = trial.indices * steps.astype(np.float64)[:, None]
        row_objectives.append(row_distortions(problem, reconstruction) / settings.lam
                              + rate.bits(trial.indices).sum(axis=1))
    best = np.asarray(ROW_SCALE_EXPONENTS)[np.argmin(np.stack(row_objectives), axis=0)]
    per_row = quantize_on_grid(problem, fixed,
                               (base * CHANNEL_STEP_CLASS_RATIO ** best).astype(np.float32))
    extra_bits = STEP_BITS * (len(per_row.steps) - len(one.steps))
    if objective_bits(per_row, settings.lam, settings) + extra_bits \
            < objective_bits(one, settings.lam, settings):
        per_row.grid = "a step per row"
        return per_row
    return one
