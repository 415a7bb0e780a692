"""nncodec-rd encode with a model: --method, --lam, --target-bpw, --calibration, --model."""

from __future__ import annotations

import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from nncodec_rd.api import safe_open  # noqa: E402
from nncodec_rd.cli import main  # noqa: E402
from nncodec_rd.torch.load import load_into  # noqa: E402
from nncodec_rd.torch.examples import tiny_mlp  # noqa: E402

ENTRY_POINT = "nncodec_rd.torch.examples:tiny_mlp"
CODED_WEIGHTS = 32 * 64 + 64 * 16  # the two Linear weights of tiny_mlp


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def relative_output_error(model, other, batches):
    with torch.no_grad():
        reference = torch.cat([model(batch) for batch in batches])
        restored = torch.cat([other(batch) for batch in batches])
    return float((restored - reference).pow(2).mean() / reference.pow(2).mean())


@pytest.fixture
def models_file(tmp_path):
    """A user's module file with a function returning only the model."""
    path = tmp_path / "my_models.py"
    path.write_text("from nncodec_rd.torch.examples import tiny_mlp\n\n"
                    "def build():\n    return tiny_mlp()[0]\n\n"
                    "def wrong_type():\n    return 3\n\n"
                    "def pair_without_model():\n    return 3, []\n\n"
                    "def fails():\n    raise RuntimeError('no GPU here\\nsecond line')\n")
    return path


def test_entry_point_writes_a_file_load_into_restores(tmp_path, capsys):
    out_path = tmp_path / "tiny.nrd"
    code, _, err = run(capsys, "encode", "--calibration", ENTRY_POINT, "-o", out_path)
    assert code == 0, err
    model, batches = tiny_mlp()
    restored = load_into(tiny_mlp(seed=7)[0], out_path)  # other weights before loading
    assert relative_output_error(model, restored, batches) < 0.01
    with safe_open(out_path) as handle:
        assert handle.metadata()["method"] == "cerwu"  # the default with calibration data
        assert handle.info("0.weight").coding == "rans"
    # The summary table once, then one final line with the path, size and bits per weight.
    assert err.count("total:") == 1 and "0.weight" in err
    last = err.rstrip("\n").splitlines()[-1]
    assert last.startswith(f"wrote {out_path}: {out_path.stat().st_size} bytes")
    assert "bits per coded weight" in last


def test_target_bpw_is_met(tmp_path, capsys):
    out_path = tmp_path / "tiny.nrd"
    code, _, err = run(capsys, "encode", "--calibration", ENTRY_POINT, "--method", "cerwu",
                       "--target-bpw", 5, "-o", out_path)
    assert code == 0, err
    bits_per_weight = 8 * out_path.stat().st_size / CODED_WEIGHTS
    assert 4.5 <= bits_per_weight <= 5


@pytest.mark.parametrize("layout", ["pt-tensor", "pt-list", "npz-arrays"])
def test_batches_file_with_model_and_input_weights(tmp_path, models_file, capsys, layout):
    trained, batches = tiny_mlp(seed=3)  # INPUT's weights differ from what build() returns
    weights = tmp_path / "weights.pt"
    torch.save(trained.state_dict(), weights)
    if layout == "pt-tensor":
        calibration = tmp_path / "batches.pt"
        torch.save(torch.cat(batches), calibration)  # 64 rows, split by --batch-size
        extra = ["--batch-size", 16]
    elif layout == "pt-list":
        calibration = tmp_path / "batches.pt"
        torch.save(list(batches), calibration)
        extra = []
    else:
        calibration = tmp_path / "batches.npz"  # float64: cast to the model's float32
        np.savez(calibration, *[b.double().numpy() for b in batches])
        extra = []
    out_path = tmp_path / "w.nrd"
    code, _, err = run(capsys, "encode", weights, "--model", f"{models_file}:build",
                       "--calibration", calibration, "--method", "optq", "--lam", "1e-8",
                       "--per-channel", "--no-act-order", *extra, "-o", out_path)
    assert code == 0, err
    restored = load_into(tiny_mlp(seed=7)[0], out_path)
    assert relative_output_error(trained, restored, batches) < 0.01
    with safe_open(out_path) as handle:
        metadata = handle.metadata()
        assert metadata["method"] == "optq" and metadata["lambda"] == pytest.approx(1e-8)
        assert metadata["source"] == "weights.pt"
        assert handle.info("0.weight").grid.startswith("uniform/64")  # a step per row


def test_model_without_calibration_is_data_free_rtn(tmp_path, models_file, capsys):
    out_path = tmp_path / "w.nrd"
    code, _, err = run(capsys, "encode", "--model", f"{models_file}:build", "-o", out_path)
    assert code == 0, err
    with safe_open(out_path) as handle:
        assert handle.metadata()["method"] == "rtn"


@pytest.mark.parametrize("spec, message", [
    ("no_such_module_xyz:make", "no module named 'no_such_module_xyz'"),
    ("nncodec_rd.torch.examples:missing", "has no attribute 'missing'"),
    ("nncodec_rd.torch.examples:TINY_MLP_SIZES", "not a function"),
    ("just-a-name", "expected a .pt, .pth or .npz file"),
    ("nncodec_rd.torch.examples:", "expected MODULE:FUNCTION"),
    ("{models}:wrong_type", "it must return (model, batches)"),
    ("{models}:pair_without_model", "with an int as the model, not a torch.nn.Module"),
    ("{models}:fails", "raised RuntimeError: no GPU here"),
    ("{folder}/absent.py:f", "no such file"),
    ("{folder}/missing_batches.pt", "needs --model"),
])
def test_bad_entry_point_one_line_error_no_output(tmp_path, models_file, capsys, spec, message):
    out_path = tmp_path / "out.nrd"
    spec = spec.format(models=models_file, folder=tmp_path)
    argv = ["encode", "--calibration", spec, "-o", out_path]
    if spec.endswith(".pt"):  # a usage error: argparse's message, exit status 2
        with pytest.raises(SystemExit) as raised:
            main([str(a) for a in argv])
        assert raised.value.code == 2 and message in capsys.readouterr().err
    else:
        code, _, err = run(capsys, *argv)
        assert code != 0 and err.count("\n") == 1 and "Traceback" not in err
        assert err.startswith("nncodec-rd: error: ") and message in err, err
    assert not out_path.exists() and not list(tmp_path.glob(".nrd-*"))


@pytest.mark.parametrize("problem, message", [
    ("batches", "cannot run the first calibration batch"),
    ("weights", "encoder_input: {weights}: its tensors do not match the model's state dict: "
                "missing 2.weight"),
    ("model", "returned a tuple of 2 items, not a torch.nn.Module"),
    ("unreadable", "cannot load as a weights-only PyTorch file"),
    ("lam", "--lam must be finite and > 0"),
    ("grid-scale", "--grid-scale must be finite and > 0"),
    ("batch-size", "--batch-size must be at least 1"),
])
def test_bad_model_inputs_one_line_error(tmp_path, models_file, capsys, problem, message):
    calibration = tmp_path / "batches.pt"
    torch.save(torch.randn(8, 7) if problem == "batches" else torch.randn(8, 32), calibration)
    if problem == "unreadable":
        calibration.write_bytes(b"not a torch file")
    argv = ["--model", f"{models_file}:build", "--calibration", calibration]
    if problem == "weights":
        weights = tmp_path / "weights.safetensors"
        from nncodec_rd.io.tensorio import write_safetensors

        write_safetensors(weights, {k: v.numpy() for k, v in tiny_mlp()[0].state_dict().items()
                                    if not k.startswith("2.")})
        argv.insert(0, weights)
    if problem == "model":
        argv[1] = ENTRY_POINT
    if problem in ("lam", "grid-scale", "batch-size"):
        argv += [f"--{problem}", "0"]
    out_path = tmp_path / "out.nrd"
    code, _, err = run(capsys, "encode", *argv, "-o", out_path)
    message = message.format(weights=tmp_path / "weights.safetensors")
    assert code == 1 and err.count("\n") == 1 and message in err, err
    if problem == "weights":  # and what to do about it
        assert "encode its folder instead (nncodec-rd encode MODEL_DIR)" in err
    assert not out_path.exists()


def test_an_output_in_a_missing_folder_names_that_folder(tmp_path, capsys):
    weights = tmp_path / "w.safetensors"
    from nncodec_rd.io.tensorio import write_safetensors

    write_safetensors(weights, {"w": np.ones((4, 4), np.float32)})
    code, _, err = run(capsys, "encode", weights, "-o", tmp_path / "absent" / "w.nrd")
    assert code == 1 and err == (f"nncodec-rd: error: io: cannot write "
                                 f"{tmp_path / 'absent' / 'w.nrd'}: the folder "
                                 f"{tmp_path / 'absent'} does not exist\n")


@pytest.mark.parametrize("argv, message", [
    (["--calibration", ENTRY_POINT, "--lam", "1e-6", "--target-bpw", "4"], "not allowed with"),
    (["model.safetensors", "--target-bpw", "4"], "--target-bpw needs a model"),
    (["model.safetensors", "--lam", "0"], "--lam needs a model"),
    (["model.safetensors", "--method", "cerwu"], "needs calibration data"),
    (["--calibration", ENTRY_POINT, "--bins", "31"], "--bins applies only to the data-free"),
    (["--calibration", ENTRY_POINT, "--model", "x:y"], "--model is for a file of batches"),
    (["--calibration", ENTRY_POINT, "--batch-size", "8"], "--batch-size applies only"),
    (["--model", "x:y", "--method", "optq"], "needs calibration data"),
    ([], "required: input"),
])
def test_options_that_do_not_fit_together(tmp_path, capsys, argv, message):
    out_path = tmp_path / "out.nrd"
    with pytest.raises(SystemExit) as raised:
        main(["encode", *argv, "-o", str(out_path)])
    assert raised.value.code == 2 and message in capsys.readouterr().err
    assert not out_path.exists()


def test_without_torch_a_one_line_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch fails as if not installed
    for name in [name for name in sys.modules if name.startswith("nncodec_rd.torch.")]:
        monkeypatch.delitem(sys.modules, name)
    code, _, err = run(capsys, "encode", "--calibration", ENTRY_POINT, "-o", tmp_path / "x.nrd")
    assert code == 1 and err.count("\n") == 1 and "need PyTorch" in err


def test_help_documents_the_combinations(capsys):
    with pytest.raises(SystemExit):
        main(["encode", "--help"])
    out = capsys.readouterr().out
    assert f"--calibration {ENTRY_POINT} --method cerwu" in out
    for text in ("--calibration FILE --model MODULE:FUNCTION", "--model MODULE:FUNCTION [INPUT]",
                 "--target-bpw", "--no-sensitivity", "--per-channel", "--batch-size"):
        assert text in out, text


def test_the_quantizer_flags_come_from_the_settings_declaration(capsys):
    """--grid-scale, --grid-choice, --no-act-order and --trellis are made from QuantizerSettings' fields:
    each is in the help, is one of the options that need a model, and reaches its setting."""
    import argparse

    from nncodec_rd.cli.encode import MODEL_OPTIONS
    from nncodec_rd.cli.common import quantizer_settings_of as settings_from_flags
    from nncodec_rd.encoder.settings import command_line_flags

    flags = {flag.flag: name for name, flag, _ in command_line_flags()}
    assert set(flags) == {"--grid-scale", "--grid-choice", "--no-act-order", "--trellis"}
    assert set(flags) <= {option for _, option in MODEL_OPTIONS}
    with pytest.raises(SystemExit):
        main(["encode", "--help"])
    help_text = capsys.readouterr().out
    assert all(flag in help_text for flag in flags)
    given = argparse.Namespace(grid_scale=0.5, grid_choice=None, no_act_order=True, trellis=None)
    assert settings_from_flags(given) == {"grid_scale": 0.5, "act_order": False}
    assert settings_from_flags(argparse.Namespace(grid_scale=None, grid_choice="rd",
                                                  no_act_order=False, trellis=True)) == {
        "grid_choice": "rd", "trellis": True}


def test_embedding_smoothing_reaches_the_encoder_and_a_bad_one_is_one_line(tmp_path, capsys):
    import json

    output = tmp_path / "m.nrd"
    code, _, err = run(capsys, "encode", "--calibration", ENTRY_POINT, "--embedding-smoothing",
                       "inf", "-o", output)
    assert code == 0, err
    with safe_open(output) as opened:
        settings = json.loads(opened.metadata()["encoder_settings"])
    assert settings["embedding_smoothing"] == "inf"  # JSON has no infinity
    code, _, err = run(capsys, "encode", "--calibration", ENTRY_POINT, "--embedding-smoothing",
                       "0", "-o", tmp_path / "bad.nrd")
    assert code != 0 and "embedding_smoothing must be positive" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "bad.nrd").exists()


def test_trellis_flag_writes_a_1_1_file_only_when_given(tmp_path, capsys):
    import json

    paths = {}
    for given in (False, True):
        paths[given] = tmp_path / f"t{given}.nrd"
        flags = ["--trellis"] if given else []
        code, _, err = run(capsys, "encode", "--calibration", ENTRY_POINT, "--lam", "1e-7",
                           *flags, "-o", paths[given])
        assert code == 0, err
    with safe_open(paths[False]) as plain, safe_open(paths[True]) as trellis:
        assert plain.format_version == "1.0"
        assert json.loads(plain.metadata()["encoder_settings"])["trellis"] is False
        assert json.loads(trellis.metadata()["encoder_settings"])["trellis"] is True
        grids = [trellis.info(name).grid for name in trellis.keys()]
    assert any(grid.startswith("trellis") for grid in grids)
    with safe_open(paths[True]) as trellis:
        assert trellis.format_version == "1.1"
