"""NNCodec as a peer: a one-qp sweep on tiny tensors (needs .venv-nncodec), sweeps and errors."""

import importlib.util
import os
import sys

import numpy as np
import pytest

from bench import nncodec_peer
from bench.nncodec_peer import (
    DEFAULT_QPS,
    find_nncodec_python,
    run_nncodec_sweep,
    suggest_qps,
)


def nncodec_step(qp: int, qp_density: int = 2) -> float:
    """NNCodec's step for a qp (nncodec/nnc_core/common.py: get_stepsize_from_qp), the
    reference the sweep's decoded values are checked against (qp -38 gives 1.5 x 2^-10)."""
    k = 1 << qp_density
    return (k + (qp & (k - 1))) * 2.0 ** ((qp >> qp_density) - qp_density)


def test_one_qp_sweep_on_two_tiny_tensors(tmp_path, rng):
    python = find_nncodec_python()
    if python is None:
        pytest.skip("no NNCodec environment: run bench/setup_nncodec_env.sh")
    tensors = {"layer.weight": (rng.standard_normal((48, 32)) * 0.04).astype(np.float32),
               "layer.bias": (rng.standard_normal(32) * 0.1).astype(np.float32)}
    lines = []
    [result] = run_nncodec_sweep(tensors, [-30], str(tmp_path), python=python,
                                 progress=lines.append)
    assert result["qp"] == -30 and result["use_dq"] is True
    assert result["bytes"] == os.path.getsize(result["bitstream_path"]) > 0
    assert result["encode_seconds"] > 0 and result["decode_seconds"] > 0
    assert len(lines) == 1 and "\n" not in lines[0]
    with np.load(result["decoded_path"]) as decoded:
        assert sorted(decoded.files) == sorted(tensors)
        for name, original in tensors.items():
            assert decoded[name].shape == original.shape and decoded[name].dtype == np.float32
        weight, bias = decoded["layer.weight"], decoded["layer.bias"]
    # DQ's trellis picks among the four grid points nearest each value: error below two steps.
    step = nncodec_step(-30)
    assert np.abs(weight - tensors["layer.weight"]).max() < 2 * step
    assert np.array_equal(weight / step, np.rint(weight / step))
    # 1-d tensors use nonweight_qp=-75 whatever the qp: fine, but not lossless.
    assert np.abs(bias - tensors["layer.bias"]).max() < 2 * nncodec_step(-75)


def test_missing_environment_says_how_to_make_it(tmp_path, monkeypatch):
    monkeypatch.setattr(nncodec_peer, "find_nncodec_python", lambda explicit=None: None)
    with pytest.raises(FileNotFoundError, match="setup_nncodec_env.sh"):
        run_nncodec_sweep({"w": np.zeros((2, 2), np.float32)}, [-38], str(tmp_path))


def test_failure_is_one_line_from_stderr(tmp_path):
    if importlib.util.find_spec("nncodec") is not None:
        pytest.skip("this interpreter has nncodec, so it cannot stand for one without")
    with pytest.raises(RuntimeError, match=r"^NNCodec run failed: ModuleNotFoundError") as error:
        run_nncodec_sweep({"w": np.zeros((2, 2), np.float32)}, [-38], str(tmp_path),
                          python=sys.executable)
    assert "\n" not in str(error.value)


def test_only_float32_is_accepted(tmp_path):
    with pytest.raises(ValueError, match="float32"):
        run_nncodec_sweep({"ids": np.arange(4)}, [-38], str(tmp_path), python=sys.executable)


def test_suggested_sweeps_shift_with_rms_and_quantizer():
    assert suggest_qps() == DEFAULT_QPS
    assert suggest_qps(0.08) == [qp + 4 for qp in DEFAULT_QPS]
    assert suggest_qps(0.04, use_dq=False) == [qp + 4 for qp in DEFAULT_QPS]
    tensors = {"w": np.full((4, 4), 0.02, np.float32), "b": np.full(4, 9.0, np.float32)}
    assert suggest_qps(tensors) == [qp - 4 for qp in DEFAULT_QPS]  # 1-d tensors do not count
    with pytest.raises(ValueError):
        suggest_qps(0.0)
