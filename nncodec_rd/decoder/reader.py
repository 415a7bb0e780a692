"""Open .nrd files lazily and decode tensors, row ranges or indices (spec §4.8, §6, §7).

:class:`NrdFile` memory-maps the file, parses and validates the container once, and decodes on
demand with the Numba kernels; only the output and small per-chunk state are allocated.
"""

from __future__ import annotations

import contextlib
import functools
import mmap
import os
import threading
from dataclasses import dataclass

import numpy as np

from ..format.checksum import crc32c
from ..format.constants import (
    DTYPE_SIZE_BYTES,
    Coding,
    ContextModel,
    EscapeMode,
    GridKind,
    UNIFORM_GRID_KINDS,
    TensorDtype,
    TransformKind,
)
from ..format.container import parse_preamble, read_container, to_plain
from ..format.errors import ErrorCode, FormatError, NrdError, OutputTooLargeError, error_for_code
from ..format.layout import RowGeometry, chunk_extent, chunk_extents, chunks_covering
from ..format.validate import payload_columns, payload_refs
from . import dispatch, kernels, small

_NUMPY_DTYPES = {
    TensorDtype.FLOAT32: "<f4", TensorDtype.FLOAT16: "<f2", TensorDtype.FLOAT64: "<f8",
    TensorDtype.INT8: "i1", TensorDtype.UINT8: "u1", TensorDtype.INT16: "<i2",
    TensorDtype.INT32: "<i4", TensorDtype.INT64: "<i8", TensorDtype.BOOL: "u1",
    TensorDtype.UINT16: "<u2", TensorDtype.UINT32: "<u4", TensorDtype.UINT64: "<u8",
}
def _physical_memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not POSIX, or not reported
        return None


#: The default of ``max_output_bytes``: the most bytes one decoded array may take unless the
#: caller says otherwise: 64 GiB, or the machine's physical memory if that is less. 64 GiB is
#: above any single tensor of a published model (the largest are embedding and output matrices:
#: a vocabulary of 256k words by a width of 16k is 16 GiB in float32); an array larger than the
#: machine's memory cannot be decoded anyway, and asking for it would end in the operating
#: system's out-of-memory killer instead of an error. A file declaring 2^40 elements (4 TiB as
#: float32, coded in a few kilobytes, spec §9 note) is thus refused with a typed error. Pass
#: ``None`` for no bound, or a smaller bound for untrusted files.
DEFAULT_MAX_OUTPUT_BYTES = min(64 << 30, _physical_memory_bytes() or 64 << 30)

#: The most multiply-adds the right-matrix product of one decode may take (spec §6.4: rows x
#: coded row length x columns), by default 2^38: a transform of 4,096 x 16,384 coefficients by
#: a 16,384 x 4,096 matrix fits, and the product of a few hundred bytes cannot run for hours. A
#: conforming file of a few hundred bytes can declare a product of hours (one-symbol tables code
#: any number of coefficients), so the product is bounded like the output. ``None``: no bound.
DEFAULT_MAX_TRANSFORM_WORK = 1 << 38

#: The largest header a file may have unless the caller says otherwise: 100 MiB (safetensors
#: refuses headers over 100 MB). The spec allows 256 MiB (§9). An open costs about 2 bytes of
#: memory per header byte of chunk tables, but 15 of metadata entries and 40 of tiny tensor
#: records, each a Python object (docs/opening-files.md): 100 MiB bounds what a hostile header
#: can make an open cost to about 2 GB and 35 s. A real model's header is far smaller (a 70 B
#: model in chunks of 2^16 weights: about a million chunk entries, 20 MB). ``None``: the spec's
#: limit only.
DEFAULT_MAX_HEADER_BYTES = 100 << 20

OUTPUT_KIND = {TensorDtype.FLOAT32: kernels.OUTPUT_FLOAT32,
               TensorDtype.FLOAT16: kernels.OUTPUT_FLOAT16,
               TensorDtype.BFLOAT16: kernels.OUTPUT_BFLOAT16}
"""The chunk kernels' output kind that decodes a coded tensor of each dtype (spec §6.5)."""


def numpy_dtype(dtype: TensorDtype) -> np.dtype:
    """The NumPy dtype of decoded tensors of ``dtype`` (bfloat16 from ``ml_dtypes``)."""
    if dtype == TensorDtype.BFLOAT16:
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    if dtype == TensorDtype.BOOL:
        return np.dtype(bool)
    return np.dtype(_NUMPY_DTYPES[dtype])


@dataclass(frozen=True)
class TensorInfo:
    """What ``nncodec-rd info`` shows of one tensor."""

    name: str
    dtype: str
    shape: tuple
    coding: str
    grid: str
    payload_bytes: int
    bits_per_weight: float
    chunk_count: int
    context_model: str
    metadata: dict
    #: Probability precision of the rANS tables (spec §7.2); None for a raw tensor.
    precision_bits: int | None = None

    @property
    def element_count(self) -> int:
        count = 1
        for dimension in self.shape:
            count *= dimension
        return count


def _metadata_dict(metadata) -> dict:
    return {entry.key: (bool(entry.value) if entry.value_type == 4 else entry.value)
            for entry in metadata.entries}


@dataclass(frozen=True)
class ChunkDecoder:
    """The decoding tables of one rANS-coded tensor for one output kind (spec §6.1-§6.2,
    §7.4-§7.6), derived once from its record; :meth:`decode` runs the chunk kernel, in parallel
    over chunks, on any buffer holding the tensor's chunks (the mapped file, or a copy of its
    payloads kept in memory for inference-time decoding)."""

    field: str
    row_length: int
    lane_count: int
    precision_bits: int
    context_model: int
    context_count: int
    context_center: int
    escape_symbol: int
    index_offset: int
    frequencies: np.ndarray
    symbol_contexts: np.ndarray
    grid_kind: int
    rows_per_group: int
    steps: np.ndarray
    zero_points: np.ndarray
    codebook: np.ndarray
    codebook_first: int
    value_table: np.ndarray
    invalid_symbols: np.ndarray
    output_kind: int

    @classmethod
    def of_record(cls, record, position: int, output_kind: int,
                  max_value_table_bytes: int | None = None) -> "ChunkDecoder":
        """The tables of ``record`` (tensor number ``position``). A value table above
        ``max_value_table_bytes`` is left out: the kernel then computes each value from the
        grid, with the same bits (a table per step group can outweigh a small tensor)."""
        body = record.body
        rows = RowGeometry.of_shape(record.shape).rows
        frequencies = np.array([table.frequencies for table in body.tables], dtype=np.int64)
        frequencies = frequencies.reshape(body.context_count, body.alphabet_size)
        escape_symbol = body.alphabet_size - 1 if body.escape_mode == EscapeMode.LAST_SYMBOL else -1
        symbol_contexts = kernels.contexts_of_symbols(body.alphabet_size, body.index_offset,
                                                      int(body.context_model), body.context_count,
                                                      body.context_center, escape_symbol)
        if body.grid_kind in UNIFORM_GRID_KINDS:
            # A trellis grid reaches the kernels for its indices only (spec §6.6 is applied
            # after them, _decode_chunks); as a uniform grid, so that no symbol is flagged.
            grid = body.grid
            steps = np.array(grid.steps, dtype=np.float32)
            zero_points = (np.array(grid.zero_points, dtype=np.int64) if grid.has_zero_point
                           else np.zeros(grid.group_count, dtype=np.int64))
            codebook, codebook_first = np.zeros(0, np.float32), 0
            # rows_per_group is a u64 (spec §6.1); any value >= rows means one group, so it is
            # clamped to rows to reach the kernels as an int64 however large the file says.
            rows_per_group, group_count = min(grid.rows_per_group, max(rows, 1)), grid.group_count
        else:
            steps, zero_points = np.zeros(1, np.float32), np.zeros(1, np.int64)
            codebook = np.array(body.grid.codebook_values, dtype=np.float32)
            codebook_first, rows_per_group, group_count = body.grid.first_index, 0, 1
        grid_kind = (kernels.GRID_UNIFORM if body.grid_kind in UNIFORM_GRID_KINDS
                     else kernels.GRID_CODEBOOK)
        value_table, invalid_symbols = kernels.build_value_table(
            body.alphabet_size, body.index_offset, grid_kind, group_count, steps,
            zero_points, codebook, codebook_first, output_kind)
        if max_value_table_bytes is not None and value_table.nbytes > max_value_table_bytes:
            value_table = value_table[:0]
        # A codebook index check is needed only if a symbol outside the codebook can be decoded.
        decodable = frequencies.max(axis=0) > 0 if frequencies.size else np.zeros(0, bool)
        if not np.any(invalid_symbols.astype(bool) & decodable):
            invalid_symbols = invalid_symbols[:0]  # an empty array turns the kernel's check off
        return cls(f"header.tensors[{position}].body.chunks", int(body.coded_row_length),
                   int(body.lane_count), int(body.precision_bits), int(body.context_model),
                   int(body.context_count), int(body.context_center), escape_symbol,
                   int(body.index_offset), frequencies, symbol_contexts, grid_kind,
                   int(rows_per_group), steps, zero_points, codebook, int(codebook_first),
                   value_table, invalid_symbols, output_kind)

    @property
    def table_bytes(self) -> int:
        """Bytes of the tables held (the slot table is built at each decode, not held)."""
        return sum(value.nbytes for value in vars(self).values() if isinstance(value, np.ndarray))

    @functools.cached_property
    def kernel_tables(self) -> kernels.ChunkTables:
        """The chunk kernels' first argument (:class:`~nncodec_rd.decoder.kernels.ChunkTables`),
        derived once; without the slot tables, which :meth:`decode` adds at each decode."""
        alphabet_size = int(self.frequencies.shape[1])
        # An escape symbol of frequency 0 in every table is never decoded: the fast kernel need
        # not look for it.
        escape = self.escape_symbol
        fast_escape_symbol = (escape if escape >= 0 and self.frequencies.size
                              and self.frequencies[:, escape].any() else -1)
        # spec §7.4: the table that follows each direct symbol, as the bases of its two parts.
        if self.context_model == 1:
            next_slot_bases = self.symbol_contexts << self.precision_bits
            next_info_bases = self.symbol_contexts * alphabet_size
        else:
            next_slot_bases = next_info_bases = np.zeros(alphabet_size, dtype=np.uint64)
        return kernels.chunk_tables(
            row_length=self.row_length, lane_count=self.lane_count,
            precision_bits=self.precision_bits, alphabet_size=alphabet_size,
            context_model=self.context_model, context_count=self.context_count,
            context_center=self.context_center, escape_symbol=self.escape_symbol,
            fast_escape_symbol=fast_escape_symbol, index_offset=self.index_offset,
            grid_kind=self.grid_kind, rows_per_group=self.rows_per_group,
            fast_rows_per_group=(self.rows_per_group if self.output_kind != kernels.OUTPUT_INDEX
                                 else 0),
            codebook_first=self.codebook_first, output_kind=self.output_kind,
            symbol_contexts=self.symbol_contexts, next_slot_bases=next_slot_bases,
            next_info_bases=next_info_bases, steps=self.steps, zero_points=self.zero_points,
            codebook=self.codebook, value_table=self.value_table,
            invalid_symbols=self.invalid_symbols)

    def decode(self, buffer: np.ndarray, offsets, sizes, first_rows, counts, out_starts,
               out: np.ndarray, chunk_numbers, file_offsets=None, threads: int | None = None,
               method: str = "auto") -> None:
        """Decode the chunks at ``offsets``/``sizes`` of ``buffer`` into ``out`` (flat, the
        output kind's dtype; chunk ``k`` from ``out_starts[k]``). Faults raise the typed error
        naming chunk ``chunk_numbers[k]``, at its byte offset in the file (``file_offsets`` are
        the chunks' file offsets when ``buffer`` is not the file). ``threads``: as
        :class:`NrdFile`'s. ``method``: ``"auto"`` (Python for a tensor of at most
        ``small.SMALL_TENSOR_SYMBOLS`` symbols while its kernel is not loaded in this process,
        so that a small tensor never waits for a compile or for Numba's start-up, up to
        ``small.PROCESS_BUDGET_SYMBOLS`` symbols per process; else the fast kernel, with the
        general kernel for the chunks it leaves); for tests, ``"small"`` (Python only;
        RuntimeError if it declines a chunk), ``"kernels"`` (fast and general kernels) or
        ``"general"`` (general kernel)."""
        if method not in ("auto", "small", "kernels", "general"):
            raise ValueError(f"unknown decoding method {method!r}")
        tables = self.kernel_tables
        symbols = int(np.sum(counts))
        if method == "small" or (
                method == "auto" and symbols <= small.SMALL_TENSOR_SYMBOLS
                and not dispatch.is_loaded(dispatch.first_kernel(tables), out.dtype.itemsize)
                and small.worth_it(symbols)):
            if small.decode_small(self, buffer, offsets, sizes, first_rows, counts, out_starts,
                                  out):
                return
            if method == "small":
                raise RuntimeError("the Python decoder declined a chunk")
        tables = kernels.with_slot_tables(
            tables, *kernels.build_symbol_tables(self.frequencies, self.precision_bits))
        chunks = np.empty((len(offsets), 5), dtype=np.int64)
        for column, values in enumerate((offsets, sizes, first_rows, counts, out_starts)):
            chunks[:, column] = values
        errors = np.zeros((len(offsets), 2), dtype=np.int64)
        dispatch.decode_chunks(tables, kernels.chunk_batch(buffer, chunks, out, errors),
                               threads=threads, use_fast=method != "general")
        if errors[:, 0].any():
            k = int(np.flatnonzero(errors[:, 0])[0])
            code = ErrorCode(int(errors[k, 0]))
            at = int(errors[k, 1])
            if file_offsets is not None:
                at += int(file_offsets[k]) - int(offsets[k])
            raise error_for_code(code, _KERNEL_MESSAGES[code],
                                 field=f"{self.field}[{int(chunk_numbers[k])}]", offset=at)


@contextlib.contextmanager
def numba_threads(threads: int | None):
    """Run the kernels inside with ``threads`` threads (None: as they are), then give the calling
    thread back the count it had: ``numba.set_num_threads`` is per calling thread and lasts, so
    a reader opened with ``threads=1`` would otherwise slow every later decode of its caller."""
    if threads is None:
        yield
        return
    import numba

    before = numba.get_num_threads()
    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    try:
        yield
    finally:
        numba.set_num_threads(before)


def check_header_size(buffer, limit: int | None) -> None:
    """Refuse, before parsing it, a header larger than the caller's ``max_header_bytes``."""
    if limit is None:
        return
    preamble = parse_preamble(buffer)
    if preamble.header_size > limit:
        raise OutputTooLargeError(
            f"the header is {preamble.header_size} bytes, more than max_header_bytes={limit}; "
            "if you trust the file, open it with a larger max_header_bytes (None: the spec's "
            "limit of 256 MiB; --max-header-bytes on the command line)",
            requested=preamble.header_size, limit=limit, field="preamble.header_size", offset=16)


class NrdFile:
    """A lazily decoded .nrd file (use :func:`nncodec_rd.safe_open`).

    Parameters
    ----------
    path:
        The file to open. It is memory-mapped and validated (container, layout, padding); payload
        checksums are verified when their chunks are decoded (or by :meth:`verify`).
    threads:
        Threads for parallel chunk decoding; ``None`` keeps Numba's setting (all cores). Numba's
        thread count belongs to the calling thread; it is set for each decode and restored
        afterwards, so the caller's other Numba code keeps its own setting.
    max_output_bytes:
        The most bytes one array decoded from the file may take, or ``None`` for no bound;
        by default :data:`DEFAULT_MAX_OUTPUT_BYTES` (64 GiB, above any single tensor of a
        published model, or the machine's physical memory if less). A conforming file may declare 2^40 elements and code them in a few
        bytes (spec §9 note), so a reader of untrusted files should set a smaller one. Checked before anything is allocated, for each
        array a decode allocates: the output (of the tensor or of the row range), the chunk buffer
        (whole chunks, which may be larger than a row range), a transform's coefficients and its
        matrix. Beyond it :class:`~nncodec_rd.format.errors.OutputTooLargeError` (a
        ``LimitExceededError``, code ``output_too_large``) is raised and nothing is decoded. An
        allocation within the bound that the machine cannot give raises the same error (never a
        bare ``MemoryError``).
    max_transform_work:
        The most multiply-adds one decode's right-matrix product (spec §6.4) may take, or
        ``None`` for no bound; by default :data:`DEFAULT_MAX_TRANSFORM_WORK`. Checked before
        the coefficients are decoded; beyond it ``OutputTooLargeError`` (its ``requested`` and
        ``limit`` are then multiply-adds).
    max_header_bytes:
        The largest header the file may have, or ``None`` for the spec's limit (256 MiB); by
        default :data:`DEFAULT_MAX_HEADER_BYTES` (100 MiB). Checked before the header is
        parsed; beyond it ``OutputTooLargeError`` (``requested`` and ``limit`` in bytes).
    memory_map:
        ``True`` (the default): the file is memory-mapped, and only the pages a decode touches
        are read. If the file is truncated in place while it is open, touching a page past its
        new end kills the process with ``SIGBUS``; each decode therefore first compares the
        file's size with its size at open and raises ``NrdError`` (code ``io``) when it changed,
        which catches a change made before the decode but not one made during it. ``False``:
        the whole file is read into memory at open and the file is closed, so nothing done to it
        afterwards can affect the handle; use it for files that other processes may rewrite.

    Raises
    ------
    NrdError
        ``code`` ``io`` when the file cannot be opened.
    FormatError, LimitExceededError
        When the preamble, header or layout break the spec (§4.8 steps 1-11); decoding methods
        raise these too for faults in the payloads they decode, and ``OutputTooLargeError``.
    """

    def __init__(self, path, threads: int | None = None,
                 max_output_bytes: int | None = DEFAULT_MAX_OUTPUT_BYTES,
                 memory_map: bool = True,
                 max_transform_work: int | None = DEFAULT_MAX_TRANSFORM_WORK,
                 max_header_bytes: int | None = DEFAULT_MAX_HEADER_BYTES):
        self.path = os.fspath(path)
        self.threads = threads
        for option, value in (("max_transform_work", max_transform_work),
                              ("max_header_bytes", max_header_bytes)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 0):
                raise ValueError(f"{option} must be a non-negative int or None, not {value!r}")
        self.max_transform_work = max_transform_work
        if max_output_bytes is not None and (isinstance(max_output_bytes, bool)
                                             or not isinstance(max_output_bytes, int)
                                             or max_output_bytes < 0):
            raise ValueError(f"max_output_bytes must be a non-negative int or None, not "
                             f"{max_output_bytes!r}")
        self.max_output_bytes = max_output_bytes
        try:
            self._file = open(self.path, "rb")
        except OSError as error:
            raise NrdError(f"cannot open {self.path}: {error.strerror}", code=ErrorCode.IO) from None
        try:
            size = os.fstat(self._file.fileno()).st_size
            if memory_map:
                self._map = (mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ) if size
                             else b"")
            else:
                self._map = self._file.read()
                self._file.close()
                self._file = None
            self._size_at_open = len(self._map)
            self._buffer = (np.frombuffer(self._map, dtype=np.uint8) if len(self._map)
                            else np.empty(0, np.uint8))
            check_header_size(self._map, max_header_bytes)
            self.preamble, self.header, _ = read_container(self._map)
        except BaseException:
            self.close()
            raise
        self._index = {record.name: position for position, record in enumerate(self.header.tensors)}
        self._verified_chunks: set = set()
        self._decoders: dict = {}  # (position, output kind) -> ChunkDecoder, see _chunk_decoder
        self._decoders_lock = threading.Lock()
        self._method = "auto"  # how chunks are decoded (ChunkDecoder.decode); tests change it

    # -- file-level --------------------------------------------------------------------------

    @property
    def size_bytes(self) -> int:
        """Size of the file in bytes."""
        return len(self._buffer)

    @property
    def format_version(self) -> str:
        """``major.minor`` of the file."""
        return f"{self.preamble.major_version}.{self.preamble.minor_version}"

    def metadata(self) -> dict:
        """File metadata as a dict."""
        return _metadata_dict(self.header.metadata)

    def keys(self) -> list[str]:
        """Tensor names in file order."""
        return [record.name for record in self.header.tensors]

    def __contains__(self, name) -> bool:
        return name in self._index

    def __iter__(self):
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.header.tensors)

    def record(self, name):
        """The parsed tensor record of ``name`` (spec §5.2), as the header holds it."""
        return self._record(name)

    def position(self, name) -> int:
        """Where ``name``'s record stands among the header's tensor records (field paths of
        errors count from it: ``header.tensors[position]``)."""
        self._record(name)
        return self._index[name]

    def _coded_record(self, name):
        """The record of ``name``, which must be rANS-coded without a transform, on a grid whose
        values each index gives alone (not a trellis grid, spec §6.6)."""
        record = self._record(name)
        if (record.coding != Coding.RANS or record.body.transform_kind != TransformKind.NONE
                or record.body.grid_kind == GridKind.UNIFORM_TRELLIS):
            raise ValueError(f"{name!r} is not a rANS-coded tensor without a transform on a "
                             "grid of independent values: its chunks' symbols alone do not "
                             "give its values")
        return record

    def chunk_payloads(self, name) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A copy of the chunk payloads of the rANS-coded tensor ``name`` (without a transform),
        one after another, each checksum verified first (spec §8.3): ``(payload bytes, start of
        each chunk in them, size of each chunk)``, for a caller that keeps a tensor compressed in
        memory. ``ValueError`` for a raw or transformed tensor, or one on a trellis grid."""
        record, position = self._coded_record(name), self.position(name)
        offsets, sizes, _ = payload_columns(record.body.chunks)
        sizes = sizes.astype(np.int64)
        starts = np.zeros(len(sizes), dtype=np.int64)
        np.cumsum(sizes[:-1], out=starts[1:])
        self._reserve(record, int(sizes.sum()), "the chunk payloads")
        payload = np.empty(int(sizes.sum()), dtype=np.uint8)
        for k in range(len(sizes)):
            self._verify_payload(f"header.tensors[{position}].body.chunks[{k}]",
                                 record.body.chunks[k])
            offset = int(offsets[k])
            payload[starts[k]:starts[k] + sizes[k]] = self._buffer[offset:offset + sizes[k]]
        return payload, starts, sizes

    def chunk_decoder(self, name, max_value_table_bytes: int | None = None) -> "ChunkDecoder":
        """The decoding tables of the rANS-coded tensor ``name`` (without a transform) for its
        own dtype (see :meth:`ChunkDecoder.of_record`). ``ValueError`` for a raw or
        transformed tensor, or one on a trellis grid (spec §6.6: values need the states)."""
        record = self._coded_record(name)
        return ChunkDecoder.of_record(record, self.position(name),
                                      OUTPUT_KIND[TensorDtype(record.dtype)],
                                      max_value_table_bytes=max_value_table_bytes)

    def _record(self, name):
        try:
            return self.header.tensors[self._index[name]]
        except KeyError:
            raise KeyError(f"no tensor named {name!r} in {self.path}") from None

    def info(self, name) -> TensorInfo:
        """Shape, dtype, grid and size of one tensor."""
        record = self._record(name)
        if record.coding == Coding.RAW:
            payload = record.body.payload.size
            grid, chunks, context, precision = "raw", 1, "-", None
        else:
            body = record.body
            payload = int(payload_columns(body.chunks, ("size",))[0].sum())
            chunks = body.chunk_count
            context = ContextModel(body.context_model).name.lower()
            precision = int(body.precision_bits)
            if body.grid_kind in UNIFORM_GRID_KINDS:
                grid = ("trellis" if body.grid_kind == GridKind.UNIFORM_TRELLIS else "uniform") \
                    + (f"/{body.grid.group_count} steps" if body.grid.group_count > 1
                       else f" step={body.grid.steps[0]:.4g}")
                if body.grid.has_zero_point:
                    grid += "+zp"
            else:
                grid = f"codebook/{body.grid.codebook_size}"
            if body.transform_kind == TransformKind.RIGHT_MATRIX:
                grid += f" x {self.header.tensors[body.transform_tensor].name}"
        count = 1
        for dimension in record.shape:
            count *= dimension
        return TensorInfo(name=record.name, dtype=TensorDtype(record.dtype).name.lower(),
                          shape=tuple(int(d) for d in record.shape),
                          coding=Coding(record.coding).name.lower(), grid=grid,
                          payload_bytes=int(payload),
                          bits_per_weight=8.0 * payload / count if count else 0.0,
                          chunk_count=chunks, context_model=context,
                          metadata=_metadata_dict(record.metadata), precision_bits=precision)

    def header_dict(self) -> dict:
        """The parsed header as plain dicts and lists (for inspection and JSON)."""
        return to_plain(self.header)

    # -- checksums ---------------------------------------------------------------------------

    def _check_unchanged(self) -> None:
        """Raise ``NrdError`` (code ``io``) when the mapped file's size changed since it was
        opened: its pages past the new end would kill the process with ``SIGBUS``."""
        if self._file is None or self._file.closed:
            return  # read into memory (memory_map=False), or closed
        try:
            size = os.fstat(self._file.fileno()).st_size
        except OSError as error:
            raise NrdError(f"cannot check {self.path}: {error.strerror}", code=ErrorCode.IO) from None
        if size != self._size_at_open:
            raise NrdError(f"{self.path} changed on disk while open ({self._size_at_open} bytes at "
                           f"open, {size} now); open it again, or open files that other processes "
                           "may rewrite with memory_map=False", code=ErrorCode.IO)

    def _verify_payload(self, field: str, ref) -> None:
        # spec §8.3: each payload reference carries its own CRC-32C. Zero-size payloads may share
        # an offset (spec §4.7), so a reference is known good only with its checksum in the key:
        # (offset, size) alone let a wrong CRC of a second empty payload pass (issue 17).
        self._check_unchanged()
        key = (ref.offset, ref.size, ref.crc32c)
        if key in self._verified_chunks:
            return
        actual = crc32c(memoryview(self._map)[ref.offset:ref.offset + ref.size]) if ref.size else 0
        if actual != ref.crc32c:
            from ..format.errors import ChecksumMismatchError

            raise ChecksumMismatchError(
                f"payload CRC-32C is 0x{actual:08x}, the header says 0x{ref.crc32c:08x}: the file "
                "is corrupt", field=field + ".crc32c", offset=ref.offset, expected=ref.crc32c,
                actual=actual, code=ErrorCode.CHECKSUM_PAYLOAD)
        self._verified_chunks.add(key)

    def verify(self) -> None:
        """Check every payload checksum and decode every tensor (raises on the first fault)."""
        for field, ref in payload_refs(self.header):
            self._verify_payload(field, ref)
        for name in self.keys():
            self.get_tensor(name)

    # -- decoding ----------------------------------------------------------------------------

    def get_tensor(self, name, out: np.ndarray | None = None) -> np.ndarray:
        """Decode one whole tensor into a new array of its reconstruction dtype, or into ``out``.

        ``out`` (a C-contiguous, writeable array of the tensor's shape and dtype) lets a caller
        decode into the same memory again and again, as inference-time decoding does; it also
        spares the operating system's cost of zeroing fresh pages for a new array. If the decode
        fails (a corrupt chunk), ``out`` is set to zeros before the error is raised: it never
        holds a mix of decoded chunks and stale or half-decoded ones.

        Raises
        ------
        FormatError, LimitExceededError
            A fault in the tensor's payloads (spec §7, §8.3), or ``OutputTooLargeError``.
        KeyError
            No tensor of that name.
        """
        record = self._record(name)
        rows = RowGeometry.of_shape(record.shape).rows
        return self._decode_into(record, 0, rows, tuple(record.shape), out)

    def get_rows(self, name, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Decode rows ``start:stop`` (first dimension) of a tensor of rank >= 1, decoding only
        the chunks that hold them; into ``out`` if given (see :meth:`get_tensor`).

        A chunk is the unit of decoding (spec §7): rows inside a chunk are decoded with the
        whole chunk, so one row of a tensor written as a single large chunk costs that chunk's
        buffer, which ``max_output_bytes`` bounds as well."""
        record = self._record(name)
        if len(record.shape) == 0:
            raise ValueError(f"{name!r} is 0-d: it has no rows")
        rows = record.shape[0]
        start, stop, _ = slice(start, stop).indices(rows)
        stop = max(start, stop)
        return self._decode_into(record, start, stop, (stop - start, *record.shape[1:]), out)

    def get_slice(self, name) -> "TensorSlice":
        """A lazy view of one tensor, as ``safetensors``' ``get_slice``: ``get_shape()``,
        ``get_dtype()``, and indexing (``view[2:5]``, ``view[2:5, :3]``) that decodes only the
        chunks holding the rows of the first dimension asked for, then applies the rest of the
        index with NumPy."""
        self._record(name)  # KeyError now, not at the first index
        return TensorSlice(self, name)

    @contextlib.contextmanager
    def _typed_memory_errors(self, record, nbytes: int):
        """Re-raise a ``MemoryError`` of a decode of ``record`` (about ``nbytes`` of output) as
        :class:`OutputTooLargeError`: an allocation within ``max_output_bytes`` that the machine
        cannot give still ends in a typed error (one line from the command line)."""
        try:
            yield
        except MemoryError:
            raise OutputTooLargeError(
                f"{record.name!r}: the machine could not allocate the memory to decode it "
                f"(about {nbytes} bytes of output); free memory, or decode fewer rows with "
                "get_rows", field=f"header.tensors[{self._index[record.name]}]",
                requested=nbytes, limit=self.max_output_bytes) from None

    def _decode_into(self, record, start: int, stop: int, shape: tuple, out) -> np.ndarray:
        count = 1
        for dimension in shape:
            count *= int(dimension)
        with self._typed_memory_errors(record, count * numpy_dtype(TensorDtype(record.dtype)).itemsize):
            return self._decode_into_unchecked(record, start, stop, shape, out)

    def _decode_into_unchecked(self, record, start: int, stop: int, shape: tuple,
                               out) -> np.ndarray:
        if out is None:
            return self._decode_rows(record, start, stop).reshape(shape)
        dtype = numpy_dtype(TensorDtype(record.dtype))
        if not isinstance(out, np.ndarray) or out.dtype != dtype or out.shape != shape \
                or not out.flags.c_contiguous or not out.flags.writeable:
            raise ValueError(f"out must be a writeable C-contiguous {dtype} array of shape "
                             f"{shape}, not {getattr(out, 'dtype', type(out).__name__)} "
                             f"{getattr(out, 'shape', '')}")
        if record.coding == Coding.RANS and record.body.transform_kind == TransformKind.NONE:
            kind = OUTPUT_KIND[TensorDtype(record.dtype)]
            flat = out.reshape(-1).view(np.float32 if kind == kernels.OUTPUT_FLOAT32 else np.uint16)
            self._decode_chunks(record, start, stop, kind, destination=flat)
        else:
            out[...] = self._decode_rows(record, start, stop).reshape(shape)
        return out

    def get_indices(self, name) -> np.ndarray:
        """The integer grid indices of a coded tensor (before dequantization and transform).

        The indices are checked as :meth:`get_tensor` checks them: an index outside a CODEBOOK
        grid raises ``index_out_of_range`` (spec §6.2), with the same field and offset.
        """
        record = self._record(name)
        if record.coding != Coding.RANS:
            raise ValueError(f"{name!r} is stored raw: it has no indices")
        geometry = RowGeometry.of_shape(record.shape)
        with self._typed_memory_errors(record, geometry.rows * record.body.coded_row_length * 4):
            out = self._decode_chunks(record, 0, geometry.rows, kernels.OUTPUT_INDEX)
        if record.body.grid_kind == GridKind.CODEBOOK:
            self._check_codebook_indices(record, out)
        return out.reshape(geometry.rows, record.body.coded_row_length) \
            if record.body.transform_kind == TransformKind.RIGHT_MATRIX else out.reshape(tuple(record.shape))

    def _check_codebook_indices(self, record, indices: np.ndarray) -> None:
        """spec §6.2: every index lies in first_index ... first_index + codebook_size - 1.

        The kernel checks direct symbols for the index output as it does for values; escaped
        indices reach the index output unchecked (the value output looks them up), so they are
        checked here, reporting the first chunk holding one, as the value output would."""
        grid = record.body.grid
        first = int(grid.first_index)
        outside = (indices < first) | (indices >= first + int(grid.codebook_size))
        if not outside.any():
            return
        position = self._index[record.name]
        symbol = int(np.flatnonzero(outside)[0])
        rows = RowGeometry.of_shape(record.shape).rows
        for k, extent in enumerate(chunk_extents(rows, record.body.coded_row_length,
                                                 record.body.rows_per_chunk)):
            if extent.first_symbol <= symbol < extent.first_symbol + extent.symbol_count:
                raise error_for_code(ErrorCode.INDEX_OUT_OF_RANGE,
                                     _KERNEL_MESSAGES[ErrorCode.INDEX_OUT_OF_RANGE],
                                     field=f"header.tensors[{position}].body.chunks[{k}]",
                                     offset=int(record.body.chunks[k].offset))

    def _decode_rows(self, record, start: int, stop: int) -> np.ndarray:
        if record.coding == Coding.RAW:
            return self._read_raw(record, start, stop)
        body = record.body
        dtype = TensorDtype(record.dtype)
        if body.transform_kind == TransformKind.NONE:
            out = self._decode_chunks(record, start, stop, OUTPUT_KIND[dtype])
            return out.view(numpy_dtype(dtype)) if dtype != TensorDtype.FLOAT32 else out
        # spec §6.4: dequantize the coefficients to float32, then multiply by the matrix.
        matrix_record = self.header.tensors[body.transform_tensor]
        self._reserve(record, (stop - start) * RowGeometry.of_shape(record.shape).row_length
                      * numpy_dtype(dtype).itemsize, "the output")
        work = (stop - start) * int(body.coded_row_length) * int(matrix_record.shape[1])
        if self.max_transform_work is not None and work > self.max_transform_work:
            raise OutputTooLargeError(
                f"{record.name}: its transform (spec §6.4) takes {work:,} multiply-adds, beyond "
                f"max_transform_work={self.max_transform_work:,}; open the file with a larger "
                f"max_transform_work (None for no bound) if you trust it, or decode fewer rows",
                field=f"header.tensors[{self._index[record.name]}].body.transform_tensor",
                requested=work, limit=self.max_transform_work)
        coefficients = self._decode_chunks(record, start, stop, kernels.OUTPUT_FLOAT32)
        coefficients = coefficients.reshape(stop - start, body.coded_row_length)
        matrix = self._decode_rows(matrix_record, 0, matrix_record.shape[0]).reshape(
            tuple(matrix_record.shape))
        columns = matrix.shape[1]
        kind = OUTPUT_KIND[dtype]
        out_f32 = np.empty((stop - start) * columns if kind == kernels.OUTPUT_FLOAT32 else 0,
                           np.float32)
        out_u16 = np.empty((stop - start) * columns if kind != kernels.OUTPUT_FLOAT32 else 0,
                           np.uint16)
        with self._threads():
            dispatch.right_matrix_product(np.ascontiguousarray(coefficients, np.float32),
                                          np.ascontiguousarray(matrix, np.float32), kind,
                                          out_f32, out_u16)
        return out_f32 if kind == kernels.OUTPUT_FLOAT32 else out_u16.view(numpy_dtype(dtype))

    def _read_raw(self, record, start: int, stop: int) -> np.ndarray:
        payload = record.body.payload
        self._verify_payload(f"header.tensors[{self._index[record.name]}].body.payload", payload)
        dtype = TensorDtype(record.dtype)
        row_bytes = RowGeometry.of_shape(record.shape).row_length * DTYPE_SIZE_BYTES[dtype]
        self._reserve(record, (stop - start) * row_bytes, "the output")
        data = self._buffer[payload.offset + start * row_bytes:payload.offset + stop * row_bytes]
        if dtype == TensorDtype.BFLOAT16:
            return data.view("<u2").astype(np.uint16).view(numpy_dtype(dtype))
        if dtype == TensorDtype.BOOL:
            if np.any(data > 1):
                bad = int(np.flatnonzero(data > 1)[0])
                raise FormatError("a bool element is neither 0 nor 1", field=record.name,
                                  offset=payload.offset + start * row_bytes + bad,
                                  code=ErrorCode.INVALID_VALUE)
            return data.astype(bool)
        return data.view(_NUMPY_DTYPES[dtype]).astype(numpy_dtype(dtype).newbyteorder("="))

    def _reserve(self, record, nbytes: int, what: str) -> None:
        """Refuse, before allocating, an array of ``nbytes`` beyond ``max_output_bytes``."""
        limit = self.max_output_bytes
        if limit is not None and nbytes > limit:
            raise OutputTooLargeError(
                f"{record.name!r}: {what} needs {nbytes} bytes, more than "
                f"max_output_bytes={limit}; if you trust the file, open it with a larger "
                "max_output_bytes (None for no bound; --max-output-bytes on the command line), "
                "or decode fewer rows with get_rows",
                field=f"header.tensors[{self._index[record.name]}]", requested=nbytes,
                limit=limit)

    def _threads(self):
        """Run the kernels with ``threads`` threads (:func:`numba_threads`)."""
        return numba_threads(self.threads)

    _DECODERS_KEPT = 4
    """Chunk decoders kept per file (their value tables may be MBs): a tensor read in many row
    ranges derives its tables once, not once per range."""

    def _chunk_decoder(self, record, position: int, output_kind: int) -> ChunkDecoder:
        key = (position, output_kind)
        with self._decoders_lock:  # one handle may serve several threads
            decoder = self._decoders.pop(key, None)
        if decoder is None:
            decoder = ChunkDecoder.of_record(record, position, output_kind)
        with self._decoders_lock:
            self._decoders[key] = decoder  # most recent last
            while len(self._decoders) > self._DECODERS_KEPT:
                del self._decoders[next(iter(self._decoders))]
        return decoder

    def _decode_chunks(self, record, start_row: int, stop_row: int, output_kind: int,
                       destination: np.ndarray | None = None) -> np.ndarray:
        """Decode the chunks covering rows [start_row, stop_row) and return exactly those rows,
        written into ``destination`` (flat, the kernel's dtype) when it is given."""
        body = record.body
        position = self._index[record.name]
        rows = RowGeometry.of_shape(record.shape).rows
        row_length = body.coded_row_length
        # Only the chunks holding the rows: a tensor of millions of chunks read in row ranges
        # (as the validator reads it) must not list them all for each range.
        selected = list(chunks_covering(rows, row_length, body.rows_per_chunk, start_row,
                                        stop_row))
        extents = {k: chunk_extent(rows, row_length, body.rows_per_chunk, k) for k in selected}
        for k in selected:
            self._verify_payload(f"header.tensors[{position}].body.chunks[{k}]", body.chunks[k])
        first_row = extents[selected[0]].first_row if selected else start_row
        base_symbol = first_row * row_length
        total = sum(extents[k].symbol_count for k in selected)
        chosen = np.asarray(selected, dtype=np.intp)
        all_offsets, all_sizes = payload_columns(body.chunks, ("offset", "size"))  # views
        offsets = all_offsets[chosen].astype(np.int64)
        sizes = all_sizes[chosen].astype(np.int64)
        first_rows = np.array([extents[k].first_row for k in selected], dtype=np.int64)
        counts = np.array([extents[k].symbol_count for k in selected], dtype=np.int64)
        out_starts = np.array([extents[k].first_symbol - base_symbol for k in selected], np.int64)
        # spec §6.6: a trellis grid's values depend on the indices above them in the chunk, so
        # its chunks are decoded to indices and the values made from those.
        value_kind = output_kind
        trellis = (body.grid_kind == GridKind.UNIFORM_TRELLIS
                   and output_kind != kernels.OUTPUT_INDEX)
        if trellis:
            output_kind = kernels.OUTPUT_INDEX
            self._reserve(record, total * 8, "the decoded indices and their values")
        decoder = self._chunk_decoder(record, position, output_kind)
        lo = (start_row - first_row) * row_length
        hi = (stop_row - first_row) * row_length
        if destination is not None and (lo, hi) == (0, total) and not trellis:
            out = destination  # the requested rows are whole chunks: decode in place
        else:
            self._reserve(record, total * (2 if output_kind in (kernels.OUTPUT_FLOAT16,
                                                                 kernels.OUTPUT_BFLOAT16) else 4),
                          "the decoded chunks")
            out = np.empty(total, dtype={kernels.OUTPUT_INDEX: np.int32,
                                         kernels.OUTPUT_FLOAT32: np.float32}.get(output_kind,
                                                                                 np.uint16))
        try:
            with self._threads():
                decoder.decode(self._buffer, offsets, sizes, first_rows, counts, out_starts, out,
                               selected, method=self._method)
        except BaseException:
            if out is destination:
                # The caller's buffer holds whole chunks decoded beside a chunk that failed half
                # way and chunks never reached: zero it rather than leave that mix (get_tensor).
                destination[:] = 0
            raise
        if trellis:
            out = self._trellis_values(body, rows, out, first_rows, counts, out_starts,
                                       value_kind)
        if destination is not None and out is not destination:
            destination[:] = out[lo:hi]
            return destination
        return out[lo:hi] if (lo, hi) != (0, total) else out

    @staticmethod
    def _trellis_values(body, rows: int, indices: np.ndarray, first_rows, counts, out_starts,
                        output_kind: int) -> np.ndarray:
        """spec §6.6 chunk by chunk (each starts its columns' states at 0), then §6.5: the
        decoded chunks' ``indices`` as the output kind's words (float32, or binary16/bfloat16
        patterns)."""
        row_length = int(body.coded_row_length)
        rows_per_group = min(int(body.grid.rows_per_group), max(rows, 1))
        steps = np.asarray(body.grid.steps, dtype=np.float32)
        values = np.empty(len(indices), dtype=np.float32)
        for first_row, count, start in zip(first_rows, counts, out_starts):
            chunk = slice(int(start), int(start) + int(count))
            row_count = int(count) // row_length if row_length else 0
            levels = dispatch.trellis_levels(indices[chunk], row_length, row_count)
            values[chunk] = kernels.trellis_values(levels, row_length, int(first_row),
                                                   row_count, steps, rows_per_group)
        if output_kind == kernels.OUTPUT_FLOAT32:
            return values
        return kernels.float32_to_half_bits(values, output_kind)

    # -- lifetime ----------------------------------------------------------------------------

    def close(self) -> None:
        """Release the memory map and the file."""
        self._buffer = np.empty(0, np.uint8)
        mapping = getattr(self, "_map", None)
        if isinstance(mapping, mmap.mmap):
            try:
                mapping.close()
            except BufferError:
                pass  # an array returned to the caller still views the map; the OS frees it later
        if getattr(self, "_file", None) is not None:
            self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


_KERNEL_MESSAGES = {
    ErrorCode.STREAM_TRUNCATED: "the rANS stream ends before all symbols are decoded",
    ErrorCode.STREAM_TRAILING_DATA: "bytes are left in the rANS stream after the last symbol",
    ErrorCode.RANS_STATE_OUT_OF_RANGE: "an initial lane state is below 2^16",
    ErrorCode.RANS_FINAL_STATE: "a lane does not end in the state 2^16",
    ErrorCode.ESCAPE_MISMATCH: "escaped indices do not match the escape symbols decoded",
    ErrorCode.INDEX_OUT_OF_RANGE: "an index falls outside the codebook",
}

__all__ = ["DEFAULT_MAX_OUTPUT_BYTES", "DEFAULT_MAX_TRANSFORM_WORK", "ChunkDecoder", "NrdFile", "TensorInfo", "numba_threads",
           "numpy_dtype"]


class TensorSlice:
    """What :meth:`NrdFile.get_slice` returns."""

    def __init__(self, handle: NrdFile, name: str):
        self._handle, self._name = handle, name

    def get_shape(self) -> list:
        """The tensor's shape, as a list (``safetensors`` returns one)."""
        return list(self._handle.info(self._name).shape)

    def get_dtype(self) -> str:
        """The dtype the tensor decodes to (``"float32"``, ``"bfloat16"``, ...)."""
        return self._handle.info(self._name).dtype

    def __getitem__(self, index) -> np.ndarray:
        index = index if isinstance(index, tuple) else (index,)
        shape = self.get_shape()
        first, rest = (index[0], index[1:]) if index else (slice(None), ())
        if not shape or first is Ellipsis:  # 0-d, or an index that does not start at dim 0
            return self._handle.get_tensor(self._name)[index]
        if isinstance(first, (int, np.integer)):
            row = int(first) + shape[0] if first < 0 else int(first)
            if not 0 <= row < shape[0]:
                raise IndexError(f"index {first} is out of bounds for dimension 0 of size "
                                 f"{shape[0]}")
            return self._handle.get_rows(self._name, row, row + 1)[(0, *rest)]
        if not isinstance(first, slice):
            raise TypeError(f"get_slice indexes dimension 0 with an int or a slice, not "
                            f"{type(first).__name__}")
        start, stop, step = first.indices(shape[0])
        if step < 0:
            rows = self._handle.get_rows(self._name, stop + 1, start + 1)
            return rows[(slice(None, None, step), *rest)]
        rows = self._handle.get_rows(self._name, start, max(start, stop))
        return rows[(slice(None, None, step), *rest)]
