"""Shared test configuration: Hypothesis profiles and helpers for writing small files."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

# ci: fast and reproducible; thorough: many more examples (pytest --hypothesis-profile=thorough).
settings.register_profile("ci", derandomize=True, deadline=None, database=None, print_blob=True,
                          max_examples=150,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("thorough", deadline=None, max_examples=2000,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("dev", deadline=None, max_examples=20)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
