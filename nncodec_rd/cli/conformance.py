"""``nncodec-rd conformance run``: judge a decoder against the frozen test vectors."""

from __future__ import annotations

import argparse
import json
import re
import sys

from .common import EXIT_ERROR


def command_conformance_run(arguments) -> int:
    # The runner and the frozen files ship as nncodec_rd.conformance (the repository's
    # conformance/ folder); only this command uses them, so the library itself never imports it.
    from nncodec_rd.conformance.runner import run_conformance

    def progress(result):
        if not arguments.json and not arguments.quiet:
            print(f"{'PASS' if result.passed else 'FAIL'} {result.kind:7} {result.name}",
                  file=sys.stderr)

    try:
        report = run_conformance(arguments.decoder, output_format=arguments.output_format,
                                 timeout_s=arguments.timeout, jobs=arguments.jobs,
                                 error_pattern=arguments.error_pattern, select=arguments.select,
                                 format_version=arguments.format_version,
                                 progress=progress)
    except (ValueError, re.error) as error:
        print(f"nncodec-rd: error: {error}", file=sys.stderr)
        return EXIT_ERROR
    if arguments.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(report.render(verbose=arguments.verbose))
    return 0 if report.passed else EXIT_ERROR


CONFORMANCE_EPILOG = """\
For each valid vector the decoder must exit 0 and write every tensor to {output} (.npz with one
.npy member per tensor, bfloat16 as uint16 bits, or .safetensors) with exactly the bytes of the
manifest; for each invalid file it must exit non-zero and write nothing.

Examples:
  nncodec-rd conformance run --decoder 'nncodec-rd decode {input} -o {output}'
  nncodec-rd conformance run \\
      --decoder 'python -m nncodec_rd.conformance.spec_literal_decoder {input} {output}' \\
      --error-pattern 'error (\\d+)'
  nncodec-rd conformance run --decoder './mydecoder {input} {output}' --output-format safetensors \\
      --select 'escape|transform' --json
"""


def add_command(commands) -> None:
    """Add the ``conformance`` command to the subparsers ``commands``."""
    conformance = commands.add_parser(
        "conformance", help="judge a decoder against the frozen test vectors",
        description="Conformance tools for decoders of the .nrd format (files: nncodec-rd "
                    "validate).",
        epilog="Example: nncodec-rd conformance run --decoder './mydecoder {input} {output}'")
    conformance_commands = conformance.add_subparsers(dest="conformance_command", required=True,
                                                      metavar="ACTION")
    run = conformance_commands.add_parser(
        "run", help="run a decoder over every vector and invalid file and report per spec section",
        description="Run a decoder command over the frozen valid vectors and invalid files of "
                    "conformance/ and judge its outputs against the manifests; exits non-zero "
                    "if it does not conform.",
        epilog=CONFORMANCE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("--decoder", required=True, metavar="COMMAND",
                     help="shell command with {input} and {output} placeholders")
    run.add_argument("--output-format", choices=("npz", "safetensors"), default="npz",
                     help="suffix of {output} (default npz)")
    run.add_argument("--error-pattern", metavar="REGEX",
                     help="regular expression whose first group captures the error code or name "
                          "on the decoder's stderr; invalid files must then report the right one")
    run.add_argument("--select", metavar="REGEX", help="only files whose name matches")
    run.add_argument("--format-version", choices=("1.0", "1.1"), default="1.1",
                     help="the format version the decoder implements (default 1.1); with 1.0 "
                          "every file that needs a feature of 1.1 must be refused with "
                          "unsupported_feature")
    run.add_argument("--timeout", type=float, default=60.0, help="seconds per run (default 60)")
    run.add_argument("--jobs", type=int, default=None, help="runs at once (default: CPU count)")
    run.add_argument("--json", action="store_true", help="machine-readable report")
    run.add_argument("--verbose", action="store_true", help="list passing files too")
    run.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    run.set_defaults(run=command_conformance_run)
