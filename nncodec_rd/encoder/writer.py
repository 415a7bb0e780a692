"""Write .nrd files: tensor records, rANS chunks, canonical layout, atomic output (spec §4-§7).

:class:`NrdWriter` is an explicit state machine (open -> tensors and metadata -> closed) that
refuses out-of-order calls. Output goes to a temporary file in the target's folder and is renamed
into place only when complete, so a failure never leaves a half-written file behind.

Payloads are spooled: each tensor's coded bytes go to a temporary spool file in the target's folder
as soon as the tensor is added, and only its record stays in memory. The header comes first in the
file and its size is known only when every record is, so :meth:`NrdWriter.close` writes the header
and then copies the payloads from the spool. Memory is the records, never the model's payloads.
"""

from __future__ import annotations

import os
import struct
import tempfile
from dataclasses import dataclass

import numpy as np
from construct import ConstructError

from ..format.checksum import crc32c
from ..format.constants import (
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
from ..format.container import build_container_head
from ..format.errors import EncoderError
from ..format.grids import CodebookGrid, RightMatrixTransform, UniformGrid
from ..format.layout import RowGeometry, canonical_offsets, chunk_extents, group_count_for
from ..io.atomic import OutputPathError, atomic_write, resolve_output_path
from .entropy import EntropySettings
from .rans import build_frequency_table, context_of_previous, encode_chunk, frequency_table_bytes

NUMPY_DTYPE_OF = {
    TensorDtype.FLOAT32: np.dtype("<f4"),
    TensorDtype.FLOAT16: np.dtype("<f2"),
    TensorDtype.FLOAT64: np.dtype("<f8"),
    TensorDtype.INT8: np.dtype("i1"),
    TensorDtype.UINT8: np.dtype("u1"),
    TensorDtype.INT16: np.dtype("<i2"),
    TensorDtype.INT32: np.dtype("<i4"),
    TensorDtype.INT64: np.dtype("<i8"),
    TensorDtype.BOOL: np.dtype("?"),
    TensorDtype.UINT16: np.dtype("<u2"),
    TensorDtype.UINT32: np.dtype("<u4"),
    TensorDtype.UINT64: np.dtype("<u8"),
}


def tensor_dtype_of(array: np.ndarray) -> TensorDtype:
    """The format's dtype for a NumPy array (bfloat16 via ``ml_dtypes``)."""
    if array.dtype.name == "bfloat16":
        return TensorDtype.BFLOAT16
    for tensor_dtype, numpy_dtype in NUMPY_DTYPE_OF.items():
        if array.dtype == numpy_dtype or array.dtype == numpy_dtype.newbyteorder("="):
            return tensor_dtype
    raise EncoderError(f"dtype {array.dtype} has no .nrd equivalent; convert it to one of "
                       f"{', '.join(d.name.lower() for d in TensorDtype)}")


def parse_dtype(value) -> TensorDtype:
    """Accept a TensorDtype, its name (``"float16"``) or a NumPy dtype."""
    if isinstance(value, TensorDtype):
        return value
    if isinstance(value, str):
        try:
            return TensorDtype[value.upper()]
        except KeyError:
            raise EncoderError(f"unknown dtype {value!r}") from None
    return tensor_dtype_of(np.empty(0, dtype=value))


def utf8_length(text: str, what: str) -> int:
    """Bytes of ``text`` in UTF-8 (spec §5.1 strings); an :class:`EncoderError` naming ``what``
    if it has no UTF-8 form (a lone surrogate, as ``os.fsdecode`` or JSON ``\\ud800`` give)."""
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError as error:
        raise EncoderError(f"{what} {text[:40]!r} is not valid Unicode (character "
                           f"{error.start} is a lone surrogate); spec §5.1 strings are UTF-8") \
            from None


def metadata_entries(metadata: dict | None) -> dict:
    """Typed metadata (spec §5.5) from a plain dict of str/int/float/bool/bytes values.

    Raises
    ------
    EncoderError
        A key that is not a string, not UTF-8 or longer than 256 bytes (spec §9); a value of
        another type, an integer beyond int64, a string that is not UTF-8; too many entries.
    """
    entries = []
    if len(metadata or {}) > Limits.MAX_METADATA_ENTRIES:
        raise EncoderError(f"{len(metadata)} metadata entries; the limit is "
                           f"{Limits.MAX_METADATA_ENTRIES} (spec §9)")
    for key, value in (metadata or {}).items():
        if not isinstance(key, str):
            raise EncoderError(f"metadata keys must be strings, not {type(key).__name__}")
        # spec §5.5, §9: the reader refuses a key over 256 bytes, so the writer must too.
        if utf8_length(key, "metadata key") > Limits.MAX_METADATA_KEY_LENGTH_BYTES:
            raise EncoderError(f"metadata key {key[:40]!r}... is {len(key.encode('utf-8'))} bytes "
                               f"of UTF-8; the limit is {Limits.MAX_METADATA_KEY_LENGTH_BYTES} "
                               "(spec §9): shorten it")
        if isinstance(value, bool):
            entries.append(dict(key=key, value_type=MetadataType.BOOL, value=int(value)))
        elif isinstance(value, (int, np.integer)):
            if not -(1 << 63) <= int(value) < (1 << 63):
                raise EncoderError(f"metadata {key!r}: integer {value} does not fit in int64")
            entries.append(dict(key=key, value_type=MetadataType.INT64, value=int(value)))
        elif isinstance(value, (float, np.floating)):
            entries.append(dict(key=key, value_type=MetadataType.FLOAT64, value=float(value)))
        elif isinstance(value, str):
            utf8_length(value, f"metadata {key!r}: value")
            entries.append(dict(key=key, value_type=MetadataType.STRING, value=value))
        elif isinstance(value, (bytes, bytearray)):
            entries.append(dict(key=key, value_type=MetadataType.BYTES, value=bytes(value)))
        else:
            raise EncoderError(f"metadata {key!r}: values must be str, int, float, bool or bytes, "
                               f"not {type(value).__name__} (serialize it to a string first)")
    return dict(entry_count=len(entries), entries=entries)


NO_EXTENSIONS = dict(extension_count=0, extensions=[])


@dataclass
class PendingTensor:
    """A tensor record waiting for its payload offsets, with its payloads."""

    record: dict
    payloads: list[bytes]
    transform_target: str | None = None


@dataclass
class SpooledPayload:
    """Where a payload waits in the writer's spool file until :meth:`NrdWriter.close`."""

    spool_offset: int
    size: int
    crc32c: int


@dataclass
class _Spool:
    """The temporary file of payloads, in the output's folder (same file system as the output,
    so the space it needs is where the user expects it); removed when the writer ends."""

    folder: str
    name: str = ""
    stream: object = None
    path: str | None = None
    size: int = 0

    def open_at(self, path: str, size: int) -> None:
        """Use the spool file at ``path`` (a journal's), keeping its first ``size`` bytes: what
        was appended after the journal's last entry is dropped."""
        self.stream = open(path, "r+b" if os.path.exists(path) else "w+b")
        self.path = path
        self.stream.truncate(size)
        if self.stream.seek(0, os.SEEK_END) != size:
            raise EncoderError(f"the journal's spool file {path} is shorter than its journal says "
                               f"({size} bytes)")
        self.size = size

    def sync(self) -> None:
        if self.stream is not None:
            self.stream.flush()
            os.fsync(self.stream.fileno())

    def append(self, payload: bytes) -> SpooledPayload:
        if self.stream is None:
            # Named like io.atomic's temporary files: .nrd-<output name>.<random>.spool
            handle, self.path = tempfile.mkstemp(prefix=f".nrd-{self.name[:80]}.",
                                                 suffix=".spool", dir=self.folder)
            self.stream = os.fdopen(handle, "w+b")
        entry = SpooledPayload(self.size, len(payload), crc32c(payload))
        self.stream.write(payload)
        self.size += len(payload)
        return entry

    def copy_to(self, stream, entry: SpooledPayload, buffer_bytes: int = 1 << 22) -> None:
        self.stream.flush()
        self.stream.seek(entry.spool_offset)
        remaining = entry.size
        while remaining:
            block = self.stream.read(min(remaining, buffer_bytes))
            if not block:
                raise EncoderError(f"the spool file {self.path} ended early (changed on disk?)")
            stream.write(block)
            remaining -= len(block)
        self.stream.seek(0, os.SEEK_END)

    def remove(self) -> None:
        if self.stream is not None:
            self.stream.close()
            self.stream = None
        if self.path is not None and os.path.exists(self.path):
            os.unlink(self.path)
        self.path = None


def _to_json(value):
    """A record or metadata as JSON-ready values: bytes tagged as base64, enums as ints."""
    import base64

    if isinstance(value, (bytes, bytearray)):
        return {"__bytes__": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, dict):
        return {"__dict__": [[_to_json(k), _to_json(v)] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        return [_to_json(item) for item in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    raise EncoderError(f"cannot journal a {type(value).__name__}")


def _from_json(value):
    import base64

    if isinstance(value, dict):
        if "__bytes__" in value:
            return base64.b64decode(value["__bytes__"])
        return {_from_json(k): _from_json(v) for k, v in value["__dict__"]}
    if isinstance(value, list):
        return [_from_json(item) for item in value]
    return value


def _grid_record(grid, rows: int) -> tuple[int, dict]:
    if isinstance(grid, UniformGrid):
        group_count = group_count_for(rows, grid.rows_per_group)
        if len(grid.steps) != group_count:
            raise EncoderError(f"the grid has {len(grid.steps)} steps; {rows} rows with "
                               f"rows_per_group={grid.rows_per_group} need {group_count}")
        if not np.all(np.isfinite(grid.steps) & (grid.steps > 0)):
            raise EncoderError("grid steps must be finite and > 0")
        zero_points = [] if grid.zero_points is None else [int(z) for z in grid.zero_points]
        if zero_points and len(zero_points) != group_count:
            raise EncoderError(f"{len(zero_points)} zero points for {group_count} groups")
        if grid.trellis and zero_points:
            raise EncoderError("a trellis grid has no zero points (spec §6.6)")
        kind = GridKind.UNIFORM_TRELLIS if grid.trellis else GridKind.UNIFORM
        return kind, dict(rows_per_group=grid.rows_per_group, group_count=group_count,
                          has_zero_point=1 if zero_points else 0,
                          steps=[float(s) for s in grid.steps], zero_points=zero_points)
    if isinstance(grid, CodebookGrid):
        if len(grid.values) == 0 or not np.all(np.isfinite(grid.values)):
            raise EncoderError("a codebook needs at least one value, all finite")
        return GridKind.CODEBOOK, dict(codebook_size=len(grid.values),
                                       first_index=int(grid.first_index),
                                       codebook_values=[float(v) for v in grid.values])
    raise EncoderError(f"unknown grid {grid!r}; use UniformGrid or CodebookGrid")


def _choose_alphabet(flat: np.ndarray, max_alphabet_size: int) -> tuple[int, int, bool]:
    """(index_offset, alphabet_size, escape) covering the most indices with at most
    ``max_alphabet_size`` symbols; indices outside the window are escaped. Every direct index
    of the window lies within +-(2^23 - 1) (spec §7.5, §9), however close the indices are to it."""
    if flat.size == 0:
        return 0, 1, False
    low, high = int(flat.min()), int(flat.max())
    if high - low + 1 <= max_alphabet_size:
        return low, high - low + 1, False
    values, counts = np.unique(flat, return_counts=True)
    direct = max_alphabet_size - 1
    cumulative = np.concatenate([[0], np.cumsum(counts)])
    # For each start value, the last value within the window; maximize the covered count.
    ends = np.searchsorted(values, values + direct - 1, side="right")
    covered = cumulative[ends] - cumulative[np.arange(len(values))]
    best = int(np.argmax(covered))
    # spec §7.5, §9: the window's direct indices are index_offset ... index_offset + direct - 1,
    # all within +-MAX_ABS_INDEX. A window starting near +2^23 would pass it (indices above the
    # largest one present still count as direct), so it is moved down; the indices it covered
    # still lie in it, and the reader's check of index_offset + direct - 1 holds.
    start = min(int(values[best]), Limits.MAX_ABS_INDEX - direct + 1)
    return start, max_alphabet_size, True


def _symbols_of(flat: np.ndarray, index_offset: int, alphabet_size: int, escape: bool):
    symbols = flat - index_offset
    if escape:
        outside = (symbols < 0) | (symbols >= alphabet_size - 1)
        symbols = np.where(outside, alphabet_size - 1, symbols)
    return symbols.astype(np.int32)


def _precisions_to_try(settings: EntropySettings, counts: np.ndarray):
    """Precisions to try, highest first: ``precision_bits`` alone, or with ``choose_precision``
    down to the fewest bits whose slots hold every symbol that occurs in a context."""
    if not settings.choose_precision:
        return [settings.precision_bits]
    distinct = int((counts > 0).sum(axis=1).max()) if counts.size else 1
    lowest = max(1, (max(distinct, 1) - 1).bit_length())
    return list(range(settings.precision_bits, min(lowest, settings.precision_bits) - 1, -1))


def _cheapest_tables(counts: np.ndarray, settings: EntropySettings):
    """(cost in bits, precision, frequency tables) with the fewest bits for the symbols and the
    tables together (spec §7.2, §7.4), over :func:`_precisions_to_try`.

    As the precision drops, the cost stays flat (frequencies merely halve), falls (smaller
    varints in the tables) and then rises (coarse frequencies waste bits), so the search stops
    four precisions below the best so far. A tie goes to the lower precision: the decoder's
    slot table (2^precision entries per context) is then smaller for nothing."""
    best = None
    for precision in _precisions_to_try(settings, counts):
        frequencies = np.stack([build_frequency_table(row, precision) for row in counts])
        # The code length from the counts (every counted symbol has a frequency >= 1).
        used = counts > 0
        cost_bits = float(np.sum(counts[used] * (precision - np.log2(frequencies[used])))) \
            + 8 * frequency_table_bytes(frequencies)
        if best is None or cost_bits <= best[0] * (1 + 1e-12):
            best = (cost_bits, precision, frequencies)
        elif precision <= best[1] - 4:
            break
    return best


def _plan_contexts(flat, symbols, extents, row_length, settings, index_offset, context_center):
    """Contexts, tables and precision for both context models; pick the cheaper if ``auto``.

    The previous-index context measures distances from ``context_center`` (the index of the most
    probable value) when it lies in the alphabet, else from the alphabet's first index."""
    models = {"iid": [ContextModel.IID], "previous": [ContextModel.PREVIOUS_INDEX],
              "auto": [ContextModel.IID, ContextModel.PREVIOUS_INDEX]}
    last_index = index_offset + (int(symbols.max()) if symbols.size else 0)
    center = int(context_center) if index_offset <= context_center <= last_index \
        else int(index_offset)
    best = None
    alphabet = int(symbols.max()) + 1 if symbols.size else 1
    for model in models[settings.context_model]:
        context_count = 1 if model == ContextModel.IID else settings.context_count
        contexts = np.zeros(len(flat), dtype=np.int32)
        for extent in extents:
            part = slice(extent.first_symbol, extent.first_symbol + extent.symbol_count)
            contexts[part] = context_of_previous(flat[part], model, context_count, center,
                                                 settings.lane_count)
        width = max(alphabet, 1)
        counts = np.bincount(contexts.astype(np.int64) * width + symbols,
                             minlength=context_count * width).reshape(context_count, width)
        cost_bits, precision, frequencies = _cheapest_tables(counts, settings)
        if best is None or cost_bits < best[0]:
            best = (cost_bits, model, context_count, contexts, frequencies, precision)
    _, model, context_count, contexts, frequencies, precision = best
    return model, context_count, center, contexts, frequencies, precision


def encode_rans_tensor(name: str, indices: np.ndarray, grid, dtype, *,
                       settings: EntropySettings | None = None, transformed: bool = False,
                       metadata: dict | None = None, context_center: int = 0) -> PendingTensor:
    """Entropy-code integer ``indices`` (any shape) with ``grid``: a tensor record and its chunks.

    ``context_center`` is the index the previous-index context measures distances from (spec
    §7.4) if it lies within the indices' range: the index of the most probable value, such as a
    zero point.

    With ``transformed``, ``indices`` is the ``(rows, k)`` matrix of coefficients; the writer later
    fills in the transform matrix's index and the final shape ``(rows, columns of the matrix)``.
    """
    settings = settings or EntropySettings()
    dtype = parse_dtype(dtype)
    if dtype not in RECONSTRUCTION_DTYPES:
        raise EncoderError(f"a coded tensor reconstructs to float32, float16 or bfloat16, not "
                           f"{dtype.name.lower()}")
    indices = np.asarray(indices)
    _check_rank(name, indices.ndim)
    if indices.dtype.kind not in "iu":
        raise EncoderError(f"indices must be integers, not {indices.dtype}")
    shape = tuple(int(d) for d in indices.shape)
    geometry = RowGeometry.of_shape(shape)
    coded_row_length = geometry.row_length
    if transformed and len(shape) != 2:
        raise EncoderError("transformed indices must be a (rows, k) matrix")
    flat = indices.reshape(-1).astype(np.int64)
    if flat.size and (np.abs(flat).max() > Limits.MAX_ABS_INDEX):
        raise EncoderError(f"indices must lie within +-{Limits.MAX_ABS_INDEX}")
    grid_kind, grid_record = _grid_record(grid, geometry.rows)
    if grid_kind == GridKind.CODEBOOK and flat.size:
        first, size = grid_record["first_index"], grid_record["codebook_size"]
        if flat.min() < first or flat.max() >= first + size:
            raise EncoderError(f"indices {flat.min()} ... {flat.max()} fall outside the codebook "
                               f"{first} ... {first + size - 1}")
    index_offset, alphabet_size, escape = _choose_alphabet(flat, settings.max_alphabet_size)
    symbols = _symbols_of(flat, index_offset, alphabet_size, escape)
    rows_per_chunk = settings.rows_per_chunk(geometry.rows, coded_row_length)
    extents = chunk_extents(geometry.rows, coded_row_length, rows_per_chunk)
    model, context_count, center, contexts, frequencies, precision_bits = _plan_contexts(
        flat, symbols, extents, coded_row_length, settings, index_offset, context_center)
    if frequencies.shape[1] < alphabet_size:
        pad = np.zeros((context_count, alphabet_size - frequencies.shape[1]), dtype=np.int64)
        frequencies = np.concatenate([frequencies, pad], axis=1)
    payloads = []
    for extent in extents:
        part = slice(extent.first_symbol, extent.first_symbol + extent.symbol_count)
        states, words = encode_chunk(symbols[part], contexts[part], frequencies,
                                     precision_bits, settings.lane_count)
        escapes = flat[part][symbols[part] == alphabet_size - 1] if escape else np.empty(0, np.int64)
        payloads.append(struct.pack("<I", len(escapes)) + escapes.astype("<i4").tobytes()
                        + states.astype("<u4").tobytes() + words.astype("<u2").tobytes())
    body = dict(
        grid_kind=grid_kind, grid=grid_record,
        transform_kind=TransformKind.RIGHT_MATRIX if transformed else TransformKind.NONE,
        transform_tensor=0,
        coded_row_length=coded_row_length,
        precision_bits=precision_bits, lane_count=settings.lane_count,
        context_model=model, context_count=context_count,
        escape_mode=EscapeMode.LAST_SYMBOL if escape else EscapeMode.NONE, _reserved0=0,
        context_center=center, index_offset=index_offset, alphabet_size=alphabet_size,
        tables=[dict(frequencies=[int(f) for f in row]) for row in frequencies],
        rows_per_chunk=rows_per_chunk, chunk_count=len(extents), chunks=[],
    )
    record = dict(name=name, dtype=dtype, rank=len(shape), shape=list(shape), coding=Coding.RANS,
                  body=body, metadata=metadata_entries(metadata), extensions=NO_EXTENSIONS)
    return PendingTensor(record, payloads)


def _check_rank(name, rank: int) -> None:
    if rank > Limits.MAX_RANK:
        raise EncoderError(f"tensor {str(name)[:40]!r} has rank {rank}; the format allows at most "
                           f"{Limits.MAX_RANK} dimensions (spec §9): reshape it")


def encode_raw_tensor(name: str, array: np.ndarray, metadata: dict | None = None) -> PendingTensor:
    """A tensor stored as is: little-endian, row-major (spec §5.3)."""
    array = np.asarray(array)
    _check_rank(name, array.ndim)
    dtype = tensor_dtype_of(array)
    if dtype == TensorDtype.BFLOAT16:
        data = np.ascontiguousarray(array).view(np.uint16).astype("<u2").tobytes()
    elif dtype == TensorDtype.BOOL:
        # spec §5.3: a BOOL element is the byte 0 or 1. A NumPy bool array viewed from other
        # bytes (np.frombuffer(b"\x02", bool)) holds 2 or 255, which the reader refuses.
        data = (np.ascontiguousarray(array).view(np.uint8) != 0).astype(np.uint8).tobytes()
    else:
        data = np.ascontiguousarray(array).astype(NUMPY_DTYPE_OF[dtype]).tobytes()
    record = dict(name=name, dtype=dtype, rank=array.ndim, shape=list(array.shape), coding=Coding.RAW,
                  body=dict(payload=dict(offset=0, size=len(data), crc32c=0)),
                  metadata=metadata_entries(metadata), extensions=NO_EXTENSIONS)
    return PendingTensor(record, [data])


def _build_head(header: dict) -> bytes:
    """The preamble and header bytes; construct's and Unicode's errors become EncoderError."""
    try:
        return build_container_head(header)
    except UnicodeEncodeError as error:
        raise EncoderError(f"a name, key or string value is not valid Unicode (lone surrogate "
                           f"{error.object[error.start:error.end]!r}); spec §5.1 strings are "
                           "UTF-8") from None
    except (ConstructError, struct.error, OverflowError, ValueError, TypeError) as error:
        text = str(error).strip().splitlines()
        raise EncoderError(f"the header cannot be built: {text[-1] if text else type(error).__name__}"
                           ) from None


class _PlannedFile:
    """What the layout rules see of the file the writer is about to write: its size and zero
    bytes between payloads (the writer pads with zeros), without holding the payloads."""

    def __init__(self, size: int):
        self._size = size

    def __len__(self) -> int:
        return self._size

    def __getitem__(self, part: slice) -> bytes:
        start, stop, _ = part.indices(self._size)
        return bytes(max(0, stop - start))


def check_written_head(head: bytes, file_size: int) -> None:
    """Judge the preamble and header about to be written by the reader's own rules (spec §4.8
    steps 2-11: parsing, limits, every semantic rule, the payload layout), so that every file the
    writer writes conforms by construction. A violation is a bug of the caller's input that the
    writer's own checks missed; it becomes an :class:`EncoderError` naming the reader's rule."""
    from ..format.container import parse_header, parse_preamble
    from ..format.errors import NrdError
    from ..format.validate import Report, validate_header

    planned = _PlannedFile(file_size)
    try:
        preamble = parse_preamble(head, file_size=file_size)
        header = parse_header(head, preamble)
        validate_header(header, preamble.header_size, planned, Report(),
                        required_features=preamble.required_features)
    except NrdError as error:
        raise EncoderError(f"the file would break the spec ({error}); nothing was written") \
            from None


class NrdWriter:
    """Builds one .nrd file: add tensors and metadata, then :meth:`close` writes it atomically.

    Use as a context manager; on an exception inside the ``with`` block nothing is written.
    ``entropy`` is the coding of the tensors added without settings of their own
    (:class:`~nncodec_rd.encoder.entropy.EntropySettings` by default).

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "tiny.nrd")
    >>> with NrdWriter(path, metadata={"model_name": "tiny"}) as writer:
    ...     payload_bytes = writer.add_raw("bias", np.zeros(3, np.float32))
    >>> payload_bytes, os.path.getsize(path)
    (12, 140)
    """

    def __init__(self, path, metadata: dict | None = None, *,
                 entropy: EntropySettings | None = None):
        self.path = os.fspath(path)
        self.entropy = EntropySettings() if entropy is None else entropy
        # Refuse a device, FIFO or directory now, not after the encoding (io.atomic's notes).
        resolve_output_path(self.path)
        self.metadata = dict(metadata or {})
        self._pending: list[PendingTensor] = []
        self._names: dict[str, int] = {}
        self._state = "open"
        # The output's folder must exist before any slow work: say so now, naming the folder.
        target = resolve_output_path(self.path)
        folder = os.path.dirname(target)
        if not os.path.isdir(folder):
            raise OutputPathError(f"cannot write {self.path}: the folder {folder} does not exist")
        self._spool = _Spool(folder, os.path.basename(target))

    @property
    def spool_path(self) -> str | None:
        """The temporary file holding the payloads added so far (None before the first); it is
        removed when the writer closes or is abandoned."""
        return self._spool.path

    def _require_open(self, action: str) -> None:
        if self._state != "open":
            raise EncoderError(f"cannot {action}: the writer is {self._state}")

    def _add(self, pending: PendingTensor) -> None:
        name = pending.record["name"]
        if not isinstance(name, str) or not name:
            raise EncoderError("tensor names must be non-empty strings")
        if utf8_length(name, "tensor name") > Limits.MAX_NAME_LENGTH_BYTES:
            raise EncoderError(f"tensor name {name[:40]!r}... exceeds "
                               f"{Limits.MAX_NAME_LENGTH_BYTES} bytes of UTF-8")
        if name in self._names:
            raise EncoderError(f"a tensor named {name!r} was already added")
        self._names[name] = len(self._pending)
        # The payload bytes go to the spool now; the record keeps where they are.
        pending.payloads = [self._spool.append(payload) for payload in pending.payloads]
        self._pending.append(pending)

    def add_metadata(self, **entries) -> None:
        """Add or replace file metadata entries (str, int, float, bool or bytes values)."""
        self._require_open("add metadata")
        self.metadata.update(entries)

    def add_raw(self, name: str, array: np.ndarray, metadata: dict | None = None) -> int:
        """Store ``array`` uncompressed. Returns its payload size in bytes."""
        self._require_open("add a tensor")
        pending = encode_raw_tensor(name, array, metadata)
        self._add(pending)
        return sum(payload.size for payload in pending.payloads)

    def add_pending(self, pending: PendingTensor) -> int:
        """Add a tensor made by :func:`encode_rans_tensor` or :func:`encode_raw_tensor` (to
        weigh it before adding it). Returns its payload size in bytes."""
        self._require_open("add a tensor")
        if pending.record["coding"] != Coding.RAW \
                and pending.record["body"]["transform_kind"] != TransformKind.NONE:
            raise EncoderError("a transformed tensor is added with add_indices(transform=...)")
        self._add(pending)
        return sum(payload.size for payload in pending.payloads)

    def add_indices(self, name: str, indices: np.ndarray, grid, dtype="float32", *,
                    settings: EntropySettings | None = None, transform: RightMatrixTransform | None = None,
                    metadata: dict | None = None, context_center: int = 0) -> int:
        """Store already-quantized integer ``indices`` with the ``grid`` that dequantizes them.
        Returns the size of the tensor's coded chunks in bytes (tables and record excluded).
        ``context_center``: see :func:`encode_rans_tensor` (pass a zero point).

        With ``transform``, the named float32 matrix (added before or after) multiplies the
        dequantized ``(rows, k)`` indices on the right; the decoded tensor is ``(rows, columns)``.
        """
        self._require_open("add a tensor")
        pending = encode_rans_tensor(name, indices, grid, dtype,
                                     settings=self.entropy if settings is None else settings,
                                     transformed=transform is not None, metadata=metadata,
                                     context_center=context_center)
        pending.transform_target = transform.tensor if transform is not None else None
        self._add(pending)
        return sum(payload.size for payload in pending.payloads)

    @property
    def tensor_count(self) -> int:
        """Tensors added so far."""
        return len(self._pending)

    @property
    def payload_bytes(self) -> int:
        """Payload bytes added so far (padding and header excluded)."""
        return self._spool.size

    def size_so_far(self) -> int:
        """The bytes the file would have if closed now (header, padding and payloads of the
        tensors added so far, and the metadata); builds the header, so call it per block, not
        per tensor."""
        header, payloads = self._header_and_payloads()
        self._assign_offsets(header, payloads, provisional_header_size=0)
        head = _build_head(header)
        return canonical_offsets(len(head) - 32, [p.size for p in payloads])[1]

    def _header_and_payloads(self) -> tuple[dict, list]:
        """The header of the tensors added so far (offsets not assigned) and their payloads in
        file order."""
        records = [pending.record for pending in self._pending]
        payloads = [payload for pending in self._pending for payload in pending.payloads]
        return dict(metadata=metadata_entries(self.metadata), tensor_count=len(records),
                    tensors=records, extensions=NO_EXTENSIONS), payloads

    def close(self) -> int:
        """Lay the payloads out canonically and write the file. Returns its size in bytes."""
        self._require_open("close")
        self._state = "closing"
        try:
            size = self._write()
        except BaseException:
            self._state = "failed"
            raise
        finally:
            self._spool.remove()
        self._state = "closed"
        return size

    def abandon(self, keep_spool: bool = False) -> None:
        """Discard everything added; nothing is written. The spool file is removed unless
        ``keep_spool`` (a journal that a resumed run will continue from)."""
        if self._state == "open":
            self._state = "abandoned"
        if keep_spool:
            if self._spool.stream is not None:
                self._spool.stream.close()
                self._spool.stream = None
            self._spool.path = None
        self._spool.remove()

    def use_spool(self, path: str, state: dict | None = None) -> None:
        """Spool payloads into the file at ``path`` (a journal's) and, with ``state`` (from
        :meth:`journal_state`), continue from what it records: the tensors added then, the spool
        cut back to them."""
        self._require_open("use a spool")
        if self._pending:
            raise EncoderError("use_spool comes before the first tensor")
        self._spool.open_at(path, 0 if state is None else int(state["spool_size"]))
        if state is None:
            return
        self.metadata = _from_json(state["metadata"])
        for entry in state["pending"]:
            pending = PendingTensor(_from_json(entry["record"]),
                                    [SpooledPayload(*triple) for triple in entry["payloads"]],
                                    entry["transform_target"])
            self._names[pending.record["name"]] = len(self._pending)
            self._pending.append(pending)

    def journal_state(self) -> dict:
        """What :meth:`use_spool` needs to continue this writer in another process: every record
        added (JSON-ready) and where its payloads lie in the spool, which is synced to disk."""
        self._spool.sync()
        return {"metadata": _to_json(self.metadata), "spool_size": self._spool.size,
                "pending": [{"record": _to_json(p.record), "transform_target": p.transform_target,
                             "payloads": [[e.spool_offset, e.size, e.crc32c]
                                          for e in p.payloads]} for p in self._pending]}

    def _resolve_transforms(self) -> None:
        for pending in self._pending:
            name = pending.transform_target
            if name is None:
                continue
            if name not in self._names:
                raise EncoderError(f"transform tensor {name!r} was never added")
            if name == pending.record["name"]:
                # spec §6.4: transform_tensor names another tensor.
                raise EncoderError(f"tensor {name!r}: its transform names itself; the matrix "
                                   "must be another tensor")
            matrix_pending = self._pending[self._names[name]]
            if matrix_pending.transform_target is not None:
                # spec §6.4: the matrix itself has no transform.
                raise EncoderError(f"tensor {pending.record['name']!r}: transform tensor "
                                   f"{name!r} has a transform itself; use a raw or plain coded "
                                   "matrix")
            matrix = matrix_pending.record
            if matrix["dtype"] != TensorDtype.FLOAT32 or matrix["rank"] != 2:
                raise EncoderError(f"transform tensor {name!r} must be a float32 matrix")
            body = pending.record["body"]
            if matrix["shape"][0] != body["coded_row_length"]:
                raise EncoderError(f"transform {name!r} has {matrix['shape'][0]} rows; the indices "
                                   f"have {body['coded_row_length']} columns")
            body["transform_tensor"] = self._names[name]
            rows = pending.record["shape"][0]
            pending.record["shape"] = [rows, matrix["shape"][1]]

    def _write(self) -> int:
        self._resolve_transforms()
        header, payloads = self._header_and_payloads()
        # Offsets depend on the header size, which does not depend on the offsets' values
        # (they are fixed-width), so one provisional build fixes the layout.
        self._assign_offsets(header, payloads, provisional_header_size=0)
        head = _build_head(header)
        self._assign_offsets(header, payloads, provisional_header_size=len(head) - 32)
        head = _build_head(header)
        offsets, end = canonical_offsets(len(head) - 32, [p.size for p in payloads])
        check_written_head(head, end)

        def write(stream):
            stream.write(head)
            position = len(head)
            for offset, payload in zip(offsets, payloads):
                stream.write(b"\0" * (offset - position))
                self._spool.copy_to(stream, payload)
                position = offset + payload.size

        atomic_write(self.path, write)
        return end

    def _assign_offsets(self, header, payloads, provisional_header_size: int) -> None:
        offsets, _ = canonical_offsets(provisional_header_size, [p.size for p in payloads])
        position = 0
        for record in header["tensors"]:
            if record["coding"] == Coding.RAW:
                payload = payloads[position]
                record["body"]["payload"] = dict(offset=offsets[position], size=payload.size,
                                                 crc32c=payload.crc32c)
                position += 1
            else:
                chunks = []
                for _ in range(record["body"]["chunk_count"]):
                    payload = payloads[position]
                    chunks.append(dict(offset=offsets[position], size=payload.size,
                                       crc32c=payload.crc32c))
                    position += 1
                record["body"]["chunks"] = chunks

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, traceback):
        if exc_type is None and self._state == "open":
            self.close()
        else:
            self.abandon()
        return False


__all__ = ["NrdWriter", "encode_rans_tensor", "encode_raw_tensor", "tensor_dtype_of"]
