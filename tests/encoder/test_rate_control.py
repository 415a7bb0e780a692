"""Predicted rates and the one-pass λ controller (nncodec_rd.encoder.rate_control)."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from nncodec_rd.encoder.entropy import EntropySettings
from nncodec_rd.encoder.rate_control import (RateController, RateTable, rate_table,
                                             rounding_bits)
from nncodec_rd.encoder.rans import build_frequency_table, frequency_table_bytes


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), step=st.floats(0.02, 3.0), rows=st.integers(1, 40))
def test_rounding_bits_are_the_coders_static_table_bits(seed, step, rows):
    weights = np.random.default_rng(seed).standard_normal((rows, 33))
    indices = np.rint(weights / np.float64(step)).astype(np.int64)
    # independent: the code length under the writer's own frequency table, counted here
    precision = EntropySettings().precision_bits
    values, counts = np.unique(indices, return_counts=True)
    dense = np.zeros(values.max() - values.min() + 1, dtype=np.int64)
    dense[values - values.min()] = counts
    frequencies = build_frequency_table(dense, precision).astype(np.float64)
    expected = float(np.sum(counts * (precision - np.log2(frequencies[values - values.min()]))))
    expected += 8.0 * frequency_table_bytes(frequencies)
    assert rounding_bits(weights, np.array([step])) == pytest.approx(expected, rel=1e-12)


def test_large_layers_are_counted_by_row_blocks_alike(monkeypatch):
    weights = np.random.default_rng(0).standard_normal((512, 64))
    whole = rounding_bits(weights, np.array([0.3]))
    monkeypatch.setattr("nncodec_rd.encoder.rate_control.COUNT_CHUNK", 1000)
    assert rounding_bits(weights, np.array([0.3])) == whole


def test_a_table_falls_with_lambda_and_interpolates_between_its_points():
    weights = np.random.default_rng(1).standard_normal((64, 64))
    lams = 2.0 ** np.arange(-4, 5)
    table = rate_table(weights, np.array([0.05]), lams)
    assert np.all(np.diff(table.bits_at) < 0)
    assert table.bits(lams[3]) == pytest.approx(table.bits_at[3])
    assert table.bits_at[4] < table.bits(1.5 * lams[3]) < table.bits_at[3]


def test_the_controller_spends_the_budget_and_learns_the_real_rate():
    lams = 2.0 ** np.arange(-8, 9)
    unit = RateTable(lams, 1000.0 * lams ** -0.25, 100)
    controller = RateController(target_bits=3000.0)
    lam = controller.choose(unit, unit.scaled_to(200))
    assert 3 * unit.bits(lam) == pytest.approx(3000.0, rel=1e-9)
    # the unit came out 20% smaller than predicted: the rest is predicted 20% smaller too
    controller.record("u1", lam, 0.8 * unit.bits(lam), unit.bits(lam))
    assert controller.correction == pytest.approx(0.8)
    second = controller.choose(unit, unit)
    assert second < lam  # more bits left per unit: a finer λ
    assert controller.spent_bits + 0.8 * 2 * unit.bits(second) == pytest.approx(3000.0)
