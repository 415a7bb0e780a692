"""Structure-aware mutation of .nrd inputs, for atheris's custom mutator and the built-in engine.

Plain byte mutations of an .nrd file almost always break its header checksum (spec §8.2), so the
decoder rejects them at §4.8 step 8 and nothing beyond is exercised. After a byte mutation this
mutator therefore usually repairs the header CRC and, where the header still parses, the payload
CRCs; and sometimes it edits one integer field of the parsed header to an edge value (0, 1, 2^k
+-1, a limit of §9 and one past it) and reassembles the file with offsets and checksums fixed.
"""

from __future__ import annotations

import random
import struct

from nncodec_rd.format.checksum import crc32c
from nncodec_rd.format.constants import PREAMBLE_SIZE_BYTES
from nncodec_rd.format.errors import NrdError

from ..mutators import integer_fields, refresh_header_checksum

EDGE_VALUES = [0, 1, 2, 3, 7, 8, 15, 16, 17, 31, 32, 33, 255, 256, 4096, 4097, 65535, 65536, 65537,
               (1 << 23) - 1, 1 << 23, (1 << 24) + 1, 1 << 32, (1 << 40) + 1, -1, -2, -(1 << 23)]


def repair_header_checksum(data: bytearray) -> None:
    """Set header_crc32c to the CRC of preamble bytes 0-23 and the header, if the header fits."""
    data[:] = refresh_header_checksum(bytes(data))


def repair_payload_checksums(data: bytearray) -> None:
    """Where the header parses, set each PayloadRef's crc32c to the CRC of the bytes it names."""
    from nncodec_rd.format.container import parse_header, parse_preamble
    from nncodec_rd.format.validate import payload_refs

    try:
        preamble = parse_preamble(data)
        header = parse_header(data, preamble)
    except NrdError:
        return
    head = bytes(data[:PREAMBLE_SIZE_BYTES + preamble.header_size])
    for _, ref in payload_refs(header):
        if ref.offset + ref.size > len(data):
            continue
        old = struct.pack("<QQI", ref.offset, ref.size, ref.crc32c)
        at = head.find(old)
        if at >= 0:
            struct.pack_into("<I", data, at + 16, crc32c(bytes(data[ref.offset:ref.offset + ref.size])))
    repair_header_checksum(data)


def edit_field(data: bytes, rng: random.Random) -> bytes | None:
    """One integer field of the header set to an edge value; offsets and CRCs fixed (or not)."""
    from nncodec_rd.conformance.mutators import assemble, split_file

    try:
        header, payloads = split_file(data)
    except (NrdError, ValueError):
        return None
    paths = list(integer_fields(header))
    if not paths:
        return None
    path = rng.choice(paths)
    node = header
    for key in path[:-1]:
        node = node[key]
    old = node[path[-1]]
    node[path[-1]] = rng.choice([rng.choice(EDGE_VALUES), old + rng.choice([-1, 1]), old * 2])
    try:
        return assemble(header, payloads, fix_offsets=rng.random() < 0.8,
                        fix_checksums=rng.random() < 0.9)
    except Exception:  # the edited value does not fit its field: construct refuses to build it
        return None


def simple_byte_mutation(data: bytes, max_size: int, rng: random.Random) -> bytes:
    """A libFuzzer-like byte mutation for the built-in engine (no atheris)."""
    out = bytearray(data)
    for _ in range(rng.choice([1, 1, 1, 2, 4])):
        choice = rng.random()
        if not out or choice < 0.1:
            out[rng.randrange(len(out) + 1):rng.randrange(len(out) + 1)] = \
                rng.randbytes(rng.randrange(1, 9))
        elif choice < 0.45:
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
        elif choice < 0.65:
            out[rng.randrange(len(out))] = rng.choice([0, 1, 0x7F, 0x80, 0xFF])
        elif choice < 0.8:
            at = rng.randrange(len(out))
            width = rng.choice([2, 4, 8])
            value = rng.choice(EDGE_VALUES) % (1 << (8 * width))
            out[at:at + width] = value.to_bytes(width, "little")
        elif choice < 0.9:
            start = rng.randrange(len(out))
            del out[start:start + rng.randrange(1, 17)]
        else:
            del out[rng.randrange(len(out) + 1):]
    return bytes(out[:max_size])


def mutate(data: bytes, max_size: int, seed: int, byte_mutator=None) -> bytes:
    """One mutation of ``data``: a header field edit (15 %) or a byte mutation whose checksums
    are then usually repaired. ``byte_mutator(data, max_size)`` defaults to
    :func:`simple_byte_mutation`; under atheris it is ``atheris.Mutate``."""
    rng = random.Random(seed)
    if rng.random() < 0.15:
        edited = edit_field(data, rng)
        if edited is not None and len(edited) <= max_size:
            return edited
    if byte_mutator is None:
        out = bytearray(simple_byte_mutation(data, max_size, rng))
    else:
        out = bytearray(byte_mutator(data, max_size))
    choice = rng.random()
    if choice < 0.5:
        repair_payload_checksums(out)
    elif choice < 0.85:
        repair_header_checksum(out)
    return bytes(out)
