"""Per-layer grid choice: bounded grids with zero points, and the rate-distortion search."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from nncodec_rd.api import safe_open
from nncodec_rd.encoder.grid_choice import (GridCandidate, bounded_grid, objective_bits,
                                            quantize_layer_choosing_grid, search_grids,
                                            try_candidate)
from nncodec_rd.encoder.methods import quantize_layer
from nncodec_rd.encoder.obs import lambda_rule_steps, quantize_on_grid
from nncodec_rd.encoder.problem import LayerProblem
from nncodec_rd.encoder.settings import QuantizerSettings
from nncodec_rd.encoder.writer import NrdWriter
from nncodec_rd.format.errors import EncoderError
from nncodec_rd.format.grids import UniformGrid
from nncodec_rd.encoder.entropy import EntropySettings

METHODS = ("rtn", "optq", "optq-rd", "cerwu")


def problem_of(rng, weights, samples=300):
    columns = weights.shape[1]
    inputs = rng.standard_normal((samples, columns)) * rng.uniform(0.3, 2.0, columns)
    return LayerProblem(weights, inputs.T @ inputs / samples)


@pytest.fixture
def rng():
    return np.random.default_rng(11)


def test_bounded_grid_spans_the_weights_with_zero_on_the_grid():
    weights = np.array([[-0.2, 0.0, 0.1, 0.6]])
    step, zero_point = bounded_grid(weights, 7, 1.0)
    # Two bins below 0 and four above: the finest step that reaches both -0.2 and 0.6.
    assert (step, zero_point) == (pytest.approx(0.15, rel=1e-6), 2)
    assert -zero_point * step <= -0.2 and (6 - zero_point) * step >= 0.6
    # All positive: the zero point is the first bin, and the step is the range over bins - 1.
    assert bounded_grid(np.array([[0.1, 0.5]]), 5, 1.0) == (pytest.approx(0.125), 0)
    # Clipping shrinks the span, not the number of bins.
    step, zero_point = bounded_grid(weights, 7, 0.5)
    assert (step, zero_point) == (pytest.approx(0.075, rel=1e-6), 2)
    for bins in (3, 5, 15, 31):
        step, zero_point = bounded_grid(weights, bins, 1.0)
        assert -zero_point * step <= -0.2 and (bins - 1 - zero_point) * step >= 0.6


@pytest.mark.parametrize("method", METHODS)
def test_every_method_keeps_its_indices_within_the_bins(rng, method, tmp_path):
    weights = rng.laplace(size=(16, 48)) * 0.05 + 0.02  # asymmetric
    problem = problem_of(rng, weights)
    settings = QuantizerSettings(method=method, lam=1e-4)
    trial = try_candidate(problem, settings, np.array([0.01], np.float32),
                          GridCandidate(bins=5, clip=0.6))
    stored, grid = trial.result.stored_indices_and_grid()
    assert stored.min() >= 0 and stored.max() <= 4
    assert stored.min() == 0 or stored.max() == 4  # the clipped tails reach the last bins
    assert trial.result.bins == 5 and grid.zero_points.tolist() == trial.result.zero_points.tolist()
    # The stored indices and grid, written and read back by the decoder (spec §6.1: value =
    # step x (index - zero point)), give the quantizer's own reconstruction.
    with NrdWriter(tmp_path / "w.nrd") as writer:
        writer.add_indices("w", stored, grid)
    with safe_open(tmp_path / "w.nrd") as handle:
        decoded = handle.get_tensor("w")
    expected = (trial.result.indices * trial.result.steps[0]).astype(np.float32)
    np.testing.assert_array_equal(decoded, expected)


@pytest.mark.parametrize("method", METHODS)
def test_the_search_never_does_worse_than_the_lambda_rule(rng, method):
    problem = problem_of(rng, rng.laplace(size=(24, 64)) * 0.05)
    for lam in (1e-5, 1e-4, 1e-3):
        settings = QuantizerSettings(method=method, lam=lam, grid_search_below_bits=np.inf)
        fixed = quantize_layer(problem, settings)
        chosen = quantize_layer(problem, replace(settings, grid_choice="rd"))
        assert objective_bits(chosen, lam, settings) <= objective_bits(fixed, lam, settings)
        trials = search_grids(problem, settings)
        assert any(trial.candidate == GridCandidate() for trial in trials)  # scale 1 is tried
        assert len({trial.candidate for trial in trials}) == len(trials)  # none twice


def test_high_rate_layers_keep_the_lambda_rule_without_a_search(rng):
    problem = problem_of(rng, rng.laplace(size=(24, 64)) * 0.05)
    settings = QuantizerSettings(method="cerwu", lam=1e-5, grid_choice="rd")  # ~4 bits/weight
    trials = search_grids(problem, settings)
    assert [trial.candidate for trial in trials] == [GridCandidate()]
    result = quantize_layer(problem, settings)
    assert result.grid == "λ rule" and result.rate_bits / problem.weights.size > 2.0
    searched = search_grids(problem, replace(settings, grid_search_below_bits=5.0))
    assert len(searched) > 4


def test_a_ternary_layer_gets_a_three_bin_grid(rng):
    # Weights that are exactly {-a, 0, a} (plus a little noise): three bins of step a code
    # them almost exactly, which no scale of the λ-rule step hits.
    a = 0.037
    weights = a * rng.choice([-1.0, 0.0, 1.0], size=(32, 64), p=[0.2, 0.6, 0.2])
    weights += rng.normal(scale=1e-4, size=weights.shape)
    problem = problem_of(rng, weights)
    result = quantize_layer_choosing_grid(problem, QuantizerSettings(method="optq", lam=1e-5))
    assert result.bins == 3 and result.zero_points.tolist() == [1]
    assert result.grid == "3 bins"
    assert result.steps[0] == pytest.approx(a, rel=0.02)


def test_layers_with_a_step_per_row_only_search_the_step(rng):
    problem = LayerProblem(rng.laplace(size=(12, 30)) * 0.1)
    settings = QuantizerSettings(method="optq-rd", lam=1e-4, per_channel=True)
    trials = search_grids(problem, settings)
    assert trials and all(trial.candidate.bins is None for trial in trials)
    base = lambda_rule_steps(problem, settings)
    assert len(base) == 12
    result = quantize_layer(problem, QuantizerSettings(method="optq-rd", lam=1e-4,
                                                       per_channel=True, grid_choice="rd"))
    assert result.zero_points is None and len(result.steps) == 12


def test_an_index_range_is_honoured_by_the_sweep(rng):
    problem = problem_of(rng, rng.laplace(size=(8, 40)) * 0.05)
    settings = QuantizerSettings(method="cerwu", lam=1e-5)
    low, high = np.array([-1]), np.array([2])
    result = quantize_on_grid(problem, settings, np.array([0.004], np.float32), (low, high))
    assert result.indices.min() >= -1 and result.indices.max() <= 2
    assert result.indices.min() == -1 and result.indices.max() == 2


def test_settings_refuse_bad_grid_options():
    with pytest.raises(EncoderError, match="grid_choice"):
        QuantizerSettings(grid_choice="best")
    with pytest.raises(EncoderError, match="odd"):
        QuantizerSettings(grid_bins=(4,))


def test_the_writer_centres_previous_index_contexts_on_a_zero_point(tmp_path, rng):
    # Rows of small and of large indices: the previous index's distance from the zero point
    # predicts the next one's, so the contexts pay off when they measure from the zero point.
    scales = np.where(np.arange(40) % 2 == 0, 0.3, 3.0)[:, None]
    indices = np.clip(np.rint(rng.laplace(size=(40, 200)) * scales), -7, 7).astype(np.int64) + 7
    path = tmp_path / "z.nrd"
    settings = EntropySettings(context_model="previous")
    with NrdWriter(path) as writer:
        writer.add_indices("centred", indices, UniformGrid(0.1, [7]), settings=settings,
                           context_center=7)
        writer.add_indices("default", indices, UniformGrid(0.1, [7]), settings=settings)
    with safe_open(path) as handle:
        bodies = {tensor.name: tensor.body for tensor in handle.header.tensors}
        assert bodies["centred"].context_center == 7
        assert bodies["default"].context_center == 0
        np.testing.assert_array_equal(handle.get_tensor("centred"), handle.get_tensor("default"))
        centred = sum(chunk.size for chunk in bodies["centred"].chunks)
        default = sum(chunk.size for chunk in bodies["default"].chunks)
    assert centred < default  # distances from the most probable index say more


def test_auto_searches_for_every_method_but_rtn(rng):
    problem = problem_of(rng, rng.laplace(size=(24, 64)) * 0.05)
    for method in METHODS:
        result = quantize_layer(problem, QuantizerSettings(method=method, lam=1e-3))  # ~1 bit
        assert (result.grid == "λ rule") == (method == "rtn"), (method, result.grid)


# -- a step per row, chosen by rate-distortion (per_channel="rd") ------------------------------

from hypothesis import given, settings as hypothesis_settings, strategies as st  # noqa: E402

from nncodec_rd.encoder.grid_choice import STEP_BITS  # noqa: E402
from nncodec_rd.encoder.obs import CHANNEL_STEP_CLASS_RANGE, CHANNEL_STEP_CLASS_RATIO  # noqa: E402


def channel_scaled_problem(seed: int, spread: float, rows=16, columns=48):
    """Rows of Laplacian weights whose scales span ``spread`` (a convolution's output channels
    before BatchNorm), with a Hessian of inputs of uneven scales."""
    rng = np.random.default_rng(seed)
    scales = spread ** rng.uniform(-0.5, 0.5, rows)
    return problem_of(rng, rng.laplace(size=(rows, columns)) * 0.05 * scales[:, None])


def total_objective(result, settings) -> float:
    """D/λ + R with every step beyond the first counted (what the choice weighs)."""
    return objective_bits(result, settings.lam, settings) + STEP_BITS * (len(result.steps) - 1)


@hypothesis_settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2 ** 16), spread=st.sampled_from([1.0, 3.0, 30.0]),
       method=st.sampled_from(METHODS), lam=st.sampled_from([1e-6, 1e-5, 1e-4]),
       grouped=st.booleans())
def test_a_step_per_row_by_rd_never_ends_above_one_step(seed, spread, method, lam, grouped):
    problem = (grouped_problem(seed, spread, groups=4, rows_per_group=4, columns=18) if grouped
               else channel_scaled_problem(seed, spread))
    settings = QuantizerSettings(method=method, lam=lam)
    one = quantize_layer(problem, settings)
    chosen = quantize_layer(problem, replace(settings, per_channel="rd"))
    assert total_objective(chosen, settings) <= total_objective(one, settings) * (1 + 1e-12)
    assert len(chosen.steps) in (1, problem.weights.shape[0])


def grouped_problem(seed: int, spread: float, groups=8, rows_per_group=8, columns=72):
    """A grouped convolution: each group's inputs (and so its Hessian) of a scale spanning
    ``spread``: the λ rule's step of one group is not another's."""
    rng = np.random.default_rng(seed)
    hessians = []
    for _ in range(groups):
        inputs = rng.standard_normal((200, columns)) * spread ** rng.uniform(-0.5, 0.5)
        hessians.append(inputs.T @ inputs / 200)
    weights = rng.laplace(size=(groups * rows_per_group, columns)) * 0.1
    return LayerProblem(weights, np.stack(hessians))


@pytest.mark.parametrize("method", METHODS[1:])
def test_groups_of_very_different_curvatures_take_a_step_per_row(method):
    problem = grouped_problem(3, spread=300.0)
    settings = QuantizerSettings(method=method, lam=1e-4, per_channel="rd")
    result = quantize_layer(problem, settings)
    assert len(result.steps) == 64 and result.grid == "a step per row"
    one = quantize_layer(problem, replace(settings, per_channel=False))
    assert total_objective(result, settings) < total_objective(one, settings)


def test_rows_sharing_a_hessian_keep_one_step():
    """Rows of one Hessian get the same λ-rule step whatever their scale (the high-rate
    optimum); a table of per-row steps costs more than the rows' own steps save."""
    problem = channel_scaled_problem(3, spread=100.0)
    result = quantize_layer(problem, QuantizerSettings(method="cerwu", lam=1e-5,
                                                       per_channel="rd"))
    assert len(result.steps) == 1


def test_cerwu_steps_per_row_come_in_classes_around_the_layer_step():
    """cerwu's folded rate μ depends on the step: rows share H + μI within a class of steps a
    factor √2 apart, at most 8x from the layer's one step."""
    problem = grouped_problem(5, spread=1000.0)
    settings = QuantizerSettings(method="cerwu", lam=1e-5, per_channel=True)
    steps = lambda_rule_steps(problem, settings).astype(np.float64)
    one = float(lambda_rule_steps(problem, replace(settings, per_channel=False))[0])
    exponents = np.log(steps / one) / np.log(CHANNEL_STEP_CLASS_RATIO)
    np.testing.assert_allclose(exponents, np.rint(exponents), atol=1e-4)
    assert np.all(np.abs(steps / one) <= CHANNEL_STEP_CLASS_RANGE * (1 + 1e-6))
    assert len(np.unique(exponents.round())) > 2
    result = quantize_layer(problem, replace(settings, grid_choice="fixed"))
    np.testing.assert_array_equal(result.steps, steps.astype(np.float32))
    chosen = quantize_layer(problem, replace(settings, per_channel="rd"))
    chosen_exponents = np.log(chosen.steps.astype(np.float64) / one) / np.log(
        CHANNEL_STEP_CLASS_RATIO)
    np.testing.assert_allclose(chosen_exponents, np.rint(chosen_exponents), atol=1e-4)


def test_cerwu_with_every_row_in_one_class_equals_one_step():
    """Rows of one class take the same H + μI as the layer with one step: same indices."""
    problem = channel_scaled_problem(7, spread=1.0)
    one_step = QuantizerSettings(method="cerwu", lam=1e-5, grid_choice="fixed")
    step = float(lambda_rule_steps(problem, one_step)[0])
    rows = problem.weights.shape[0]
    one = quantize_on_grid(problem, one_step, np.array([step], np.float32))
    per_row = quantize_on_grid(problem, replace(one_step, per_channel=True),
                               np.full(rows, step, np.float32))
    np.testing.assert_array_equal(per_row.indices, one.indices)
