"""The first decode after installing (issue 18): every decoding path gives the same bits, a
decode works where no cache folder is writable, compiling is announced once, warmup compiles.

Speeds are measured by bench/cold_start.py, not here."""

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nncodec_rd.conformance import generate, manifest
from nncodec_rd import EntropySettings, UniformGrid
from nncodec_rd.decoder import dispatch, kernels, small
from nncodec_rd.decoder.reader import NrdFile
from nncodec_rd.encoder import NrdWriter
from nncodec_rd.format.constants import Coding

PACKAGE = Path(__file__).resolve().parents[2] / "nncodec_rd"


def _decode_all(path, method):
    """Every tensor (and the indices of every coded tensor) as bytes, decoded by ``method``."""
    with NrdFile(path) as handle:
        handle._method = method
        decoded = {}
        for name in handle.keys():
            decoded[name] = np.ascontiguousarray(handle.get_tensor(name)).tobytes()
            record = handle._record(name)
            if record.coding == Coding.RANS:
                decoded[name + "#indices"] = handle.get_indices(name).tobytes()
        return decoded


@pytest.mark.parametrize("method", ["small", "general"])
def test_every_path_gives_the_kernels_bits_on_the_conformance_vectors(method):
    """The Python path for small tensors (``small``: it must not decline a valid chunk) and
    the general kernel alone against the default path (fast kernel first), whose tensors the
    manifest's hashes pin down, on every frozen vector."""
    vectors = manifest.load(manifest.VECTORS_MANIFEST)
    for entry in vectors["vectors"]:
        path = generate.VECTORS_FOLDER / entry["file"]
        assert _decode_all(path, method) == _decode_all(path, "kernels"), entry["name"]
        assert _decode_all(path, "auto") == _decode_all(path, "kernels"), entry["name"]


def _outcome(path, method):
    """What decoding the damaged file gives: the output bytes, or the error's code and offset
    (the payload checksum is skipped, so that the damage reaches the chunk decoder)."""
    with NrdFile(path) as handle:
        handle._method = method
        handle._verify_payload = lambda *arguments: None
        try:
            return handle.get_tensor("w").tobytes()
        except ValueError as error:
            return (error.code, error.offset)


def test_small_path_gives_the_kernels_outcome_for_every_damaged_byte(tmp_path):
    """A fault in a small tensor: the kernels' error code and offset (the Python path declines
    and the kernels report), or the kernels' output where the damage goes unnoticed."""
    path = tmp_path / "small.nrd"
    with NrdWriter(path) as writer:
        writer.add_indices("w", np.arange(64).reshape(8, 8) % 5, UniformGrid(0.5), "float32",
                           settings=EntropySettings(lane_count=4, context_model="iid"))
    with NrdFile(path) as handle:
        chunk = handle._record("w").body.chunks[0]
        first, size = int(chunk.offset), int(chunk.size)
    errors = 0
    for position in range(first, first + size):
        data = bytearray(path.read_bytes())
        data[position] ^= 0x41
        damaged = tmp_path / "damaged.nrd"
        damaged.write_bytes(bytes(data))
        outcome = _outcome(damaged, "auto")
        assert outcome == _outcome(damaged, "kernels"), position
        errors += isinstance(outcome, tuple)
    assert errors > size // 2  # most damage is caught, by the kernels' checks


def test_decoding_works_when_no_cache_folder_is_writable(tmp_path):
    """Read-only site-packages, an unwritable NUMBA_CACHE_DIR and home: the kernels compile
    without a cache (said once on stderr) and decode the same bits."""
    copy = tmp_path / "site" / "nncodec_rd"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "*.nbi", "*.nbc"))
    for folder in [copy, *[path for path in copy.rglob("*") if path.is_dir()]]:
        (folder / "__pycache__").write_text("not a folder")  # no in-tree cache
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, so nothing can be created below it")
    path = tmp_path / "medium.nrd"
    indices = np.random.default_rng(0).integers(-20, 21, size=(64, 80))  # above the small path
    assert indices.size > small.SMALL_TENSOR_SYMBOLS
    with NrdWriter(path) as writer:
        writer.add_indices("w", indices, UniformGrid(0.01), "float32",
                           settings=EntropySettings(lane_count=4, context_model="iid"))
    environment = {key: value for key, value in os.environ.items()
                   if not key.startswith(("NUMBA_", "PYTHON"))}
    environment.update(PYTHONPATH=str(copy.parent), NUMBA_CACHE_DIR=str(blocker / "numba"),
                       XDG_CACHE_HOME=str(blocker / "xdg"), HOME=str(blocker / "home"))
    script = ("import sys, json, nncodec_rd\n"
              "from nncodec_rd.decoder import dispatch\n"
              "tensor = nncodec_rd.load_file(sys.argv[1])['w']\n"
              "print(json.dumps([nncodec_rd.__file__, dispatch.cache_folder(), tensor.tolist()]))")
    result = subprocess.run([sys.executable, "-c", script, str(path)], env=environment,
                            cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    module, folder, values = json.loads(result.stdout)
    assert module.startswith(str(copy)) and folder is None
    assert np.array_equal(np.array(values, np.float32), NrdFile(path).get_tensor("w"))
    assert result.stderr.count("compiling the decoder's kernels") == 1
    assert "every process compiles again" in result.stderr


def test_compiling_is_announced_once_per_process(monkeypatch, caplog):
    monkeypatch.setattr(dispatch, "_announced", False)
    with caplog.at_level(logging.DEBUG, logger="nncodec_rd"):
        dispatch._announce("decode_fast_iid_32")
        dispatch._announce("decode_general_32")
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "compiling the decoder's kernels" in warnings[0].getMessage()
    assert "nncodec-rd warmup" in warnings[0].getMessage() or dispatch.cache_folder() is None


def test_warmup_compiles_each_kernel_and_then_nothing_compiles(monkeypatch):
    monkeypatch.setattr(dispatch, "ALL_SIGNATURES", ((kernels.decode_fast_iid, 4),))
    seen = []
    timings = dispatch.warmup(progress=lambda name, seconds: seen.append(name))
    assert list(timings) == seen == ["decode_fast_iid_32"]
    assert dispatch.is_compiled(kernels.decode_fast_iid, 4)


def test_warmup_command_reports_each_kernel_and_the_cache(monkeypatch, capsys):
    from nncodec_rd.cli import main

    monkeypatch.setattr(dispatch, "ALL_SIGNATURES", ((kernels.decode_fast_iid, 4),))
    assert main(["warmup"]) == 0
    err = capsys.readouterr().err
    assert "decode_fast_iid_32:" in err
    assert "1 decoder kernels ready" in err
    assert ("cached in" in err) == (dispatch.cache_folder() is not None)


def test_right_matrix_product_of_zero_rows():
    """A transform of a tensor with no rows (found by test_decoder_agreement's fuzzing)."""
    out = np.zeros(0, np.float32)
    dispatch.right_matrix_product(np.zeros((0, 3), np.float32), np.zeros((3, 2), np.float32),
                                  kernels.OUTPUT_FLOAT32, out, np.zeros(0, np.uint16))
    assert out.size == 0
