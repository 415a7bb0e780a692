"""``nncodec-rd warmup``: compile the decoder's kernels ahead of the first decode."""

from __future__ import annotations

import sys
import time


def command_warmup(arguments) -> int:
    """Compile (or load from the cache) every decoder kernel, so that no later decode waits."""
    from ..decoder import dispatch

    start = time.perf_counter()
    timings = dispatch.warmup(progress=lambda name, seconds: print(
        f"  {name}: {seconds:.2f} s", file=sys.stderr))
    folder = dispatch.cache_folder()
    where = (f"cached in {folder}" if folder is not None else
             "NOT cached: no cache folder is writable, so every process compiles again; set "
             "NUMBA_CACHE_DIR to a writable folder and run nncodec-rd warmup again")
    print(f"{len(timings)} decoder kernels ready in {time.perf_counter() - start:.1f} s, {where}",
          file=sys.stderr)
    return 0


def add_command(commands) -> None:
    """Add the ``warmup`` command to the subparsers ``commands``."""
    warmup = commands.add_parser(
        "warmup", help="compile the decoder's kernels now, so that no decode waits for them",
        description="Compile every decoder kernel for this machine and store it in Numba's "
                    "cache (the package's __pycache__, or NUMBA_CACHE_DIR), so that the first "
                    "decode of later processes compiles nothing: for a Dockerfile step or an "
                    "installer. Without it each kernel compiles the first time a decode needs it.",
        epilog="Example (Dockerfile): RUN nncodec-rd warmup")
    warmup.set_defaults(run=command_warmup)
