"""Parse and build the container: Preamble and Header (spec §4), with typed errors.

Three explicit steps, as the spec orders them (§4.8): parse the preamble (magic, version, sizes),
verify the header checksum, parse the header; then :func:`nncodec_rd.format.validate.validate_header`
applies the semantic rules. No construct exception ever leaves this module: each becomes the
library's own error with the field path and byte offset.
"""

from __future__ import annotations

import numpy as np
from construct import Container, ConstructError, ListContainer, StreamError

from .checksum import crc32c
from .constants import (
    FORMAT_MAJOR_VERSION,
    FEATURE_TRELLIS,
    FORMAT_MINOR_VERSION,
    KNOWN_REQUIRED_FEATURES,
    MAGIC,
    PREAMBLE_SIZE_BYTES,
    GridKind,
    Limits,
    minor_version_for,
)
from .errors import (
    BadMagicError,
    ChecksumMismatchError,
    ErrorCode,
    FormatError,
    LimitExceededError,
    ReservedValueError,
    TruncatedError,
    UnsupportedFeatureError,
    UnsupportedVersionError,
)
from .syntax import (
    Header,
    HeaderStream,
    LimitViolation,
    Preamble,
    RecordTable,
    SizedFieldOverrun,
)
from .validate import Report, validate_header

# The preamble bytes the header checksum covers: everything before header_crc32c.
CHECKSUMMED_PREAMBLE_BYTES = 24


def _construct_path(error: ConstructError) -> str:
    """``header.tensors[3].body.chunks[1].size`` from construct's ``(parsing) -> tensors ->
    tensors -> [3] -> body -> ...`` (a documented field is named twice: ``name / field * doc``)."""
    path = getattr(error, "path", None) or ""
    path = path.replace("(parsing)", "").replace("(building)", "").strip()
    text = "header"
    previous = None
    for part in (part.strip() for part in path.split("->")):
        if not part or part == previous:
            continue
        text += part if part.startswith("[") else f".{part}"
        previous = part
    return text


def _raise_parse_error(error: Exception, stream, header_end: int) -> None:
    """Re-raise a construct failure while parsing the header as the library's own error (§4.8)."""
    offset = stream.tell()
    field = _construct_path(error)
    message = str(error).splitlines()[-1]
    if isinstance(error, LimitViolation):
        raise LimitExceededError(message, field=field, offset=offset) from None
    if isinstance(error, SizedFieldOverrun):
        raise FormatError("the field runs past the end of its enclosing size-prefixed field",
                          field=field, offset=error.offset,
                          code=ErrorCode.INVALID_VALUE) from None
    if isinstance(error, StreamError) and offset >= header_end:
        raise FormatError("the header's structures run past header_size", field=field,
                          offset=offset, code=ErrorCode.HEADER_SIZE_MISMATCH) from None
    if isinstance(error, StreamError):
        message = "the field runs past the end of its enclosing size-prefixed field"
    raise FormatError(message, field=field, offset=offset, code=ErrorCode.INVALID_VALUE) from None


def parse_preamble(buffer, file_size: int | None = None, *,
                   known_features: int = KNOWN_REQUIRED_FEATURES) -> Container:
    """Parse and check the 32-byte Preamble (spec §4.1-§4.3).

    Parameters
    ----------
    buffer:
        The file's bytes (or at least its first 32), any bytes-like object.
    file_size:
        The whole file's size, to check that the header fits; defaults to ``len(buffer)``.
    known_features:
        The required-feature bits this reading accepts (spec §3.3): every bit this package
        implements by default; 0 reads as a 1.0 decoder does, refusing a 1.1 file that needs
        the trellis grid with ``unsupported_feature``.

    Raises
    ------
    BadMagicError, TruncatedError, UnsupportedVersionError, UnsupportedFeatureError,
    ReservedValueError, LimitExceededError
    """
    data = bytes(buffer[:PREAMBLE_SIZE_BYTES])
    file_size = len(buffer) if file_size is None else file_size
    if data[: len(MAGIC)] != MAGIC[: len(data)]:
        raise BadMagicError("not an .nrd file: the first 8 bytes are not 89 4E 52 44 0D 0A 1A 0A",
                            field="preamble.magic", offset=0)
    if len(data) < PREAMBLE_SIZE_BYTES:
        raise TruncatedError(f"the file has {len(data)} bytes; the preamble alone needs "
                             f"{PREAMBLE_SIZE_BYTES}", field="preamble", offset=len(data),
                             needed=PREAMBLE_SIZE_BYTES)
    preamble = Preamble.parse(data)
    if preamble.major_version != FORMAT_MAJOR_VERSION:
        raise UnsupportedVersionError(
            f"format_version {preamble.major_version}.{preamble.minor_version}; this decoder "
            f"reads {FORMAT_MAJOR_VERSION}.x; upgrade nncodec-rd", field="preamble.major_version",
            offset=8)
    unknown_features = preamble.required_features & ~known_features
    if unknown_features:
        reads = (f"{FORMAT_MAJOR_VERSION}.{FORMAT_MINOR_VERSION}"
                 if known_features == KNOWN_REQUIRED_FEATURES else "1.0")
        raise UnsupportedFeatureError(
            f"required feature bits 0x{unknown_features:08x} are unknown to this decoder "
            f"(format {reads}); upgrade nncodec-rd",
            field="preamble.required_features", offset=12)
    if preamble._reserved0 != 0:
        raise ReservedValueError(f"reserved field is {preamble._reserved0}, must be 0",
                                 field="preamble._reserved0", offset=28)
    if preamble.header_size > Limits.MAX_HEADER_SIZE_BYTES:
        raise LimitExceededError(f"header_size {preamble.header_size} exceeds the limit "
                                 f"{Limits.MAX_HEADER_SIZE_BYTES}", field="preamble.header_size",
                                 offset=16)
    header_end = PREAMBLE_SIZE_BYTES + preamble.header_size
    if header_end > file_size:
        raise TruncatedError(f"the header needs bytes up to {header_end}; the file has {file_size}",
                             field="header", offset=file_size, needed=header_end)
    return preamble


def check_header_checksum(buffer, preamble: Container) -> None:
    """spec §8.1: CRC-32C over preamble bytes 0-23 followed by the header bytes."""
    header_end = PREAMBLE_SIZE_BYTES + preamble.header_size
    with memoryview(buffer) as view:  # no copy of a header of up to 256 MiB
        actual = crc32c(view[PREAMBLE_SIZE_BYTES:header_end],
                        crc32c(view[:CHECKSUMMED_PREAMBLE_BYTES]))
    if actual != preamble.header_crc32c:
        raise ChecksumMismatchError(
            f"header CRC-32C is 0x{actual:08x}, the preamble says 0x{preamble.header_crc32c:08x}: "
            "the file is corrupt", field="preamble.header_crc32c", offset=24,
            expected=preamble.header_crc32c, actual=actual, code=ErrorCode.CHECKSUM_HEADER)


def parse_header(buffer, preamble: Container) -> Container:
    """Parse the Header's bytes (syntax only) and check that they are covered exactly (spec §4.4).

    The returned records carry ``_start``: the absolute byte offset at which each began.
    """
    header_end = PREAMBLE_SIZE_BYTES + preamble.header_size
    stream = HeaderStream.over(buffer, PREAMBLE_SIZE_BYTES, header_end)
    try:
        header = Header.parse_stream(stream)
    except ConstructError as error:
        _raise_parse_error(error, stream, header_end)
    finally:
        stream.release()  # the buffer may be a memory map that its owner closes later
    if stream.tell() != header_end:
        raise FormatError(f"the header's structures end at byte {stream.tell()} but header_size "
                          f"says {header_end}", field="preamble.header_size", offset=stream.tell(),
                          code=ErrorCode.HEADER_SIZE_MISMATCH)
    return header


def read_container(buffer, *, collect: bool = False,
                   known_features: int = KNOWN_REQUIRED_FEATURES):
    """Parse, checksum and validate the whole container (spec §4.9 steps 1-11).

    Returns ``(preamble, header, errors)``: ``errors`` is empty unless ``collect`` is true, in which
    case semantic violations are gathered instead of raised (syntax errors are always raised:
    nothing after them can be read). ``known_features``: as :func:`parse_preamble`'s.
    """
    preamble = parse_preamble(buffer, known_features=known_features)
    check_header_checksum(buffer, preamble)
    header = parse_header(buffer, preamble)
    report = Report(collect=collect)
    validate_header(header, preamble.header_size, buffer, report,
                    required_features=preamble.required_features)
    return preamble, header, report.errors


def features_used(header: dict) -> int:
    """The required-feature bits the tensors of ``header`` (a plain dict) use (spec §3.3)."""
    features = 0
    for record in header["tensors"]:
        body = record.get("body")
        if isinstance(body, dict) and body.get("grid_kind") == GridKind.UNIFORM_TRELLIS:
            features |= FEATURE_TRELLIS
    return features


def build_container_head(header: dict, *, required_features: int | None = None) -> bytes:
    """Build the Preamble and Header bytes of a file whose header is ``header`` (a plain dict).

    The header checksum and size are derived here, never set by the caller; so are the
    required features (:func:`features_used`) and the minor version they need, unless
    ``required_features`` is given (the conformance suite's invalid files).
    """
    if required_features is None:
        required_features = features_used(header)
    header_bytes = Header.build(header)
    preamble = dict(major_version=FORMAT_MAJOR_VERSION,
                    minor_version=minor_version_for(required_features),
                    required_features=required_features, header_size=len(header_bytes),
                    header_crc32c=0, _reserved0=0)
    head = Preamble.build(preamble)
    preamble["header_crc32c"] = crc32c(header_bytes, crc32c(head[:CHECKSUMMED_PREAMBLE_BYTES]))
    return Preamble.build(preamble) + header_bytes


def to_plain(obj):
    """A parsed construct Container as plain dicts and lists that :func:`build_container_head`
    accepts again: parser bookkeeping (``_io``, ``_start``, ``_limit_*``) is dropped, reserved
    fields are kept."""
    if isinstance(obj, Container):
        return {key: to_plain(value) for key, value in obj.items()
                if not key.startswith("_") or key.startswith("_reserved")}
    if isinstance(obj, (ListContainer, RecordTable)):
        return [to_plain(value) for value in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return obj
