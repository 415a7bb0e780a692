"""CRC-32C (Castagnoli), the format's only checksum (spec §8).

The polynomial is 0x1EDC6F41 (reflected 0x82F63B78), initial value 0xFFFFFFFF, final XOR
0xFFFFFFFF, as in iSCSI (RFC 3720) and ext4; CRC-32C of the ASCII bytes "123456789" is 0xE3069283.
"""

from __future__ import annotations

import crc32c as _crc32c


def crc32c(data, value: int = 0) -> int:
    """CRC-32C of ``data`` (any bytes-like object), continuing from the CRC ``value`` of earlier bytes."""
    return _crc32c.crc32c(data, value)
