"""Running the decoder's kernels: which kernel a tensor needs, threads, and first-use compiling.

Every kernel of :mod:`nncodec_rd.decoder.kernels` has one signature for every file (scalars in
one int64 argument record, chunks in one int64 table, the slot table as a uint8 and a uint16
array of which one is empty); there is one fast kernel per context model, escape case and output
width and one general kernel per output width. Each is compiled only when a decode first needs
it, and is then kept in Numba's on-disk cache, so that a later process loads it in
milliseconds. Before a kernel compiles, the library says so once per process
through :mod:`logging` (logger ``nncodec_rd``, level WARNING, so it reaches stderr unless the
application configures logging), with the time it takes; ``nncodec-rd warmup`` (:func:`warmup`)
compiles every kernel ahead of time, e.g. in a Dockerfile step.

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
COMPILE_SECONDS = {"decode_general_32": 3.5, "decode_general_16": 2.0, "right_matrix_rows": 1.0}
FAST_COMPILE_SECONDS = 1.5
TYPICAL_FILE_COMPILE_SECONDS = 6
# The fast kernel by (PREVIOUS_INDEX model, escape symbol decodable, 32-bit output).
FAST_KERNELS = {
    (previous, escape, wide): getattr(kernels, "decode_fast_" + ("previous" if previous else "iid")
                                      + ("_escape" if escape else "") + ("_32" if wide else "_16"))
    for previous in (False, True) for escape in (False, True) for wide in (True, False)}
# The general kernel by 32-bit output.
GENERAL_KERNELS = {True: kernels.decode_general_32, False: kernels.decode_general_16}
ALL_KERNELS = (*FAST_KERNELS.values(), *GENERAL_KERNELS.values(), kernels.right_matrix_rows)
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
        return kernels.decode_fast_iid_32._cache.cache_path
    except AttributeError:
        return None


def is_compiled(kernel) -> bool:
    """True when ``kernel`` will not compile at its next call: compiled in this process, or
    in the on-disk cache for this Numba version, this source and this CPU."""
    if _loaded(kernel):
        return True
    try:
        # Numba's index keys are (signature, (target, CPU name, CPU features), code hashes):
        # an entry compiled for another CPU does not count.
        magic = kernel.targetctx.codegen().magic_tuple()
        return any(key[1] == magic for key in kernel._cache._cache_file._load_index())
    except Exception:  # noqa: BLE001 - no cache, or a Numba without this layout
        return False


def _loaded(kernel) -> bool:
    # A plain function (NUMBA_DISABLE_JIT=1, for coverage) never compiles.
    return bool(getattr(kernel, "signatures", True))


def _name(kernel) -> str:
    return getattr(kernel, "py_func", kernel).__name__


def is_loaded(kernel) -> bool:
    """True when ``kernel`` is compiled or loaded from the cache in this process (the first
    kernel a process loads also costs Numba's start-up, about 0.3 s)."""
    return _loaded(kernel)


def first_kernel(params, context_model: int, wide: bool, value_table_size: int,
                 invalid_symbol_count: int):
    """The kernel :func:`decode_chunks` tries first for a tensor: its fast kernel when the
    tensor suits one, else its general kernel."""
    if (params[kernels.P_LANE_COUNT] == 4 and value_table_size > 0
            and invalid_symbol_count == 0):
        return FAST_KERNELS[(context_model == 1, bool(params[kernels.P_FAST_ESCAPE] >= 0), wide)]
    return GENERAL_KERNELS[wide]


def _announce(kernel) -> None:
    """Say once per process that kernels compile, how long it takes, and what to do about it."""
    global _announced
    name = _name(kernel)
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


def call(kernel, *arguments):
    """Call ``kernel``, announcing first if the call will compile it."""
    if kernel not in _ready:
        with _lock:
            if kernel not in _ready:
                if not is_compiled(kernel):
                    _announce(kernel)
                    kernel(*arguments)
                    _ready.add(kernel)
                    return
                _ready.add(kernel)
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


def run_parallel(kernel, before: tuple, items: np.ndarray, after: tuple, threads: int,
                 weight: int) -> None:
    """``kernel(*before, part, *after)`` for ``threads`` interleaved parts of ``items``, on
    threads (the calling thread takes the first part); ``weight`` (symbols) below
    MIN_SYMBOLS_PER_THREAD per thread runs it all in the calling thread."""
    threads = min(threads, len(items), max(1, weight // MIN_SYMBOLS_PER_THREAD))
    if threads <= 1:
        call(kernel, *before, items, *after)
        return
    if kernel not in _ready:
        call(kernel, *before, items[:1], *after)  # compile (and announce) once, in this thread
        items = items[1:]
    parts = [np.ascontiguousarray(items[t::threads]) for t in range(threads)]
    futures = [_get_pool(threads).submit(kernel, *before, part, *after) for part in parts[1:]]
    kernel(*before, parts[0], *after)
    for future in futures:
        future.result()


def decode_chunks(buffer, chunks, params, context_model, slot_bytes, slot_words, symbol_info,
                  symbol_contexts, next_slot_bases, next_info_bases, steps, zero_points, codebook,
                  value_table, invalid_symbols, out16, out32, errors, threads: int | None = None,
                  use_fast: bool = True) -> None:
    """Decode the chunks of one tensor (rows of ``chunks``: offset, size, first row, symbol
    count, output start) from ``buffer`` (read-only uint8) into ``out32`` (the bits of 32-bit
    outputs: float32 values, int32 indices) or ``out16`` (binary16/bfloat16 patterns); the
    other one is empty. ``errors[k] = (code, byte offset)`` for chunk k, code 0 on
    success. ``params``: the int64 argument record of :mod:`~nncodec_rd.decoder.kernels`.

    The fast 4-lane kernel takes every chunk it can (when the tensor suits it and
    ``use_fast``); the general kernel decodes the others and finds the first fault of a broken
    chunk. Only the kernels a tensor needs are compiled (on first use)."""
    threads = thread_count(threads)
    count = len(chunks)
    weight = int(chunks[:, kernels.C_SYMBOL_COUNT].sum()) if count else 0
    previous = context_model == 1
    pending = np.arange(count, dtype=np.int64)
    wide = len(out32) > 0 or len(out16) == 0
    table = value_table if wide else value_table.astype(np.uint16)
    out = out32 if wide else out16
    kernel = first_kernel(params, context_model, wide, len(value_table), len(invalid_symbols))
    if use_fast and count and kernel in FAST_KERNELS.values():
        run_parallel(kernel, (buffer, chunks), pending,
                     (params, slot_bytes, slot_words, symbol_info, next_slot_bases, next_info_bases,
                      table, out, errors), threads, weight)
        pending = np.flatnonzero(errors[:, 0] == kernels.RETRY).astype(np.int64)
    if len(pending):
        run_parallel(GENERAL_KERNELS[wide], (buffer, chunks), pending,
                     (params, slot_bytes, slot_words, symbol_info, symbol_contexts, steps,
                      zero_points, codebook, table, invalid_symbols, out, errors), threads,
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


def _empty_arguments():
    """Arguments of every kernel's one signature, with nothing to decode."""
    buffer = np.zeros(0, np.uint8)
    buffer.flags.writeable = False
    chunks = np.zeros((0, 5), np.int64)
    ids = np.zeros(0, np.int64)
    params = np.zeros(kernels.PARAMETER_COUNT, np.int64)
    u64 = np.zeros(0, np.uint64)
    slots = (np.zeros(0, np.uint8), np.zeros(0, np.uint16))
    fast32 = (buffer, chunks, ids, params, *slots, u64, u64, u64, np.zeros(0, np.uint32),
              np.zeros(0, np.uint32), np.zeros((0, 2), np.int64))
    fast16 = (*fast32[:9], np.zeros(0, np.uint16), np.zeros(0, np.uint16), fast32[-1])
    general32 = (buffer, chunks, ids, params, *slots, u64, np.zeros(0, np.int64),
                 np.zeros(0, np.float32), np.zeros(0, np.int64), np.zeros(0, np.float32),
                 np.zeros(0, np.uint32), np.zeros(0, np.uint8), np.zeros(0, np.uint32),
                 np.zeros((0, 2), np.int64))
    general16 = (*general32[:11], np.zeros(0, np.uint16), general32[12], np.zeros(0, np.uint16),
                 general32[-1])
    matrix = (np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32), kernels.OUTPUT_FLOAT32,
              np.zeros(0, np.float32), np.zeros(0, np.uint16), 0, 0)
    return {"fast_32": fast32, "fast_16": fast16, "general_32": general32,
            "general_16": general16, "matrix": matrix}


def warmup(progress=None) -> dict:
    """Compile every kernel now (or load it from the cache), so that no later decode
    compiles: for a Dockerfile step or an installer. Returns seconds per kernel;
    ``progress(name, seconds)`` is called after each."""
    global _announced
    _announced = True  # the caller reports progress itself: no notice about compiling
    empty = _empty_arguments()
    timings = {}
    for kernel in ALL_KERNELS:
        name = _name(kernel)
        arguments = (empty["matrix"] if kernel is kernels.right_matrix_rows else
                     empty[("fast" if name.startswith("decode_fast") else "general")
                           + name[-3:]])
        start = time.perf_counter()
        call(kernel, *arguments)
        timings[name] = time.perf_counter() - start
        if progress is not None:
            progress(name, timings[name])
    return timings
