"""Outputs are written completely or not at all, to regular files only (issue 17, item 11): a
device or FIFO is refused, a symlink is written through to its target, SIGTERM leaves no
temporary file, errors name the user's path, an overwritten file keeps its mode, and ``info``
never prints a name's terminal escapes."""

import errno
import os
import signal
import stat
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from nncodec_rd.cli import main
from nncodec_rd.encoder.writer import NrdWriter
from nncodec_rd.io.tensorio import write_safetensors


@pytest.fixture
def source(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    path = folder / "w.safetensors"
    write_safetensors(path, {"w": np.linspace(-1, 1, 2048, dtype=np.float32).reshape(32, 64)})
    return path


def _encode(capsys, source, output):
    status = main(["encode", str(source), "-o", str(output)])
    return status, capsys.readouterr().err


def _one_error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("nncodec-rd: error: "), err
    assert ".nrd-" not in lines[0], "the message names the temporary file"
    return lines[0]


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".nrd-"))


def test_a_fifo_output_is_refused_and_kept(tmp_path, source, capsys):
    fifo = tmp_path / "out.nrd"
    os.mkfifo(fifo)
    status, err = _encode(capsys, source, fifo)
    line = _one_error_line(err)
    assert status == 1 and str(fifo) in line and "regular file" in line
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and _leftovers(tmp_path) == []


def test_a_symlink_to_a_device_is_refused_and_the_device_kept(tmp_path, source, capsys):
    link = tmp_path / "out.nrd"
    link.symlink_to(os.devnull)
    status, err = _encode(capsys, source, link)
    line = _one_error_line(err)
    assert status == 1 and "regular file" in line
    assert os.path.islink(link) and stat.S_ISCHR(os.stat(os.devnull).st_mode)
    assert _leftovers(tmp_path) == []


def test_a_directory_output_is_refused_naming_it(tmp_path, source, capsys):
    folder = tmp_path / "out.nrd"
    folder.mkdir()
    status, err = _encode(capsys, source, folder)
    line = _one_error_line(err)
    assert status == 1 and str(folder) in line and folder.is_dir()
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("existing", [True, False])
def test_a_symlink_is_written_through_to_its_target(tmp_path, source, capsys, existing):
    store = tmp_path / "store"
    store.mkdir()
    target = store / "model.nrd"
    if existing:
        target.write_bytes(b"old")
    link = tmp_path / "model.nrd"
    link.symlink_to(target)
    status, err = _encode(capsys, source, link)
    assert status == 0, err
    assert os.path.islink(link) and os.readlink(link) == str(target)
    assert target.read_bytes()[:4] == b"\x89NRD"
    assert _leftovers(tmp_path) == [] and _leftovers(store) == []


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o664])
def test_an_overwritten_file_keeps_its_mode(tmp_path, source, capsys, mode):
    output = tmp_path / "out.nrd"
    output.write_bytes(b"old")
    os.chmod(output, mode)
    umask = os.umask(0o022)
    try:
        status, err = _encode(capsys, source, output)
    finally:
        os.umask(umask)
    assert status == 0, err
    assert stat.S_IMODE(os.stat(output).st_mode) == mode
    assert output.read_bytes()[:4] == b"\x89NRD"


def test_a_full_disk_is_one_line_naming_the_output(tmp_path, source, capsys, monkeypatch):
    from nncodec_rd.io import atomic

    def full(descriptor):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic.os, "fsync", full)
    output = tmp_path / "out.nrd"
    status, err = _encode(capsys, source, output)
    line = _one_error_line(err)
    assert status == 1 and str(output) in line and "No space left on device" in line
    assert not output.exists() and _leftovers(tmp_path) == []


def test_temporary_files_name_their_target(tmp_path):
    from nncodec_rd.io.atomic import atomic_write

    seen = []
    atomic_write(tmp_path / "model.nrd", lambda stream: seen.extend(_leftovers(tmp_path)))
    assert len(seen) == 1 and seen[0].startswith(".nrd-model.nrd.") and seen[0].endswith(".tmp")


@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGHUP])
def test_a_terminated_write_leaves_no_temporary_file(tmp_path, signal_number):
    # The child starts with the signal's default action, as a process in a terminal does
    # (under nohup, SIGHUP is inherited as ignored, and nothing is to be cleaned up then).
    program = textwrap.dedent(f"""
        import signal, sys, time
        signal.signal({int(signal_number)}, signal.SIG_DFL)
        from nncodec_rd.io.atomic import atomic_write

        def write(stream):
            stream.write(b"x" * 100000)
            stream.flush()
            print("ready", flush=True)
            time.sleep(120)

        atomic_write({str(tmp_path / "out.nrd")!r}, write)
    """)
    child = subprocess.Popen([sys.executable, "-c", program], stdout=subprocess.PIPE, text=True,
                             cwd=os.getcwd())
    try:
        assert child.stdout.readline().strip() == "ready"
        assert len(_leftovers(tmp_path)) == 1
        child.send_signal(signal_number)
        assert child.wait(timeout=60) == -signal_number  # still dies of the signal
    finally:
        child.kill()
        child.wait()
    assert list(tmp_path.iterdir()) == []


def test_info_escapes_terminal_control_characters(tmp_path, capsys):
    path = tmp_path / "evil.nrd"
    with NrdWriter(path, metadata={"title\x1b]0;owned\x07": "red\x1b[31m\u202etxt", "n": 1}) as w:
        w.add_raw("clear\x1b[2Jscreen", np.zeros(2, np.float32),
                  metadata={"k\x1b": "v\x9b"})
        w.add_raw("bell\x07\r\n", np.zeros(1, np.float32))
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    for character in ("\x1b", "\x07", "\r", "\x9b", "\u202e"):
        assert character not in out
    assert "clear\\x1b[2Jscreen" in out and "title\\x1b]0;owned\\x07" in out
    assert "bell\\x07\\r\\n" in out and "red\\x1b[31m\\u202etxt" in out
    assert len(out.splitlines()) == 7  # header, 2 metadata, column names, 2 tensors, total


def test_an_os_error_without_a_file_name_is_one_clean_line(tmp_path, capsys, monkeypatch):
    """No more ``error: : No space left on device``: a bare OSError prints its reason alone."""
    import nncodec_rd.cli.info as info_command

    def full(arguments):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(info_command, "command_info", full)
    assert main(["info", str(tmp_path / "x.nrd")]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert line == f"nncodec-rd: error: {os.strerror(errno.ENOSPC)}"


def test_sigterm_removes_the_temporaries_of_nested_blocks(tmp_path):
    # An outer block (a search's trial files) around an inner one (an encode's spool): both go.
    import signal
    import subprocess
    import sys
    import textwrap

    outer, inner, ready = tmp_path / "outer", tmp_path / "inner", tmp_path / "ready"
    script = textwrap.dedent(f"""
        import os, time
        from nncodec_rd.io.atomic import removed_on_termination
        for path in ({str(outer)!r}, {str(inner)!r}):
            open(path, "w").close()
        with removed_on_termination(lambda: [{str(outer)!r}]):
            with removed_on_termination({str(inner)!r}):
                open({str(ready)!r}, "w").close()
                time.sleep(60)
    """)
    process = subprocess.Popen([sys.executable, "-c", script])
    for _ in range(300):
        if ready.exists():
            break
        import time
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == -signal.SIGTERM
    assert not outer.exists() and not inner.exists()
