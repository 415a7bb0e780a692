"""The .nrd format in code: constants, errors, construct syntax, parsing and semantic checks.

This package imports nothing else of nncodec_rd: it is the spec in code, shared by every reader
and writer.
"""

from .constants import (  # noqa: F401
    FORMAT_MAJOR_VERSION,
    FORMAT_MINOR_VERSION,
    MAGIC,
    Coding,
    ContextModel,
    EscapeMode,
    GridKind,
    Limits,
    MetadataType,
    TensorDtype,
    TransformKind,
)
from .errors import (  # noqa: F401
    BadMagicError,
    ChecksumMismatchError,
    CorruptStreamError,
    EncoderError,
    ErrorCode,
    FormatError,
    LimitExceededError,
    NrdError,
    OutputTooLargeError,
    ReservedValueError,
    TruncatedError,
    UnsupportedFeatureError,
    UnsupportedVersionError,
)
