"""issue 17 item 7: a ``multiprocessing.Pool`` with the fork start method hung forever once the
parent had decoded with threads: the child inherited the decoding thread pool without its
threads, and queued work that nothing ran. Run in a subprocess, under a timeout."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    import multiprocessing, sys
    import numpy as np
    import nncodec_rd

    path = sys.argv[1]

    def decode(name):
        with nncodec_rd.safe_open(path, threads=2) as f:
            return f.get_tensor(name).tobytes()

    if __name__ == "__main__":
        rng = np.random.default_rng(0)
        nncodec_rd.save_file({f"w{i}": rng.standard_normal((1024, 384)).astype(np.float32)
                              for i in range(2)}, path)
        parent = [decode(name) for name in ("w0", "w1")]  # starts the parent's thread pool
        with multiprocessing.get_context("fork").Pool(2) as pool:
            assert pool.map(decode, ["w0", "w1"]) == parent
        print("ok")
""")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork() on this platform")
def test_a_forked_pool_decodes_after_the_parent_did(tmp_path):
    script = tmp_path / "fork_pool.py"
    script.write_text(SCRIPT)
    environment = dict(os.environ, PYTHONPATH=str(ROOT))
    try:
        result = subprocess.run([sys.executable, str(script), str(tmp_path / "w.nrd")],
                                capture_output=True, text=True, timeout=120, env=environment)
    except subprocess.TimeoutExpired:
        pytest.fail("a forked multiprocessing.Pool child hung decoding after its parent decoded")
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
