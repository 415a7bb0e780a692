"""The ``nncodec-rd`` command: a thin layer over the API.

Every error a user can cause is printed as one line and the command exits non-zero; outputs are
written atomically, so a failure leaves no partial file.
"""

from __future__ import annotations

import argparse
import os
import sys

from .. import FORMAT_VERSION, __version__
from ..format.errors import NrdError
from . import bench, conformance, decode, demo, encode, info, validate, warmup
from .common import EXIT_ERROR


def build_parser() -> argparse.ArgumentParser:
    """The parser of the ``nncodec-rd`` command: each command's module adds its own."""
    parser = argparse.ArgumentParser(
        prog="nncodec-rd",
        description="Compress neural-network weights into .nrd files, inspect and decode them.",
        epilog="Examples:\n  nncodec-rd encode model.safetensors -o model.nrd\n"
               "  nncodec-rd info model.nrd\n  nncodec-rd decode model.nrd -o decoded.safetensors",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version",
                        version=f"nncodec-rd {__version__} (reads and writes .nrd format "
                                f"{FORMAT_VERSION}; reads 1.x)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in (info, decode, encode, validate, conformance, bench, warmup, demo):
        command.add_command(commands)
    return parser


def _log_to_stderr() -> None:
    """The library's messages (a kernel about to compile) as ``nncodec-rd: ...`` lines on
    stderr, unless the logger already has a handler."""
    import logging

    class StderrHandler(logging.Handler):
        def emit(self, record):  # the stderr of the moment (tests replace it)
            print(self.format(record), file=sys.stderr)

    logger = logging.getLogger("nncodec_rd")
    if not logger.handlers:
        handler = StderrHandler()
        handler.setFormatter(logging.Formatter("nncodec-rd: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def main(argv=None) -> int:
    """Entry point of the ``nncodec-rd`` console script."""
    parser = build_parser()
    arguments = parser.parse_args(argv)
    _log_to_stderr()
    check = getattr(arguments, "check", None)
    if check is not None:
        check(arguments)  # usage errors: argparse's message and exit status 2
    try:
        return arguments.run(arguments)
    except BrokenPipeError:
        # `nncodec-rd info big.nrd | head`: the reader left; not an error of ours. Point stdout
        # at /dev/null so that the interpreter's final flush does not complain either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except NrdError as error:
        print(f"nncodec-rd: error: {error}", file=sys.stderr)
    except KeyError as error:
        print(f"nncodec-rd: error: {error.args[0]}", file=sys.stderr)
    except OSError as error:
        # Name the file when the error has one; a bare OSError (a write on a full disk) has
        # none, and printing ": No space left on device" would look like a lost path.
        reason = error.strerror or str(error) or type(error).__name__
        where = f"{error.filename}: " if error.filename else ""
        print(f"nncodec-rd: error: {where}{reason}", file=sys.stderr)
    except MemoryError:
        # Inputs are checked before anything is allocated for them; what is left is a model or
        # file genuinely larger than this machine's memory: still one line, not a traceback.
        print("nncodec-rd: error: out of memory", file=sys.stderr)
    except KeyboardInterrupt:
        print("nncodec-rd: interrupted", file=sys.stderr)
    return EXIT_ERROR
