"""Run one target under atheris:
``python -m nncodec_rd.conformance.fuzz.atheris_run TARGET [libFuzzer args]``.

The parser, both decoders and construct are instrumented for coverage; the Numba kernels are not
(atheris rewrites bytecode, Numba compiles it) and neither is the harness. Inputs are mutated by
:func:`nncodec_rd.conformance.fuzz.mutate.mutate` around libFuzzer's own mutator.
"""

from __future__ import annotations

import importlib
import sys

import atheris

INSTRUMENTED = ["nncodec_rd", "construct"]  # nncodec_rd.conformance included
# Exact module names (atheris matches excludes exactly): everything that defines Numba kernels,
# and the harness itself.
NOT_INSTRUMENTED = ["nncodec_rd.decoder.kernels", "nncodec_rd.encoder.rans",
                    "nncodec_rd.encoder.obs", "nncodec_rd.conformance.fuzz.common",
                    "nncodec_rd.conformance.fuzz.mutate", "nncodec_rd.conformance.fuzz.seeds",
                    "nncodec_rd.conformance.strategies"]


def main(argv: list[str]) -> None:
    target = argv[1]
    with atheris.instrument_imports(include=INSTRUMENTED, exclude=NOT_INSTRUMENTED):
        module = importlib.import_module(f"nncodec_rd.conformance.fuzz.{target}")
        importlib.import_module("nncodec_rd.format.container")
        importlib.import_module("nncodec_rd.conformance.mutators")
    from .common import warm_up
    from .mutate import mutate

    warm_up()

    def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
        return mutate(data, max_size, seed, atheris.Mutate)

    atheris.Setup([argv[0], *argv[2:]], module.test_one_input, custom_mutator=custom_mutator)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
