"""The exception hierarchy and its stable error codes (spec §10).

Every error a reader can raise is a :class:`FormatError` or a :class:`LimitExceededError`; both are
also :class:`ValueError`, so callers may catch either. Each carries a stable :class:`ErrorCode`
(listed in the spec, so that conformance reports of different decoders can be compared), the path
of the field at fault and the byte offset where it was found.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.IntEnum):
    """spec §10: stable error codes, named category_detail. Numbers are never reused."""

    BAD_MAGIC = 1
    UNSUPPORTED_VERSION = 2
    UNSUPPORTED_FEATURE = 3
    TRUNCATED = 4
    RESERVED_VALUE = 5
    CHECKSUM_HEADER = 6
    CHECKSUM_PAYLOAD = 7
    INVALID_VALUE = 8
    HEADER_SIZE_MISMATCH = 9
    PAYLOAD_LAYOUT = 11
    NONZERO_PADDING = 12
    TRAILING_BYTES = 13
    TABLE_SUM = 14
    RANS_STATE_OUT_OF_RANGE = 15
    STREAM_TRUNCATED = 16
    STREAM_TRAILING_DATA = 17
    RANS_FINAL_STATE = 18
    ESCAPE_MISMATCH = 19
    INDEX_OUT_OF_RANGE = 20
    DUPLICATE_NAME = 21
    DUPLICATE_KEY = 22
    INVALID_REFERENCE = 23
    LIMIT_EXCEEDED = 30
    ENCODER_SETTINGS = 40
    ENCODER_INPUT = 41
    IO = 50
    #: Not a fault of the file: a decode would allocate more than the caller's
    #: ``max_output_bytes`` allows, or more than the machine could give (a library code, like
    #: ``io``; the spec's §10 list does not hold it).
    OUTPUT_TOO_LARGE = 51

    @property
    def slug(self) -> str:
        """The lower_snake_case name used in the spec and in conformance manifests."""
        return self.name.lower()


class NrdError(Exception):
    """Base class of every error raised by nncodec-rd.

    Parameters
    ----------
    message:
        What went wrong and, where possible, how to fix it.
    field:
        Dotted path of the field at fault (``header.tensors[3].shape[1]``), or ``""``.
    offset:
        Absolute byte offset in the file where the fault was found, or ``None``.
    """

    code: ErrorCode = ErrorCode.INVALID_VALUE

    def __init__(self, message: str, *, field: str = "", offset: int | None = None,
                 code: ErrorCode | None = None):
        if code is not None:
            self.code = code
        self.field = field
        self.offset = offset
        self.message = message
        super().__init__(self._render())

    def __reduce__(self):
        # Pickled (Ray tasks, multiprocessing) as its class, arguments and fields: the default
        # would call __init__ with the rendered message and render it a second time.
        return _restore_error, (type(self), self.args, dict(self.__dict__))

    def _render(self) -> str:
        where = []
        if self.field:
            where.append(self.field)
        if self.offset is not None:
            where.append(f"at byte {self.offset}")
        prefix = f"{self.code.slug}: " + (" ".join(where) + ": " if where else "")
        return prefix + self.message


def _restore_error(cls, args, fields):
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    error.__dict__.update(fields)
    return error


class FormatError(NrdError, ValueError):
    """The bytes violate the specification."""


class BadMagicError(FormatError):
    code = ErrorCode.BAD_MAGIC


class UnsupportedVersionError(FormatError):
    code = ErrorCode.UNSUPPORTED_VERSION


class UnsupportedFeatureError(FormatError):
    code = ErrorCode.UNSUPPORTED_FEATURE


class TruncatedError(FormatError):
    """The file ends before a structure does."""

    code = ErrorCode.TRUNCATED

    def __init__(self, message: str, *, needed: int | None = None, **kwargs):
        self.needed = needed
        super().__init__(message, **kwargs)


class ReservedValueError(FormatError):
    code = ErrorCode.RESERVED_VALUE


class ChecksumMismatchError(FormatError):
    """A CRC-32C does not match the bytes it covers."""

    code = ErrorCode.CHECKSUM_HEADER

    def __init__(self, message: str, *, expected: int, actual: int, **kwargs):
        self.expected = expected
        self.actual = actual
        super().__init__(message, **kwargs)


class CorruptStreamError(FormatError):
    """A rANS chunk does not decode as the spec requires."""


class LimitExceededError(NrdError, ValueError):
    """The file is well formed but beyond the normative limits (spec §9)."""

    code = ErrorCode.LIMIT_EXCEEDED


class OutputTooLargeError(LimitExceededError):
    """A decode would allocate more than the caller's ``max_output_bytes`` (spec §9 note), or
    more than the machine could give (a ``MemoryError`` of the allocation, re-raised typed).

    Not a fault of the file: the spec's limits allow 2^40 elements, and a chunk of a one-symbol
    table codes any number of them in a few bytes, so a reader bounds what it allocates. The
    code is ``output_too_large`` (51, a library code: the caller's bound is not a format fault);
    it is still a ``LimitExceededError`` and a ``ValueError`` for callers that catch those.
    ``.requested`` and ``.limit`` are bytes (``.limit`` is ``None`` when no bound was set and
    the machine refused the allocation).
    """

    code = ErrorCode.OUTPUT_TOO_LARGE

    def __init__(self, message: str, *, requested: int, limit: int | None, **kwargs):
        self.requested = requested
        self.limit = limit
        super().__init__(message, **kwargs)


class EncoderError(NrdError, ValueError):
    """Bad encoder settings or input that cannot be encoded."""

    code = ErrorCode.ENCODER_SETTINGS


class InputMismatchError(EncoderError):
    """The encoder's input does not fit the model: a weights file whose tensors are not the
    model's state dict, a checkpoint that lacks the parameters of its config."""

    code = ErrorCode.ENCODER_INPUT


# The class a conforming reader raises for each code; used to re-raise kernel error codes.
ERROR_CLASS_BY_CODE: dict[ErrorCode, type[NrdError]] = {
    ErrorCode.BAD_MAGIC: BadMagicError,
    ErrorCode.UNSUPPORTED_VERSION: UnsupportedVersionError,
    ErrorCode.UNSUPPORTED_FEATURE: UnsupportedFeatureError,
    ErrorCode.TRUNCATED: TruncatedError,
    ErrorCode.RESERVED_VALUE: ReservedValueError,
    ErrorCode.RANS_STATE_OUT_OF_RANGE: CorruptStreamError,
    ErrorCode.STREAM_TRUNCATED: CorruptStreamError,
    ErrorCode.STREAM_TRAILING_DATA: CorruptStreamError,
    ErrorCode.RANS_FINAL_STATE: CorruptStreamError,
    ErrorCode.ESCAPE_MISMATCH: CorruptStreamError,
    ErrorCode.INDEX_OUT_OF_RANGE: CorruptStreamError,
    ErrorCode.LIMIT_EXCEEDED: LimitExceededError,
}


def error_for_code(code: ErrorCode, message: str, **kwargs) -> NrdError:
    """Build the exception a reader raises for ``code``."""
    cls = ERROR_CLASS_BY_CODE.get(code, FormatError)
    if cls is FormatError or cls is CorruptStreamError:
        return cls(message, code=code, **kwargs)
    return cls(message, **kwargs)


def first_line(error: BaseException, limit: int = 200) -> str:
    """The first line of ``error``'s message, at most ``limit`` characters: what a one-line
    message quotes of an exception raised by code it called.

    >>> first_line(ValueError("bad value\\nmore detail"))
    'bad value'
    """
    text = str(error).strip()
    return (text.splitlines()[0] if text else "")[:limit]
