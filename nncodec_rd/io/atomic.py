"""Write a file completely or not at all: a temporary file in the target's folder, renamed into
place only when complete, so that a failure never leaves a half-written file behind."""

from __future__ import annotations

import os
import tempfile


def _default_mode() -> int:
    # mkstemp creates files readable by their owner only; give the finished file the mode an
    # ordinary open() would (0o666 less the umask), as users expect of an output file.
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path, write) -> None:
    """Call ``write(stream)`` on a temporary file, then move it to ``path`` (synced first)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(prefix=".nrd-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, _default_mode())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
