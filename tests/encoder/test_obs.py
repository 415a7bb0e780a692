"""The layer quantizers against brute-force and closed-form checks (docs/algorithms.md §1)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nncodec_rd.encoder.linalg import cerwu_transform, damped_hessian, factor_with_retries
from nncodec_rd.encoder.methods import METHODS, quantize_layer
from nncodec_rd.encoder.problem import LayerProblem, layer_distortion
from nncodec_rd.encoder.settings import QuantizerSettings
from nncodec_rd.encoder.rans import build_frequency_table
from nncodec_rd.encoder.rate import RateModel
from nncodec_rd.format.errors import EncoderError


def random_problem(rng, rows=24, columns=40, samples=200, dead=()):
    inputs = rng.standard_normal((columns, samples)) * rng.uniform(0.2, 2.0, (columns, 1))
    inputs[list(dead)] = 0.0
    hessian = 2.0 / samples * inputs @ inputs.T
    weights = rng.laplace(size=(rows, columns)) * 0.05
    return LayerProblem(weights, hessian)


def reference_gptq(weights, hessian, step, damping=0.01):
    """GPTQ as first published: one column at a time, every later column updated at once, with
    the inverse Hessian updated by OBS elimination (no Cholesky, no lazy blocks)."""
    damped, _ = damped_hessian(hessian, damping)
    inverse = np.linalg.inv(damped)
    work = weights / step
    indices = np.zeros(work.shape, dtype=np.int64)
    for column in range(work.shape[1]):
        indices[:, column] = np.rint(work[:, column])
        error = (work[:, column] - indices[:, column]) / inverse[column, column]
        work[:, column + 1:] -= np.outer(error, inverse[column, column + 1:])
        # Eliminate the quantized input from the inverse Hessian.
        inverse = inverse - np.outer(inverse[:, column], inverse[column, :]) / inverse[column, column]
    return indices


def test_optq_reproduces_gptq(rng):
    problem = random_problem(rng)
    step = 0.01
    result = quantize_layer(problem, QuantizerSettings(method="optq", lam=1e-6, step=step,
                                                       act_order=False, block_size=7))
    expected = reference_gptq(problem.weights, problem.hessian[0], np.float32(step))
    assert np.mean(result.indices == expected) > 0.999


def test_lazy_blocks_do_not_change_the_result(rng):
    problem = random_problem(rng)
    results = [quantize_layer(problem, QuantizerSettings(method="cerwu", lam=3e-5, block_size=b))
               for b in (1, 5, 128)]
    for other in results[1:]:
        assert np.mean(other.indices == results[0].indices) > 0.999


def test_obs_update_lowers_the_layer_loss_against_rounding(rng):
    problem = random_problem(rng, rows=64, columns=64)
    settings = dict(lam=1e-6, step=0.02)
    rtn = quantize_layer(problem, QuantizerSettings(method="rtn", **settings))
    optq = quantize_layer(problem, QuantizerSettings(method="optq", **settings))
    assert optq.distortion < 0.9 * rtn.distortion


@given(st.integers(0, 2**32 - 1), st.floats(1e-3, 10.0))
def test_cerwu_transformed_problem_equals_the_original_up_to_a_constant(seed, mu):
    rng = np.random.default_rng(seed)
    problem = random_problem(rng, rows=3, columns=6, samples=30)
    hessian = damped_hessian(problem.hessian[0], 0.01)[0]
    weights = problem.weights / 0.01
    transformed, shifted = cerwu_transform(weights, hessian, mu)

    def original(q):
        d = weights - q
        return 0.5 * np.einsum("ri,ij,rj->r", d, hessian, d) + 0.5 * mu * np.sum(q * q, axis=1)

    def folded(q):
        d = transformed - q
        return 0.5 * np.einsum("ri,ij,rj->r", d, shifted, d)

    gaps = [original(q) - folded(q) for q in
            (rng.integers(-9, 10, weights.shape).astype(float) for _ in range(4))]
    scale = np.abs(original(np.zeros_like(weights))) + 1.0
    for gap in gaps[1:]:
        np.testing.assert_allclose(gap, gaps[0], rtol=0, atol=1e-8 * scale.max())


def test_rate_aware_methods_lower_the_rate_distortion_objective(rng):
    problem = random_problem(rng, rows=96, columns=64)
    lam = 1e-4
    objective = {}
    for method in ("optq", "optq-rd", "cerwu"):
        result = quantize_layer(problem, QuantizerSettings(method=method, lam=lam, max_passes=4))
        objective[method] = result.distortion + lam * result.rate_bits
    assert objective["optq-rd"] < objective["optq"]
    assert objective["cerwu"] < objective["optq"]


def test_identity_hessian_makes_cerwu_equal_optq_rd(rng):
    problem = LayerProblem(rng.laplace(size=(32, 50)) * 0.1, None,
                           row_scale=rng.uniform(0.5, 2.0, 32))
    results = [quantize_layer(problem, QuantizerSettings(method=m, lam=1e-3))
               for m in ("optq-rd", "cerwu")]
    np.testing.assert_array_equal(results[0].indices, results[1].indices)


def test_identity_hessian_decisions_are_brute_force_optimal(rng):
    weights = rng.laplace(size=(4, 300)) * 0.1
    problem = LayerProblem(weights, None)
    settings = QuantizerSettings(method="optq-rd", lam=2e-4, max_passes=1)
    result = quantize_layer(problem, settings)
    step = float(result.steps[0])
    rate = RateModel.from_indices(np.rint(weights / step).astype(np.int64))
    candidates = np.arange(-40, 41)
    cost = (0.5 * (weights[..., None] - step * candidates) ** 2
            + settings.lam * rate.bits(candidates))
    np.testing.assert_array_equal(result.indices, candidates[np.argmin(cost, axis=-1)])


def test_dead_inputs_get_zero_weights(rng):
    problem = random_problem(rng, dead=(3, 17))
    result = quantize_layer(problem, QuantizerSettings(method="cerwu", lam=1e-5))
    assert not result.indices[:, [3, 17]].any()


def test_grouped_hessian_equals_separate_layers(rng):
    first, second = random_problem(rng, rows=8), random_problem(rng, rows=8)
    grouped = LayerProblem(np.concatenate([first.weights, second.weights]),
                           np.stack([first.hessian[0], second.hessian[0]]))
    settings = QuantizerSettings(method="optq", lam=1e-6, step=0.01)
    together = quantize_layer(grouped, settings).indices
    apart = [quantize_layer(p, settings).indices for p in (first, second)]
    np.testing.assert_array_equal(together, np.concatenate(apart))


def test_cholesky_retries_with_more_damping_and_then_fails():
    singular = np.ones((4, 4))  # rank one: the first damping suffices
    _, upper, _, used = factor_with_retries(singular, 0.01)
    assert np.all(np.isfinite(upper)) and used == 0.01
    slightly_indefinite = np.array([[1.0, 1.05], [1.05, 1.0]])  # eigenvalue -0.05
    assert factor_with_retries(slightly_indefinite, 0.01)[3] == pytest.approx(0.1)
    indefinite = np.array([[1.0, 3.0], [3.0, 1.0]])  # eigenvalue -2
    with pytest.raises(EncoderError, match="not positive definite"):
        factor_with_retries(indefinite, 0.01)


def test_rate_model_prices_indices_by_the_writers_table(rng):
    indices = rng.integers(-5, 6, 5000)
    model = RateModel.from_indices(indices)
    counts = np.bincount(indices + 5)
    frequencies = build_frequency_table(counts, 14)
    expected = np.sum(counts * (14 - np.log2(frequencies)))
    assert model.total_bits(indices) == pytest.approx(expected)


def test_distortion_is_the_layer_loss(rng):
    problem = random_problem(rng, rows=5, columns=7)
    reconstruction = problem.weights + rng.standard_normal(problem.weights.shape) * 0.01
    difference = problem.weights - reconstruction
    expected = 0.5 * np.trace(difference @ problem.hessian[0] @ difference.T)
    assert layer_distortion(problem, reconstruction) == pytest.approx(expected)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_gives_fewer_bits_for_a_larger_lambda(rng, method):
    problem = random_problem(rng, rows=32, columns=48)
    rates = [quantize_layer(problem, QuantizerSettings(method=method, lam=lam)).rate_bits
             for lam in (1e-6, 1e-5, 1e-4)]
    assert rates[0] > rates[1] > rates[2]


def test_settings_refuse_nonsense():
    with pytest.raises(EncoderError, match="unknown method"):
        QuantizerSettings(method="gptq")
    with pytest.raises(EncoderError, match="per_channel"):
        QuantizerSettings(method="cerwu", per_channel="yes")
    rng = np.random.default_rng(0)
    weighted = LayerProblem(rng.standard_normal((4, 6)), np.eye(6), row_scale=np.ones(4))
    with pytest.raises(EncoderError, match="one weight for all rows"):
        quantize_layer(weighted, QuantizerSettings(method="cerwu"))
    with pytest.raises(EncoderError, match="lam"):
        QuantizerSettings(lam=0.0)
    with pytest.raises(EncoderError, match="NaN"):
        LayerProblem(np.array([[np.nan]]))


@pytest.mark.parametrize("method", ["optq", "cerwu"])
def test_large_layers_by_blocks_of_rows_make_the_same_decisions(monkeypatch, method):
    # The chunked path (layers above LARGE_LAYER_ELEMENTS) against the whole-layer path.
    from nncodec_rd.encoder import problem as problem_module

    rng = np.random.default_rng(3)
    weights = rng.standard_normal((96, 24)) * 0.05
    inputs = rng.standard_normal((200, 24))
    hessian = inputs.T @ inputs / 200
    settings = QuantizerSettings(method=method, lam=1e-4, grid_choice="fixed")
    whole = quantize_layer(LayerProblem(weights=weights, hessian=[hessian]), settings)
    monkeypatch.setattr(problem_module, "LARGE_LAYER_ELEMENTS", 24 * 10)
    monkeypatch.setattr(problem_module, "CHUNK_ELEMENTS", 24 * 7)  # blocks of 7 rows, the last of 5
    chunked = quantize_layer(LayerProblem(weights=weights, hessian=[hessian]), settings)
    assert np.array_equal(chunked.indices, whole.indices)
    assert chunked.distortion == pytest.approx(whole.distortion, rel=1e-12)
    assert chunked.rate_bits == pytest.approx(whole.rate_bits, rel=1e-12)
