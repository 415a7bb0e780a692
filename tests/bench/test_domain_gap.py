"""bench/domain_gap.py: the interpolation to the target (the rest needs the model)."""

import pytest

pytest.importorskip("torch")

from bench.domain_gap import TARGET, at_target  # noqa: E402


def point(bits, inside, other):
    return {"bits_per_weight": bits, "parts": {"all": {"cosine, documentation": inside,
                                                       "cosine, license text": other}}}


def test_at_target_interpolates_bits_and_the_other_cosine_between_the_bracketing_files():
    points = [point(4.0, 0.998, 0.996), point(2.0, 0.98, 0.95), point(3.0, 0.995, 0.985)]
    found = at_target(points)
    share = (TARGET - 0.98) / (0.995 - 0.98)  # between the 2- and 3-bit files: 2/3
    assert found["bits_per_weight"] == pytest.approx(2.0 + share)
    assert found["cosine, license text"] == pytest.approx(0.95 + share * 0.035)
    assert found["gap"] == pytest.approx(TARGET - found["cosine, license text"])


def test_at_target_is_none_without_a_bracket():
    assert at_target([point(4.0, 0.998, 0.996), point(3.0, 0.995, 0.985)]) is None


def test_write_results_makes_the_folder_and_writes_the_report(tmp_path, capsys):
    import json

    from bench.run_info import write_results

    path = tmp_path / "new" / "report.json"
    write_results({"curves": {"cerwu": {"at_target": None}}}, str(path))
    assert json.loads(path.read_text()) == {"curves": {"cerwu": {"at_target": None}}}
    assert capsys.readouterr().out == f"wrote {path}\n"
