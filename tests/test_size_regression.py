"""File sizes do not move unless an encoder change means them to (as zstd's regression results).

Fixed inputs (seeded tensors, a seeded MLP and a seeded stack of blocks with seeded calibration
batches) are encoded with fixed settings, and the files' exact sizes are compared with those
recorded in ``tests/regression/sizes.json``. A change that moves them on purpose re-records them:

    NRD_ACCEPT_SIZES=1 .venv/bin/python -m pytest tests/test_size_regression.py

and the diff of sizes.json shows what moved, by how much, in the commit that moved it.

Floating-point results depend on the machine (SIMD paths of NumPy and PyTorch), so sizes are
recorded per platform signature; on a platform with none recorded the test is skipped and says
how to record them.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import nncodec_rd  # noqa: E402
from nncodec_rd.torch import compress  # noqa: E402

RECORD = Path(__file__).resolve().parent / "regression" / "sizes.json"
ACCEPT = os.environ.get("NRD_ACCEPT_SIZES") == "1"


def platform_signature() -> str:
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as features
    except ImportError:  # NumPy 1.x
        from numpy.core._multiarray_umath import __cpu_features__ as features
    simd = next((name for name in ("AVX512F", "AVX2", "SSE2", "ASIMD") if features.get(name)),
                "none")
    return (f"{platform.machine()} numpy-{np.__version__} torch-{torch.__version__} "
            f"torch-cpu-{torch.backends.cpu.get_cpu_capability()} numpy-{simd}")


def _tensors() -> dict:
    rng = np.random.default_rng(2026)
    return {"dense": (rng.standard_normal((256, 128)) * 0.02).astype(np.float32),
            "heavy_tailed": rng.laplace(size=(64, 96)).astype(np.float32) * 0.05,
            "bias": rng.standard_normal(1500).astype(np.float32)}


class _Stack(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = torch.nn.Linear(24, 48)
        self.layers = torch.nn.ModuleList(torch.nn.Sequential(torch.nn.Linear(48, 48),
                                                              torch.nn.GELU())
                                          for _ in range(3))
        self.head = torch.nn.Linear(48, 10)

    def forward(self, x):
        x = self.inp(x)
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


def _model(kind: str):
    torch.manual_seed(7)
    if kind == "stack":
        return _Stack()
    return torch.nn.Sequential(torch.nn.Linear(24, 96), torch.nn.ReLU(), torch.nn.Linear(96, 32),
                               torch.nn.ReLU(), torch.nn.Linear(32, 10))


def _batches():
    generator = torch.Generator().manual_seed(11)
    return [torch.randn(64, 24, generator=generator) for _ in range(4)]


CASES = {
    "save_file default": lambda path: nncodec_rd.save_file(_tensors(), path),
    "save_file bins=15 per_row": lambda path: nncodec_rd.save_file(_tensors(), path, bins=15,
                                                                    per_row=True),
    **{f"compress mlp {method}": (lambda path, method=method: compress(
        _model("mlp"), _batches(), method=method, path=path, progress=False))
       for method in ("rtn", "optq", "cerwu")},
    "compress stack cerwu sequential": lambda path: compress(
        _model("stack"), _batches(), method="cerwu", path=path, progress=False, sequential=True),
    "compress mlp cerwu target 3 bpw": lambda path: compress(
        _model("mlp"), _batches(), method="cerwu", target_bpw=3.0, path=path, progress=False),
}


@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("sizes")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # reductions in one order
    try:
        sizes = {}
        for number, (case, encode) in enumerate(CASES.items()):
            path = folder / f"{number}.nrd"
            encode(path)
            sizes[case] = path.stat().st_size
        return sizes
    finally:
        torch.set_num_threads(threads)


def test_file_sizes_are_the_recorded_ones(measured):
    signature = platform_signature()
    record = json.loads(RECORD.read_text()) if RECORD.exists() else {}
    if ACCEPT:
        record[signature] = measured
        RECORD.parent.mkdir(parents=True, exist_ok=True)
        RECORD.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
        return
    if signature not in record:
        pytest.skip(f"no sizes recorded for {signature!r}: record them with NRD_ACCEPT_SIZES=1")
    expected = record[signature]
    moved = {case: (expected.get(case), size) for case, size in measured.items()
             if expected.get(case) != size}
    assert not moved, (
        "file sizes moved (case: recorded -> now): "
        + "; ".join(f"{case}: {old} -> {new}" for case, (old, new) in moved.items())
        + ". If the encoder change means this, re-record: NRD_ACCEPT_SIZES=1 .venv/bin/python "
          "-m pytest tests/test_size_regression.py, and commit tests/regression/sizes.json")


def test_the_sizes_are_deterministic_within_a_run(measured, tmp_path):
    # The same case twice in one process: the same bytes (no hidden state between encodes).
    path = tmp_path / "again.nrd"
    torch.set_num_threads(1)
    CASES["compress mlp cerwu target 3 bpw"](path)
    assert path.stat().st_size == measured["compress mlp cerwu target 3 bpw"]
