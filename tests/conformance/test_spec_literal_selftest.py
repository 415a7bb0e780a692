"""The spec-literal decoder's self-test (conformance/spec_literal_selftest.py) passes, and still
runs every kind of check it ran when it moved out of the decoder's file (no check lost)."""

import subprocess
import sys
from pathlib import Path

from nncodec_rd.conformance import spec_literal_selftest

ROOT = Path(__file__).resolve().parents[2]

# What the self-test counted when it moved out of spec_literal_decoder.py (its random draws are
# seeded, so the counts are the same on every run); a later version may check more, never less.
COUNTS_WHEN_MOVED = {"RN32 comparisons": 17375, "binary16 comparisons": 11181,
                     "error cases": 272, "encode/decode round trips": 48,
                     "old-rule chunks rejected or misdecoded": 3}


def test_the_self_test_passes_and_checks_no_less_than_before():
    tally = spec_literal_selftest.self_test()  # an AssertionError names a failed check
    for kind, count in COUNTS_WHEN_MOVED.items():
        assert tally[kind] >= count, (kind, tally[kind])


def test_the_self_test_runs_from_the_command_line():
    result = subprocess.run([sys.executable, "-m", "nncodec_rd.conformance.spec_literal_selftest"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("self-test passed: ") and "272 error cases" in result.stdout
