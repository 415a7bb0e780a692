"""Running the decoder's kernels: which kernel a tensor needs, threads, and first-use compiling.

Every chunk kernel of :mod:`nncodec_rd.decoder.kernels` takes the same three arguments: a
tensor's tables and geometry (:class:`~nncodec_rd.decoder.kernels.ChunkTables`), what one call
reads and writes (:class:`~nncodec_rd.decoder.kernels.ChunkBatch`) and the chunk numbers to
decode; their field types are fixed, so each kernel has one compiled signature per output width
(32 or 16 bits) for every file. There is one fast kernel per context model and escape case and
one general kernel. A signature is compiled only when a decode first needs it, and is then kept
in Numba's on-disk cache, so that a later process loads it in milliseconds. Before a kernel
compiles, the library says so once per process through :mod:`logging` (logger ``nncodec_rd``,
level WARNING, so it reaches stderr unless the application configures logging), with the time
it takes; ``nncodec-rd warmup`` (:func:`warmup`) compiles every signature ahead of time, e.g. in
a Dockerfile step.

Kernels run serially and without the GIL; chunks (and rows of a transform) are spread over a
pool of Python threads, so no Numba threading layer is needed. The pool is per process: a child
made by ``fork()`` (``multiprocessing``'s default start method on Linux) forgets the parent's
pool and starts its own at its first parallel decode.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import kernels

logger = logging.getLogger("nncodec_rd")

# Seconds a kernel takes to compile on the development machine (2 cores at 2.0 GHz, about
# 1.5 s for a fast kernel: bench/results/cold_start.json), and what a typical model file needs
# in all (the demo's MiniLM file: three kernels): what the message announces.
COMPILE_SECONDS = {"decode_general_32": 3.5, "decode_general_16": 2.0, "right_matrix_rows": 1.0,
                   "trellis_levels_rows": 1.0}
FAST_COMPILE_SECONDS = 1.5
TYPICAL_FILE_COMPILE_SECONDS = 6
# The fast kernel by (PREVIOUS_INDEX model, escape symbol decodable).
FAST_KERNELS = {
    (previous, escape): getattr(kernels, "decode_fast_" + ("previous" if previous else "iid")
                                + ("_escape" if escape else ""))
    for previous in (False, True) for escape in (False, True)}
GENERAL_KERNEL = kernels.decode_general
CHUNK_KERNELS = (*FAST_KERNELS.values(), GENERAL_KERNEL)
# Bytes of an output word of the chunk kernels: each has one compiled signature per width.
OUTPUT_WIDTHS = (4, 2)
# Every compiled signature, as (kernel, output width; None for the product kernel's one): what
# warmup compiles, and what a decode may compile on first use.
ALL_SIGNATURES = (*((kernel, width) for kernel in CHUNK_KERNELS for width in OUTPUT_WIDTHS),
                  (kernels.right_matrix_rows, None), (kernels.trellis_levels_rows, None))
# A chunk of more rows than this gets its trellis levels (spec §6.6) from the compiled kernel;
# fewer are walked in NumPy, with no compile to wait for.
TRELLIS_KERNEL_ROWS = 2048
# Below this many symbols a tensor is not worth a thread.
MIN_SYMBOLS_PER_THREAD = 1 << 16

_lock = threading.Lock()
_ready: set = set()
_announced = False
_pool: ThreadPoolExecutor | None = None


def cache_folder() -> str | None:
    """The folder Numba caches the kernels in, or None when no cache folder is writable (the
    kernels then compile in every process)."""
    if kernels.CACHE_PROBLEM is not None:
        return None
    try:
        return GENERAL_KERNEL._cache.cache_path
    except AttributeError:
        return None


def is_compiled(kernel, width: int | None = None) -> bool:
    """True when ``kernel``'s signature for output words of ``width`` bytes (None: the product
    kernel's one signature) will not compile at its next call: compiled in this process, or in
    the on-disk cache for this Numba version, this source and this CPU."""
    if is_loaded(kernel, width):
        return True
    try:
        # Numba's index keys are (signature, (target, CPU name, CPU features), code hashes):
        # an entry compiled for another CPU, or for the other width, does not count.
        magic = kernel.targetctx.codegen().magic_tuple()
        signature = _signature(width)
        return any(key[1] == magic and (signature is None or key[0] == signature)
                   for key in kernel._cache._cache_file._load_index())
    except Exception:  # noqa: BLE001 - no cache, or a Numba without this layout
        return False


def is_loaded(kernel, width: int | None = None) -> bool:
    """True when ``kernel``'s signature for output words of ``width`` bytes (None: the product
    kernel's) is compiled or loaded from the cache in this process (the first kernel a process
    loads also costs Numba's start-up, about 0.3 s)."""
    if (kernel, width) in _ready:
        return True
    overloads = getattr(kernel, "overloads", None)
    if overloads is None:
        return True  # a plain function (NUMBA_DISABLE_JIT=1, for coverage) never compiles
    if not overloads:
        # Before the signature: numba.typeof of the first array imports numpy.ma (16 ms), which
        # a small tensor decoded in Python (the caller's question) would pay for nothing.
        return False
    return width is None or _signature(width) in overloads


_signatures: dict = {}


def _signature(width: int | None):
    """The Numba argument types of a chunk kernel called with output words of ``width`` bytes
    (one for every file: :func:`~nncodec_rd.decoder.kernels.chunk_tables` fixes them), or None
    for None."""
    if width is None:
        return None
    if width not in _signatures:
        import numba

        _signatures[width] = tuple(numba.typeof(value) for value in _empty_arguments(width))
    return _signatures[width]


def signature_name(kernel, width: int | None = None) -> str:
    """What a compiled signature is called in messages and timings: the kernel's name, with the
    output width in bits for a chunk kernel (``decode_general_32``)."""
    name = getattr(kernel, "py_func", kernel).__name__
    return name if width is None else f"{name}_{8 * width}"


def output_width(tables: kernels.ChunkTables) -> int:
    """Bytes of the output words ``tables`` decodes to (4 or 2)."""
    return tables.value_table.dtype.itemsize


def first_kernel(tables: kernels.ChunkTables):
    """The kernel :func:`decode_chunks` tries first for a tensor: its fast kernel when the
    tensor suits one (4 lanes, every value in the value table, no codebook check), else the
    general kernel."""
    if tables.lane_count == 4 and len(tables.value_table) > 0 and len(tables.invalid_symbols) == 0:
        return FAST_KERNELS[(tables.context_model == 1, tables.fast_escape_symbol >= 0)]
    return GENERAL_KERNEL


def _announce(name: str) -> None:
    """Say once per process that kernels compile, how long it takes, and what to do about it;
    ``name``: the signature about to compile (:func:`signature_name`)."""
    global _announced
    seconds = COMPILE_SECONDS.get(name, FAST_COMPILE_SECONDS)
    if _announced:
        logger.debug("compiling %s (about %.1f s)", name, seconds)
        return
    _announced = True
    folder = cache_folder()
    if folder is None:
        where = (f"no cache folder is writable ({kernels.CACHE_PROBLEM}), so every process "
                 "compiles again; set NUMBA_CACHE_DIR to a writable folder to keep them")
    else:
        where = (f"this happens once: later processes load them from the Numba cache in "
                 f"{folder} (`nncodec-rd warmup` compiles them all ahead of time)")
    logger.warning("compiling the decoder's kernels for this CPU: about %.1f s for this one, 1 to "
                   "4 s for each further kind of tensor (about %d s in all for a typical model "
                   "file); %s", seconds, TYPICAL_FILE_COMPILE_SECONDS, where)


def _width_of_call(kernel, arguments) -> int | None:
    """The output width of a call's signature: a chunk kernel's ``batch.out`` words; None for
    the product kernel."""
    return arguments[1].out.dtype.itemsize if kernel in CHUNK_KERNELS else None


def call(kernel, *arguments):
    """Call ``kernel``, announcing first if the call will compile its signature."""
    key = (kernel, _width_of_call(kernel, arguments))
    if key not in _ready:
        with _lock:
            if key not in _ready:
                if not is_compiled(*key):
                    _announce(signature_name(*key))
                    kernel(*arguments)
                    _ready.add(key)
                    return
                _ready.add(key)
    kernel(*arguments)


def thread_count(threads: int | None) -> int:
    """Threads to decode with: ``threads``, or Numba's thread count of the calling thread."""
    if threads is None:
        import numba

        threads = numba.get_num_threads()
    return max(1, int(threads))


def _forget_pool_in_child() -> None:
    """After ``fork()``: the child has none of the parent's pool threads, yet the inherited
    executor counts them as idle and would queue work that no thread ever runs (a
    ``multiprocessing.Pool`` child hung on its first decode, issue 17 item 7); the lock may
    have been held by a parent thread at the fork. The child starts a pool of its own."""
    global _pool, _lock
    _pool = None
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_in_child)


def _get_pool(workers: int) -> ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None or _pool._max_workers < workers:
            _pool = ThreadPoolExecutor(max_workers=max(workers, os.cpu_count() or 1),
                                       thread_name_prefix="nncodec-rd-decode")
        return _pool


def run_parallel(kernel, tables: kernels.ChunkTables, batch: kernels.ChunkBatch,
                 chunk_ids: np.ndarray, threads: int, weight: int) -> None:
    """``kernel(tables, batch, part)`` for ``threads`` interleaved parts of ``chunk_ids``, on
    threads (the calling thread takes the first part); ``weight`` (symbols) below
    MIN_SYMBOLS_PER_THREAD per thread runs it all in the calling thread."""
    threads = min(threads, len(chunk_ids), max(1, weight // MIN_SYMBOLS_PER_THREAD))
    if threads <= 1:
        call(kernel, tables, batch, chunk_ids)
        return
    if (kernel, output_width(tables)) not in _ready:
        call(kernel, tables, batch, chunk_ids[:1])  # compile (and announce) once, in this thread
        chunk_ids = chunk_ids[1:]
    parts = [np.ascontiguousarray(chunk_ids[t::threads]) for t in range(threads)]
    futures = [_get_pool(threads).submit(kernel, tables, batch, part) for part in parts[1:]]
    kernel(tables, batch, parts[0])
    for future in futures:
        future.result()


def decode_chunks(tables: kernels.ChunkTables, batch: kernels.ChunkBatch,
                  threads: int | None = None, use_fast: bool = True) -> None:
    """Decode every chunk of ``batch`` (rows of ``batch.chunks``: offset, size, first row,
    symbol count, output start, in ``batch.buffer``) into ``batch.out`` with one tensor's
    ``tables``, writing ``batch.errors[k] = (code, byte offset)`` for chunk k, code 0 on
    success. Build both with :func:`~nncodec_rd.decoder.kernels.chunk_tables` and
    :func:`~nncodec_rd.decoder.kernels.chunk_batch`.

    The fast 4-lane kernel takes every chunk it can (when the tensor suits it and
    ``use_fast``); the general kernel decodes the others and finds the first fault of a broken
    chunk. Only the signatures a tensor needs are compiled (on first use)."""
    if batch.out.dtype != tables.value_table.dtype:
        # Another pair of word types would compile a signature of its own, and store truncated
        # or widened words.
        raise TypeError(f"output words {batch.out.dtype} differ from the value table's "
                        f"{tables.value_table.dtype}")
    threads = thread_count(threads)
    count = len(batch.chunks)
    weight = int(batch.chunks[:, kernels.C_SYMBOL_COUNT].sum()) if count else 0
    pending = np.arange(count, dtype=np.int64)
    kernel = first_kernel(tables)
    if use_fast and count and kernel is not GENERAL_KERNEL:
        run_parallel(kernel, tables, batch, pending, threads, weight)
        pending = np.flatnonzero(batch.errors[:, 0] == kernels.RETRY).astype(np.int64)
    if len(pending):
        run_parallel(GENERAL_KERNEL, tables, batch, pending, threads,
                     weight * len(pending) // max(count, 1))


def right_matrix_product(coefficients, matrix, output_kind, out_f32, out_u16,
                         threads: int | None = None) -> None:
    """spec §6.4 (see :func:`~nncodec_rd.decoder.kernels.right_matrix_rows`), rows spread over
    threads."""
    rows = coefficients.shape[0]
    if matrix.shape[1] == 0:
        # No element to compute: the kernel would still count through every row, and a
        # conforming file may declare 2^40 rows of nothing (found by fuzzing, docs/fuzzing.md).
        return
    work = rows * coefficients.shape[1] * max(matrix.shape[1], 1)
    threads = max(1, min(thread_count(threads), rows, work // (MIN_SYMBOLS_PER_THREAD * 16)))
    bounds = [rows * t // threads for t in range(threads + 1)]  # zero rows: one empty range
    kernel = kernels.right_matrix_rows
    call(kernel, coefficients, matrix, output_kind, out_f32, out_u16, bounds[0], bounds[1])
    futures = [_get_pool(threads).submit(kernel, coefficients, matrix, output_kind, out_f32,
                                         out_u16, bounds[t], bounds[t + 1])
               for t in range(1, threads)]
    for future in futures:
        future.result()


def trellis_levels(indices: np.ndarray, row_length: int, row_count: int) -> np.ndarray:
    """spec §6.6's levels ``d`` of one chunk's indices (``row_count`` rows of ``row_length``,
    flat): compiled for a chunk of more than :data:`TRELLIS_KERNEL_ROWS` rows, else walked in
    NumPy (:mod:`~nncodec_rd.decoder.kernels`)."""
    indices = np.ascontiguousarray(indices, dtype=np.int64).reshape(-1)
    if row_count <= TRELLIS_KERNEL_ROWS or row_length == 0:
        return kernels.trellis_levels_walk(indices, row_length, row_count)
    levels = np.empty(len(indices), dtype=np.int64)
    call(kernels.trellis_levels_rows, indices, np.int64(row_length), kernels.TRELLIS_NEXT,
         levels)
    return levels


def _empty_trellis_arguments() -> tuple:
    """The trellis kernel's arguments with nothing to compute."""
    return (np.zeros(0, np.int64), np.int64(1), kernels.TRELLIS_NEXT, np.zeros(0, np.int64))


def _empty_arguments(width: int) -> tuple:
    """A chunk kernel's arguments (tables, batch, chunk numbers) with nothing to decode and
    output words of ``width`` bytes, built as every decode builds them."""
    words = np.zeros(0, np.uint32 if width == 4 else np.uint16)
    tables = kernels.chunk_tables(
        value_table=words, **{name: 0 for name in kernels.SCALAR_FIELDS},
        **{name: np.zeros(0, dtype) for name, dtype in kernels.TABLE_ARRAY_DTYPES.items()})
    tables = kernels.with_slot_tables(tables, np.zeros(0, np.uint8), np.zeros(0, np.uint64))
    batch = kernels.chunk_batch(np.zeros(0, np.uint8), np.zeros((0, 5), np.int64), words,
                                np.zeros((0, 2), np.int64))
    return tables, batch, np.zeros(0, np.int64)


def _empty_product_arguments() -> tuple:
    """The product kernel's arguments with nothing to compute."""
    return (np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32), kernels.OUTPUT_FLOAT32,
            np.zeros(0, np.float32), np.zeros(0, np.uint16), 0, 0)


def warmup(progress=None) -> dict:
    """Compile every kernel signature now (or load it from the cache), so that no later decode
    compiles: for a Dockerfile step or an installer. Returns seconds per signature (by
    :func:`signature_name`); ``progress(name, seconds)`` is called after each."""
    global _announced
    _announced = True  # the caller reports progress itself: no notice about compiling
    timings = {}
    for kernel, width in ALL_SIGNATURES:
        name = signature_name(kernel, width)
        if kernel is kernels.trellis_levels_rows:
            arguments = _empty_trellis_arguments()
        else:
            arguments = _empty_product_arguments() if width is None else _empty_arguments(width)
        start = time.perf_counter()
        call(kernel, *arguments)
        timings[name] = time.perf_counter() - start
        if progress is not None:
            progress(name, timings[name])
    return timings
