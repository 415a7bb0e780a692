"""``nncodec-rd demo``: compress the bundled MiniLM model end to end."""

from __future__ import annotations


def command_demo(arguments) -> int:
    from ..demo import run_demo

    return run_demo(arguments.output)


def add_command(commands) -> None:
    """Add the ``demo`` command to the subparsers ``commands``."""
    demo = commands.add_parser("demo", help="compress the bundled MiniLM model end to end",
                               description="Compress a real model available offline, decode it and "
                                           "report size and fidelity.",
                               epilog="Example: nncodec-rd demo --output out/demo")
    demo.add_argument("--output", default="out/demo", help="folder for the .nrd file")
    demo.set_defaults(run=command_demo)
