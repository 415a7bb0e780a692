"""Every number the specification fixes: magic, versions, enumerations and normative limits.

This module is the single home of these values (spec §2, §4, §9). Nothing here depends on any
other part of the package.
"""

from __future__ import annotations

import enum

# spec §4.1: the file signature. The first byte is non-ASCII and the CR-LF / Ctrl-Z / LF bytes catch
# text-mode transfers, as in PNG.
MAGIC = b"\x89NRD\r\n\x1a\n"
PREAMBLE_SIZE_BYTES = 32

# spec §3: versioning
FORMAT_MAJOR_VERSION = 1
FORMAT_MINOR_VERSION = 1
# spec §3.3: required-feature bits. 1.0 defines none; 1.1 defines bit 0.
FEATURE_TRELLIS = 0x00000001  # spec §6.6: a tensor uses the UNIFORM_TRELLIS grid
KNOWN_REQUIRED_FEATURES = FEATURE_TRELLIS
# The minor version that defines each required-feature bit (spec §3.3).
FEATURE_MINOR_VERSIONS = {FEATURE_TRELLIS: 1}


def minor_version_for(required_features: int) -> int:
    """The minor version a file is written with: the latest that defines one of its
    ``required_features``, so a file using no feature of 1.1 stays a 1.0 file (spec §3.1).

    >>> minor_version_for(0), minor_version_for(FEATURE_TRELLIS)
    (0, 1)
    """
    return max((minor for bit, minor in FEATURE_MINOR_VERSIONS.items()
                if required_features & bit), default=0)

# spec §4.7: every payload starts at a multiple of this many bytes.
PAYLOAD_ALIGNMENT_BYTES = 64

# spec §7: rANS constants
RANS_STATE_LOWER_BOUND = 1 << 16  # L: decoder states live in [L, 2^32)
RANS_WORD_BITS = 16


class TensorDtype(enum.IntEnum):
    """spec §5.2: element types. Values are never reused once retired."""

    FLOAT32 = 1
    FLOAT16 = 2
    BFLOAT16 = 3
    FLOAT64 = 4
    INT8 = 5
    UINT8 = 6
    INT16 = 7
    INT32 = 8
    INT64 = 9
    BOOL = 10
    UINT16 = 11
    UINT32 = 12
    UINT64 = 13


# spec §5.2: dtypes a coded (quantized) tensor may be reconstructed to.
RECONSTRUCTION_DTYPES = frozenset({TensorDtype.FLOAT32, TensorDtype.FLOAT16, TensorDtype.BFLOAT16})

# spec §5.2: bytes per element of every dtype.
DTYPE_SIZE_BYTES = {
    TensorDtype.FLOAT32: 4,
    TensorDtype.FLOAT16: 2,
    TensorDtype.BFLOAT16: 2,
    TensorDtype.FLOAT64: 8,
    TensorDtype.INT8: 1,
    TensorDtype.UINT8: 1,
    TensorDtype.INT16: 2,
    TensorDtype.INT32: 4,
    TensorDtype.INT64: 8,
    TensorDtype.BOOL: 1,
    TensorDtype.UINT16: 2,
    TensorDtype.UINT32: 4,
    TensorDtype.UINT64: 8,
}


class Coding(enum.IntEnum):
    """spec §5.3: how a tensor's elements are stored."""

    RAW = 0
    RANS = 1


class GridKind(enum.IntEnum):
    """spec §6: how an index becomes a value."""

    UNIFORM = 1
    CODEBOOK = 2
    UNIFORM_TRELLIS = 3  # format 1.1, spec §6.6


# spec §6.1 and §6.6: the grid kinds whose `grid` is a UniformGrid.
UNIFORM_GRID_KINDS = (GridKind.UNIFORM, GridKind.UNIFORM_TRELLIS)

# spec §6.6: the next trellis state of a column, by its state and the parity of the index.
TRELLIS_NEXT_STATE = ((0, 2), (2, 0), (1, 3), (3, 1))


class TransformKind(enum.IntEnum):
    """spec §6.4: a linear map applied after dequantization."""

    NONE = 0
    RIGHT_MATRIX = 1


class ContextModel(enum.IntEnum):
    """spec §7.4: how the frequency table of each symbol is chosen."""

    IID = 0
    PREVIOUS_INDEX = 1


class EscapeMode(enum.IntEnum):
    """spec §7.5: whether the last symbol of the alphabet escapes to a literal index."""

    NONE = 0
    LAST_SYMBOL = 1


class MetadataType(enum.IntEnum):
    """spec §5.5: metadata value types."""

    STRING = 1
    INT64 = 2
    FLOAT64 = 3
    BOOL = 4
    BYTES = 5


# spec §5.6: extension flag bits
EXTENSION_FLAG_REQUIRED = 0x0001
EXTENSION_KNOWN_FLAGS = EXTENSION_FLAG_REQUIRED


class Limits:
    """spec §9: normative limits. A conforming file stays within them; a conforming decoder
    rejects a file beyond them with ``limit_exceeded`` before allocating anything for it."""

    MAX_HEADER_SIZE_BYTES = 1 << 28  # 256 MiB
    MAX_TENSOR_COUNT = 1 << 20
    MAX_NAME_LENGTH_BYTES = 4096
    MAX_METADATA_KEY_LENGTH_BYTES = 256
    MAX_METADATA_ENTRIES = 65536
    MAX_RANK = 8
    MAX_DIMENSION = 1 << 40
    MAX_ELEMENT_COUNT = 1 << 40
    MAX_ALPHABET_SIZE = 1 << 16
    MIN_PRECISION_BITS = 1
    MAX_PRECISION_BITS = 16
    MAX_LANE_COUNT = 32
    MAX_CONTEXT_COUNT = 16
    MAX_CHUNK_COUNT = 1 << 24
    MAX_CHUNK_SIZE_BYTES = 1 << 32
    MAX_CHUNK_SYMBOLS = 1 << 32
    MAX_CODEBOOK_SIZE = 1 << 16
    MAX_GROUP_COUNT = 1 << 24
    # |index| and |zero point| stay below 2^23 so that index - zero_point is exact in binary32.
    MAX_ABS_INDEX = (1 << 23) - 1
    MAX_EXTENSIONS = 256
