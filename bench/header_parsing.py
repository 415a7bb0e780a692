"""Opening a file costs time and memory in proportion to its header, and little of either.

Builds conforming files whose header is almost all chunk entries (one rANS tensor of N rows, one
row per chunk, every chunk empty: spec §4.7 puts all N zero-size payloads at one offset) or
almost all metadata entries (tensors with 65,536 entries each, the limit of spec §9), then opens
each in a fresh process with ``NrdFile`` (the preamble, the header checksum, the parse and every
rule of spec §4.9 steps 1-11, as ``nncodec-rd info`` does) and reports the wall time of the open
and the peak RSS it added (Linux's VmHWM, reset after the imports), the file's mapped pages
included.

    python bench/header_parsing.py --json bench/results/header_parsing.json

Targets (issue 17): a header of 2·10^6 chunk entries (40 MB) opens in at most 2 s with at most
3× its size in added memory.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np
from run_info import run_info  # noqa: E402  (bench/ is sys.path[0] when run as a script)

CHUNK_COUNTS = (10_000, 100_000, 1_000_000, 2_000_000)
METADATA_ENTRIES = (65_536, 524_288)
TENSOR_RECORDS = (10_000, 100_000)
ENTRIES_PER_BLOCK = 65_536  # spec §9: MAX_METADATA_ENTRIES per metadata block


def _string16(text: str) -> bytes:
    data = text.encode("utf-8")
    return struct.pack("<H", len(data)) + data


def _metadata(entries: int, tensor: int = 0) -> bytes:
    """A metadata block of ``entries`` INT64 entries with distinct keys."""
    parts = [struct.pack("<I", entries)]
    value = struct.pack("<BI", 2, 8) + struct.pack("<q", 0)  # MetadataType.INT64
    parts.extend(_string16(f"k{tensor}.{i}") + value for i in range(entries))
    return b"".join(parts)


def _raw_record(name: str, metadata: bytes, payload_offset: int) -> bytes:
    body = struct.pack("<QQI", payload_offset, 0, 0)  # an empty float32 tensor: zero-size payload
    return (_string16(name) + struct.pack("<BB", 1, 1) + struct.pack("<Q", 0)  # float32, rank 1
            + struct.pack("<B", 0) + struct.pack("<I", len(body)) + body + metadata
            + struct.pack("<H", 0))


def _rans_record(rows: int, payload_offset: int) -> bytes:
    """A float32 tensor of ``rows`` elements, one row per chunk, every chunk empty."""
    grid = struct.pack("<QIB", 0, 1, 0) + struct.pack("<f", 1.0)
    chunks = np.zeros(rows, dtype=[("offset", "<u8"), ("size", "<u8"), ("crc32c", "<u4")])
    chunks["offset"] = payload_offset
    body = b"".join([
        struct.pack("<B", 1), struct.pack("<I", len(grid)), grid,        # UNIFORM grid
        struct.pack("<BI", 0, 0), struct.pack("<Q", 1),                 # no transform, row length 1
        struct.pack("<BBBBBB", 1, 1, 0, 1, 0, 0),                       # precision 1, 1 lane, IID
        struct.pack("<iiI", 0, 0, 1), bytes([2]),                       # alphabet 1: {2}
        struct.pack("<QI", 1, rows), chunks.tobytes()])
    return (_string16("t") + struct.pack("<BB", 1, 1) + struct.pack("<Q", rows)
            + struct.pack("<B", 1) + struct.pack("<I", len(body)) + body
            + struct.pack("<I", 0) + struct.pack("<H", 0))


def _file(records: list) -> bytes:
    """Preamble and header around ``records`` (functions of the payload offset)."""
    from nncodec_rd.format.checksum import crc32c

    # The header's size does not depend on the offset's value: build once to learn it.
    def header_for(offset: int) -> bytes:
        return (struct.pack("<I", 0) + struct.pack("<I", len(records))
                + b"".join(record(offset) for record in records) + struct.pack("<H", 0))

    size = len(header_for(0))
    offset = -(-(32 + size) // 64) * 64
    header = header_for(offset)
    head = (b"\x89NRD\r\n\x1a\n" + struct.pack("<HHIQ", 1, 0, 0, len(header)))
    crc = crc32c(header, crc32c(head))
    data = head + struct.pack("<II", crc, 0) + header
    return data + bytes(offset - len(data))


def chunk_file(chunks: int) -> bytes:
    return _file([lambda offset: _rans_record(chunks, offset)])


def metadata_file(entries: int) -> bytes:
    blocks = -(-entries // ENTRIES_PER_BLOCK)
    return _file([lambda offset, i=i: _raw_record(
        f"t{i}", _metadata(min(ENTRIES_PER_BLOCK, entries - i * ENTRIES_PER_BLOCK), i), offset)
        for i in range(blocks)])


def records_file(tensors: int) -> bytes:
    return _file([lambda offset, i=i: _raw_record(f"t{i}", struct.pack("<I", 0), offset)
                  for i in range(tensors)])


def _open(path: str) -> dict:
    """In this (fresh) process: open ``path`` as ``info`` does; time and added peak RSS."""
    import nncodec_rd

    with open(path, "rb") as stream:  # warm the page cache, in pieces that leave no peak
        while stream.read(1 << 20):
            pass
    # The peak (VmHWM) is reset to the present RSS first (Linux: clear_refs 5), so what the
    # imports allocated and freed does not hide the open's own peak.
    with open("/proc/self/clear_refs", "w") as stream:
        stream.write("5")
    before = _status_bytes("VmRSS")
    started = time.perf_counter()
    with nncodec_rd.safe_open(path) as handle:
        names = handle.keys()
        seconds = time.perf_counter() - started
        peak = _status_bytes("VmHWM")
    return {"seconds": seconds, "added_peak_rss_bytes": peak - before, "tensors": len(names)}


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as stream:
        for line in stream:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _code_measured() -> str:
    """The commit (and whether its tree was clean) of the nncodec_rd the openings imported (the
    children's PYTHONPATH may point at an earlier checkout, to measure code before a change)."""
    package = subprocess.run([sys.executable, "-c", "import nncodec_rd, os; "
                              "print(os.path.dirname(nncodec_rd.__file__))"],
                             check=True, stdout=subprocess.PIPE, text=True,
                             cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    commit = subprocess.run(["git", "-C", package, "rev-parse", "--short", "HEAD"],
                            stdout=subprocess.PIPE, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", package, "status", "--porcelain", "--", "."],
                           stdout=subprocess.PIPE, text=True).stdout.strip()
    return f"{commit or 'unknown'}{' with uncommitted changes' if dirty else ''}"


def markdown_table(report: dict, before: dict | None = None) -> str:
    """The rows of a report as a Markdown table, with those of an earlier code's report beside
    them when given (docs/opening-files.md shows it)."""
    earlier = {(row["kind"], row["entries"]): row for row in (before or {}).get("rows", [])}
    head = "| header of | entries | file | open | added peak RSS | per file byte |"
    rule = "|---|---:|---:|---:|---:|---:|"
    if before:
        head += " before: open | before: added peak RSS |"
        rule += "---:|---:|"
    lines = [head, rule]
    for row in report["rows"]:
        line = (f"| {row['kind']} | {row['entries']:,} | {row['file_bytes'] / 1e6:.1f} MB "
                f"| {row['seconds']:.2f} s | {row['added_peak_rss_bytes'] / 1e6:.1f} MB "
                f"| {row['added_memory_per_file_byte']:.1f}x |")
        if before:
            old = earlier.get((row["kind"], row["entries"]))
            line += (f" {old['seconds']:.2f} s | {old['added_peak_rss_bytes'] / 1e6:.1f} MB |"
                     if old else " not run | |")
        lines.append(line)
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="bench/results/header_parsing.json")
    parser.add_argument("--chunks", default=",".join(map(str, CHUNK_COUNTS)))
    parser.add_argument("--metadata", default=",".join(map(str, METADATA_ENTRIES)))
    parser.add_argument("--records", default=",".join(map(str, TENSOR_RECORDS)))
    parser.add_argument("--table", action="store_true",
                        help="print the Markdown table of the --json report and stop")
    parser.add_argument("--before", help="with --table: a report of earlier code to show beside")
    parser.add_argument("--open", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.open:
        print(json.dumps(_open(arguments.open)))
        return 0
    if arguments.table:
        with open(arguments.json) as stream:
            report = json.load(stream)
        before = None
        if arguments.before:
            with open(arguments.before) as stream:
                before = json.load(stream)
        print(markdown_table(report, before))
        return 0
    cases = [("chunk entries", int(n), chunk_file) for n in arguments.chunks.split(",") if n]
    cases += [("metadata entries", int(n), metadata_file)
              for n in arguments.metadata.split(",") if n]
    cases += [("tensor records", int(n), records_file) for n in arguments.records.split(",") if n]
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for kind, count, make in cases:
            path = os.path.join(work, "case.nrd")
            with open(path, "wb") as stream:
                stream.write(make(count))
            measured = subprocess.run([sys.executable, __file__, "--open", path], check=True,
                                      stdout=subprocess.PIPE, text=True)
            row = json.loads(measured.stdout.strip().splitlines()[-1])
            row.update(kind=kind, entries=count, file_bytes=os.path.getsize(path))
            row["added_memory_per_file_byte"] = row["added_peak_rss_bytes"] / row["file_bytes"]
            rows.append(row)
            print(f"{kind:>16} {count:>9,}: {row['file_bytes'] / 1e6:7.1f} MB, "
                  f"{row['seconds']:6.2f} s, +{row['added_peak_rss_bytes'] / 1e6:7.1f} MB "
                  f"({row['added_memory_per_file_byte']:.2f}x)", flush=True)
    os.makedirs(os.path.dirname(arguments.json) or ".", exist_ok=True)
    with open(arguments.json, "w") as stream:
        json.dump({**run_info(), "command": "python " + " ".join(sys.argv), "code": _code_measured(),
                   "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
                   "rows": rows}, stream, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
