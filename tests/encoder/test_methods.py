"""The method registry: a method added through the public registry alone compresses a model end
to end; names, capabilities and errors."""

from __future__ import annotations

import dataclasses
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nncodec_rd.encoder.methods import (METHODS, QuantizationMethod, method_named,
                                        quantize_layer, register_method, unregister_method)
from nncodec_rd.encoder.obs import lambda_rule_steps, quantize_on_grid
from nncodec_rd.encoder.problem import LayerProblem
from nncodec_rd.encoder.settings import QuantizerSettings
from nncodec_rd.format.errors import EncoderError, ErrorCode

ROOT = Path(__file__).resolve().parents[2]


def half_step_rounding(problem, settings):
    """The toy method's entry point: round to nearest on a grid of half the λ rule's step."""
    return quantize_on_grid(problem, settings, lambda_rule_steps(problem, settings) / 2)


HALF_STEP = QuantizationMethod(
    "half-step", "round to nearest on half the λ rule's step (a toy)", half_step_rounding,
    needs_calibration=False, error_feedback=False)


@pytest.fixture
def half_step():
    register_method(HALF_STEP)
    try:
        yield HALF_STEP
    finally:
        unregister_method(HALF_STEP.name)


def test_a_registered_method_compresses_a_model_end_to_end(tmp_path, half_step):
    torch = pytest.importorskip("torch")
    from nncodec_rd.api import safe_open
    from nncodec_rd.torch.compress_model import compress
    from nncodec_rd.torch.load import load_into

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 48), torch.nn.ReLU(), torch.nn.Linear(48, 8))
    lam = 1e-4
    toy = compress(model, None, method="half-step", lam=lam, path=tmp_path / "toy.nrd",
                   progress=False)
    rtn = compress(model, None, method="rtn", lam=lam, path=tmp_path / "rtn.nrd", progress=False)
    assert toy.method == "half-step" and toy.size_bytes > rtn.size_bytes  # a finer grid
    restored = load_into(torch.nn.Sequential(torch.nn.Linear(32, 48), torch.nn.ReLU(),
                                             torch.nn.Linear(48, 8)), tmp_path / "toy.nrd")
    with safe_open(tmp_path / "toy.nrd") as toy_file, safe_open(tmp_path / "rtn.nrd") as rtn_file:
        assert toy_file.metadata()["method"] == "half-step"
        for name in ("0.weight", "2.weight"):
            step = float(toy_file.record(name).body.grid.steps[0])
            # the toy's grid is half of what rtn chose for the same layer at the same λ
            assert step == pytest.approx(float(rtn_file.record(name).body.grid.steps[0]) / 2,
                                         rel=1e-6)
            # and every weight is the nearest point of it (float32 arithmetic, as spec §6.1)
            original = model.state_dict()[name].numpy()
            expected = (np.rint(original.astype(np.float64) / step) * np.float32(step)
                        ).astype(np.float32)
            np.testing.assert_array_equal(restored.state_dict()[name].numpy(), expected)


def test_settings_resolve_a_registered_name_only_while_it_is_registered(half_step):
    settings = QuantizerSettings(method="half-step", lam=1e-3)
    assert settings.quantization_method is half_step
    assert dataclasses.replace(settings, method="optq").quantization_method is METHODS["optq"]
    problem = LayerProblem(np.linspace(-1, 1, 64).reshape(8, 8))
    result = quantize_layer(problem, settings)
    assert np.array_equal(result.indices, np.rint(problem.weights / result.steps[0]))
    unregister_method("half-step")
    try:
        with pytest.raises(EncoderError, match="unknown method 'half-step'"):
            QuantizerSettings(method="half-step", lam=1e-3)
        # settings made while it was registered keep it through replace() (what a Ray worker
        # that never registered it does with them), unless the method is changed
        assert dataclasses.replace(settings, grid_choice="fixed").quantization_method is half_step
        result = quantize_layer(problem, dataclasses.replace(settings, grid_choice="rd"))
        assert result.steps[0] > 0
    finally:
        register_method(half_step)


def test_settings_carry_their_method_to_another_process_by_value():
    settings = QuantizerSettings(method="cerwu", lam=1e-3)
    copy = pickle.loads(pickle.dumps(settings))
    # the method object by value, its entry point by name (what a Ray worker receives)
    assert copy == settings and copy.quantization_method == METHODS["cerwu"]
    assert copy.quantization_method.quantize is METHODS["cerwu"].quantize


def test_the_registry_refuses_duplicates_strangers_and_removing_built_ins(half_step):
    with pytest.raises(EncoderError, match="registered already"):
        register_method(half_step)
    with pytest.raises(EncoderError, match="built-in"):
        unregister_method("cerwu")
    with pytest.raises(EncoderError, match="not a registered method of single layers"):
        register_method(dataclasses.replace(half_step, name="grouped", fallback="nothing",
                                            quantize_group=half_step_rounding,
                                            block_sequential=False))
    with pytest.raises(EncoderError, match="not a registered method of single layers"):
        register_method(dataclasses.replace(half_step, name="grouped", fallback="transform",
                                            quantize_group=half_step_rounding,
                                            block_sequential=False))
    grouped = register_method(dataclasses.replace(
        half_step, name="grouped", fallback="half-step", quantize_group=half_step_rounding,
        block_sequential=False))
    with pytest.raises(EncoderError, match="fallback of grouped"):
        unregister_method("half-step")
    unregister_method(grouped.name)
    with pytest.raises(EncoderError, match="rate_aware needs error_feedback"):
        QuantizationMethod("rtn-rd", "", half_step_rounding, rate_aware=True, error_feedback=False)
    with pytest.raises(EncoderError, match="lower-case"):
        QuantizationMethod("Half Step", "", half_step_rounding)
    with pytest.raises(EncoderError) as error:
        method_named("gptq")
    assert error.value.code == ErrorCode.ENCODER_SETTINGS
    assert "half-step" in str(error.value) and "cerwu" in str(error.value)
    with pytest.raises(TypeError):
        METHODS["other"] = half_step  # read-only: only register_method adds


def test_the_built_in_methods_state_what_the_sweep_used_to_read_from_their_names():
    # The capabilities that replaced the name comparisons, method by method (docs/algorithms.md).
    table = {name: (method.needs_calibration, method.error_feedback, method.rate_aware,
                    method.folds_quadratic_rate, method.resolved_grid_choice("auto"),
                    method.fallback, method.block_sequential)
             for name, method in METHODS.items()}
    assert table == {
        "rtn": (False, False, False, False, "fixed", None, True),
        "optq": (True, True, False, False, "rd", None, True),
        "optq-rd": (True, True, True, False, "rd", None, True),
        "cerwu": (True, True, True, True, "rd", None, True),
        "transform": (True, True, False, False, "rd", "optq", False),
        "transform+cerwu": (True, True, True, False, "rd", "cerwu", False),
    }


def apply_documented_diff(diff: str, root) -> list[str]:
    """Apply a unified diff whose hunks carry no line numbers (as docs/architecture.md shows
    them) to the files under ``root``: each hunk's context and removed lines must occur once, in
    order, and are replaced by its context and added lines. Returns the paths changed."""
    changed = []
    for section in re.split(r"^--- ", diff, flags=re.MULTILINE)[1:]:
        lines = section.splitlines()
        path = re.match(r"\+\+\+ b/(\S+)", lines[1]).group(1)
        target = root / path
        text = "" if lines[0].startswith("/dev/null") else target.read_text(encoding="utf-8")
        for hunk in re.split(r"^@@.*$", "\n".join(lines[2:]), flags=re.MULTILINE)[1:]:
            body = [line for line in hunk.split("\n") if line]
            old = "".join(line[1:] + "\n" for line in body if line[0] in " -")
            new = "".join(line[1:] + "\n" for line in body if line[0] in " +")
            assert not old or text.count(old) == 1, f"{path}: the hunk's context is not found " \
                                                    f"once:\n{old}"
            text = text.replace(old, new) if old else new
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        changed.append(path)
    return changed


def test_the_diff_in_docs_architecture_adds_a_working_method(tmp_path):
    page = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    [diff] = re.findall(r"```diff\n(.*?)```", page, flags=re.DOTALL)
    shutil.copytree(ROOT / "nncodec_rd", tmp_path / "nncodec_rd",
                    ignore=shutil.ignore_patterns("__pycache__"))
    changed = apply_documented_diff(diff, tmp_path)
    # one new module, and methods.py changed by its registry entry (and the import it needs)
    assert changed == ["nncodec_rd/encoder/half_step.py", "nncodec_rd/encoder/methods.py"]
    check = """
import numpy as np
import nncodec_rd
from nncodec_rd.encoder.methods import METHODS, quantize_layer
from nncodec_rd.encoder.problem import LayerProblem
from nncodec_rd.encoder.settings import QuantizerSettings
assert nncodec_rd.__file__.startswith(%r), nncodec_rd.__file__
problem = LayerProblem(np.linspace(-1, 1, 64).reshape(8, 8))
half = quantize_layer(problem, QuantizerSettings(method="half-step", lam=1e-3))
rtn = quantize_layer(problem, QuantizerSettings(method="rtn", lam=1e-3))
assert half.steps[0] == rtn.steps[0] / 2, (half.steps, rtn.steps)
print(list(METHODS)[-1])
""" % str(tmp_path)
    environment = {**os.environ, "PYTHONPATH": str(tmp_path), "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    done = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, env=environment,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "half-step"
