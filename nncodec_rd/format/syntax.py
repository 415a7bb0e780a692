"""The syntax of the .nrd format, declared once with ``construct`` (spec §4–§7).

Each structure here is the source of truth for the byte layout: the syntax tables in ``spec/`` are
generated from these declarations (``python -m nncodec_rd.format.spec_tables --write``) and a test
checks that they agree. The text after ``*`` on each field is the "meaning" column of the spec's
table. Field names are the spec's field names.

Semantic rules (limits, offsets, table sums, ...) are not checked here but in
:mod:`nncodec_rd.format.validate`, one function per rule.
"""

from __future__ import annotations

import enum
import functools
import io
import struct
from collections.abc import Sequence

import numpy as np
from construct import (
    Adapter,
    Array,
    Const,
    Construct,
    Container,
    FormatField,
    ListContainer,
    ExplicitError,
    Float32l,
    Float64l,
    GreedyBytes,
    GreedyRange,
    Int8ul,
    Int16ul,
    Int32sl,
    Int32ul,
    Int64sl,
    Int64ul,
    Prefixed,
    Struct,
    Switch,
    Tell,
    this,
)
from construct.core import (
    BytesIOWithOffsets,
    RangeError,
    StreamError,
    evaluate,
    stream_read,
    stream_seek,
    stream_tell,
    stream_write,
)

from .constants import (
    MAGIC,
    Limits,
    Coding,
    ContextModel,
    EscapeMode,
    GridKind,
    MetadataType,
    TensorDtype,
    TransformKind,
)

# ---------------------------------------------------------------------------------------------
# Field types the spec names (spec §2.3)


class EnumField(Adapter):
    """An unsigned integer whose values are named by an :class:`enum.IntEnum`.

    Known values parse to the enum member, unknown ones to a plain ``int`` so that the semantic
    step (not the parser) decides whether they are an unsupported feature.
    """

    def __init__(self, subcon: Construct, enum_class: type[enum.IntEnum]):
        super().__init__(subcon)
        self.enum_class = enum_class

    def _decode(self, obj, context, path):
        try:
            return self.enum_class(obj)
        except ValueError:
            return int(obj)

    def _encode(self, obj, context, path):
        return int(obj)


class Utf8String(Adapter):
    """UTF-8 text stored after a length prefix (``subcon`` is ``Prefixed(..., GreedyBytes)``)."""

    def _decode(self, obj, context, path):
        try:
            return obj.decode("utf-8")
        except UnicodeDecodeError as error:
            raise ExplicitError(f"invalid UTF-8 at byte {error.start} of the string", path=path)

    def _encode(self, obj, context, path):
        return obj.encode("utf-8")


class VarUInt(Construct):
    """Unsigned LEB128 integer in its minimal form, at most ``max_bytes`` bytes (spec §2.3).

    Seven value bits per byte, least significant group first; the top bit of each byte is set when
    another byte follows. A final byte of 0x00 after other bytes (a non-minimal form) is invalid.
    """

    def __init__(self, max_bytes: int):
        super().__init__()
        self.max_bytes = max_bytes

    def _parse(self, stream, context, path):
        value = 0
        for position in range(self.max_bytes):
            byte = stream_read(stream, 1, path)[0]
            value |= (byte & 0x7F) << (7 * position)
            if not byte & 0x80:
                if position > 0 and byte == 0:
                    raise ExplicitError("varint is not in its minimal form", path=path)
                return value
        raise ExplicitError(f"varint longer than {self.max_bytes} bytes", path=path)

    def _build(self, obj, stream, context, path):
        value = int(obj)
        if value < 0 or value >= 1 << (7 * self.max_bytes):
            raise ExplicitError(f"varint value {value} out of range", path=path)
        out = bytearray()
        while True:
            low = value & 0x7F
            value >>= 7
            if value:
                out.append(low | 0x80)
            else:
                out.append(low)
                break
        stream_write(stream, bytes(out), len(out), path)
        return obj

    def _sizeof(self, context, path):
        from construct import SizeofError

        raise SizeofError("varint has no fixed size", path=path)


class LimitViolation(ExplicitError):
    """Raised while parsing when a count or size field exceeds its normative limit (spec §9)."""

    def __init__(self, field: str, value: int, limit: int, path=None):
        self.field = field
        self.value = value
        self.limit = limit
        super().__init__(f"{field} = {value} exceeds the limit {limit}", path=path)


class LimitCheck(Construct):
    """Zero-size check that the already-parsed ``field`` is at most ``limit`` (spec §9).

    It stands right after the field it checks, so a decoder rejects an oversized count before it
    reads (or allocates for) the array the count describes.
    """

    def __init__(self, field: str, limit: int, minimum: int = 0):
        super().__init__()
        self.flagbuildnone = True
        self.field = field
        self.limit = limit
        self.minimum = minimum

    def _check(self, context, path):
        value = context[self.field]
        if value > self.limit:
            raise LimitViolation(self.field, value, self.limit, path=path)

    def _parse(self, stream, context, path):
        self._check(context, path)
        return None

    def _build(self, obj, stream, context, path):
        self._check(context, path)
        return None

    def _sizeof(self, context, path):
        return 0


class SizedFieldOverrun(ExplicitError):
    """A field inside a sized field needs more bytes than remain in it: the sized field's fault
    (``invalid_value``, spec §2.1), even where the Header ends at the same byte."""

    def __init__(self, message: str, path, offset: int):
        super().__init__(message, path=path)
        self.offset = offset


class ExactPrefixed(Prefixed):
    """A ``Prefixed`` field whose content MUST fill its stated size exactly (no bytes left over)."""

    def _parse(self, stream, context, path):
        length = self.lengthfield._parsereport(stream, context, path)
        start = stream_tell(stream, path)
        if isinstance(stream, HeaderStream):
            substream = stream.window(length, path)
        else:
            substream = BytesIOWithOffsets.from_reading(stream, length, path)
        try:
            obj = self.subcon._parsereport(substream, context, path)
        except StreamError as error:
            # spec §2.1: the innermost region holding the field is at fault: this one.
            raise SizedFieldOverrun(str(error).splitlines()[-1], getattr(error, "path", path),
                                    substream.tell()) from None
        left = length - (substream.tell() - start)
        if left:
            raise ExplicitError(f"{left} bytes left over inside a field of stated size {length}", path=path)
        return obj


# ---------------------------------------------------------------------------------------------
# Parsing a large header in one pass (issue 17): construct builds one Python object per field,
# about 20 us and 20 bytes of memory per byte of a chunk table. The arrays below parse their
# elements in one step when the bytes are well formed and fall back to construct's element-by-
# element parse otherwise, so a malformed array fails exactly as its declaration says.


class HeaderStream:
    """A read-only stream over a window of a buffer, positions absolute in the file.

    A size-prefixed field becomes a sub-window of the same memory (:meth:`window`) instead of a
    copy, so parsing a header costs no copy of it; :meth:`release` lets the buffer (a memory map)
    be closed afterwards.
    """

    def __init__(self, view: memoryview, base: int, views: list | None = None):
        self.view = view
        self.base = base
        self.position = 0
        self._views = [view] if views is None else views

    @classmethod
    def over(cls, buffer, start: int, end: int) -> "HeaderStream":
        """The bytes ``start`` ... ``end`` of ``buffer`` (bytes, bytearray or a memory map)."""
        return cls(memoryview(buffer)[start:end], start)

    def read(self, size: int | None = -1) -> bytes:
        end = len(self.view) if size is None or size < 0 else min(len(self.view),
                                                                   self.position + size)
        data = bytes(self.view[self.position:end])
        self.position = max(self.position, end)
        return data

    def tell(self) -> int:
        return self.base + self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        position = {io.SEEK_SET: offset - self.base, io.SEEK_CUR: self.position + offset,
                    io.SEEK_END: len(self.view) + offset}[whence]
        if position < 0:
            raise ValueError("negative seek position")
        self.position = position
        return self.tell()

    def window(self, length: int, path) -> "HeaderStream":
        """The next ``length`` bytes as a stream of their own (this one moves past them)."""
        available = len(self.view) - self.position
        if length > available:  # as construct's stream_read words it
            self.position = len(self.view)
            raise StreamError(f"stream read less than specified amount, expected {length}, "
                              f"found {available}", path=path)
        view = self.view[self.position:self.position + length]
        self._views.append(view)
        child = HeaderStream(view, self.tell(), self._views)
        self.position += length
        return child

    def release(self) -> None:
        """Release every view of the buffer taken by this stream and its windows."""
        for view in reversed(self._views):
            view.release()
        self._views.clear()


class _Irregular(Exception):
    """A fast parse met bytes it does not take; the element-by-element parse decides."""


class FastArray(Array):
    """An :class:`~construct.Array` that may parse all its elements at once (:meth:`_parse_all`)."""

    def _parse(self, stream, context, path):
        count = evaluate(self.count, context)
        if not 0 <= count:
            raise RangeError(f"invalid count {count}", path=path)
        start = stream_tell(stream, path)
        try:
            return self._parse_all(stream, count, context, path)
        except _Irregular:
            stream_seek(stream, start, io.SEEK_SET, path)
            return _parse_elements(self, stream, count, context, path)

    def _parse_all(self, stream, count, context, path):
        raise _Irregular


def _parse_elements(array: Array, stream, count: int, context, path) -> ListContainer:
    """``array``'s elements one by one, as construct's Array does, with each element's index in
    the path of an error (``header.tensors[3].body``)."""
    elements = ListContainer()
    for index in range(count):
        context._index = index
        elements.append(array.subcon._parsereport(stream, context, f"{path} -> [{index}]"))
    return elements


def _numpy_format(field: FormatField) -> str:
    return "<" + {"B": "u1", "H": "u2", "I": "u4", "L": "u4", "Q": "u8", "b": "i1", "h": "i2", "l": "i4",
                  "i": "i4", "q": "i8", "f": "f4", "d": "f8"}[field.fmtstr[1:]]


class NumberArray(FastArray):
    """An array of fixed-size numbers, parsed to a NumPy array in one read."""

    def _parse_all(self, stream, count, context, path):
        dtype = np.dtype(_numpy_format(self.subcon))
        data = stream.read(count * dtype.itemsize)
        if len(data) != count * dtype.itemsize:
            raise _Irregular
        return np.frombuffer(data, dtype)


class RecordTable(Sequence):
    """Records of fixed-size fields parsed in one read: a NumPy structured array with
    per-field columns (:meth:`column`) for vectorized rules; indexing gives the record as a
    :class:`~construct.Container` of Python ints, as construct's own parse would."""

    def __init__(self, array: np.ndarray):
        self.array = array

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, position):
        if isinstance(position, slice):
            return RecordTable(self.array[position])
        row = self.array[position]
        return Container((name, row[name].item()) for name in self.array.dtype.names)

    def column(self, name: str) -> np.ndarray:
        return self.array[name]

    def __eq__(self, other) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, (str, bytes)):
            return NotImplemented
        return list(self) == list(other)

    def __repr__(self) -> str:
        return f"RecordTable({len(self)} records of {', '.join(self.array.dtype.names)})"


@functools.lru_cache(maxsize=None)
def _record_dtype(structure: Struct) -> np.dtype:
    """The NumPy dtype of a :class:`~construct.Struct` of fixed-size numbers (packed, in order)."""
    return np.dtype([(sub.name, _numpy_format(sub.subcon)) for sub in structure.subcons])


class RecordArray(FastArray):
    """An array of a :class:`~construct.Struct` of fixed-size numbers, parsed to a
    :class:`RecordTable` in one read."""

    def _parse_all(self, stream, count, context, path):
        dtype = _record_dtype(self.subcon)
        data = stream.read(count * dtype.itemsize)
        if len(data) != count * dtype.itemsize:
            raise _Irregular
        return RecordTable(np.frombuffer(data, dtype))


def _decode_varuints(data: np.ndarray, count: int, longest: int) -> tuple[np.ndarray, int]:
    """The first ``count`` :class:`VarUInt` of the bytes ``data`` and how many bytes they take;
    :class:`_Irregular` unless all are there, each at most ``longest`` bytes and minimal."""
    last = np.flatnonzero(data < 0x80)[:count]  # the byte that ends each element
    if len(last) < count:
        raise _Irregular
    lengths = np.diff(last, prepend=-1)
    if count and (lengths.max() > longest or np.any((data[last] == 0) & (lengths > 1))):
        raise _Irregular  # too long, or not in minimal form: the declaration says how
    used = int(last[-1]) + 1 if count else 0
    owner = np.repeat(np.arange(count), lengths)
    place = np.arange(used) - np.repeat(last - lengths + 1, lengths)
    values = np.bincount(owner, weights=(data[:used] & 0x7F).astype(np.float64)
                         * np.exp2(7.0 * place), minlength=count)  # exact below 2^53
    return values.astype(np.int64), used


class VarUIntArray(FastArray):
    """An array of :class:`VarUInt`, decoded with NumPy when every element is well formed."""

    def _parse_all(self, stream, count, context, path):
        data = np.frombuffer(stream.read(count * self.subcon.max_bytes), np.uint8)
        values, used = _decode_varuints(data, count, self.subcon.max_bytes)
        stream_seek(stream, stream_tell(stream, path) - len(data) + used, io.SEEK_SET, path)
        return values


_METADATA_TYPES = {int(kind): kind for kind in MetadataType}
_FIXED_METADATA = {MetadataType.INT64: ("<q", 8), MetadataType.FLOAT64: ("<d", 8),
                   MetadataType.BOOL: ("<B", 1)}
_unpack = struct.unpack_from


def _utf8(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise _Irregular from None


def _take(view: memoryview, position: int, size: int) -> bytes:
    """``size`` bytes at ``position`` (all of them, or :class:`_Irregular`)."""
    if size < 0 or position + size > len(view):
        raise _Irregular
    return bytes(view[position:position + size])


def _walk_metadata(view: memoryview, base: int, position: int, count: int):
    """``count`` metadata entries (spec §5.5) from ``position``; returns them and the end."""
    entries = []
    for _ in range(count):
        (key_size,) = _unpack("<H", view, position)
        key = _utf8(_take(view, position + 2, key_size))
        value_type, value_size = _unpack("<BI", view, position + 2 + key_size)
        value_at = position + 2 + key_size + 5
        kind = _METADATA_TYPES.get(value_type)
        if kind is None:
            raise _Irregular
        if kind in _FIXED_METADATA:
            form, size = _FIXED_METADATA[kind]
            if value_size != size:
                raise _Irregular
            (value,) = _unpack(form, view, value_at)
        else:
            value = _take(view, value_at, value_size)
            if kind == MetadataType.STRING:
                value = _utf8(value)
        entry = Container()
        entry["_start"], entry["key"], entry["value_type"], entry["value"] = \
            base + position, key, kind, value
        entries.append(entry)
        position = value_at + value_size
    return ListContainer(entries), position


class MetadataEntries(FastArray):
    """The entries of a metadata block (spec §5.5), walked with ``struct`` on a
    :class:`HeaderStream`'s memory; anything unusual is left to the declaration."""

    def _parse_all(self, stream, count, context, path):
        if not isinstance(stream, HeaderStream):
            raise _Irregular
        try:
            entries, stream.position = _walk_metadata(stream.view, stream.base, stream.position,
                                                      count)
        except struct.error:
            raise _Irregular from None
        return entries


def _enum(kind: type[enum.IntEnum], value: int):
    """What :class:`EnumField` parses ``value`` to: the member, or the int if unknown."""
    try:
        return kind(value)
    except ValueError:
        return value


_RANS_FIELDS = "<BIQBBBBBBiiI"  # transform_kind ... alphabet_size (spec §7.1)


def _walk_grid(view: memoryview, position: int, end: int, kind) -> Container:
    grid = Container()
    if kind in (GridKind.UNIFORM, GridKind.UNIFORM_TRELLIS):  # spec §6.6: the same layout
        rows_per_group, groups, has_zero_point = _unpack("<QIB", view, position)
        if groups > Limits.MAX_GROUP_COUNT:
            raise _Irregular
        position += 13
        steps = np.frombuffer(_take(view, position, 4 * groups), "<f4")
        position += 4 * groups
        points = groups if has_zero_point else 0
        zero_points = np.frombuffer(_take(view, position, 4 * points), "<i4")
        position += 4 * points
        grid["rows_per_group"], grid["group_count"], grid["has_zero_point"] = \
            rows_per_group, groups, has_zero_point
        grid["steps"], grid["zero_points"] = steps, zero_points
    else:
        size, first_index = _unpack("<Ii", view, position)
        if size > Limits.MAX_CODEBOOK_SIZE:
            raise _Irregular
        position += 8
        grid["codebook_size"], grid["first_index"] = size, first_index
        grid["codebook_values"] = np.frombuffer(_take(view, position, 4 * size), "<f4")
        position += 4 * size
    if position != end:
        raise _Irregular
    return grid


def _walk_rans_body(view: memoryview, base: int, position: int, end: int) -> Container:
    """A RansBody (spec §7.1) filling ``position`` ... ``end`` exactly."""
    body = Container()
    body["_start"] = base + position
    grid_kind = _enum(GridKind, view[position])
    (grid_size,) = _unpack("<I", view, position + 1)
    position += 5
    if not isinstance(grid_kind, GridKind) or position + grid_size > end:
        raise _Irregular
    body["grid_kind"] = grid_kind
    body["grid"] = _walk_grid(view, position, position + grid_size, grid_kind)
    position += grid_size
    (transform_kind, transform_tensor, coded_row_length, precision_bits, lanes, context_model,
     contexts, escape_mode, reserved, context_center, index_offset,
     alphabet) = _unpack(_RANS_FIELDS, view, position)
    position += struct.calcsize(_RANS_FIELDS)
    if (lanes > Limits.MAX_LANE_COUNT or contexts > Limits.MAX_CONTEXT_COUNT
            or alphabet > Limits.MAX_ALPHABET_SIZE):
        raise _Irregular
    body["transform_kind"] = _enum(TransformKind, transform_kind)
    body["transform_tensor"], body["coded_row_length"] = transform_tensor, coded_row_length
    body["precision_bits"], body["lane_count"] = precision_bits, lanes
    body["context_model"], body["context_count"] = _enum(ContextModel, context_model), contexts
    body["escape_mode"], body["_reserved0"] = _enum(EscapeMode, escape_mode), reserved
    body["context_center"], body["index_offset"] = context_center, index_offset
    body["alphabet_size"] = alphabet
    tables = ListContainer()
    for _ in range(contexts):
        data = np.frombuffer(bytes(view[position:min(end, position + 3 * alphabet)]), np.uint8)
        frequencies, used = _decode_varuints(data, alphabet, 3)
        table = Container()
        table["frequencies"] = frequencies
        tables.append(table)
        position += used
    body["tables"] = tables
    rows_per_chunk, chunk_count = _unpack("<QI", view, position)
    if chunk_count > Limits.MAX_CHUNK_COUNT:
        raise _Irregular
    position += 12
    body["rows_per_chunk"], body["chunk_count"] = rows_per_chunk, chunk_count
    chunk_dtype = _record_dtype(PayloadRef)  # declared below; the walk runs after import
    size = chunk_count * chunk_dtype.itemsize
    if position + size != end:
        raise _Irregular
    body["chunks"] = RecordTable(np.frombuffer(_take(view, position, size), chunk_dtype))
    return body


def _walk_record(view: memoryview, base: int, position: int):
    """A TensorRecord (spec §5.2) from ``position``; returns it and the end."""
    record = Container()
    record["_start"] = base + position
    (name_size,) = _unpack("<H", view, position)
    record["name"] = _utf8(_take(view, position + 2, name_size))
    position += 2 + name_size
    dtype, rank = _unpack("<BB", view, position)
    if rank > Limits.MAX_RANK:
        raise _Irregular
    record["dtype"], record["rank"] = _enum(TensorDtype, dtype), rank
    record["shape"] = ListContainer(_unpack(f"<{rank}Q", view, position + 2))
    position += 2 + 8 * rank
    coding = _enum(Coding, view[position])
    (body_size,) = _unpack("<I", view, position + 1)
    position += 5
    body_end = position + body_size
    if body_end > len(view):
        raise _Irregular
    if coding == Coding.RAW and body_size == 20:
        offset, size, crc = _unpack("<QQI", view, position)
        payload = Container()
        payload["offset"], payload["size"], payload["crc32c"] = offset, size, crc
        body = Container()
        body["payload"] = payload
    elif coding == Coding.RANS:
        body = _walk_rans_body(view, base, position, body_end)
    else:
        raise _Irregular
    record["coding"], record["body"] = coding, body
    position = body_end
    (entry_count,) = _unpack("<I", view, position)
    if entry_count > Limits.MAX_METADATA_ENTRIES:
        raise _Irregular
    metadata = Container()
    metadata["entry_count"] = entry_count
    metadata["entries"], position = _walk_metadata(view, base, position + 4, entry_count)
    record["metadata"] = metadata
    (extension_count,) = _unpack("<H", view, position)
    if extension_count:
        raise _Irregular  # rare: the declaration parses them
    extensions = Container()
    extensions["extension_count"], extensions["extensions"] = 0, ListContainer()
    record["extensions"] = extensions
    return record, position + 2


class TensorRecords(Array):
    """The tensor records (spec §5.2), each walked with ``struct`` on a :class:`HeaderStream`'s
    memory (construct takes about 170 us a record); a record the walk does not take is parsed by
    the declaration, which fails where and as it says."""

    def _parse(self, stream, context, path):
        count = evaluate(self.count, context)
        if not 0 <= count:
            raise RangeError(f"invalid count {count}", path=path)
        if not isinstance(stream, HeaderStream):
            return _parse_elements(self, stream, count, context, path)
        records = ListContainer()
        for index in range(count):
            try:
                record, position = _walk_record(stream.view, stream.base, stream.position)
                stream.position = position
            except (_Irregular, struct.error, IndexError):
                context._index = index
                record = self.subcon._parsereport(stream, context, f"{path} -> [{index}]")
            records.append(record)
        return records


def string16():
    """A UTF-8 string with a u16 byte-length prefix."""
    return Utf8String(Prefixed(Int16ul, GreedyBytes))


# ---------------------------------------------------------------------------------------------
# spec §4.1 Preamble

Preamble = Struct(
    "magic" / Const(MAGIC) * "File signature, the 8 bytes 89 4E 52 44 0D 0A 1A 0A.",
    "major_version" / Int16ul * "Major format version; 1 for this specification.",
    "minor_version" / Int16ul
    * "Minor format version: what the writer followed (1 where it sets a required-feature bit of 1.1, §3.1). Never checked: a decoder accepts any value.",
    "required_features" / Int32ul
    * "Bit set of features a decoder MUST implement to decode the file (§3.3): bit 0, the trellis grid (1.1); no other bit is defined.",
    "header_size" / Int64ul * "Size in bytes of the Header that follows the Preamble.",
    "header_crc32c" / Int32ul
    * "CRC-32C of the Preamble's first 24 bytes followed by the Header's `header_size` bytes.",
    "_reserved0" / Int32ul * "Reserved; MUST be 0.",
)

# ---------------------------------------------------------------------------------------------
# spec §5.5 Metadata

MetadataValue = {
    MetadataType.STRING: Utf8String(GreedyBytes),
    MetadataType.INT64: Int64sl,
    MetadataType.FLOAT64: Float64l,
    MetadataType.BOOL: Int8ul,
    MetadataType.BYTES: GreedyBytes,
}

MetadataEntry = Struct(
    "_start" / Tell,
    "key" / string16() * "UTF-8 key, unique within its Metadata block.",
    "value_type" / EnumField(Int8ul, MetadataType) * "Type of `value` (MetadataType).",
    "value"
    / ExactPrefixed(Int32ul, Switch(this.value_type, MetadataValue, default=GreedyBytes))
    * "Value, prefixed by its u32 size in bytes; layout by `value_type` (§5.5).",
)

Metadata = Struct(
    "entry_count" / Int32ul * "Number of entries.",
    "_limit_entry_count" / LimitCheck("entry_count", Limits.MAX_METADATA_ENTRIES),
    "entries" / MetadataEntries(this.entry_count, MetadataEntry) * "The entries, in any order.",
)

# ---------------------------------------------------------------------------------------------
# spec §5.6 Extensions

Extension = Struct(
    "_start" / Tell,
    "extension_type" / Int16ul * "Kind of extension; none are defined in 1.0.",
    "extension_flags" / Int16ul
    * "Bit 0: required (a decoder that does not know `extension_type` MUST reject the file); bits 1-15 reserved, MUST be 0.",
    "body" / Prefixed(Int32ul, GreedyBytes) * "Extension data, prefixed by its u32 size in bytes.",
)

Extensions = Struct(
    "extension_count" / Int16ul * "Number of extensions.",
    "_limit_extension_count" / LimitCheck("extension_count", Limits.MAX_EXTENSIONS),
    "extensions" / Array(this.extension_count, Extension) * "The extensions.",
)

# ---------------------------------------------------------------------------------------------
# spec §5.4 Payload references

PayloadRef = Struct(
    "offset" / Int64ul * "Absolute byte offset of the payload in the file.",
    "size" / Int64ul * "Size of the payload in bytes.",
    "crc32c" / Int32ul * "CRC-32C of the payload's `size` bytes.",
)

# ---------------------------------------------------------------------------------------------
# spec §6 Grids

UniformGrid = Struct(
    "rows_per_group" / Int64ul
    * "Rows sharing one step (and zero point); 0 means one group for the whole tensor.",
    "group_count" / Int32ul
    * "Number of groups: 1 if `rows_per_group` is 0, else ceil(rows / `rows_per_group`) (at least 1).",
    "_limit_group_count" / LimitCheck("group_count", Limits.MAX_GROUP_COUNT),
    "has_zero_point" / Int8ul * "1 if `zero_points` is present, 0 if every zero point is 0.",
    "steps" / NumberArray(this.group_count, Float32l) * "Step of each group; finite and > 0.",
    "zero_points"
    / NumberArray(lambda this: this.group_count if this.has_zero_point else 0, Int32sl)
    * "Zero point (an index) of each group: `group_count` values if `has_zero_point` is not 0, else none.",
)

CodebookGrid = Struct(
    "codebook_size" / Int32ul * "Number of reconstruction values.",
    "_limit_codebook_size" / LimitCheck("codebook_size", Limits.MAX_CODEBOOK_SIZE),
    "first_index" / Int32sl * "The index whose value is `codebook_values[0]`.",
    "codebook_values" / NumberArray(this.codebook_size, Float32l) * "Reconstruction value of indices `first_index`, `first_index`+1, ...; finite.",
)

# spec §6.6: a UNIFORM_TRELLIS grid has the UniformGrid's layout.
GRIDS = {GridKind.UNIFORM: UniformGrid, GridKind.CODEBOOK: CodebookGrid,
         GridKind.UNIFORM_TRELLIS: UniformGrid}

# ---------------------------------------------------------------------------------------------
# spec §7 rANS-coded tensors

FrequencyTable = Struct(
    "frequencies"
    / VarUIntArray(this._.alphabet_size, VarUInt(3))
    * "Frequency of each symbol 0 ... `alphabet_size`-1; they sum to 2^`precision_bits`.",
)

RansBody = Struct(
    "_start" / Tell,
    "grid_kind" / EnumField(Int8ul, GridKind) * "How indices become values (GridKind).",
    "grid"
    / ExactPrefixed(Int32ul, Switch(this.grid_kind, GRIDS, default=GreedyBytes))
    * "Grid parameters, prefixed by their u32 size in bytes; layout by `grid_kind` (§6).",
    "transform_kind" / EnumField(Int8ul, TransformKind) * "Linear map after dequantization (TransformKind).",
    "transform_tensor"
    / Int32ul
    * "Index (in `tensors`) of the transform matrix if `transform_kind` is RIGHT_MATRIX; else MUST be 0.",
    "coded_row_length" / Int64ul
    * "Symbols per row as coded: the row length, or the transform's row count if a transform is used.",
    "precision_bits" / Int8ul * "Probability precision n: frequencies sum to 2^n; 1 <= n <= 16.",
    "lane_count" / Int8ul * "Number of interleaved rANS states per chunk; 1 <= lane_count <= 32.",
    "_limit_lane_count" / LimitCheck("lane_count", Limits.MAX_LANE_COUNT),
    "context_model" / EnumField(Int8ul, ContextModel) * "How a symbol's table is chosen (ContextModel).",
    "context_count" / Int8ul * "Number of frequency tables: 1 for IID, 2 ... 16 for PREVIOUS_INDEX.",
    "_limit_context_count" / LimitCheck("context_count", Limits.MAX_CONTEXT_COUNT),
    "escape_mode" / EnumField(Int8ul, EscapeMode) * "Whether the last symbol is an escape (EscapeMode).",
    "_reserved0" / Int8ul * "Reserved; MUST be 0.",
    "context_center" / Int32sl * "Index from which PREVIOUS_INDEX measures distance; also the previous index of each lane's first symbol in a chunk.",
    "index_offset" / Int32sl * "Index value of symbol 0: symbol s (not an escape) means index s + `index_offset`.",
    "alphabet_size" / Int32ul * "Number of symbols per table, escape symbol included; 1 ... 65536.",
    "_limit_alphabet_size" / LimitCheck("alphabet_size", Limits.MAX_ALPHABET_SIZE),
    "tables" / Array(this.context_count, FrequencyTable) * "One frequency table per context, context 0 first.",
    "rows_per_chunk" / Int64ul * "Rows per chunk (the last chunk may have fewer); >= 1.",
    "chunk_count" / Int32ul * "Number of chunks: ceil(rows / `rows_per_chunk`), or 0 if rows x `coded_row_length` is 0.",
    "_limit_chunk_count" / LimitCheck("chunk_count", Limits.MAX_CHUNK_COUNT),
    "chunks" / RecordArray(this.chunk_count, PayloadRef) * "Entry-point table: where each chunk's payload lies.",
)

RawBody = Struct(
    "payload" / PayloadRef * "The tensor's elements, little-endian, row-major.",
)

BODIES = {Coding.RAW: RawBody, Coding.RANS: RansBody}

TensorRecord = Struct(
    "_start" / Tell,
    "name" / string16() * "Tensor name, UTF-8, 1 ... 4096 bytes, unique in the file.",
    "dtype" / EnumField(Int8ul, TensorDtype) * "Element type of the decoded tensor (TensorDtype).",
    "rank" / Int8ul * "Number of dimensions; 0 ... 8.",
    "_limit_rank" / LimitCheck("rank", Limits.MAX_RANK),
    "shape" / Array(this.rank, Int64ul) * "Size of each dimension, outermost first.",
    "coding" / EnumField(Int8ul, Coding) * "How the elements are stored (Coding).",
    "body"
    / ExactPrefixed(Int32ul, Switch(this.coding, BODIES, default=GreedyBytes))
    * "Coding parameters, prefixed by their u32 size in bytes; layout by `coding` (§5.3).",
    "metadata" / Metadata * "Per-tensor metadata.",
    "extensions" / Extensions * "Per-tensor extensions.",
)

Header = Struct(
    "metadata" / Metadata * "File metadata.",
    "tensor_count" / Int32ul * "Number of tensor records.",
    "_limit_tensor_count" / LimitCheck("tensor_count", Limits.MAX_TENSOR_COUNT),
    "tensors" / TensorRecords(this.tensor_count, TensorRecord) * "The tensor records, in payload order.",
    "extensions" / Extensions * "File-level extensions.",
)

# spec §7.2: the payload of one rANS chunk (not part of the header).
RansChunk = Struct(
    "escape_count" / Int32ul * "Number of escaped indices in this chunk.",
    "escapes" / Array(this.escape_count, Int32sl) * "The escaped indices, in symbol order.",
    "lane_states" / Array(this._.lane_count, Int32ul) * "Initial state of each lane, lane 0 first; each in [2^16, 2^32).",
    "words" / GreedyRange(Int16ul) * "The rANS word stream, u16 words read in order, to the end of the chunk.",
)

# Structures in the order the spec presents them; used to generate and check its syntax tables.
STRUCTURES: dict[str, Struct] = {
    "Preamble": Preamble,
    "Header": Header,
    "Metadata": Metadata,
    "MetadataEntry": MetadataEntry,
    "Extensions": Extensions,
    "Extension": Extension,
    "TensorRecord": TensorRecord,
    "PayloadRef": PayloadRef,
    "RawBody": RawBody,
    "RansBody": RansBody,
    "FrequencyTable": FrequencyTable,
    "UniformGrid": UniformGrid,
    "CodebookGrid": CodebookGrid,
    "RansChunk": RansChunk,
}

ENUMERATIONS: dict[str, type[enum.IntEnum]] = {
    "TensorDtype": TensorDtype,
    "Coding": Coding,
    "GridKind": GridKind,
    "TransformKind": TransformKind,
    "ContextModel": ContextModel,
    "EscapeMode": EscapeMode,
    "MetadataType": MetadataType,
}

__all__ = [
    "Preamble",
    "Header",
    "Metadata",
    "MetadataEntry",
    "Extensions",
    "Extension",
    "TensorRecord",
    "PayloadRef",
    "RawBody",
    "RansBody",
    "FrequencyTable",
    "UniformGrid",
    "CodebookGrid",
    "RansChunk",
    "STRUCTURES",
    "ENUMERATIONS",
    "VarUInt",
    "EnumField",
]
