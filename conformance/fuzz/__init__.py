"""Fuzz targets over the container parser and both decoders (docs/fuzzing.md).

One target per module, each with ``test_one_input(data: bytes)``, the atheris/libFuzzer entry
point: ``fuzz_container``, ``fuzz_reader``, ``fuzz_spec_literal`` and ``fuzz_agreement``.
``python -m nncodec_rd.conformance.fuzz`` runs them (atheris if installed, else a Hypothesis-free
built-in mutator), ``seeds`` writes the seed corpus, ``regressions/`` keeps every crash input found.
"""

TARGETS = ("fuzz_container", "fuzz_reader", "fuzz_spec_literal", "fuzz_agreement")
