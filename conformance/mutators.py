"""Take valid .nrd files apart and put them back together, changed: the raw material of invalid
test files. Fields are edited as plain dicts; offsets and checksums are recomputed unless the
caller asks to keep them wrong.
"""

from __future__ import annotations

import copy
import struct

from nncodec_rd.format.checksum import crc32c
from nncodec_rd.format.constants import PREAMBLE_SIZE_BYTES
from nncodec_rd.format.container import build_container_head, parse_header, parse_preamble, to_plain
from nncodec_rd.format.layout import canonical_offsets
from nncodec_rd.format.validate import payload_refs


def split_file(data: bytes) -> tuple[dict, list[bytes]]:
    """The header of a valid file as a plain dict, and its payloads in canonical order."""
    preamble = parse_preamble(data)
    header = parse_header(data, preamble)
    payloads = [bytes(data[ref.offset:ref.offset + ref.size]) for _, ref in payload_refs(header)]
    return to_plain(header), payloads


def _refs(header: dict):
    for record in header["tensors"]:
        if record["coding"] == 0:
            yield record["body"]["payload"]
        else:
            yield from record["body"]["chunks"]


def assemble(header: dict, payloads: list[bytes], *, fix_offsets: bool = True,
             fix_checksums: bool = True, required_features: int | None = None) -> bytes:
    """A file from a header dict and payloads, laid out canonically.

    With ``fix_offsets`` / ``fix_checksums`` the payload references are recomputed from the
    payloads; without, whatever the dict says is written. ``required_features``: ``None``
    derives them from the header (a trellis grid sets bit 0), an int is written as it is.
    """
    header = copy.deepcopy(header)
    refs = list(_refs(header))
    if len(refs) != len(payloads):
        raise ValueError(f"{len(refs)} payload references for {len(payloads)} payloads")
    for ref, payload in zip(refs, payloads):
        if fix_offsets:
            ref["size"] = len(payload)
        if fix_checksums:
            ref["crc32c"] = crc32c(payload)
    head = build_container_head(header, required_features=required_features)
    offsets, _ = canonical_offsets(len(head) - PREAMBLE_SIZE_BYTES, [len(p) for p in payloads])
    if fix_offsets:
        for ref, offset in zip(refs, offsets):
            ref["offset"] = offset
        head = build_container_head(header, required_features=required_features)
    out = bytearray(head)
    for offset, payload in zip(offsets, payloads):
        out.extend(b"\0" * (offset - len(out)))
        out.extend(payload)
    return bytes(out)


def mutate_header(data: bytes, change, **assemble_options) -> bytes:
    """Apply ``change(header_dict, payloads)`` (in place) to a valid file and reassemble it."""
    header, payloads = split_file(data)
    change(header, payloads)
    return assemble(header, payloads, **assemble_options)


def refresh_header_checksum(data: bytes) -> bytes:
    """``data`` with ``header_crc32c`` recomputed over its (possibly edited) preamble and header,
    so that an edit reaches the checks after spec §4.8 step 8. Files too short for their header
    are returned unchanged."""
    if len(data) < PREAMBLE_SIZE_BYTES:
        return data
    out = bytearray(data)
    header_size = struct.unpack_from("<Q", out, 16)[0]
    if PREAMBLE_SIZE_BYTES + header_size > len(out):
        return data
    out[24:28] = struct.pack("<I", crc32c(bytes(out[PREAMBLE_SIZE_BYTES:PREAMBLE_SIZE_BYTES + header_size]),
                                          crc32c(bytes(out[:24]))))
    return bytes(out)


def integer_fields(header: dict, path: tuple = ()):
    """The paths (tuples of keys and list positions) of every integer field of a header dict,
    for edits that set one field to an edge value."""
    if isinstance(header, dict):
        for key, item in header.items():
            yield from integer_fields(item, path + (key,))
    elif isinstance(header, list):
        for position, item in enumerate(header):
            yield from integer_fields(item, path + (position,))
    elif isinstance(header, int) and not isinstance(header, bool):
        yield path
