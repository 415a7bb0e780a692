"""Judge a file against every normative rule, reporting all faults, not just the first
(``nncodec-rd validate``).

The container's rules (spec §4.8 steps 1-11) are collected by the format layer; when they hold,
every payload checksum is verified and every chunk is decoded on its own, so that a file with
several damaged chunks lists each of them (§8.3, §7).
"""

from __future__ import annotations

import mmap
import os

from ..format.constants import Coding, TensorDtype, TransformKind
from ..format.container import read_container
from ..format.errors import ErrorCode, NrdError
from ..format.layout import RowGeometry, chunk_extents
from ..format.validate import payload_refs
from .reader import (
    DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_MAX_OUTPUT_BYTES,
    DEFAULT_MAX_TRANSFORM_WORK,
    NrdFile,
    check_header_size,
    numpy_dtype,
)


def _read_map(path: str):
    with open(path, "rb") as stream:
        if os.fstat(stream.fileno()).st_size == 0:
            return b""
        return mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ)


def validate_file(path, *, max_output_bytes: int | None = DEFAULT_MAX_OUTPUT_BYTES,
                  max_transform_work: int | None = DEFAULT_MAX_TRANSFORM_WORK,
                  max_header_bytes: int | None = DEFAULT_MAX_HEADER_BYTES) -> list[NrdError]:
    """Every violation of the spec found in the file at ``path`` (an empty list: it conforms).

    Parameters
    ----------
    path:
        The file to judge.
    max_output_bytes:
        Bound on any one array decoded while checking (see :class:`NrdFile`; by default
        ``DEFAULT_MAX_OUTPUT_BYTES``; ``None`` for no bound); a tensor beyond it is reported as
        ``output_too_large`` (not a fault of the file: the caller's bound) and not decoded.
    max_transform_work:
        Bound on a transform's product, in multiply-adds (see :class:`NrdFile`); beyond it,
        ``output_too_large`` as well.
    max_header_bytes:
        Bound on the header's size (see :class:`NrdFile`); a larger header is reported as
        ``output_too_large`` and not parsed.

    Returns
    -------
    list of NrdError
        Syntax faults end the list (nothing after them can be read); semantic and layout faults
        are all listed; then checksum faults of every payload, then decoding faults of every
        chunk whose checksum holds.
    """
    path = os.fspath(path)
    try:
        data = _read_map(path)
    except OSError as error:
        return [NrdError(f"cannot read {path}: {error.strerror}", code=ErrorCode.IO)]
    try:
        check_header_size(data, max_header_bytes)
        _, header, errors = read_container(data, collect=True)
    except NrdError as error:
        return [error]
    finally:
        if isinstance(data, mmap.mmap):
            data.close()
    if errors:
        return list(errors)
    found: list[NrdError] = []
    damaged: set[str] = set()
    with NrdFile(path, max_output_bytes=max_output_bytes, max_transform_work=max_transform_work,
                 max_header_bytes=max_header_bytes) as handle:
        for field, ref in payload_refs(header):
            try:
                handle._verify_payload(field, ref)
            except NrdError as error:
                found.append(error)
                damaged.add(field.split(".body")[0])
        for position, record in enumerate(header.tensors):
            if f"header.tensors[{position}]" in damaged:
                continue
            found.extend(_decode_faults(handle, record))
    return found


def _decode_faults(handle: NrdFile, record) -> list[NrdError]:
    """Decode ``record`` chunk by chunk (whole, if raw or transformed); the faults found."""
    pieces = [None]
    if record.coding == Coding.RANS and record.body.transform_kind == TransformKind.NONE \
            and len(record.shape) >= 1:
        geometry = RowGeometry.of_shape(record.shape)
        pieces = [(extent.first_row, extent.first_row + extent.row_count) for extent in
                  chunk_extents(geometry.rows, record.body.coded_row_length,
                                record.body.rows_per_chunk)]
    count = 1
    for dimension in record.shape:
        count *= int(dimension)
    try:
        # The whole tensor against the bound first: decoding it chunk by chunk allocates only a
        # chunk, but a file declaring 2^40 elements would take hours to check.
        handle._reserve(record, count * numpy_dtype(TensorDtype(record.dtype)).itemsize,
                        "the output")
    except NrdError as error:
        return [error]
    faults = []
    for piece in pieces:
        try:
            if piece is None:
                handle.get_tensor(record.name)
            else:
                handle.get_rows(record.name, *piece)
        except NrdError as error:
            faults.append(error)
    return faults


__all__ = ["validate_file"]
