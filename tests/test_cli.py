"""The nncodec-rd command: info, decode, encode, validate; one-line errors, no partial outputs."""

import json
import subprocess
import sys

import numpy as np
import pytest

from nncodec_rd.cli import main
from nncodec_rd.io.tensorio import read_safetensors, write_safetensors


@pytest.fixture
def model_file(tmp_path, rng):
    path = tmp_path / "model.safetensors"
    write_safetensors(path, {"layer.weight": rng.standard_normal((64, 48)).astype(np.float32),
                             "layer.bias": rng.standard_normal(64).astype(np.float32),
                             "steps": np.array([3], dtype=np.int64)}, {"origin": "test"})
    return path


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_encode_info_decode_validate(tmp_path, model_file, capsys):
    nrd = tmp_path / "model.nrd"
    code, _, err = run(capsys, "encode", model_file, "-o", nrd, "--bins", "31", "--per-row")
    assert code == 0 and "bits per element" in err
    code, out, _ = run(capsys, "info", nrd)
    assert code == 0 and "layer.weight" in out and "uniform/64 steps" in out
    code, out, _ = run(capsys, "info", nrd, "--json")
    listing = json.loads(out)
    weight = next(t for t in listing["tensors"] if t["name"] == "layer.weight")
    assert weight["shape"] == [64, 48] and weight["dtype"] == "float32"
    assert weight["payload_bytes"] > 0 and 0 < weight["bits_per_weight"] < 6
    assert set(weight) >= {"name", "shape", "dtype", "grid", "payload_bytes", "bits_per_weight"}
    assert listing["metadata"]["origin"] == "test"
    for suffix in (".safetensors", ".npz"):
        out_path = tmp_path / f"decoded{suffix}"
        code, _, _ = run(capsys, "decode", nrd, "-o", out_path)
        assert code == 0 and out_path.exists()
    decoded, _ = read_safetensors(tmp_path / "decoded.safetensors")
    original, _ = read_safetensors(model_file)
    assert decoded["steps"].tolist() == [3]
    assert np.max(np.abs(decoded["layer.weight"] - original["layer.weight"])) < 0.2
    code, out, _ = run(capsys, "validate", nrd)
    assert code == 0 and "conforms" in out


def test_encode_chooses_each_tensors_precision_unless_told_not_to(tmp_path, model_file, capsys):
    from nncodec_rd import safe_open

    precisions = {}
    for option in ((), ("--fixed-precision",)):
        nrd = tmp_path / f"model{len(option)}.nrd"
        code, _, _ = run(capsys, "encode", model_file, "-o", nrd, "--bins", "15", *option)
        assert code == 0
        with safe_open(nrd) as handle:
            body = next(t.body for t in handle.header.tensors if t.name == "layer.weight")
            precisions[option] = int(body.precision_bits)
            settings = json.loads(handle.metadata()["encoder_settings"])
            assert settings["choose_precision"] is not bool(option)
        _, out, _ = run(capsys, "info", nrd, "--json")
        listed = {t["name"]: t["precision_bits"] for t in json.loads(out)["tensors"]}
        assert listed["layer.weight"] == precisions[option] and listed["layer.bias"] is None
    # 3,072 weights over 15 bins cost fewest bytes below 14 bits
    assert precisions[("--fixed-precision",)] == 14 and precisions[()] < 14


def test_bad_input_gives_one_line_and_no_output(tmp_path, capsys):
    garbage = tmp_path / "garbage.nrd"
    garbage.write_bytes(b"not an nrd file at all, just text" * 3)
    out_path = tmp_path / "out.safetensors"
    code, out, err = run(capsys, "decode", garbage, "-o", out_path)
    assert code != 0 and not out_path.exists()
    assert err.count("\n") == 1 and "bad_magic" in err and "Traceback" not in err
    assert not list(tmp_path.glob(".nrd-*"))


def test_validate_reports_every_fault_and_exits_nonzero(tmp_path, model_file, capsys):
    nrd = tmp_path / "model.nrd"
    run(capsys, "encode", model_file, "-o", nrd)
    data = bytearray(nrd.read_bytes())
    data[-1] ^= 0xFF
    broken = tmp_path / "broken.nrd"
    broken.write_bytes(bytes(data))
    code, out, _ = run(capsys, "validate", nrd, broken, "--json")
    report = json.loads(out)
    assert code == 1 and report[0]["conforms"] and not report[1]["conforms"]
    assert report[1]["errors"][0]["name"] == "checksum_payload"


def test_missing_input_and_bad_options(tmp_path, capsys):
    code, _, err = run(capsys, "encode", tmp_path / "none.safetensors", "-o", tmp_path / "x.nrd")
    assert code == 1 and "no such file" in err
    code, _, err = run(capsys, "encode", tmp_path / "none.txt", "-o", tmp_path / "x.nrd")
    assert code == 1


def test_even_bins_are_rejected_without_partial_output(tmp_path, model_file, capsys):
    out_path = tmp_path / "x.nrd"
    code, _, err = run(capsys, "encode", model_file, "-o", out_path, "--bins", "4")
    assert code == 1 and "odd" in err and not out_path.exists()


def test_python_dash_m_and_version():
    result = subprocess.run([sys.executable, "-m", "nncodec_rd", "--version"], capture_output=True,
                            text=True, check=True)
    assert "format 1.1" in result.stdout  # 1.0 and the trellis grid of 1.1


def test_every_command_has_help_with_an_example():
    for command in ("info", "decode", "encode", "validate", "demo", "bench decode", "conformance",
                    "conformance run"):
        result = subprocess.run([sys.executable, "-m", "nncodec_rd", *command.split(), "--help"],
                                capture_output=True, text=True, check=True)
        assert "Example" in result.stdout, command


def test_bench_decode_runs_small(tmp_path, capsys):
    code, out, _ = run(capsys, "bench", "decode", "--weights", "20000", "--repeats", "1",
                       "--json", tmp_path / "b.json")
    report = json.loads((tmp_path / "b.json").read_text())
    assert code == 0 and "nncodec-rd (1 thread, new array)" in out
    ours = report["results"][0]
    assert ours["measured"] and ours["bits_per_weight"] < report["entropy_bits_per_weight"] * 1.05


def test_decode_and_info_work_without_torch(tmp_path):
    """A decode-only install has no torch: the command line must not import it."""
    import nncodec_rd

    source = tmp_path / "model.nrd"
    nncodec_rd.save_file({"w": np.ones((4, 4), np.float32)}, source)
    program = ("import sys; sys.modules['torch'] = None; from nncodec_rd.cli import main; "
               f"sys.exit(main(['decode', {str(source)!r}, '-o', {str(tmp_path / 'out.npz')!r}]) "
               f"or main(['info', {str(source)!r}]))")
    completed = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr
    assert (tmp_path / "out.npz").exists() and "w" in completed.stdout


def test_outputs_get_the_usual_file_mode(tmp_path):
    """Atomic writes go through a private temporary file; the result must not stay private."""
    import os
    import stat

    import nncodec_rd

    umask = os.umask(0o022)
    try:
        nncodec_rd.save_file({"w": np.ones(3, np.float32)}, tmp_path / "m.nrd")
        assert main(["decode", str(tmp_path / "m.nrd"), "-o", str(tmp_path / "m.safetensors")]) == 0
    finally:
        os.umask(umask)
    for name in ("m.nrd", "m.safetensors"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o644, name


def test_info_says_larger_when_the_file_is_larger(tmp_path, capsys):
    import nncodec_rd

    nncodec_rd.save_file({"w": np.ones(3, np.float32)}, tmp_path / "tiny.nrd")
    assert main(["info", str(tmp_path / "tiny.nrd")]) == 0
    out = capsys.readouterr().out
    assert ", 1 tensor\n" in out and "11.7x larger than the uncompressed" in out


def test_decode_refuses_tensors_beyond_the_output_bound(tmp_path, capsys):
    import nncodec_rd

    nncodec_rd.save_file({"w": np.ones((64, 64), np.float32)}, tmp_path / "m.nrd")
    status = main(["decode", str(tmp_path / "m.nrd"), "-o", str(tmp_path / "m.npz"),
                   "--max-output-bytes", "1000"])
    assert status != 0 and "output_too_large" in capsys.readouterr().err
    assert not (tmp_path / "m.npz").exists()
    with pytest.raises(nncodec_rd.LimitExceededError):
        nncodec_rd.load_file(tmp_path / "m.nrd", max_output_bytes=1000)


def test_a_data_free_encode_reports_sqnr_and_warns_when_it_destroys_the_weights(tmp_path, capsys):
    """The warning fires for a 15-bin grid on heavy-tailed weights and not for the default step
    (the threshold's measurement: nncodec_rd/encoder/fidelity.py)."""
    import numpy as np

    from nncodec_rd.cli import main
    from nncodec_rd.io.tensorio import write_safetensors

    generator = np.random.default_rng(0)
    weights = generator.standard_t(2, size=(256, 128)).astype(np.float32)  # outliers
    write_safetensors(tmp_path / "w.safetensors", {"w": weights})
    assert main(["encode", str(tmp_path / "w.safetensors"), "-o", str(tmp_path / "a.nrd")]) == 0
    default = capsys.readouterr().err
    assert "weights SQNR" in default and "warning" not in default
    assert main(["encode", str(tmp_path / "w.safetensors"), "-o", str(tmp_path / "b.nrd"),
                 "--bins", "15"]) == 0
    coarse = capsys.readouterr().err
    assert "warning: the weights keep" in coarse
    overall = float(coarse.split("weights SQNR ")[1].split(" dB")[0])
    decoded = __import__("nncodec_rd").load_file(tmp_path / "b.nrd")["w"]
    expected = 10 * np.log10(np.sum(weights.astype(np.float64) ** 2)
                             / np.sum((weights.astype(np.float64) - decoded) ** 2))
    assert abs(overall - expected) < 0.05


def test_validate_names_the_version_a_file_needs_of_its_decoder(capsys):
    """1.0 for a file that uses nothing of 1.1 (whatever its minor_version says), 1.1 for one
    with the trellis grid (spec §3.1, §6.6)."""
    from pathlib import Path

    vectors = Path(__file__).resolve().parents[1] / "conformance" / "vectors"
    code, out, _ = run(capsys, "validate", vectors / "annex_a_example.v1.nrd",
                       vectors / "later_minor_version.v1.nrd",
                       vectors / "trellis_float32_chunks.v1.nrd")
    assert code == 0
    assert [line.rsplit(" ", 1)[1] for line in out.splitlines()] == ["1.0", "1.0", "1.1"]
