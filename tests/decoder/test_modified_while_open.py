"""issue 17 item 8: a file truncated in place while open killed the reader with SIGBUS (its
memory map's pages past the new end). ``memory_map=False`` reads the file at open, so nothing
done to it later reaches the handle; a mapped handle compares the file's size before each decode
and raises ``NrdError`` (code ``io``). Each case runs in a subprocess: a SIGBUS would kill the
test runner."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    import os, sys
    import numpy as np
    import nncodec_rd

    path, memory_map = sys.argv[1], sys.argv[2] == "map"
    weights = np.random.default_rng(0).standard_normal((512, 256)).astype(np.float32)
    nncodec_rd.save_file({"w": weights}, path)
    with nncodec_rd.safe_open(path, memory_map=memory_map) as f:
        expected = nncodec_rd.load_file(path)["w"]
        os.truncate(path, 64)  # in place: the same inode, now 64 bytes
        try:
            assert np.array_equal(f.get_tensor("w"), expected)
            print("decoded")
        except nncodec_rd.NrdError as error:
            print(error.code.slug, error)
""")


@pytest.mark.skipif(not hasattr(signal, "SIGBUS"), reason="no SIGBUS on this platform")
@pytest.mark.parametrize("mode, expected", [("copy", "decoded"), ("map", "io")])
def test_a_file_truncated_while_open_does_not_kill_the_reader(tmp_path, mode, expected):
    script = tmp_path / "truncate.py"
    script.write_text(SCRIPT)
    result = subprocess.run([sys.executable, str(script), str(tmp_path / "w.nrd"), mode],
                            capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert result.returncode != -signal.SIGBUS, "the reader died of SIGBUS"
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == expected, result.stdout
    if mode == "map":
        assert "changed on disk while open" in result.stdout


def test_memory_map_false_reads_the_file_and_closes_it(tmp_path):
    import numpy as np

    import nncodec_rd
    from nncodec_rd.decoder.reader import NrdFile

    path = tmp_path / "w.nrd"
    weights = np.arange(64, dtype=np.float32).reshape(8, 8)
    nncodec_rd.save_file({"w": weights}, path, quantize="none")
    with NrdFile(path, memory_map=False) as handle:
        assert handle._file is None and handle.size_bytes == path.stat().st_size
        path.unlink()
        assert np.array_equal(handle.get_tensor("w"), weights)


def test_load_file_takes_memory_map_false(tmp_path):
    import numpy as np

    import nncodec_rd

    path = tmp_path / "w.nrd"
    weights = np.random.default_rng(1).standard_normal((16, 32)).astype(np.float32)
    nncodec_rd.save_file({"w": weights}, path)
    mapped = nncodec_rd.load_file(path)["w"]
    read = nncodec_rd.load_file(path, memory_map=False)["w"]
    assert np.array_equal(read, mapped) and np.allclose(read, weights, atol=0.1)
