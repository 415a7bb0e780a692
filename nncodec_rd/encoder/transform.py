"""Transform quantization of a layer (docs/algorithms.md §3; Young, Wang, Taubman, Girod 2021).

The layer loss ``½ (w − ŵ) H (w − ŵ)ᵀ`` is a weighted squared error. In the eigenbasis of the
(damped) Hessian, ``H = U Λ Uᵀ``, the weights ``Y = W U`` are decorrelated: component ``k``
(column ``k`` of ``Y``) costs ``a_k = λ_k / 2`` per unit of squared error, independently of the
others. Reverse water-filling at the model's slope λ (:func:`reverse_water_filling`) gives every
kept component the same distortion ``θ = λ / (2 ln 2)`` per coefficient (loss units) and drops the
components whose energy ``a_k σ_k²`` lies below that water level; a uniform quantizer reaches
``θ`` with the step ``Δ_k = sqrt(12 θ / a_k) = sqrt(12 λ / (ln 2 · λ_k))`` (the same λ rule as
:mod:`nncodec_rd.encoder.obs`, per component instead of per layer).

How it lands in the file (spec §6.4, RIGHT_MATRIX). With ``K`` kept components:

* the *matrix* ``T = diag(Δ_k) U_Kᵀ`` (``K × in``), coded as a float32 tensor of its own on a
  UNIFORM grid with a step per row, ``δ_k = Δ_k · 2^-b``: its indices are ``rint(2^b U_Kᵀ)``;
  the precision ``b`` is chosen per layer by the same objective ``D + λ R`` (its bits included);
* the *coefficients* ``C`` (``rows × K``): integers on a grid of one step ``g`` (1 for a layer
  alone; ``sqrt(λ_layer / λ_group)`` for layers sharing one matrix at different λ);
* the decoded weights are ``Ŵ = (g C) T̂`` with the exact arithmetic of §6.4, which
  :func:`right_matrix_reconstruction` reproduces bit for bit.

Because ``T̂`` (the decoded matrix) is not exactly ``diag(Δ) Uᵀ``, the coefficients are chosen for
``T̂`` itself: ``½ (w − c T̂) H (w − c T̂)ᵀ = ½ (c − c*) H_c (c − c*)ᵀ + const`` with
``H_c = T̂ H T̂ᵀ`` and ``c* = w H T̂ᵀ H_c⁻¹``, and the OBS sweep of :mod:`~nncodec_rd.encoder.obs`
quantizes ``c*`` on ``H_c`` (nearly diagonal, so it is close to rounding). ``transform`` rounds
(λ = 0 in the decisions, like ``optq``); ``transform+cerwu`` makes rate-aware decisions with the
coder's own table (``optq-rd`` on ``H_c``, which equals ``cerwu`` on a diagonal Hessian).

The matrix is not free: ``K × in`` entries against ``rows × in`` weights. A component is kept only
if what it saves pays for its row of ``T`` as well (:func:`keep_components`): with
``x = a σ² / θ > 1`` its coefficients save ``rows · (x − 1 − ln x) / (2 ln 2)`` bits of the
objective, against the bits of its row of ``T``.

:func:`quantize_transform_group` is a pure function of (weights of the layers that share one
Hessian, that Hessian, their λ, settings).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from numba import prange

from ..format.errors import EncoderError
from .jit import cached_njit
from .linalg import damped_hessian, factor_with_retries
from .obs import obs_sweep
from .problem import LayerProblem, layer_distortion
from .rate import RateModel

if TYPE_CHECKING:  # annotations only: the settings module imports the methods, which import this
    from .settings import QuantizerSettings

MATRIX_PRECISIONS = (4, 5, 6, 7, 8)
"""Candidate ``b`` of the matrix grid ``δ_k = Δ_k 2^-b``."""

# Rate of an entropy-coded uniform quantizer above the Shannon bound at high rate:
# ½ log2(π e / 6) bits (the "1.53 dB" of scalar quantization).
HIGH_RATE_GAP_BITS = 0.5 * math.log2(math.pi * math.e / 6.0)


@dataclass
class WaterFilling:
    """Reverse water-filling of independent components (see :func:`reverse_water_filling`).

    Attributes
    ----------
    theta:
        The water level: distortion per coefficient of every kept component, loss units.
    kept:
        Components above the water level.
    steps:
        ``Δ_k = sqrt(12 θ / a_k)``: the uniform step giving distortion θ at high rate.
    distortion:
        Per coefficient: ``min(θ, a_k σ_k²)``.
    rate_bits:
        Per coefficient (Shannon bound of a Gaussian): ``½ log2(a_k σ_k² / θ)`` if kept, else 0.
    """

    theta: float
    kept: np.ndarray
    steps: np.ndarray
    distortion: np.ndarray
    rate_bits: np.ndarray


def reverse_water_filling(variances: np.ndarray, curvatures: np.ndarray,
                          lam: float) -> WaterFilling:
    """Optimal bit allocation at slope λ over independent Gaussian components.

    Component ``k`` has per-coefficient variance ``σ_k²`` (``variances``) and costs
    ``a_k = curvatures[k] / 2`` per unit of squared error (``curvatures``: Hessian eigenvalues),
    so its energy in loss units is ``e_k = a_k σ_k²``. The Gaussian rate–distortion function
    ``D(R) = e 2^-2R`` has slope ``dD/dR = −2 ln 2 · D``; setting it to −λ for every component
    gives the water level ``θ = λ / (2 ln 2)``: ``D_k = min(θ, e_k)``,
    ``R_k = max(0, ½ log2(e_k / θ))``.
    """
    variances = np.asarray(variances, dtype=np.float64)
    half = 0.5 * np.asarray(curvatures, dtype=np.float64)
    if not (math.isfinite(lam) and lam > 0) or np.any(half <= 0):
        raise EncoderError("water-filling needs λ > 0 and positive curvatures")
    theta = lam / (2.0 * math.log(2.0))
    energy = half * variances
    kept = energy > theta
    with np.errstate(divide="ignore"):
        rate = np.where(kept, 0.5 * np.log2(np.maximum(energy, 1e-300) / theta), 0.0)
    return WaterFilling(theta=theta, kept=kept, steps=np.sqrt(12.0 * theta / half),
                        distortion=np.minimum(theta, energy), rate_bits=rate)


def keep_components(energy_ratio: np.ndarray, rows: int, matrix_row_bits: np.ndarray) -> np.ndarray:
    """Components worth their row of the matrix: ``rows · (x − 1 − ln x) / (2 ln 2) >
    matrix_row_bits`` with ``x = a σ² / θ`` (kept by water-filling only where ``x > 1``).

    ``(x − 1 − ln x) / (2 ln 2)`` is what one coefficient saves, in bits of the objective
    ``D/λ + R``: distortion ``(e − θ)/λ = (x − 1)/(2 ln 2)`` minus rate ``½ log2 x``.
    """
    x = np.asarray(energy_ratio, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        saving = np.where(x > 1, rows * (x - 1.0 - np.log(np.maximum(x, 1e-300)))
                          / (2.0 * math.log(2.0)), 0.0)
    return (x > 1) & (saving > matrix_row_bits)


@cached_njit(parallel=True)
def _right_matrix_product(values, matrix, out):
    rows, inner = values.shape
    columns = matrix.shape[1]
    for r in prange(rows):
        for j in range(columns):
            total = 0.0
            for k in range(inner):
                total = total + np.float64(values[r, k]) * np.float64(matrix[k, j])
            out[r, j] = np.float32(total)


def right_matrix_reconstruction(values: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """spec §6.4: ``out[r, j] = RN32(Σ_k c[r, k] t[k, j])``, products and the running sum in
    binary64, ``k`` in increasing order, no fused multiply-add (float32 ``values`` and
    ``matrix``). The encoder's copy of the rule, so that it optimises what decoders produce."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    if values.shape[1] != matrix.shape[0]:
        raise EncoderError(f"coefficients {values.shape} do not fit a matrix {matrix.shape}")
    out = np.empty((values.shape[0], matrix.shape[1]), dtype=np.float32)
    _right_matrix_product(values, matrix, out)
    return out


def uniform_values(indices: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """spec §6.1 without zero points: ``RN32(step × f32(q))`` per row (``steps``: one per row,
    or one for all)."""
    steps = np.asarray(steps, dtype=np.float32).reshape(-1)
    column = steps[:, None] if len(steps) > 1 else steps[0]
    return (np.asarray(indices).astype(np.float32) * column).astype(np.float32)


@dataclass
class TransformLayerResult:
    """One layer of a :class:`TransformGroupResult`.

    Attributes
    ----------
    indices:
        ``(rows, K)`` int64 coefficient indices.
    steps:
        float32 ``(1,)``: the coefficients' grid step ``g``.
    reconstruction:
        ``(rows, in)`` float32: the decoded weights, bit for bit.
    distortion:
        ``½ Σ_r (w_r − ŵ_r) H (w_r − ŵ_r)ᵀ`` with the undamped Hessian.
    rate_bits:
        Code length of the coefficients under their own i.i.d. table, plus this layer's share
        of the matrix's (its bits divided equally among the layers sharing it).
    coefficient_bits:
        The coefficients' part of ``rate_bits``.
    """

    indices: np.ndarray
    steps: np.ndarray
    reconstruction: np.ndarray
    distortion: float
    rate_bits: float
    coefficient_bits: float
    passes: int = 1
    damping: float = 0.0


@dataclass
class TransformGroupResult:
    """Layers sharing one matrix: the matrix's grid and indices, and a result per layer.

    Attributes
    ----------
    matrix_indices:
        ``(K, in)`` int64: the matrix's indices, ``rint(2^b U_Kᵀ)``.
    matrix_steps:
        ``(K,)`` float32: the matrix grid's step per row, ``Δ_k 2^-b``.
    matrix:
        ``(K, in)`` float32: the decoded matrix ``T̂``.
    matrix_bits:
        Code length of the matrix's indices under their own i.i.d. table.
    precision:
        The ``b`` chosen.
    layers:
        One :class:`TransformLayerResult` per layer, in the order given.
    """

    matrix_indices: np.ndarray
    matrix_steps: np.ndarray
    matrix: np.ndarray
    matrix_bits: float
    precision: int
    layers: list = field(default_factory=list)
    objective_bits: float = 0.0


def _basis(hessian: np.ndarray, damping: float, cache: dict | None):
    key = ("transform-basis", damping)
    if cache is not None and key in cache:
        return cache[key]
    damped, dead = damped_hessian(hessian, max(damping, 1e-12))
    values, vectors = np.linalg.eigh(damped)
    result = (damped, dead, np.maximum(values, 1e-300), vectors)
    if cache is not None:
        cache[key] = result
    return result


def _matrix_row_bits(columns: int, precision: int) -> float:
    """Estimated bits of one row of ``rint(2^b U_Kᵀ)``: entries ≈ Gaussian of standard deviation
    ``2^b / sqrt(columns)`` (a unit vector), coded near their entropy."""
    spread = 2.0 ** precision / math.sqrt(columns)
    return columns * max(0.5 * math.log2(2 * math.pi * math.e * spread * spread), 0.05)


def quantize_transform_group(weights: list, hessian: np.ndarray, lams: list,
                             settings: QuantizerSettings, cache: dict | None = None,
                             precisions=MATRIX_PRECISIONS) -> TransformGroupResult:
    """Transform-quantize the layers ``weights`` (each ``(rows_l, in)``) that share one Hessian
    ``hessian`` (``(in, in)``, undamped), layer ``l`` at slope ``lams[l]``; one matrix for all.

    ``settings.method`` is ``"transform"`` or ``"transform+cerwu"``; ``settings.damping``,
    ``grid_scale``, ``max_passes``, ``block_size`` and ``entropy`` are used as in
    :func:`nncodec_rd.encoder.methods.quantize_layer`. ``cache`` (a dict) keeps the eigenbasis for
    the next λ. A pure function otherwise.
    """
    if settings.quantization_method.quantize_group is None:
        raise EncoderError(f"method {settings.method!r} is not a transform method")
    weights = [np.asarray(w, dtype=np.float64) for w in weights]
    hessian = np.asarray(hessian, dtype=np.float64)
    columns = hessian.shape[0]
    if not weights or len(weights) != len(lams) or any(w.ndim != 2 or w.shape[1] != columns
                                                        for w in weights):
        raise EncoderError("every layer of a transform group needs (rows, in) weights that fit "
                           "the shared (in, in) Hessian, and a λ")
    if any(not (math.isfinite(lam) and lam > 0) for lam in lams):
        raise EncoderError("every λ must be finite and > 0")
    damped, dead, eigenvalues, vectors = _basis(hessian, settings.damping, cache)
    weights = [np.where(dead[None, :], 0.0, w) for w in weights]
    rows_total = sum(len(w) for w in weights)
    # Water-filling per layer; a component is kept for the group if some layer keeps it.
    reference_lam = min(lams)
    ratios = []
    for w, lam in zip(weights, lams):
        projected = w @ vectors
        variances = np.mean(projected ** 2, axis=0) if len(w) else np.zeros(columns)
        filling = reverse_water_filling(variances, eigenvalues, lam / settings.grid_scale ** 2)
        ratios.append(0.5 * eigenvalues * variances / filling.theta)
    ratios = np.array(ratios)
    order_score = np.max(ratios, axis=0)
    steps = np.sqrt(12.0 * reference_lam / (math.log(2.0) * eigenvalues)) * settings.grid_scale
    best = None
    for precision in precisions:
        row_bits = _matrix_row_bits(columns, precision)
        # Rows of all layers share each row of T: a component pays once for its row.
        kept = np.zeros(columns, dtype=bool)
        for layer_ratio, w in zip(ratios, weights):
            kept |= keep_components(layer_ratio, rows_total, row_bits)
        if not np.any(kept):
            kept[int(np.argmax(order_score))] = True  # K >= 1: a file needs a matrix row
        chosen = np.flatnonzero(kept)
        chosen = chosen[np.argsort(-order_score[chosen], kind="stable")]
        candidate = _encode_group(weights, hessian, damped, lams, reference_lam, vectors[:, chosen],
                                  steps[chosen], precision, settings)
        if candidate is not None and (best is None
                                      or candidate.objective_bits < best.objective_bits):
            best = candidate
    if best is None:
        raise EncoderError(f"no matrix precision in {tuple(precisions)} represents the basis "
                           f"(a row of the matrix rounds to zero); allow a larger one")
    return best


def _encode_group(weights, hessian, damped, lams, reference_lam, basis, steps, precision,
                  settings) -> TransformGroupResult:
    scale = float(2.0 ** precision)
    matrix_indices = np.rint(basis.T * scale).astype(np.int64)
    if not np.all(np.any(matrix_indices != 0, axis=1)):
        return None  # a component would vanish: too coarse for this layer
    matrix_steps = np.maximum(steps / scale, np.finfo(np.float32).tiny).astype(np.float32)
    matrix = uniform_values(matrix_indices, matrix_steps)
    matrix64 = matrix.astype(np.float64)
    matrix_bits = RateModel.from_indices(matrix_indices, settings.entropy).total_bits(
        matrix_indices)
    coefficient_hessian = matrix64 @ damped @ matrix64.T
    _, upper, _, used = factor_with_retries(coefficient_hessian, 0.0)
    projector = damped @ matrix64.T  # c* = w H T̂ᵀ H_c⁻¹, solved by Cholesky
    rate_aware = settings.quantization_method.rate_aware
    problem = LayerProblem(np.zeros((1, hessian.shape[0])), hessian)  # for layer_distortion
    layers, objective = [], matrix_bits
    for w, lam in zip(weights, lams):
        grid_step = np.float32(math.sqrt(lam / reference_lam))
        target = np.linalg.solve(coefficient_hessian, (w @ projector).T).T / float(grid_step)
        rows = len(w)
        rate_weight = np.full(rows, lam / float(grid_step) ** 2) if rate_aware else np.zeros(rows)
        indices = np.rint(target).astype(np.int64)
        rate = RateModel.from_indices(indices, settings.entropy)
        passes = 0
        for passes in range(1, (settings.max_passes if rate_aware else 1) + 1):
            previous = indices
            indices = obs_sweep(target, upper, rate_weight, rate, 0.0, settings.block_size)
            rate = RateModel.from_indices(indices, settings.entropy)
            if np.count_nonzero(indices != previous) <= 1e-3 * max(indices.size, 1):
                break
        reconstruction = right_matrix_reconstruction(uniform_values(indices, [grid_step]), matrix)
        problem.weights = w
        distortion = layer_distortion(problem, reconstruction.astype(np.float64))
        coefficient_bits = rate.total_bits(indices)
        layers.append(TransformLayerResult(
            indices=indices, steps=np.array([grid_step], dtype=np.float32),
            reconstruction=reconstruction, distortion=distortion,
            rate_bits=coefficient_bits + matrix_bits / len(weights),
            coefficient_bits=coefficient_bits, passes=passes, damping=settings.damping))
        objective += coefficient_bits + distortion / lam
    return TransformGroupResult(matrix_indices=matrix_indices, matrix_steps=matrix_steps,
                                matrix=matrix, matrix_bits=matrix_bits, precision=precision,
                                layers=layers, objective_bits=objective)


def quantize_layer_transform(problem: LayerProblem,
                             settings: QuantizerSettings) -> TransformLayerResult:
    """One layer alone (its own matrix): :func:`quantize_transform_group` with one member.

    The result's ``group`` attribute holds the :class:`TransformGroupResult` (the matrix)."""
    if problem.hessian is None or problem.groups != 1 or problem.row_scale is not None:
        raise EncoderError(f"{settings.method} needs one Hessian for all rows of the layer and no "
                           f"row weights; use {settings.quantization_method.fallback or 'cerwu'} for "
                           f"this layer")
    group = quantize_transform_group([problem.weights], problem.hessian[0], [settings.lam],
                                     settings, cache=problem.cache)
    result = group.layers[0]
    result.group = group
    return result
