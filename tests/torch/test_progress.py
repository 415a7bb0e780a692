"""Progress of long encodes (nncodec_rd.torch.progress): plain lines in logs, a bar on a
terminal, a caller's callable."""

import io

import pytest

from nncodec_rd.torch.progress import Progress


def test_logs_get_the_first_and_last_step_and_throttled_lines_between(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    progress = Progress(True, terminal=False, plain_line_seconds=3600)
    for done in range(1, 6):
        progress.step("quantize", done, 5, f"layer{done}")
    lines = stream.getvalue().splitlines()
    assert [line.split(" (")[0] for line in lines] == ["quantize 1/5 layer1", "quantize 5/5 layer5"]
    assert "elapsed" in lines[0] and "\r" not in stream.getvalue()


def test_every_step_is_a_line_when_the_interval_is_zero_and_eta_is_the_callers(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    progress = Progress(True, terminal=False, plain_line_seconds=0)
    progress.step("quantize", 1, 3, "a", seconds_left=125)
    progress.step("quantize", 2, 3, "b")
    progress("done", final=True)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3 and "about 2 min 05 s left" in lines[0] and lines[2] == "done"


def test_a_terminal_gets_a_tqdm_bar(monkeypatch):
    pytest.importorskip("tqdm")
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    progress = Progress(True, terminal=True)
    for done in range(1, 4):
        progress.step("quantize", done, 3, "layer")
    text = stream.getvalue()
    assert "quantize" in text and "3/3" in text and "100%" in text


def test_silent_and_callable():
    Progress(False).step("x", 1, 2)  # nothing, no error
    lines = []
    Progress(lines.append).step("calibration batch", 2, None)
    assert lines == ["calibration batch 2"]


def test_a_milestone_reaches_the_log_whenever_it_comes(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    progress = Progress(True, terminal=False, plain_line_seconds=3600)
    for done in range(1, 6):
        progress.step("quantize", done, 9, f"block {1 + (done - 1) // 2}", milestone=done % 2 == 1)
    assert [line.split(" (")[0] for line in stream.getvalue().splitlines()] == [
        "quantize 1/9 block 1", "quantize 3/9 block 2", "quantize 5/9 block 3"]
