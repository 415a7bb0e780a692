"""``nncodec-rd info``: the tensors of an .nrd file, as a table or JSON."""

from __future__ import annotations

import json

from .common import add_max_header_bytes, human_bytes, jsonable, printable


def _original_bytes(info) -> int:
    sizes = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8, "int8": 1, "uint8": 1,
             "int16": 2, "int32": 4, "int64": 8, "bool": 1, "uint16": 2, "uint32": 4, "uint64": 8}
    return info.element_count * sizes[info.dtype]


def command_info(arguments) -> int:
    from ..api import safe_open

    with safe_open(arguments.file, max_header_bytes=arguments.max_header_bytes) as handle:
        infos = [handle.info(name) for name in handle.keys()]
        if arguments.json:
            print(json.dumps({
                "file": arguments.file, "format_version": handle.format_version,
                "size_bytes": handle.size_bytes, "metadata": jsonable(handle.metadata()),
                "tensors": [{"name": i.name, "shape": list(i.shape), "dtype": i.dtype,
                             "coding": i.coding, "grid": i.grid, "payload_bytes": i.payload_bytes,
                             "bits_per_weight": i.bits_per_weight, "chunk_count": i.chunk_count,
                             "context_model": i.context_model,
                             "precision_bits": i.precision_bits,
                             "metadata": jsonable(i.metadata)} for i in infos],
            }, indent=2))
            return 0
        print(f"{printable(arguments.file)}: .nrd {handle.format_version}, "
              f"{human_bytes(handle.size_bytes)}, {len(infos)} tensor"
              f"{'' if len(infos) == 1 else 's'}")
        for key, value in handle.metadata().items():
            print(f"  {printable(key)}: {printable(value)}")
        names = {info.name: printable(info.name) for info in infos}
        name_width = min(60, max([len(name) for name in names.values()] + [4]))
        print(f"{'name':<{name_width}}  {'shape':<16} {'dtype':<8} {'grid':<24} {'bytes':>10} "
              f"{'bits/w':>7} {'ratio':>6}")
        total_payload = total_original = total_weights = 0
        for info in infos:
            original = _original_bytes(info)
            ratio = original / info.payload_bytes if info.payload_bytes else float("inf")
            print(f"{names[info.name][:name_width]:<{name_width}}  {str(list(info.shape)):<16} "
                  f"{info.dtype:<8} {printable(info.grid)[:24]:<24} {info.payload_bytes:>10} "
                  f"{info.bits_per_weight:>7.3f} {ratio:>6.1f}")
            total_payload += info.payload_bytes
            total_original += original
            total_weights += info.element_count
        if total_weights:
            ratio = total_original / max(handle.size_bytes, 1)
            comparison = (f"{ratio:.1f}x smaller than" if ratio >= 1 else
                          f"{1 / ratio:.1f}x larger than") if ratio else "larger than"
            print(f"total: {total_weights} elements, {human_bytes(handle.size_bytes)} file, "
                  f"{8 * handle.size_bytes / total_weights:.3f} bits per element, "
                  f"{comparison} the uncompressed tensors")
    return 0



def add_command(commands) -> None:
    """Add the ``info`` command to the subparsers ``commands``."""
    info = commands.add_parser("info", help="list the tensors of an .nrd file",
                               description="Show the tensors of an .nrd file: shape, dtype, grid, "
                                           "payload bytes, bits per weight, compression ratio.",
                               epilog="Example: nncodec-rd info model.nrd --json")
    info.add_argument("file")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    add_max_header_bytes(info)
    info.set_defaults(run=command_info)
