"""Write a file completely or not at all: a temporary file in the target's folder, renamed into
place only when complete, so that a failure never leaves a half-written file behind.

What an output path may be (issue 17):

- a regular file, which is replaced (keeping its permission bits), or a path that does not exist;
- a symbolic link, which is written *through*: its final target is replaced, the link stays. This
  is what ``cp``, ``open(path, "w")`` and safetensors' ``save_file`` do, so a model folder of
  links into a store keeps working; replacing the link by a file would silently cut it.
- anything else (a device such as ``/dev/null``, a FIFO, a socket, a directory), also as the
  target of a link, is refused with :class:`OutputPathError` before anything is written: the
  atomic rename would replace the device node itself (as root, ``-o /dev/null`` would replace the
  system's ``/dev/null`` with a regular file).

The temporary file is named ``.nrd-<target name>.<random>.tmp`` in the target's folder. It is
removed on any exception, on SIGINT, and on SIGTERM and SIGHUP (when the write runs in the main
thread and the process left their default action in place: the handler removes the file and the
process then dies of the signal as before; a program with its own handlers keeps them). SIGKILL cannot be caught: after ``kill -9`` or a power loss such a file may remain; its
name says which output it was for, and it can be deleted.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import tempfile
import threading

from ..format.errors import ErrorCode, NrdError

#: Signals whose default action (terminate) is replaced, while a temporary file exists, by one
#: that removes it first.
CLEANUP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP")
                        if hasattr(signal, name))


class OutputPathError(NrdError, OSError):
    """An output cannot be written: the path is not a regular file, or the system refused
    (no space, no permission). Also an :class:`OSError`; the message names the user's path,
    never the temporary file."""

    code = ErrorCode.IO


def _default_mode() -> int:
    # mkstemp creates files readable by their owner only; give the finished file the mode an
    # ordinary open() would (0o666 less the umask), as users expect of an output file.
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"),
          (stat.S_ISSOCK, "a socket"))


def resolve_output_path(path) -> str:
    """The file an output to ``path`` replaces: ``path`` itself, or the final target of a
    symbolic link (written through, see the module's notes).

    Raises
    ------
    OutputPathError
        ``path`` (or its link target) exists and is not a regular file.
    """
    path = os.fspath(path)
    target = os.path.realpath(path)
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        return target
    except OSError as error:
        raise OutputPathError(f"{path}: cannot write: {error.strerror}") from None
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
        shown = path if target == os.path.abspath(path) else f"{path} (a link to {target})"
        raise OutputPathError(f"{shown} is {kind}, not a regular file; outputs are written to a "
                              "temporary file and renamed into place, so give the path of a "
                              "regular file")
    return target


@contextlib.contextmanager
def removed_on_termination(temporary):
    """While the block runs, SIGTERM/SIGHUP (if their action is the default, or another
    ``removed_on_termination`` of an outer block) first remove ``temporary`` (a path, a list of
    paths, or a callable returning either or None), then do what the outer block would have: in
    the end, terminate the process by the same signal, as it would have been."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    previous = {}
    for number in CLEANUP_SIGNALS:
        handler = signal.getsignal(number)
        if handler is signal.SIG_DFL or getattr(handler, "removes_temporaries", False):
            previous[number] = handler

    def terminate(number, frame):
        paths = temporary() if callable(temporary) else temporary
        if isinstance(paths, (str, bytes, os.PathLike)):
            paths = [paths]
        for path in paths or []:
            with contextlib.suppress(OSError):
                os.unlink(path)
        outer = previous.get(number, signal.SIG_DFL)
        if outer is not signal.SIG_DFL:
            outer(number, frame)  # an enclosing block's files go too
        signal.signal(number, signal.SIG_DFL)
        os.kill(os.getpid(), number)  # die of the signal, with its exit status

    terminate.removes_temporaries = True
    try:
        for number in previous:
            signal.signal(number, terminate)
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def atomic_write(path, write) -> None:
    """Call ``write(stream)`` on a temporary file, then move it to ``path`` (synced first).

    ``path`` may be a new file, a regular file (replaced; its permission bits are kept) or a
    symbolic link (its target is replaced). Nothing is left behind on failure.

    Raises
    ------
    OutputPathError
        ``path`` is not a regular file (see :func:`resolve_output_path`), or writing failed (the
        message names ``path``; the :class:`OSError` is its cause).
    """
    shown = os.fspath(path)
    target = resolve_output_path(path)
    folder = os.path.dirname(target)
    try:
        existing_mode = stat.S_IMODE(os.stat(target).st_mode)
    except OSError:
        existing_mode = None
    name = os.path.basename(target)[:80]
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".nrd-{name}.", suffix=".tmp", dir=folder)
    except OSError as error:
        raise OutputPathError(f"{shown}: cannot write: {error.strerror}") from error
    try:
        with removed_on_termination(temporary):
            with os.fdopen(handle, "wb") as stream:
                write(stream)
                stream.flush()
                os.fsync(stream.fileno())
            # An overwritten file keeps its permission bits (a private 0600 model stays private);
            # a new one gets what open() would give it.
            os.chmod(temporary, _default_mode() if existing_mode is None else existing_mode)
            os.replace(temporary, target)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        if isinstance(error, OSError) and not isinstance(error, NrdError):
            raise OutputPathError(f"{shown}: cannot write: {error.strerror or error}") from error
        raise
