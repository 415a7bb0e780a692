"""``nncodec-rd validate``: check files against every rule of the spec."""

from __future__ import annotations

import json

from .. import DEFAULT_MAX_OUTPUT_BYTES
from ..decoder.reader import DEFAULT_MAX_TRANSFORM_WORK
from .common import EXIT_ERROR, add_max_header_bytes, byte_count


def readable_version(path) -> str:
    """The earliest format version whose decoders read the (conforming) file ``path``: 1.0
    unless it sets a required-feature bit of a later minor version (spec §3.1, §3.3)."""
    from ..format.constants import FORMAT_MAJOR_VERSION, minor_version_for
    from ..format.container import parse_preamble

    with open(path, "rb") as stream:
        head = stream.read(32)
    preamble = parse_preamble(head, file_size=1 << 62)
    return f"{FORMAT_MAJOR_VERSION}.{minor_version_for(preamble.required_features)}"


def command_validate(arguments) -> int:
    from ..decoder.validation import validate_file

    failures = 0
    reports = []
    for path in arguments.files:
        errors = validate_file(path, max_output_bytes=arguments.max_output_bytes,
                               max_transform_work=arguments.max_transform_work,
                               max_header_bytes=arguments.max_header_bytes)
        failures += bool(errors)
        version = None if errors else readable_version(path)
        reports.append({"file": path, "conforms": not errors, "version": version, "errors": [
            {"code": int(e.code), "name": e.code.slug, "field": e.field, "offset": e.offset,
             "message": e.message} for e in errors]})
        if not arguments.json:
            # The version a conforming file needs of its decoder: 1.0 unless it uses the
            # trellis grid of 1.1.
            print(f"{path}: {'conforms to .nrd ' + version if not errors else 'does NOT conform'}"
                  + (f" ({len(errors)} faults)" if len(errors) > 1 else ""))
            for error in errors:
                print(f"  {error}")
    if arguments.json:
        print(json.dumps(reports, indent=2))
    return EXIT_ERROR if failures else 0


def add_command(commands) -> None:
    """Add the ``validate`` command to the subparsers ``commands``."""
    validate = commands.add_parser(
        "validate", help="check files against every rule of the spec",
        description="Check .nrd files against the specification and decode them fully; exits "
                    "non-zero if any file does not conform.",
        epilog="Example: nncodec-rd validate model.nrd other.nrd --json")
    validate.add_argument("files", nargs="+")
    validate.add_argument("--json", action="store_true", help="machine-readable report")
    validate.add_argument("--max-output-bytes", type=byte_count,
                          default=DEFAULT_MAX_OUTPUT_BYTES, metavar="BYTES",
                          help="largest array decoded while checking, as for decode (default: "
                               "64G or this machine's memory; 'none' for no bound); a tensor beyond it is reported as "
                               "output_too_large")
    validate.add_argument("--max-transform-work", type=byte_count,
                          default=DEFAULT_MAX_TRANSFORM_WORK, metavar="COUNT",
                          help="largest transform product computed while checking, in "
                               "multiply-adds, as for decode")
    add_max_header_bytes(validate)
    validate.set_defaults(run=command_validate)
