"""Trellis-coded quantization in the encoder (nncodec_rd.encoder.trellis): the Viterbi search is
exact per column, the levels are those spec §6.6 gives the indices, and a model coded with
``trellis=True`` decodes to exactly the weights the encoder measured."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nncodec_rd.decoder import kernels
from nncodec_rd.encoder import trellis
from nncodec_rd.encoder.grid_choice import objective_bits
from nncodec_rd.encoder.methods import quantize_layer
from nncodec_rd.encoder.problem import LayerProblem
from nncodec_rd.encoder.settings import QuantizerSettings

NEXT = ((0, 2), (2, 0), (1, 3), (3, 1))


def decoded_levels(indices: np.ndarray, segment_rows: int) -> np.ndarray:
    """The levels the decoder makes of ``(rows, columns)`` indices in chunks of
    ``segment_rows`` rows (spec §6.6, the reference decoder's NumPy walk)."""
    rows, columns = indices.shape
    return np.concatenate([
        kernels.trellis_levels_walk(indices[start:start + segment_rows].ravel(), columns,
                                    min(segment_rows, rows - start)).reshape(-1, columns)
        for start in range(0, rows, segment_rows)])


def brute_force_column(targets, rate_scale, bits, segment_rows):
    """The least cost of one column over every index sequence in -3 ... 3 (the spec's levels,
    each index priced by ``bits``): what the Viterbi search must match."""
    best_total = 0.0
    for start in range(0, len(targets), segment_rows):
        part = range(start, min(len(targets), start + segment_rows))
        best = np.inf
        for sequence in itertools.product(range(-3, 4), repeat=len(part)):
            state, total = 0, 0.0
            for r, q in zip(part, sequence):
                sign = (q > 0) - (q < 0)
                d = 2 * q if state <= 1 else 2 * q - sign
                total += (targets[r] - d) ** 2 + rate_scale[r] * bits(q)
                state = NEXT[state][q % 2]
            best = min(best, total)
        best_total += best
    return best_total


@settings(max_examples=30, deadline=None)
@given(targets=st.lists(st.floats(-4.5, 4.5), min_size=1, max_size=5),
       scale=st.floats(0.0, 2.0), segment_rows=st.integers(1, 5))
def test_the_column_search_finds_the_least_cost_path(targets, scale, segment_rows):
    targets = np.array(targets)
    rows = len(targets)
    first_index = -3
    cost_bits = np.array([6.0, 4.0, 2.5, 1.0, 2.5, 4.0, 6.0])  # indices -3 ... 3
    outside_bits = 40.0
    rate_scale = np.full(rows, scale)
    indices, levels = np.zeros(rows, np.int64), np.zeros(rows, np.int64)
    trellis._column_viterbi(targets, rate_scale, cost_bits, np.int64(first_index), outside_bits,
                            np.int64(segment_rows), trellis._NEXT, indices, levels,
                            np.zeros((rows, 4), np.int64), np.zeros((rows, 4), np.int64))
    bits = lambda q: cost_bits[q - first_index] if -3 <= q <= 3 else outside_bits  # noqa: E731
    found = sum((targets[r] - levels[r]) ** 2 + scale * bits(int(indices[r])) for r in range(rows))
    np.testing.assert_array_equal(levels, decoded_levels(indices[:, None], segment_rows).ravel())
    assert found == pytest.approx(brute_force_column(targets, rate_scale, bits, segment_rows),
                                  rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("method", ["optq", "optq-rd", "cerwu"])
def test_trellis_is_kept_only_where_it_lowers_the_objective(method):
    rng = np.random.default_rng(0)
    inputs = rng.normal(size=(400, 48)) * rng.uniform(0.2, 3.0, size=48)
    problem = LayerProblem(rng.laplace(size=(96, 48)) * 0.05, inputs.T @ inputs / 400)
    for lam in (1e-6, 1e-4, 1e-2):
        plain = quantize_layer(problem, QuantizerSettings(method=method, lam=lam))
        chosen = quantize_layer(problem, QuantizerSettings(method=method, lam=lam, trellis=True))
        candidate = trellis.quantize_trellis(problem, QuantizerSettings(method=method, lam=lam))
        settings_ = QuantizerSettings(method=method, lam=lam)
        assert objective_bits(chosen, lam, settings_) == pytest.approx(min(
            objective_bits(plain, lam, settings_), objective_bits(candidate, lam, settings_)))
        np.testing.assert_array_equal(candidate.levels,
                                      decoded_levels(candidate.indices, 96))


def test_trellis_wins_at_a_few_bits_per_weight():
    """At 3 to 4 bits per weight, half-step levels at the bits of whole steps: the objective
    falls (measured here on a Laplacian layer with a correlated Hessian)."""
    rng = np.random.default_rng(1)
    inputs = rng.normal(size=(600, 64)) @ rng.normal(size=(64, 64)) * 0.3
    problem = LayerProblem(rng.laplace(size=(128, 64)) * 0.05, inputs.T @ inputs / 600)
    lam = 1e-4
    settings_ = QuantizerSettings(method="optq-rd", lam=lam)
    plain = quantize_layer(problem, settings_)
    assert 2.5 < plain.rate_bits / problem.weights.size < 5.5
    candidate = trellis.quantize_trellis(problem, settings_)
    assert objective_bits(candidate, lam, settings_) < 0.98 * objective_bits(plain, lam, settings_)


def test_layers_the_trellis_cannot_code_are_left_alone():
    rng = np.random.default_rng(2)
    weights = rng.normal(size=(8, 6))
    grouped = LayerProblem(weights, np.stack([np.eye(6), 2 * np.eye(6)]))
    transposed = LayerProblem(weights, np.eye(6), trellis_allowed=False)
    on = QuantizerSettings(method="cerwu", lam=1e-4, trellis=True)
    assert not trellis.trellis_applies(grouped, on)
    assert not trellis.trellis_applies(transposed, on)
    assert not trellis.trellis_applies(LayerProblem(weights, np.eye(6)),
                                       QuantizerSettings(method="rtn", lam=1e-4, trellis=True))
    assert not quantize_layer(transposed, on).trellis
