"""Transform quantization: reverse water-filling against its closed form on synthetic Gaussian
data, and the encoder's copy of the spec §6.4 arithmetic."""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("torch")

from nncodec_rd.encoder.methods import quantize_layer  # noqa: E402
from nncodec_rd.encoder.problem import LayerProblem  # noqa: E402
from nncodec_rd.encoder.settings import QuantizerSettings  # noqa: E402
from nncodec_rd.encoder.transform import (HIGH_RATE_GAP_BITS, keep_components,  # noqa: E402
                                          quantize_transform_group, reverse_water_filling,
                                          right_matrix_reconstruction)


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def test_water_filling_is_the_closed_form():
    # Independent Gaussian components: variances σ², curvatures h (so a = h/2, energy a σ²).
    variances = np.array([4.0, 1.0, 0.25, 0.01, 1e-4])
    curvatures = np.array([2.0, 2.0, 2.0, 2.0, 2.0])
    lam = 0.05
    filling = reverse_water_filling(variances, curvatures, lam)
    theta = lam / (2 * math.log(2))
    assert filling.theta == pytest.approx(theta)
    energy = variances  # a = 1
    np.testing.assert_array_equal(filling.kept, energy > theta)
    np.testing.assert_allclose(filling.distortion, np.minimum(theta, energy))
    np.testing.assert_allclose(filling.rate_bits,
                               np.where(energy > theta, 0.5 * np.log2(energy / theta), 0.0))
    np.testing.assert_allclose(filling.steps, np.sqrt(12 * theta / (curvatures / 2)))
    # The slope of the total D(R) is -λ: perturb λ and compare the changes.
    other = reverse_water_filling(variances, curvatures, lam * 1.001)
    slope = (other.distortion.sum() - filling.distortion.sum()) / (
        other.rate_bits.sum() - filling.rate_bits.sum())
    assert slope == pytest.approx(-lam, rel=1e-3)


def test_keep_components_pays_for_the_matrix_row():
    x = np.array([0.5, 1.0, 1.5, 4.0, 100.0])
    saving = 64 * (x - 1 - np.log(x)) / (2 * math.log(2))
    row_bits = 20.0
    np.testing.assert_array_equal(keep_components(x, 64, row_bits), (x > 1) & (saving > row_bits))
    np.testing.assert_array_equal(keep_components(x, 64, 0.0), x > 1)


def synthetic_layer(rng, rows=2000, columns=12):
    """W = Z diag(σ) Uᵀ with Z standard Gaussian and H = U diag(h) Uᵀ: independent Gaussian
    components of variances σ² in the eigenbasis of H."""
    basis, _ = np.linalg.qr(rng.standard_normal((columns, columns)))
    curvatures = np.geomspace(4.0, 0.5, columns)
    sigmas = np.geomspace(1.0, 0.002, columns)
    weights = (rng.standard_normal((rows, columns)) * sigmas) @ basis.T
    hessian = basis @ np.diag(curvatures) @ basis.T
    return weights, hessian, basis, curvatures, sigmas


def test_transform_keeps_and_quantizes_as_water_filling_says(rng):
    weights, hessian, basis, curvatures, sigmas = synthetic_layer(rng)
    lam = 2e-4
    settings = QuantizerSettings(method="transform", lam=lam, damping=0.0)
    group = quantize_transform_group([weights], hessian, [lam], settings,
                                     precisions=(10,))
    result = group.layers[0]
    # The closed form, from the data's own component variances.
    variances = np.mean((weights @ basis) ** 2, axis=0)
    filling = reverse_water_filling(variances, curvatures, lam)
    energy_ratio = 0.5 * curvatures * variances / filling.theta
    # Kept: above the water level and worth their row of the matrix (2000 rows: nearly all).
    expected_kept = energy_ratio > 1
    kept = len(group.matrix_steps)
    assert kept == int(np.sum(keep_components(energy_ratio, len(weights),
                                              columns_bits(len(curvatures), 10))))
    assert abs(kept - int(expected_kept.sum())) <= 1
    # The matrix grid's steps are Δ_k 2^-b, Δ_k the water-filling step of the kept components
    # (largest energy first).
    order = np.argsort(-energy_ratio)[:kept]
    np.testing.assert_allclose(group.matrix_steps.astype(np.float64) * 2.0 ** 10,
                               filling.steps[order], rtol=1e-6)
    # Per kept component at high rate: distortion ≈ θ per coefficient, and the coefficients'
    # empirical entropy ≈ ½ log2(energy/θ) + the scalar quantizer's gap (0.254 bits).
    coefficients = result.indices
    for column, component in enumerate(order):
        if filling.rate_bits[component] < 2.5:
            continue
        _, counts = np.unique(coefficients[:, column], return_counts=True)
        probability = counts / counts.sum()
        entropy = float(-np.sum(probability * np.log2(probability)))
        assert entropy == pytest.approx(filling.rate_bits[component] + HIGH_RATE_GAP_BITS,
                                        abs=0.15)
    # Total distortion: θ per kept coefficient plus the energy of the dropped components.
    dropped = np.setdiff1d(np.arange(len(curvatures)), order)
    expected = len(weights) * (kept * filling.theta
                               + np.sum(0.5 * curvatures[dropped] * variances[dropped]))
    assert result.distortion == pytest.approx(expected, rel=0.1)


def columns_bits(columns, precision):
    from nncodec_rd.encoder.transform import _matrix_row_bits

    return _matrix_row_bits(columns, precision)


def test_transform_beats_direct_quantization_on_correlated_data(rng):
    # With strongly correlated inputs and many rows per matrix row, the transform pays.
    weights, hessian, *_ = synthetic_layer(rng, rows=1500, columns=24)
    problem = LayerProblem(weights, hessian)
    for lam in (1e-4, 1e-3):
        direct = quantize_layer(problem, QuantizerSettings(method="optq", lam=lam))
        transform = quantize_layer(problem, QuantizerSettings(method="transform", lam=lam))
        assert (transform.distortion / lam + transform.rate_bits
                < direct.distortion / lam + direct.rate_bits)


def test_reconstruction_follows_the_spec_order(rng):
    # Values chosen so that the binary64 running sum depends on the order of the terms.
    values = np.array([[1.0, 1e-8, -1.0, 3.0]], dtype=np.float32)
    matrix = np.array([[1e8], [1.0], [1e8], [1e-8]], dtype=np.float32)
    expected = 0.0
    for k in range(4):
        expected = expected + float(values[0, k]) * float(matrix[k, 0])
    out = right_matrix_reconstruction(values, matrix)
    assert out[0, 0] == np.float32(expected)
    coefficients = rng.standard_normal((5, 7)).astype(np.float32)
    transform = rng.standard_normal((7, 3)).astype(np.float32)
    slow = np.array([[np.float32(sum_in_order(coefficients[r], transform[:, j]))
                      for j in range(3)] for r in range(5)], dtype=np.float32)
    np.testing.assert_array_equal(right_matrix_reconstruction(coefficients, transform), slow)


def sum_in_order(row, column):
    total = 0.0
    for c, t in zip(row.tolist(), column.tolist()):
        total = total + c * t
    return total
