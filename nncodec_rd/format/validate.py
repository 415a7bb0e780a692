"""Semantic rules of the format (spec §5–§9), one function per rule.

Syntax (what bytes go where) is checked by the construct declarations while parsing; the rules here
are everything else a conforming file must satisfy. Each ``check_*`` function reports violations
through a :class:`Report`: in ``raise`` mode the first violation is raised, in ``collect`` mode all of
them are gathered (the validator lists every fault of a file).
"""

from __future__ import annotations

import bisect
import math

import numpy as np
from construct import Container

from .constants import (
    DTYPE_SIZE_BYTES,
    PAYLOAD_ALIGNMENT_BYTES,
    PREAMBLE_SIZE_BYTES,
    EXTENSION_KNOWN_FLAGS,
    EXTENSION_FLAG_REQUIRED,
    FEATURE_TRELLIS,
    FORMAT_MAJOR_VERSION,
    FORMAT_MINOR_VERSION,
    RECONSTRUCTION_DTYPES,
    Coding,
    ContextModel,
    EscapeMode,
    GridKind,
    Limits,
    MetadataType,
    TensorDtype,
    TransformKind,
)
from .errors import (
    ErrorCode,
    FormatError,
    LimitExceededError,
    NrdError,
    ReservedValueError,
    TruncatedError,
    UnsupportedFeatureError,
)
from .layout import (
    RowGeometry,
    align_up,
    chunk_count_for,
    element_count,
    group_count_for,
)
from .syntax import RecordTable


class Report:
    """Where rule functions send violations: raised at once, or collected."""

    def __init__(self, collect: bool = False):
        self.collect = collect
        self.errors: list[NrdError] = []

    def __call__(self, error: NrdError) -> None:
        if not self.collect:
            raise error
        self.errors.append(error)


def _invalid(message, field, offset, code=ErrorCode.INVALID_VALUE):
    return FormatError(message, field=field, offset=offset, code=code)


def _in_index_range(value: int) -> bool:
    return -Limits.MAX_ABS_INDEX <= value <= Limits.MAX_ABS_INDEX


# ---------------------------------------------------------------------------------------------
# spec §5.5 metadata, §5.6 extensions


def check_metadata(metadata, path: str, offset: int | None, report: Report) -> None:
    """Keys are unique and short enough; value types are known; values have their type's size."""
    seen = set()
    limit = Limits.MAX_METADATA_KEY_LENGTH_BYTES
    # Item access, not attributes, and field paths only for an entry at fault: a header may hold
    # hundreds of thousands of entries (issue 17).
    for position, entry in enumerate(metadata.entries):
        key, value_type = entry["key"], entry["value_type"]
        # UTF-8 takes 1 to 4 bytes a character: only a long key needs encoding to be measured.
        if len(key) * 4 > limit and len(key.encode("utf-8")) > limit:
            report(LimitExceededError(f"key is {len(key.encode('utf-8'))} bytes; the limit is "
                                      f"{limit}", field=f"{path}.entries[{position}].key",
                                      offset=entry["_start"]))
        if key in seen:
            report(_invalid(f"duplicate metadata key {key!r}", f"{path}.entries[{position}].key",
                            entry["_start"], ErrorCode.DUPLICATE_KEY))
        seen.add(key)
        if value_type.__class__ is not MetadataType:
            report(UnsupportedFeatureError(f"unknown metadata value_type {value_type}",
                                           field=f"{path}.entries[{position}].value_type",
                                           offset=entry["_start"]))
            continue
        if value_type is MetadataType.BOOL and entry["value"] not in (0, 1):
            report(_invalid(f"BOOL value must be 0 or 1, not {entry['value']}",
                            f"{path}.entries[{position}].value", entry["_start"]))


def check_extensions(extensions, path: str, report: Report) -> None:
    """Reserved flag bits are 0; an unknown required extension makes the file undecodable.

    Version 1.0 defines no extension type, so every extension is unknown: optional ones are
    skipped (spec §3.4), required ones rejected.
    """
    for position, extension in enumerate(extensions.extensions):
        field = f"{path}.extensions[{position}]"
        if extension.extension_flags & ~EXTENSION_KNOWN_FLAGS:
            report(ReservedValueError(f"reserved extension_flags bits set "
                                      f"(0x{extension.extension_flags:04x})",
                                      field=field + ".extension_flags", offset=extension._start))
        if extension.extension_flags & EXTENSION_FLAG_REQUIRED:
            report(UnsupportedFeatureError(
                f"required extension type {extension.extension_type} is unknown to this decoder "
                f"(format {FORMAT_MAJOR_VERSION}.{FORMAT_MINOR_VERSION}); upgrade nncodec-rd",
                field=field, offset=extension._start))


# ---------------------------------------------------------------------------------------------
# spec §5.2 tensor records


def check_tensor_shape(record, path: str, report: Report) -> bool:
    """Every dimension and the element count are within the limits. Returns False if not."""
    ok = True
    for axis, dimension in enumerate(record.shape):
        if dimension > Limits.MAX_DIMENSION:
            report(LimitExceededError(f"dimension {dimension} exceeds {Limits.MAX_DIMENSION}",
                                      field=f"{path}.shape[{axis}]", offset=record._start))
            ok = False
    if ok and element_count(record.shape) > Limits.MAX_ELEMENT_COUNT:
        report(LimitExceededError(f"{element_count(record.shape)} elements exceed "
                                  f"{Limits.MAX_ELEMENT_COUNT}", field=f"{path}.shape",
                                  offset=record._start))
        ok = False
    return ok


def check_tensor_name(record, path: str, earlier_names: set, report: Report) -> None:
    """The name is 1 ... 4096 bytes of UTF-8 and differs from every earlier tensor's name."""
    field = path + ".name"
    size = len(record.name.encode("utf-8"))
    if size == 0:
        report(_invalid("tensor name is empty", field, record._start))
    elif size > Limits.MAX_NAME_LENGTH_BYTES:
        report(LimitExceededError(f"name is {size} bytes; the limit is "
                                  f"{Limits.MAX_NAME_LENGTH_BYTES}", field=field,
                                  offset=record._start))
    if record.name in earlier_names:
        report(_invalid(f"duplicate tensor name {record.name!r}", field, record._start,
                        ErrorCode.DUPLICATE_NAME))
    earlier_names.add(record.name)


def check_raw_body(record, path: str, report: Report) -> None:
    """A raw payload holds exactly element_count x element size bytes."""
    expected = element_count(record.shape) * DTYPE_SIZE_BYTES[record.dtype]
    if record.body.payload.size != expected:
        report(_invalid(f"raw payload size {record.body.payload.size} != {expected} "
                        f"(elements x {DTYPE_SIZE_BYTES[record.dtype]} bytes)",
                        path + ".body.payload.size", record._start))


def check_uniform_grid(grid, rows: int, path: str, offset, report: Report,
                       allowed_zero_point_flags: tuple = (0, 1)) -> None:
    """Group count matches the rows; steps finite and positive; zero points in index range.
    A trellis grid allows ``has_zero_point`` 0 only (spec §6.6)."""
    expected_groups = group_count_for(rows, grid.rows_per_group)
    if grid.group_count != expected_groups:
        report(_invalid(f"group_count {grid.group_count} != {expected_groups} for {rows} rows and "
                        f"rows_per_group {grid.rows_per_group}", path + ".group_count", offset))
    if grid.has_zero_point not in allowed_zero_point_flags:
        report(_invalid(f"has_zero_point must be {' or '.join(map(str, allowed_zero_point_flags))}"
                        f", not {grid.has_zero_point}", path + ".has_zero_point", offset))
    for position, step in enumerate(grid.steps):
        if not (math.isfinite(step) and step > 0):
            report(_invalid(f"step {step} is not finite and positive", f"{path}.steps[{position}]",
                            offset))
    for position, zero_point in enumerate(grid.zero_points):
        if not _in_index_range(zero_point):
            report(_invalid(f"zero point {zero_point} outside +-{Limits.MAX_ABS_INDEX}",
                            f"{path}.zero_points[{position}]", offset))


def check_codebook_grid(grid, path: str, offset, report: Report) -> None:
    """The codebook is non-empty, its values finite, and its indices in range."""
    if grid.codebook_size == 0:
        report(_invalid("codebook_size is 0", path + ".codebook_size", offset))
        return
    last = grid.first_index + grid.codebook_size - 1
    if not (_in_index_range(grid.first_index) and _in_index_range(last)):
        report(_invalid(f"codebook indices {grid.first_index} ... {last} outside "
                        f"+-{Limits.MAX_ABS_INDEX}", path + ".first_index", offset))
    for position, value in enumerate(grid.codebook_values):
        if not math.isfinite(value):
            report(_invalid(f"codebook value {value} is not finite", f"{path}.codebook_values[{position}]",
                            offset))


def check_transform(record, body, position: int, tensors, path: str, report: Report) -> None:
    """A transform refers to an earlier-declared-or-later float32 matrix of matching shape."""
    offset = body._start
    geometry = RowGeometry.of_shape(record.shape)
    if not isinstance(body.transform_kind, TransformKind):
        report(UnsupportedFeatureError(f"unknown transform_kind {body.transform_kind}",
                                       field=path + ".transform_kind", offset=offset))
        return
    # spec §4.9: the coded_row_length limit first, for either kind.
    if body.coded_row_length > Limits.MAX_DIMENSION:
        report(LimitExceededError(f"coded_row_length {body.coded_row_length} exceeds "
                                  f"{Limits.MAX_DIMENSION}", field=path + ".coded_row_length",
                                  offset=offset))
        return
    if body.transform_kind == TransformKind.NONE:
        if body.coded_row_length != geometry.row_length:
            report(_invalid(f"coded_row_length {body.coded_row_length} != row length "
                            f"{geometry.row_length}", path + ".coded_row_length", offset))
        if body.transform_tensor != 0:
            report(ReservedValueError("transform_tensor must be 0 without a transform",
                                      field=path + ".transform_tensor", offset=offset))
        return
    target = body.transform_tensor
    field = path + ".transform_tensor"
    if target >= len(tensors) or target == position:
        report(_invalid(f"transform_tensor {target} does not name another tensor", field, offset,
                        ErrorCode.INVALID_REFERENCE))
        return
    # spec §6.4: judged on the referenced record's field values alone; the referenced tensor's
    # own faults are reported when its record is checked.
    matrix = tensors[target]
    problems = []
    if matrix.dtype != TensorDtype.FLOAT32:
        problems.append("is not float32")
    if len(matrix.shape) != 2:
        problems.append("is not a matrix")
    elif (matrix.shape[0] != body.coded_row_length or matrix.shape[1] != geometry.row_length):
        problems.append(f"has shape {list(matrix.shape)}, needs "
                        f"[{body.coded_row_length}, {geometry.row_length}]")
    if matrix.coding not in (Coding.RAW, Coding.RANS):
        problems.append("has an unknown coding")
    elif matrix.coding == Coding.RANS and matrix.body.transform_kind != TransformKind.NONE:
        problems.append("has a transform itself")
    if problems:
        report(_invalid(f"transform tensor {matrix.name!r} " + "; ".join(problems), field, offset,
                        ErrorCode.INVALID_REFERENCE))


def check_entropy_parameters(body, path: str, report: Report) -> None:
    """Precision, lanes, contexts, escape and index range (spec §7.3-§7.5)."""
    offset = body._start
    if not 1 <= body.precision_bits:
        report(_invalid("precision_bits is 0", path + ".precision_bits", offset))
    if body.precision_bits > Limits.MAX_PRECISION_BITS:
        report(LimitExceededError(f"precision_bits {body.precision_bits} exceeds "
                                  f"{Limits.MAX_PRECISION_BITS}", field=path + ".precision_bits",
                                  offset=offset))
    if body.lane_count == 0:
        report(_invalid("lane_count is 0", path + ".lane_count", offset))
    if not isinstance(body.context_model, ContextModel):
        report(UnsupportedFeatureError(f"unknown context_model {body.context_model}",
                                       field=path + ".context_model", offset=offset))
    elif body.context_model == ContextModel.IID and body.context_count != 1:
        report(_invalid(f"IID needs context_count 1, not {body.context_count}",
                        path + ".context_count", offset))
    elif body.context_model == ContextModel.PREVIOUS_INDEX and body.context_count < 2:
        report(_invalid(f"PREVIOUS_INDEX needs context_count >= 2, not {body.context_count}",
                        path + ".context_count", offset))
    if not isinstance(body.escape_mode, EscapeMode):
        report(UnsupportedFeatureError(f"unknown escape_mode {body.escape_mode}",
                                       field=path + ".escape_mode", offset=offset))
    if body._reserved0 != 0:
        report(ReservedValueError(f"reserved byte is {body._reserved0}", field=path + "._reserved0",
                                  offset=offset))
    if body.alphabet_size == 0:
        report(_invalid("alphabet_size is 0", path + ".alphabet_size", offset))
    if not _in_index_range(body.context_center):
        report(_invalid(f"context_center {body.context_center} outside +-{Limits.MAX_ABS_INDEX}",
                        path + ".context_center", offset))
    # The largest direct index; with no direct symbol only index_offset itself is checked.
    direct = body.alphabet_size - (1 if body.escape_mode == EscapeMode.LAST_SYMBOL else 0)
    last = body.index_offset + max(direct, 1) - 1
    if not (_in_index_range(body.index_offset) and _in_index_range(last)):
        report(_invalid(f"direct indices {body.index_offset} ... {last} outside "
                        f"+-{Limits.MAX_ABS_INDEX}", path + ".index_offset", offset))


def check_frequency_tables(body, path: str, report: Report) -> None:
    """Each table sums to exactly 2^precision_bits (spec §7.3)."""
    if not 1 <= body.precision_bits <= Limits.MAX_PRECISION_BITS:
        return
    total = 1 << body.precision_bits
    for position, table in enumerate(body.tables):
        actual = sum(table.frequencies)
        if actual != total:
            report(_invalid(f"frequencies sum to {actual}, not 2^{body.precision_bits} = {total}",
                            f"{path}.tables[{position}]", body._start, ErrorCode.TABLE_SUM))


def check_chunking(body, rows: int, path: str, report: Report) -> None:
    """rows_per_chunk, chunk_count, chunk sizes and symbol counts (spec §7.1)."""
    offset = body._start
    if body.rows_per_chunk == 0:
        report(_invalid("rows_per_chunk is 0", path + ".rows_per_chunk", offset))
        return
    expected = chunk_count_for(rows, body.coded_row_length, body.rows_per_chunk)
    if body.chunk_count != expected:
        report(_invalid(f"chunk_count {body.chunk_count} != {expected}", path + ".chunk_count", offset))
        return
    symbols_per_full_chunk = min(body.rows_per_chunk, rows) * body.coded_row_length
    if symbols_per_full_chunk > Limits.MAX_CHUNK_SYMBOLS:
        report(LimitExceededError(f"{symbols_per_full_chunk} symbols per chunk exceed "
                                  f"{Limits.MAX_CHUNK_SYMBOLS}", field=path + ".rows_per_chunk",
                                  offset=offset))
    [sizes] = payload_columns(body.chunks, ("size",))
    for position in np.flatnonzero(sizes > Limits.MAX_CHUNK_SIZE_BYTES):
        report(LimitExceededError(f"chunk of {int(sizes[position])} bytes exceeds "
                                  f"{Limits.MAX_CHUNK_SIZE_BYTES}",
                                  field=f"{path}.chunks[{position}].size", offset=offset))


def check_rans_body(record, position: int, tensors, path: str, report: Report,
                    required_features: int) -> None:
    """All rules for a rANS-coded tensor record."""
    body = record.body
    offset = body._start
    if record.dtype not in RECONSTRUCTION_DTYPES:
        report(_invalid(f"a coded tensor must reconstruct to float32, float16 or bfloat16, "
                        f"not {record.dtype!r}", path + ".dtype", record._start))
    geometry = RowGeometry.of_shape(record.shape)
    body_path = path + ".body"
    if not isinstance(body.grid_kind, GridKind):
        report(UnsupportedFeatureError(f"unknown grid_kind {body.grid_kind}",
                                       field=body_path + ".grid_kind", offset=offset))
    elif body.grid_kind == GridKind.UNIFORM:
        check_uniform_grid(body.grid, geometry.rows, body_path + ".grid", offset, report)
    elif body.grid_kind == GridKind.UNIFORM_TRELLIS:
        # spec §6.6: the file announces the feature, and the grid has no zero points.
        if not required_features & FEATURE_TRELLIS:
            report(_invalid("a UNIFORM_TRELLIS grid in a file without required_features bit 0",
                            body_path + ".grid_kind", offset))
        check_uniform_grid(body.grid, geometry.rows, body_path + ".grid", offset, report,
                           allowed_zero_point_flags=(0,))
    else:
        check_codebook_grid(body.grid, body_path + ".grid", offset, report)
    check_transform(record, body, position, tensors, body_path, report)
    check_entropy_parameters(body, body_path, report)
    check_frequency_tables(body, body_path, report)
    check_chunking(body, geometry.rows, body_path, report)


def check_tensor_record(record, position: int, tensors, earlier_names: set,
                        report: Report, required_features: int) -> None:
    """All rules for one tensor record, in the order of spec §4.9."""
    path = f"header.tensors[{position}]"
    check_tensor_name(record, path, earlier_names, report)
    if not isinstance(record.dtype, TensorDtype):
        report(UnsupportedFeatureError(f"unknown dtype {record.dtype}", field=path + ".dtype",
                                       offset=record._start))
        return
    if not check_tensor_shape(record, path, report):
        return
    if not isinstance(record.coding, Coding):
        report(UnsupportedFeatureError(f"unknown coding {record.coding}", field=path + ".coding",
                                       offset=record._start))
        return
    if record.coding == Coding.RAW:
        check_raw_body(record, path, report)
    else:
        check_rans_body(record, position, tensors, path, report, required_features)
    check_metadata(record.metadata, path + ".metadata", record._start, report)
    check_extensions(record.extensions, path + ".extensions", report)


# ---------------------------------------------------------------------------------------------
# spec §4.7 payload layout


LAYOUT_BLOCK_REFERENCES = 1 << 16
"""Payload references checked at once by :func:`check_layout` (a few MB of temporaries)."""


class PayloadTable:
    """Every payload reference of the file in canonical (declaration) order, read as NumPy
    columns of each tensor's table: a file of millions of chunks is checked with a few array
    operations on blocks of references, not an object per chunk (issue 17)."""

    def __init__(self, header):
        self._parts: list[tuple[int, int, int, object]] = []  # (first, tensor, coding, refs)
        first = 0
        for position, record in enumerate(header.tensors):
            if record.coding == Coding.RAW:
                refs = [record.body.payload]
            elif record.coding == Coding.RANS:
                refs = record.body.chunks
            else:
                continue
            self._parts.append((first, position, int(record.coding), refs))
            first += len(refs)
        self._firsts = [part[0] for part in self._parts]
        self.count = first

    def __len__(self) -> int:
        return self.count

    def _part(self, index: int):
        return self._parts[bisect.bisect_right(self._firsts, index) - 1]

    def field(self, index: int) -> str:
        """The field path of reference ``index``."""
        first, position, coding, _ = self._part(index)
        if coding == Coding.RAW:
            return f"header.tensors[{position}].body.payload"
        return f"header.tensors[{position}].body.chunks[{index - first}]"

    def ref(self, index: int) -> dict:
        """Reference ``index`` as Python ints: ``offset``, ``size``, ``crc32c``."""
        first, _, _, refs = self._part(index)
        ref = refs[index - first]
        return {name: int(ref[name]) for name in ("offset", "size", "crc32c")}

    def blocks(self, length: int | None = None):
        """``(first index, offsets, sizes)`` of about ``length`` references at a time, in order
        (uint64 columns): a large chunk table in slices, small tables and raw payloads gathered
        (a file of a million one-payload tensors is not a million array operations)."""
        length = length or LAYOUT_BLOCK_REFERENCES
        offsets: list = []  # pieces of the block being gathered: arrays, or lists of ints
        sizes: list = []
        start = gathered = 0

        def block():
            return start, *(np.concatenate([np.asarray(piece, dtype=np.uint64)
                                            for piece in pieces]) for pieces in (offsets, sizes))

        for first, _, _, refs in self._parts:
            if isinstance(refs, RecordTable):
                column_offsets, column_sizes = payload_columns(refs, ("offset", "size"))
                for begin in range(0, len(refs), length):
                    offsets.append(column_offsets[begin:begin + length])
                    sizes.append(column_sizes[begin:begin + length])
                    gathered += len(offsets[-1])
                    if gathered >= length:
                        yield block()
                        start, gathered = first + begin + len(offsets[-1]), 0
                        offsets, sizes = [], []
                continue
            if not offsets or not isinstance(offsets[-1], list):
                offsets.append([])
                sizes.append([])
            for ref in refs:
                offsets[-1].append(ref["offset"])
                sizes[-1].append(ref["size"])
            gathered += len(refs)
            if gathered >= length:
                yield block()
                offsets, sizes = [], []
                start, gathered = first + len(refs), 0
        if gathered:
            yield block()


def payload_columns(refs, fields=("offset", "size", "crc32c")) -> tuple[np.ndarray, ...]:
    """The ``fields`` columns (uint64; by default ``offset``, ``size`` and ``crc32c``) of payload
    references: a parsed chunk table (views of it, no copy, but for the 4-byte ``crc32c``), or
    any sequence of records with those fields."""
    if isinstance(refs, RecordTable):
        return tuple(refs.column(name).astype(np.uint64, copy=False) for name in fields)
    return tuple(np.array([int(ref[name]) for ref in refs], dtype=np.uint64).reshape(-1)
                 for name in fields)


def payload_refs(header):
    """Every payload reference of the file, in canonical (declaration) order, with its field path
    (a generator of ``(field, ref)``; ``ref`` has ``offset``, ``size`` and ``crc32c``)."""
    table = PayloadTable(header)
    for index in range(len(table)):
        yield table.field(index), Container(table.ref(index))


def _canonical_count(offsets, sizes, expected_first: int, file_size: int) -> int:
    """How many leading references of a block are at their canonical offsets (spec §4.7: each
    at the next multiple of 64 after the previous; the first at ``expected_first``) and inside
    the file."""
    # A size past the file's end fails its own reference, so it can be capped there; the running
    # sum then passes the file's size (and fails) long before it could overflow.
    capped = np.minimum(sizes, np.uint64(file_size + 1)).astype(np.int64)
    expected = np.empty(len(capped), np.int64)
    expected[0] = expected_first
    np.cumsum(-(-capped[:-1] // PAYLOAD_ALIGNMENT_BYTES) * PAYLOAD_ALIGNMENT_BYTES,
              out=expected[1:])
    expected[1:] += expected_first
    with np.errstate(over="ignore"):
        signed = offsets.astype(np.int64)  # >= 2^63 wraps negative: never canonical
        bad = np.flatnonzero((signed != expected) | (signed + capped > file_size))
    return int(bad[0]) if len(bad) else len(capped)


def _nonzero_padding(offsets, sizes, previous_end: int, buffer) -> list:
    """``(position in the block, byte offset)`` of the first non-zero padding byte before each
    reference of a block that has one (all canonical and inside the file)."""
    offsets = offsets.astype(np.int64)
    starts = np.concatenate([[previous_end], offsets[:-1] + sizes[:-1].astype(np.int64)])
    lengths = offsets - starts
    padded = np.flatnonzero(lengths > 0)
    found = []
    try:
        data = np.frombuffer(buffer, np.uint8) if len(buffer) else np.zeros(0, np.uint8)
    except TypeError:  # a file-like stand-in that only slices (the writer's planned file)
        for index in padded:
            padding = bytes(buffer[int(starts[index]):int(offsets[index])])
            if padding.strip(b"\0"):
                found.append((int(index), int(starts[index]) + len(padding)
                              - len(padding.lstrip(b"\0"))))
        return found
    try:
        columns = np.arange(PAYLOAD_ALIGNMENT_BYTES)
        where = starts[padded, None] + columns
        inside = columns < lengths[padded, None]
        nonzero = (data[np.where(inside, where, 0)] != 0) & inside
        found = [(int(padded[row]), int(where[row, nonzero[row].argmax()]))
                 for row in np.flatnonzero(nonzero.any(axis=1))]
    finally:
        del data  # the buffer may be a memory map its owner closes
    return found


def check_layout(header, header_size: int, buffer, report: Report) -> None:
    """spec §4.7, in the order of §4.9 step 11: for each payload in order, its offset is canonical,
    it lies within the file, and the padding before it is zero; then nothing follows the last."""
    file_size = len(buffer)
    table = PayloadTable(header)
    previous_end = PREAMBLE_SIZE_BYTES + header_size
    for first, offsets, sizes in table.blocks():
        good = _canonical_count(offsets, sizes, align_up(previous_end), file_size)
        for index, bad in _nonzero_padding(offsets[:good], sizes[:good], previous_end, buffer):
            report(FormatError("padding byte is not zero", field=table.field(first + index),
                               offset=bad, code=ErrorCode.NONZERO_PADDING))
        if good < len(offsets):  # the first reference out of place or out of the file
            if good:
                previous_end = int(offsets[good - 1]) + int(sizes[good - 1])
            ref, field = table.ref(first + good), table.field(first + good)
            expected = align_up(previous_end)
            if ref["offset"] != expected:
                report(FormatError(f"payload offset {ref['offset']} != {expected}: payloads "
                                   "must follow each other in declaration order, each at the "
                                   "next multiple of 64", field=field + ".offset",
                                   offset=ref["offset"], code=ErrorCode.PAYLOAD_LAYOUT))
                return
            report(TruncatedError(f"the payload needs bytes up to {ref['offset'] + ref['size']}"
                                  f"; the file has {file_size}", field=field, offset=file_size,
                                  needed=ref["offset"] + ref["size"]))
            return
        previous_end = int(offsets[-1]) + int(sizes[-1])
    if file_size > previous_end:
        report(FormatError(f"{file_size - previous_end} bytes after the last payload",
                           field="file", offset=previous_end, code=ErrorCode.TRAILING_BYTES))


def validate_header(header, header_size: int, buffer, report: Report, *,
                    required_features: int) -> None:
    """spec §4.9 steps 10 and 11: every semantic rule of the header, then the payload layout.
    ``required_features`` is the preamble's (a trellis grid needs its bit, spec §6.6)."""
    check_metadata(header.metadata, "header.metadata", None, report)
    earlier_names: set = set()
    for position, record in enumerate(header.tensors):
        check_tensor_record(record, position, header.tensors, earlier_names, report,
                            required_features)
    check_extensions(header.extensions, "header.extensions", report)
    check_layout(header, header_size, buffer, report)
