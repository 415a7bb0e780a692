"""``nncodec-rd decode``: an .nrd file to .safetensors, .npz or a model folder."""

from __future__ import annotations

import os
import sys
import time

from .. import DEFAULT_MAX_OUTPUT_BYTES
from ..decoder.reader import DEFAULT_MAX_TRANSFORM_WORK
from .common import add_max_header_bytes, byte_count


def command_decode(arguments) -> int:
    from ..api import safe_open
    from ..io.tensorio import write_tensors_streaming

    start = time.perf_counter()
    if _is_folder_output(arguments.output):
        return _decode_folder(arguments, start)
    with safe_open(arguments.file, threads=arguments.threads,
                   max_output_bytes=arguments.max_output_bytes,
                   max_transform_work=arguments.max_transform_work,
                   max_header_bytes=arguments.max_header_bytes) as handle:
        infos = [handle.info(name) for name in handle.keys()]
        metadata = {k: v for k, v in handle.metadata().items() if not isinstance(v, bytes)}
        if arguments.output.lower().endswith(".safetensors"):
            metadata.setdefault("format", "pt")  # transformers refuses a file without it
        dropped = [k for k, v in handle.metadata().items() if isinstance(v, bytes)]
        if arguments.output.lower().endswith(".npz"):
            dropped = list(handle.metadata())
        dropped += [f"{i.name}: {k}" for i in infos for k in i.metadata]
        # One tensor at a time: decoded, written, freed.
        write_tensors_streaming(arguments.output, [(i.name, i.dtype, i.shape) for i in infos],
                                handle.get_tensor, metadata)
    count = sum(i.element_count for i in infos)
    print(f"decoded {len(infos)} tensor{'' if len(infos) == 1 else 's'} ({count} elements) to "
          f"{arguments.output} in {time.perf_counter() - start:.2f} s", file=sys.stderr)
    if dropped:
        # The output formats carry no such metadata (.npz none, safetensors only file-level
        # text): say so rather than lose it silently.
        print(f"note: metadata not carried over to {arguments.output}: "
              f"{', '.join(repr(d) for d in dropped[:8])}{' ...' if len(dropped) > 8 else ''}"
              f" (see it with nncodec-rd info --json)", file=sys.stderr)
    return 0


def _is_folder_output(output: str) -> bool:
    """``-o`` names a folder: it ends with a slash, is an existing folder, or has no suffix."""
    return (output.endswith(("/", os.sep)) or os.path.isdir(output)
            or not os.path.splitext(output)[1])


def _decode_folder(arguments, start: float) -> int:
    """A model folder: the archived files of a Hugging Face folder, and the tensors as
    safetensors (sharded like the original when it was)."""
    from ..api import safe_open
    from ..io.hf_folder import FILE_PREFIX, write_folder

    with safe_open(arguments.file, threads=arguments.threads,
                   max_output_bytes=arguments.max_output_bytes,
                   max_transform_work=arguments.max_transform_work,
                   max_header_bytes=arguments.max_header_bytes) as handle:
        archived = [k for k in handle.metadata() if k.startswith(FILE_PREFIX)]
        written = write_folder(handle, arguments.output)
        count = sum(handle.info(name).element_count for name in handle.keys())
    print(f"decoded {len(handle.keys())} tensors ({count} elements) into {arguments.output}: "
          f"{', '.join(written[:6])}{' ...' if len(written) > 6 else ''} "
          f"in {time.perf_counter() - start:.2f} s", file=sys.stderr)
    if not archived:
        print("note: the file archives no model folder files (config.json, tokenizer); only the "
              "tensors were written", file=sys.stderr)
    return 0


def add_command(commands) -> None:
    """Add the ``decode`` command to the subparsers ``commands``."""
    decode = commands.add_parser("decode", help="decode an .nrd file to .safetensors or .npz",
                                 description="Decode every tensor of an .nrd file.",
                                 epilog="Example: nncodec-rd decode model.nrd -o model.safetensors")
    decode.add_argument("file")
    decode.add_argument("-o", "--output", required=True,
                        help="output .safetensors or .npz, or a folder (a path ending in /, or "
                             "with no suffix): the archived model folder (config, tokenizer) "
                             "with the tensors as safetensors, sharded like the original")
    decode.add_argument("--threads", type=int, default=None, help="decoding threads (default: all)")
    decode.add_argument("--max-output-bytes", type=byte_count, default=DEFAULT_MAX_OUTPUT_BYTES,
                        metavar="BYTES",
                        help="refuse (output_too_large) any tensor that would decode to more "
                             "bytes: an integer with an optional K, M, G or T suffix (powers of "
                             "1024), or 'none' for no bound (default: 64G or this machine's "
                             "memory if less, above any single tensor of a published model); "
                             "lower it for untrusted files")
    decode.add_argument("--max-transform-work", type=byte_count,
                        default=DEFAULT_MAX_TRANSFORM_WORK, metavar="COUNT",
                        help="refuse (output_too_large) a transform whose product takes more "
                             "multiply-adds: an integer with an optional K, M, G or T suffix, or "
                             "'none' (default: 256G)")
    add_max_header_bytes(decode)
    decode.set_defaults(run=command_decode)
