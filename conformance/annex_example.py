"""Generate (and check) Annex A of the spec: a tiny file, its hex dump, its fields and its values.

``python -m nncodec_rd.conformance.annex_example --write`` rewrites the annex block of
``spec/nrd-format.md``; ``--check`` fails if the spec's annex differs from what the current encoder
writes. The test suite also decodes the hex printed in the spec and compares it with the values
printed there.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
from pathlib import Path

import numpy as np
from construct import Array, Container, Prefixed, Renamed, Struct, Switch, Tell
from construct.core import BytesIOWithOffsets

from nncodec_rd.encoder.writer import NrdWriter
from nncodec_rd.format.grids import UniformGrid
from nncodec_rd.encoder.entropy import EntropySettings
from nncodec_rd.format.spec_tables import MARKER, run_generator
from nncodec_rd.format.syntax import Header, LimitCheck, Preamble, RansChunk

EXAMPLE_INDICES = np.array([[0, 1, -1, 0], [2, 0, 0, -1], [0, 1, 0, 0]], dtype=np.int64)
EXAMPLE_STEP = 0.5


def build_example() -> bytes:
    """The bytes of the annex's example file."""
    folder = tempfile.mkdtemp()
    path = os.path.join(folder, "example.nrd")
    settings = EntropySettings(precision_bits=4, lane_count=1, context_model="iid",
                               choose_precision=False)
    with NrdWriter(path) as writer:
        writer.add_indices("w", EXAMPLE_INDICES, UniformGrid(EXAMPLE_STEP), "float32",
                           settings=settings)
    data = Path(path).read_bytes()
    os.unlink(path)
    os.rmdir(folder)
    return data


def _unwrap(construct):
    while isinstance(construct, Renamed):
        construct = construct.subcon
    return construct


def _walk(construct, stream, context, path, rows):
    """Parse ``construct`` from ``stream`` like construct does, recording (start, end, path, value)
    for every leaf field."""
    inner = _unwrap(construct)
    if isinstance(inner, Struct):
        local = Container(_=context, _params=context._params, _root=None, _parsing=True,
                          _building=False, _sizing=False, _subcons=None, _io=stream, _index=None)
        for field in inner.subcons:
            sub = _unwrap(field)
            if sub is Tell or isinstance(sub, LimitCheck):
                local[field.name] = sub._parsereport(stream, local, path)
                continue
            local[field.name] = _walk(field, stream, local, f"{path}.{field.name}".lstrip("."),
                                      rows)
        return local
    if isinstance(inner, Array) and isinstance(_unwrap(inner.subcon), Struct):
        count = inner.count(context) if callable(inner.count) else inner.count
        return [_walk(inner.subcon, stream, context, f"{path}[{i}]", rows) for i in range(count)]
    if isinstance(inner, Prefixed) and isinstance(_unwrap(inner.subcon), Switch):
        start = stream.tell()
        size = inner.lengthfield._parsereport(stream, context, path)
        rows.append((start, stream.tell(), f"{path} (size)", size))
        switch = _unwrap(inner.subcon)
        case = switch.cases.get(switch.keyfunc(context), switch.default)
        substream = BytesIOWithOffsets.from_reading(stream, size, path)
        return _walk(case, substream, context, path, rows)
    start = stream.tell()
    value = inner._parsereport(stream, context, path)
    rows.append((start, stream.tell(), path, value))
    return value


def field_rows(data: bytes) -> list[tuple[int, int, str, object]]:
    """Every leaf field of the example file with its byte range."""
    rows = []
    root = Container(_params=Container(), _parsing=True, _building=False, _sizing=False)
    stream = io.BytesIO(data)
    _walk(Preamble, stream, root, "preamble", rows)
    header_stream = BytesIOWithOffsets(data[32:], None, 32)
    header = _walk(Header, header_stream, root, "header", rows)
    for t, record in enumerate(header["tensors"]):
        body = record["body"]
        for k, chunk in enumerate(body.get("chunks", ())):  # raw tensors have no chunk
            chunk_stream = BytesIOWithOffsets(data[chunk["offset"]:chunk["offset"] + chunk["size"]],
                                              None, chunk["offset"])
            context = Container(_params=Container(), _parsing=True, lane_count=body["lane_count"])
            _walk(RansChunk, chunk_stream, context, f"chunk {k} of tensor {t}", rows)
    return rows


def hex_dump(data: bytes) -> str:
    lines = []
    for offset in range(0, len(data), 16):
        part = data[offset:offset + 16]
        lines.append(f"{offset:08x}  " + " ".join(f"{byte:02x}" for byte in part))
    return "\n".join(lines)


def _value_text(value, path: str = "") -> str:
    if hasattr(value, "tolist"):  # an array the parser reads in one step (NumPy)
        value = value.tolist()
    if path.endswith("crc32c") and isinstance(value, int):
        return f"0x{value:08x}"
    if isinstance(value, list) and not value:
        return "(empty)"
    if isinstance(value, bytes):
        return value.hex(" ")
    if isinstance(value, float):
        return repr(value)
    if hasattr(value, "name") and hasattr(value, "value"):
        return f"{int(value)} ({value.name})"
    if isinstance(value, list):
        return "[" + ", ".join(_value_text(v) for v in value) + "]"
    return repr(value) if isinstance(value, str) else str(value)


def decoding_trace(data: bytes) -> list[str]:
    """Section 7.6 run by hand on chunk 0 of tensor 0: one Markdown table row per symbol."""
    header = Header.parse(data[32:32 + Preamble.parse(data).header_size])
    body = header.tensors[0].body
    chunk = body.chunks[0]
    payload = data[chunk.offset:chunk.offset + chunk.size]
    lanes = body.lane_count
    states = [int.from_bytes(payload[4 + 4 * l:8 + 4 * l], "little") for l in range(lanes)]
    word_position = 4 + 4 * lanes
    frequencies = list(body.tables[0].frequencies)
    starts = [sum(frequencies[:s]) for s in range(len(frequencies))]
    mask = (1 << body.precision_bits) - 1
    rows = ["| i | lane | state before | slot | symbol | state after step | word read | state after | index |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    symbol_count = body.chunk_count and header.tensors[0].shape[0] * body.coded_row_length
    for i in range(symbol_count):
        lane = i % lanes
        before = states[lane]
        slot = before & mask
        symbol = max(s for s in range(len(frequencies)) if starts[s] <= slot and frequencies[s])
        state = frequencies[symbol] * (before >> body.precision_bits) + slot - starts[symbol]
        stepped, word = state, "-"
        if state < 1 << 16:
            word_value = int.from_bytes(payload[word_position:word_position + 2], "little")
            word_position += 2
            state = (state << 16) | word_value
            word = f"0x{word_value:04x}"
        states[lane] = state
        rows.append(f"| {i} | {lane} | 0x{before:08x} | {slot} | {symbol} | 0x{stepped:08x} | {word} "
                    f"| 0x{state:08x} | {symbol + body.index_offset} |")
    return rows


def render(data: bytes) -> str:
    """The Markdown of the annex block for the example file ``data``."""
    from nncodec_rd.decoder.reader import NrdFile

    rows = field_rows(data)
    table = ["| offset | bytes | field | value |", "| --- | --- | --- | --- |"]
    for start, end, path, value in rows:
        table.append(f"| {start} | `{data[start:end].hex(' ')}` | `{path}` | {_value_text(value, path)} |")
    folder = tempfile.mkdtemp()
    path = os.path.join(folder, "example.nrd")
    Path(path).write_bytes(data)
    with NrdFile(path) as handle:
        values = handle.get_tensor("w")
        indices = handle.get_indices("w")
    os.unlink(path)
    os.rmdir(folder)
    value_lines = [" ".join(f"{v:g}" for v in row) for row in values]
    value_bits = [" ".join(f"{b:08x}" for b in row) for row in values.view(np.uint32)]
    return "\n".join([
        f"The file is {len(data)} bytes:",
        "",
        "```text",
        hex_dump(data),
        "```",
        "",
        "Its fields, in file order (padding bytes are not listed):",
        "",
        *table,
        "",
        "Decoding chunk 0 by section 7.6 (IID: every symbol uses table 0, whose `start` values are "
        "the running sums of `frequencies`; `state after step` is before renormalization):",
        "",
        *decoding_trace(data),
        "",
        "All words are read and the lane ends in state 0x00010000 = 2^16 (section 7.7). "
        "The indices, row by row:",
        "",
        "```text",
        *[" ".join(str(int(q)) for q in row) for row in indices],
        "```",
        "",
        "and the tensor `w` (float32, shape [3, 4]; values, then their bit patterns):",
        "",
        "```text",
        *value_lines,
        *value_bits,
        "```",
    ])


def regenerate(text: str, data: bytes) -> str:
    block = f"<!-- BEGIN GENERATED annex:example -->\n{render(data)}\n<!-- END GENERATED annex:example -->"
    return MARKER.sub(lambda m: block if m.group(1) == "annex" else m.group(0), text)


def parse_annex(text: str) -> tuple[bytes, np.ndarray]:
    """The example's bytes and float32 values as printed in the spec's annex."""
    block = re.search(r"<!-- BEGIN GENERATED annex:example -->(.*?)<!-- END GENERATED", text,
                      re.DOTALL).group(1)
    fences = re.findall(r"```text\n(.*?)```", block, re.DOTALL)
    data = bytes.fromhex(" ".join(line[10:] for line in fences[0].strip().splitlines()))
    lines = fences[2].strip().splitlines()
    bits = np.array([[int(word, 16) for word in line.split()] for line in lines[len(lines) // 2:]],
                    dtype=np.uint32)
    return data, bits.view(np.float32)


def main(argv=None) -> int:
    return run_generator(argv, __doc__.splitlines()[0],
                         lambda text: regenerate(text, build_example()),
                         "the spec's Annex A differs from what the encoder writes now; run "
                         "python -m nncodec_rd.conformance.annex_example --write")


if __name__ == "__main__":
    raise SystemExit(main())
