"""The ``nncodec-rd`` command: a thin layer over the API.

Every error a user can cause is printed as one line and the command exits non-zero; outputs are
written atomically, so a failure leaves no partial file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from . import FORMAT_VERSION, __version__
from .format.errors import NrdError

EXIT_ERROR = 1


def _human_bytes(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.2f} {unit}"
        size /= 1024
    return f"{size:.2f} GiB"


def _original_bytes(info) -> int:
    sizes = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8, "int8": 1, "uint8": 1,
             "int16": 2, "int32": 4, "int64": 8, "bool": 1, "uint16": 2, "uint32": 4, "uint64": 8}
    return info.element_count * sizes[info.dtype]


def command_info(arguments) -> int:
    from .api import safe_open

    with safe_open(arguments.file) as handle:
        infos = [handle.info(name) for name in handle.keys()]
        if arguments.json:
            print(json.dumps({
                "file": arguments.file, "format_version": handle.format_version,
                "size_bytes": handle.size_bytes, "metadata": _jsonable(handle.metadata()),
                "tensors": [{"name": i.name, "shape": list(i.shape), "dtype": i.dtype,
                             "coding": i.coding, "grid": i.grid, "payload_bytes": i.payload_bytes,
                             "bits_per_weight": i.bits_per_weight, "chunk_count": i.chunk_count,
                             "context_model": i.context_model,
                             "metadata": _jsonable(i.metadata)} for i in infos],
            }, indent=2))
            return 0
        print(f"{arguments.file}: .nrd {handle.format_version}, {_human_bytes(handle.size_bytes)}, "
              f"{len(infos)} tensors")
        for key, value in handle.metadata().items():
            print(f"  {key}: {value}")
        name_width = min(60, max([len(i.name) for i in infos] + [4]))
        print(f"{'name':<{name_width}}  {'shape':<16} {'dtype':<8} {'grid':<24} {'bytes':>10} "
              f"{'bits/w':>7} {'ratio':>6}")
        total_payload = total_original = total_weights = 0
        for info in infos:
            original = _original_bytes(info)
            ratio = original / info.payload_bytes if info.payload_bytes else float("inf")
            print(f"{info.name[:name_width]:<{name_width}}  {str(list(info.shape)):<16} "
                  f"{info.dtype:<8} {info.grid[:24]:<24} {info.payload_bytes:>10} "
                  f"{info.bits_per_weight:>7.3f} {ratio:>6.1f}")
            total_payload += info.payload_bytes
            total_original += original
            total_weights += info.element_count
        if total_weights:
            print(f"total: {total_weights} elements, {_human_bytes(handle.size_bytes)} file, "
                  f"{8 * handle.size_bytes / total_weights:.3f} bits per element, "
                  f"{total_original / max(handle.size_bytes, 1):.1f}x smaller than the original")
    return 0


def _jsonable(metadata: dict) -> dict:
    return {k: (v.hex() if isinstance(v, bytes) else v) for k, v in metadata.items()}


def command_decode(arguments) -> int:
    from .api import safe_open
    from .io.tensorio import write_tensors_streaming

    start = time.perf_counter()
    with safe_open(arguments.file, threads=arguments.threads) as handle:
        infos = [handle.info(name) for name in handle.keys()]
        metadata = {k: v for k, v in handle.metadata().items() if not isinstance(v, bytes)}
        # One tensor at a time: decoded, written, freed.
        write_tensors_streaming(arguments.output, [(i.name, i.dtype, i.shape) for i in infos],
                                handle.get_tensor, metadata)
    count = sum(i.element_count for i in infos)
    print(f"decoded {len(infos)} tensors ({count} elements) to {arguments.output} in "
          f"{time.perf_counter() - start:.2f} s", file=sys.stderr)
    return 0


def _parse_metadata(pairs) -> dict:
    metadata = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise NrdError(f"--metadata expects KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        metadata[key] = value
    return metadata


def command_encode(arguments) -> int:
    from .api import save_file
    from .format.grids import EntropySettings
    from .io.tensorio import read_tensors

    start = time.perf_counter()
    tensors, source_metadata = read_tensors(arguments.input)
    metadata = {k: str(v) for k, v in source_metadata.items()}
    metadata.update({"encoder": f"nncodec-rd {__version__}", "encoder_settings": json.dumps({
        "method": "rtn", "step": arguments.step, "relative_step": arguments.relative_step,
        "bins": arguments.bins, "per_row": arguments.per_row,
        "precision_bits": arguments.precision_bits, "lane_count": arguments.lanes,
        "context_model": arguments.context}),
        "source": os.path.basename(arguments.input)})
    metadata.update(_parse_metadata(arguments.metadata))
    settings = EntropySettings(precision_bits=arguments.precision_bits, lane_count=arguments.lanes,
                               context_model=arguments.context)
    size = save_file(tensors, arguments.output, metadata=metadata, quantize=arguments.quantize,
                     step=arguments.step, relative_step=arguments.relative_step,
                     bins=arguments.bins, per_row=arguments.per_row, settings=settings)
    original = sum(t.nbytes for t in tensors.values())
    count = sum(t.size for t in tensors.values())
    print(f"wrote {arguments.output}: {size} bytes ({8 * size / max(count, 1):.3f} bits per element, "
          f"{original / max(size, 1):.1f}x smaller than {original} bytes) in "
          f"{time.perf_counter() - start:.2f} s", file=sys.stderr)
    return 0


def command_validate(arguments) -> int:
    from .decoder.reader import NrdFile
    from .format.container import read_container

    failures = 0
    reports = []
    for path in arguments.files:
        errors = []
        try:
            with open(path, "rb") as stream:
                data = stream.read()
            _, _, collected = read_container(data, collect=True)
            errors.extend(collected)
            if not errors:
                with NrdFile(path) as handle:
                    handle.verify()
        except NrdError as error:
            errors.append(error)
        except OSError as error:
            errors.append(NrdError(f"cannot read: {error.strerror}"))
        failures += bool(errors)
        reports.append({"file": path, "conforms": not errors, "errors": [
            {"code": int(e.code), "name": e.code.slug, "field": e.field, "offset": e.offset,
             "message": e.message} for e in errors]})
        if not arguments.json:
            print(f"{path}: {'conforms to .nrd ' + FORMAT_VERSION if not errors else 'does NOT conform'}")
            for error in errors:
                print(f"  {error}")
    if arguments.json:
        print(json.dumps(reports, indent=2))
    return EXIT_ERROR if failures else 0


def command_demo(arguments) -> int:
    from .demo import run_demo

    return run_demo(arguments.output)


def command_bench(arguments) -> int:
    from .benchmarks import decode_speed

    return decode_speed.main(arguments=arguments)


def build_parser() -> argparse.ArgumentParser:
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

    info = commands.add_parser("info", help="list the tensors of an .nrd file",
                               description="Show the tensors of an .nrd file: shape, dtype, grid, "
                                           "payload bytes, bits per weight, compression ratio.",
                               epilog="Example: nncodec-rd info model.nrd --json")
    info.add_argument("file")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(run=command_info)

    decode = commands.add_parser("decode", help="decode an .nrd file to .safetensors or .npz",
                                 description="Decode every tensor of an .nrd file.",
                                 epilog="Example: nncodec-rd decode model.nrd -o model.safetensors")
    decode.add_argument("file")
    decode.add_argument("-o", "--output", required=True, help="output .safetensors or .npz")
    decode.add_argument("--threads", type=int, default=None, help="decoding threads (default: all)")
    decode.set_defaults(run=command_decode)

    encode = commands.add_parser(
        "encode", help="compress a .safetensors, .npz or PyTorch state dict",
        description="Quantize floating-point tensors by rounding to a uniform grid (data-free) and "
                    "entropy-code them; other tensors are stored raw.",
        epilog="Examples:\n  nncodec-rd encode model.safetensors -o model.nrd\n"
               "  nncodec-rd encode weights.pt -o weights.nrd --bins 63 --per-row",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    encode.add_argument("input")
    encode.add_argument("-o", "--output", required=True, help="output .nrd file")
    grid = encode.add_mutually_exclusive_group()
    grid.add_argument("--step", type=float, help="absolute grid step")
    grid.add_argument("--relative-step", type=float,
                      help="grid step as a fraction of each tensor's RMS (default 1/16)")
    grid.add_argument("--bins", type=int, help="odd number of grid points spanning the largest weight")
    encode.add_argument("--per-row", action="store_true", help="one step per row (output channel)")
    encode.add_argument("--quantize", choices=("auto", "all", "none"), default="auto",
                        help="which floating tensors to quantize (auto: >= 1024 elements)")
    encode.add_argument("--precision-bits", type=int, default=14, help="rANS probability precision")
    encode.add_argument("--lanes", type=int, default=4, help="interleaved rANS lanes per chunk")
    encode.add_argument("--context", choices=("auto", "iid", "previous"), default="auto",
                        help="context model of the entropy coder")
    encode.add_argument("--metadata", action="append", metavar="KEY=VALUE",
                        help="file metadata entry (repeatable)")
    encode.set_defaults(run=command_encode)

    validate = commands.add_parser(
        "validate", help="check files against every rule of the spec",
        description="Check .nrd files against the specification and decode them fully; exits "
                    "non-zero if any file does not conform.",
        epilog="Example: nncodec-rd validate model.nrd other.nrd --json")
    validate.add_argument("files", nargs="+")
    validate.add_argument("--json", action="store_true", help="machine-readable report")
    validate.set_defaults(run=command_validate)

    bench = commands.add_parser("bench", help="run a benchmark",
                                description="Benchmarks that print their numbers (and JSON / PNG).")
    benchmarks = bench.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    decode_bench = benchmarks.add_parser(
        "decode", help="decode speed against constriction, zstd and NNCodec",
        description="Time decoding of a realistic 50 M-weight index tensor with nncodec-rd "
                    "(1 thread and all cores) and reference coders on the same symbols.",
        epilog="Example: nncodec-rd bench decode --weights 10000000 --json decode.json")
    from .benchmarks.decode_speed import build_parser as build_bench_parser

    build_bench_parser(decode_bench)
    decode_bench.set_defaults(run=command_bench)

    demo = commands.add_parser("demo", help="compress the bundled MiniLM model end to end",
                               description="Compress a real model available offline, decode it and "
                                           "report size and fidelity.",
                               epilog="Example: nncodec-rd demo --output out/demo")
    demo.add_argument("--output", default="out/demo", help="folder for the .nrd file")
    demo.set_defaults(run=command_demo)
    return parser


def main(argv=None) -> int:
    """Entry point of the ``nncodec-rd`` console script."""
    parser = build_parser()
    arguments = parser.parse_args(argv)
    try:
        return arguments.run(arguments)
    except NrdError as error:
        print(f"nncodec-rd: error: {error}", file=sys.stderr)
    except KeyError as error:
        print(f"nncodec-rd: error: {error.args[0]}", file=sys.stderr)
    except OSError as error:
        print(f"nncodec-rd: error: {error.filename or ''}: {error.strerror}", file=sys.stderr)
    except KeyboardInterrupt:
        print("nncodec-rd: interrupted", file=sys.stderr)
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
