"""The fuzz harness (conformance/fuzz/, docs/fuzzing.md): every kept crash input is replayed through
every target, and every target runs on a few dozen mutated inputs, so the harness cannot rot.

The contract checked is the targets' own: success or the library's typed error, no other
exception, within the per-input time limit; the two decoders agree where both accept.
"""

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from nncodec_rd.conformance.fuzz import (TARGETS, fuzz_agreement, fuzz_container, fuzz_reader,
                                         fuzz_spec_literal)
from nncodec_rd.conformance.fuzz.mutate import mutate
from nncodec_rd.conformance.fuzz.seeds import feature_files, output_bombs

REGRESSIONS = sorted((Path(__file__).resolve().parents[2] / "conformance" / "fuzz" /
                      "regressions").glob("*.nrd"))
MODULES = [fuzz_container, fuzz_reader, fuzz_spec_literal, fuzz_agreement]
SEEDS = sorted({**feature_files(), **output_bombs()}.items())


def test_every_target_is_listed():
    assert [module.__name__.rsplit(".", 1)[1] for module in MODULES] == list(TARGETS)


@pytest.mark.parametrize("path", REGRESSIONS, ids=[path.stem for path in REGRESSIONS])
@pytest.mark.parametrize("module", MODULES, ids=TARGETS)
def test_regression_inputs_keep_the_contract(module, path):
    module.test_one_input(path.read_bytes())


@pytest.mark.parametrize("module", MODULES, ids=TARGETS)
def test_seeds_keep_the_contract(module):
    for _, data in SEEDS:
        module.test_one_input(data)
    assert module.STATS.outcomes.get("ok", 0) >= 1


@settings(max_examples=40, derandomize=True, database=None, deadline=None,
          suppress_health_check=list(HealthCheck))
@given(st.sampled_from(SEEDS), st.integers(0, 2**32 - 1),
       st.one_of(st.just(b""), st.binary(max_size=64)))
def test_mutated_inputs_keep_the_contract(seed, mutation_seed, prefix):
    data = mutate(seed[1], 1 << 16, mutation_seed)
    if prefix:
        data = prefix + data[len(prefix):] if mutation_seed % 2 else prefix
    for module in MODULES:
        module.test_one_input(data)
