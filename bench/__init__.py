"""Benchmarks and the evidence behind the measured pages of docs/ (results in bench/results/).

Importable as ``bench`` from the repository root (the scripts put the root on ``sys.path``; the
tests see it through pytest), never installed: the wheel holds ``nncodec_rd`` alone. The
library modules here are :mod:`bench.nncodec_peer` (NNCodec in its own environment),
:mod:`bench.rate_fidelity` (the rate-fidelity harness) and :mod:`bench.digits_cnn` (the small
model it measures); every other file is a script, ``python bench/NAME.py``.
"""
