"""The conformance runner passes our two decoders and names the vector and the spec section when
a decoder breaks one rule."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nncodec_rd.conformance import spec_literal_decoder
from nncodec_rd.conformance.runner import (compare_output, read_npz, read_safetensors,
                                           run_conformance)
from nncodec_rd.cli import main as cli_main
from nncodec_rd.decoder.reader import NrdFile
from nncodec_rd.format.errors import NrdError
from nncodec_rd.io.tensorio import write_tensors_streaming

ROOT = Path(__file__).resolve().parents[2]


def production_decoder(input_path, output_path):
    """Our Numba decoder, in process (the CLI's decode command, without a process start)."""
    try:
        with NrdFile(input_path) as handle:
            entries = [(n, handle.info(n).dtype, handle.info(n).shape) for n in handle.keys()]
            write_tensors_streaming(output_path, entries, handle.get_tensor)
    except NrdError as error:
        return 1, f"nncodec-rd: error: {error}"
    return 0, ""


def spec_literal(input_path, output_path):
    """The spec-literal decoder, in process."""
    try:
        tensors = spec_literal_decoder.decode_file(Path(input_path).read_bytes())
    except spec_literal_decoder.SpecError as error:
        return 1, f"error {error.code} {error.name}: {error}"
    spec_literal_decoder._write_npz(tensors, output_path)
    return 0, ""


@pytest.mark.parametrize("decoder, pattern, output_format", [
    (production_decoder, r"error: (\w+):", "npz"),
    (production_decoder, r"error: (\w+):", "safetensors"),
    (spec_literal, r"error (\d+) ", "npz"),  # it writes .npz only
])
def test_our_decoders_conform(decoder, pattern, output_format):
    report = run_conformance(decoder, output_format=output_format, error_pattern=pattern, jobs=1)
    assert report.passed, report.render()
    assert len(report.results) > 200
    assert {"4.7", "6.4", "7.5", "A"} <= set(report.sections())


def _broken_decoder(tmp_path, patch_source: str) -> str:
    """A command running the spec-literal decoder with one rule changed by ``patch_source``."""
    script = tmp_path / "broken_decoder.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from nncodec_rd.conformance import spec_literal_decoder as d
        {patch_source}
        sys.exit(d.main(sys.argv[1:]))
    """))
    return f"{sys.executable} {script} {{input}} {{output}}"


def test_a_decoder_that_truncates_bfloat16_fails_in_section_6_5(tmp_path):
    command = _broken_decoder(tmp_path, "d.bfloat16_bits = lambda v: 0x7FC0 if d.is_nan(v, "
                                        "d.BINARY32) else v >> 16")
    report = run_conformance(command, select="bfloat16|annex")
    failed = {result.name: result for result in report.failures()}
    assert not report.passed
    assert "uniform_per_row_bfloat16" in failed and "annex_a_example" not in failed
    assert "bytes differ" in failed["uniform_per_row_bfloat16"].reason
    assert "uniform_per_row_bfloat16" in report.sections()["6.5"]["failed"]
    assert "uniform_per_row_bfloat16" in report.render() and "§6.5" in report.render()
    assert "reconstruct:bfloat16" in report.suspect_features()


def test_a_decoder_that_skips_the_layout_rules_fails_in_section_4_7(tmp_path):
    command = _broken_decoder(tmp_path, "d.check_layout = lambda header: None")
    report = run_conformance(command, select="padding|trailing|annex")
    failed = {result.name for result in report.failures()}
    assert {"nonzero_padding", "trailing_bytes"} <= failed
    assert "annex_a_example" not in failed
    assert "nonzero_padding" in report.sections()["4.7"]["failed"]
    assert "accepted a file with 12 nonzero_padding" in report.render()


def test_a_decoder_that_reports_the_wrong_code_fails_with_an_error_pattern(tmp_path):
    command = _broken_decoder(tmp_path, "d.SpecError.code = property(lambda self: 8, "
                                        "lambda self, value: None)")
    report = run_conformance(command, select="^trailing_bytes$", error_pattern=r"error (\d+) ")
    assert [r.reason for r in report.failures()] == ["reported 8, expected 13 trailing_bytes"]


def test_hangs_and_leftover_output_are_failures(tmp_path):
    def slow(input_path, output_path):
        Path(output_path).write_bytes(b"partial")
        return 1, "error"

    report = run_conformance(slow, select="^bad_magic$")
    assert report.failures()[0].reason == "rejected the file but left an output file behind"
    command = f"{sys.executable} -c 'import time; time.sleep(5)' {{input}} {{output}}"
    report = run_conformance(command, select="^bad_magic$", timeout_s=0.5)
    assert "hang" in report.failures()[0].reason


def test_compare_output_names_the_difference():
    expected = [dict(name="w", dtype="float32", shape=[2], sha256="0" * 64)]
    assert "missing" in compare_output(expected, {})
    assert "shape" in compare_output(expected, {"w": ("float32", (1, 2), b"")})
    assert "dtype" in compare_output(expected, {"w": ("int32", (2,), b"")})
    assert "bytes differ" in compare_output(expected, {"w": ("float32", (2,), b"\0" * 8)})


def test_readers_agree_on_both_output_formats(tmp_path):
    import numpy as np

    arrays = {"a/b": np.arange(6, dtype=">f4").reshape(2, 3), "scalar": np.array(3, np.int8)}
    write_tensors_streaming(tmp_path / "x.npz", [(n, a.dtype.newbyteorder("=").name, a.shape)
                                                 for n, a in arrays.items()], arrays.__getitem__)
    write_tensors_streaming(tmp_path / "x.safetensors", [(n, a.dtype.newbyteorder("=").name,
                                                          a.shape) for n, a in arrays.items()],
                            arrays.__getitem__)
    assert read_npz(tmp_path / "x.npz") == read_safetensors(tmp_path / "x.safetensors")
    assert read_npz(tmp_path / "x.npz")["a/b"][2] == np.arange(6, dtype="<f4").tobytes()


def test_cli_runs_both_decoders_as_commands(capsys):
    """`nncodec-rd conformance run` with real processes (a few files, to stay fast)."""
    select = "^(annex_a_example|escape_only_alphabet|zero_d_empty_single|trailing_bytes|bad_magic)$"
    literal = "nncodec_rd.conformance.spec_literal_decoder"
    for command in (f"{sys.executable} -m nncodec_rd decode {{input}} -o {{output}}",
                    f"{sys.executable} -m {literal} {{input}} {{output}}"):
        status = cli_main(["conformance", "run", "--decoder", command, "--select", select,
                           "--json", "--quiet"])
        report = json.loads(capsys.readouterr().out)
        assert status == 0 and report["passed"] and report["counts"]["files"] == 5, report


def test_cli_fails_for_a_broken_decoder(tmp_path, capsys):
    command = _broken_decoder(tmp_path, "d.check_layout = lambda header: None")
    status = cli_main(["conformance", "run", "--decoder", command, "--select", "^nonzero_padding$",
                       "--quiet"])
    out = capsys.readouterr().out
    assert status != 0 and "FAIL invalid nonzero_padding" in out and "§4.7" in out


def test_cli_rejects_a_command_without_placeholders(capsys):
    assert cli_main(["conformance", "run", "--decoder", "mydecoder"]) != 0
    assert "{input}" in capsys.readouterr().err


def spec_literal_1_0(input_path, output_path):
    """The spec-literal decoder reading as a 1.0 decoder (required-feature bit 0 unknown)."""
    try:
        tensors = spec_literal_decoder.decode_file(Path(input_path).read_bytes(),
                                                   spec_version="1.0")
    except spec_literal_decoder.SpecError as error:
        return 1, f"error {error.code} {error.name}: {error}"
    spec_literal_decoder._write_npz(tensors, output_path)
    return 0, ""


def test_a_1_0_decoder_conforms_as_1_0_and_fails_the_1_1_files():
    as_1_0 = run_conformance(spec_literal_1_0, error_pattern=r"error (\d+) ", jobs=1,
                             format_version="1.0", select="trellis|required|annex")
    assert as_1_0.passed, as_1_0.render()
    refused = [result for result in as_1_0.results if result.name.startswith("trellis")]
    assert len(refused) == 5 and all(result.kind == "invalid" for result in refused)
    as_1_1 = run_conformance(spec_literal_1_0, error_pattern=r"error (\d+) ", jobs=1,
                             select="trellis")
    assert {result.name for result in as_1_1.failures()} == {
        "trellis_float32_chunks", "trellis_half_and_transform", "trellis_bit_unused",
        "trellis_without_feature_bit", "trellis_zero_point"}
