"""``nncodec-rd bench``: the benchmarks that print their numbers."""

from __future__ import annotations


def command_bench(arguments) -> int:
    from .. import decode_speed

    return decode_speed.main(arguments=arguments)


def add_command(commands) -> None:
    """Add the ``bench`` command to the subparsers ``commands``."""
    bench = commands.add_parser("bench", help="run a benchmark",
                                description="Benchmarks that print their numbers (and JSON / PNG).")
    benchmarks = bench.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    decode_bench = benchmarks.add_parser(
        "decode", help="decode speed against constriction, zstd and NNCodec",
        description="Time decoding of a realistic 50 M-weight index tensor with nncodec-rd "
                    "(1 thread and all cores) and reference coders on the same symbols.",
        epilog="Example: nncodec-rd bench decode --weights 10000000 --json decode.json")
    from ..decode_speed import build_parser as build_bench_parser

    build_bench_parser(decode_bench)
    decode_bench.set_defaults(run=command_bench)
