"""Inference-time decoding: weights stay entropy-coded in memory and are decoded when a layer runs.

:func:`load_compressed` with ``mode="lazy"`` removes every parameter that the .nrd file holds
rANS-coded from the model and puts a :class:`CompressedWeight` in its place: a small module that
keeps only that tensor's chunk payloads (the compressed bytes, copied out of the file) and the
tables needed to decode them. The layer's attribute (``linear.weight``) becomes a property that
decodes the chunks, in parallel over chunks with the decoder's Numba kernel, each time it is
read, so any code that reads the attribute (a layer's ``forward``, a function that reads another
module's weight) gets the decoded tensor.

Memory: decoded weights go into one reusable scratch buffer as large as the largest coded tensor,
taken again by the next layer as soon as nothing refers to the previous one any more, so a lazily
loaded model holds its compressed payloads plus one decoded layer (and whatever ``cache_bytes``
allows: an LRU cache of decoded tensors). The decoded values are the eager decoder's, bit for
bit, laid out in memory as torch lays out a parameter (contiguous, 64-byte aligned), so outputs
equal those of the eagerly decoded model exactly.

Lazy weights are for inference: they are not parameters (an optimizer does not see them, and
``state_dict()`` no longer lists them), and a forward pass with gradients enabled in training
mode is refused; use ``mode="eager"`` to fine-tune.

Examples
--------
>>> model = load_compressed(MyModel(), "model.nrd", mode="lazy")    # doctest: +SKIP
>>> with torch.no_grad():                                          # doctest: +SKIP
...     logits = model(batch)
>>> lazy_weights(model).stats()                                    # doctest: +SKIP
{'decodes': 40, 'decode_seconds': 0.21, ...}
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import OrderedDict

import numpy as np
import torch

from ..decoder import kernels
from ..decoder.reader import OUTPUT_KIND, NrdFile, numba_threads, numpy_dtype
from ..format.constants import Coding, GridKind, TensorDtype, TransformKind
from ..format.errors import EncoderError
from ..format.layout import RowGeometry, chunk_extents
from ..format.validate import payload_columns
from .layers import TRANSFORM_PREFIX
from .load import load_into

#: A value table (decoded value per symbol and step group) is kept only if it takes at most
#: 1/VALUE_TABLE_FRACTION of the decoded tensor.
VALUE_TABLE_FRACTION = 16
#: Alignment of decoded buffers: torch's CPU allocator aligns parameters to 64 bytes, and some
#: BLAS kernels round differently for differently aligned operands.
ALIGNMENT_BYTES = 64

_TORCH_DTYPES = {TensorDtype.FLOAT32: torch.float32, TensorDtype.FLOAT16: torch.float16,
                 TensorDtype.BFLOAT16: torch.bfloat16}
def _aligned_empty(nbytes: int) -> tuple[np.ndarray, int]:
    """An uninitialised byte array with room for ``nbytes`` at a 64-byte aligned offset;
    returns (array, offset). Pages are not touched, so they cost no resident memory yet."""
    raw = np.empty(nbytes + ALIGNMENT_BYTES, dtype=np.uint8)
    offset = (-raw.ctypes.data) % ALIGNMENT_BYTES
    return raw, offset


def _as_torch(flat: np.ndarray, dtype: TensorDtype, shape: tuple) -> torch.Tensor:
    """A tensor viewing ``flat`` (float32 values or binary16/bfloat16 bit patterns)."""
    if dtype == TensorDtype.FLOAT32:
        return torch.from_numpy(flat.view(np.float32).reshape(shape))
    if dtype == TensorDtype.FLOAT16:
        return torch.from_numpy(flat.view(np.float16).reshape(shape))
    return torch.from_numpy(flat.view(np.int16).reshape(shape)).view(torch.bfloat16)


class CompressedWeight(torch.nn.Module):
    """One rANS-coded tensor kept compressed: its chunk payloads and its decoding tables.

    Built by :func:`load_compressed`; calling it (or reading the layer attribute it stands for)
    returns the decoded tensor. ``compressed_bytes`` is what it holds of the file;
    ``decoded_bytes`` what one decoded copy takes.
    """

    def __init__(self, handle: NrdFile, name: str, context: "LazyWeights"):
        super().__init__()
        record = handle.record(name)
        body = record.body
        self.name = name
        self.context = context
        self.dtype = TensorDtype(record.dtype)
        self.torch_dtype = _TORCH_DTYPES[self.dtype]
        self.shape = tuple(int(d) for d in record.shape)
        self.element_count = int(np.prod(self.shape, dtype=np.int64))
        self.decoded_bytes = self.element_count * numpy_dtype(self.dtype).itemsize
        rows = RowGeometry.of_shape(record.shape).rows
        self.row_length = int(body.coded_row_length)
        extents = chunk_extents(rows, self.row_length, body.rows_per_chunk)
        self.rows_per_chunk = int(body.rows_per_chunk)
        # The chunk payloads, copied out of the file into one array, checksums verified.
        self.payload, starts, sizes = handle.chunk_payloads(name)
        # Read-only from here on, as the kernels take their buffer (no view per decode).
        self.payload.flags.writeable = False
        self._chunk_offsets = starts
        self._chunk_sizes = sizes
        self._chunk_first_rows = np.array([e.first_row for e in extents], dtype=np.int64)
        self._chunk_symbol_counts = np.array([e.symbol_count for e in extents], dtype=np.int64)
        self._chunk_out_starts = np.array([e.first_symbol for e in extents], dtype=np.int64)
        self._chunk_file_offsets = payload_columns(body.chunks)[0].astype(np.int64)
        self._chunk_numbers = np.arange(len(sizes), dtype=np.int64)
        # The decoder's tables, built once; a value table per step group (an embedding with a
        # step per row) can outweigh the tensor, and is then left out (same bits, see
        # ChunkDecoder.of_record).
        self._output_kind = OUTPUT_KIND[self.dtype]
        self._decoder = handle.chunk_decoder(
            name, max_value_table_bytes=self.decoded_bytes // VALUE_TABLE_FRACTION)

    @property
    def compressed_bytes(self) -> int:
        """Bytes of chunk payloads held in memory."""
        return int(self.payload.nbytes)

    @property
    def table_bytes(self) -> int:
        """Bytes of the decoding tables and per-chunk arrays held between decodes (the slot
        table is rebuilt at each decode and not counted: it lives only during one)."""
        return self._decoder.table_bytes + sum(
            value.nbytes for key, value in vars(self).items()
            if key.startswith("_chunk") and isinstance(value, np.ndarray))

    @property
    def chunk_count(self) -> int:
        return len(self._chunk_sizes)

    def decode_into(self, out: np.ndarray, chunks: np.ndarray | None = None) -> None:
        """Decode all chunks (or the chunk numbers ``chunks``) into ``out``, a flat C-contiguous
        byte array of ``decoded_bytes`` bytes, each chunk at its place in the tensor; in parallel
        over chunks (:func:`nncodec_rd.decoder.dispatch.decode_chunks`)."""
        flat = out.view(np.float32 if self._output_kind == kernels.OUTPUT_FLOAT32 else np.uint16)
        if chunks is None:  # every chunk: the per-chunk arrays as they are (no copies)
            self._decoder.decode(self.payload, self._chunk_offsets, self._chunk_sizes,
                                 self._chunk_first_rows, self._chunk_symbol_counts,
                                 self._chunk_out_starts, flat, self._chunk_numbers,
                                 file_offsets=self._chunk_file_offsets)
            return
        chunks = np.asarray(chunks, np.int64)
        self._decoder.decode(self.payload, self._chunk_offsets[chunks], self._chunk_sizes[chunks],
                             self._chunk_first_rows[chunks], self._chunk_symbol_counts[chunks],
                             self._chunk_out_starts[chunks], flat, chunks,
                             file_offsets=self._chunk_file_offsets[chunks])

    def chunks_of_rows(self, rows: np.ndarray) -> np.ndarray:
        """Chunk numbers (sorted, unique) holding the given first-dimension rows; rows out of
        range are left to the layer to complain about."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        rows = rows[(rows >= 0) & (rows < self.shape[0])]
        return np.unique(rows // self.rows_per_chunk)

    def forward(self) -> torch.Tensor:
        """The decoded tensor (see :meth:`LazyWeights.materialize`)."""
        return self.context.materialize(self)

    def extra_repr(self) -> str:
        return (f"{self.name!r}, shape={self.shape}, {self.dtype.name.lower()}, "
                f"{self.compressed_bytes:,} bytes in {self.chunk_count} chunks "
                f"({self.decoded_bytes:,} decoded)")


class LazyWeights:
    """The shared state of one lazily loaded model: the scratch buffer, the LRU cache of decoded
    tensors (at most ``cache_bytes``), the thread setting and decoding statistics.

    Get it with :func:`lazy_weights`.
    """

    def __init__(self, cache_bytes: int = 0, threads: int | None = None):
        self.cache_bytes = int(cache_bytes)
        self.threads = threads
        self.weights: list[CompressedWeight] = []
        self._cache: OrderedDict = OrderedDict()
        self._cached_bytes = 0
        self._scratch = None          # (raw array, aligned offset, bytes)
        self._scratch_refs = 0
        self._lock = threading.RLock()
        self._local = threading.local()
        self.reset_stats()

    # -- statistics ----------------------------------------------------------------------------

    def reset_stats(self) -> None:
        """Zero the counters of :meth:`stats`."""
        self._decodes = 0
        self._decode_seconds = 0.0
        self._decoded_bytes = 0
        self._hits = 0
        self._partial = 0
        self._fresh = 0

    def stats(self) -> dict:
        """Decodes done, time spent in them, bytes decoded, cache hits, decodes of selected
        chunks only (embedding rows), decodes into new memory because a tensor decoded earlier
        still used the scratch buffer, bytes held (compressed, tables, cached, scratch)."""
        return {"decodes": self._decodes, "decode_seconds": self._decode_seconds,
                "decoded_bytes": self._decoded_bytes, "cache_hits": self._hits,
                "partial_decodes": self._partial, "scratch_busy": self._fresh,
                "compressed_bytes": self.compressed_bytes, "table_bytes": self.table_bytes,
                "cached_bytes": self._cached_bytes,
                "scratch_bytes": self._scratch[2] if self._scratch else 0}

    @property
    def compressed_bytes(self) -> int:
        """Chunk payloads held by all lazy weights."""
        return sum(weight.compressed_bytes for weight in self.weights)

    @property
    def table_bytes(self) -> int:
        """Decoding tables held by all lazy weights (see :attr:`CompressedWeight.table_bytes`)."""
        return sum(weight.table_bytes for weight in self.weights)

    @property
    def decoded_bytes(self) -> int:
        """Bytes of all lazy weights decoded (a ``cache_bytes`` that keeps every one)."""
        return sum(weight.decoded_bytes for weight in self.weights)

    @property
    def largest_decoded_bytes(self) -> int:
        """Bytes of the largest decoded tensor (the scratch buffer's size)."""
        return max((weight.decoded_bytes for weight in self.weights), default=0)

    def clear_cache(self) -> None:
        """Drop every cached decoded tensor."""
        with self._lock:
            self._cache.clear()
            self._cached_bytes = 0

    # -- decoding ------------------------------------------------------------------------------

    def _threads(self):
        """Decode with ``threads`` threads (:func:`nncodec_rd.decoder.reader.numba_threads`)."""
        return numba_threads(self.threads)

    def _buffer(self, nbytes: int, cacheable: bool) -> np.ndarray:
        """A flat, 64-byte aligned byte array for a decode: the scratch buffer when no tensor
        handed out earlier still refers to it, else fresh memory."""
        if not cacheable:
            if self._scratch is None:
                raw, offset = _aligned_empty(self.largest_decoded_bytes)
                self._scratch = (raw, offset, self.largest_decoded_bytes)
                self._scratch_refs = sys.getrefcount(raw)
            raw, offset, _ = self._scratch
            # Every tensor made from the scratch buffer keeps a NumPy view of it alive (through
            # torch.from_numpy), and with it a reference to ``raw``: so when the count is back to
            # its baseline, no tensor, view of one or autograd record uses the buffer any more.
            if sys.getrefcount(raw) == self._scratch_refs:
                return raw[offset:offset + nbytes]
            self._fresh += 1
        raw, offset = _aligned_empty(nbytes)
        return raw[offset:offset + nbytes]

    def materialize(self, weight: CompressedWeight, rows=None) -> torch.Tensor:
        """The decoded tensor of ``weight``: from the cache, or decoded into the scratch buffer
        (or into new memory that the cache keeps, if it fits in ``cache_bytes``). With ``rows``
        (first-dimension indices), only the chunks holding those rows are decoded and the other
        rows of the returned tensor are undefined: for gathers such as an embedding lookup."""
        with self._lock:
            cached = self._cache.get(weight.name)
            if cached is not None:
                self._cache.move_to_end(weight.name)
                self._hits += 1
                return cached
            cacheable = 0 < weight.decoded_bytes <= self.cache_bytes
            chunks = None
            if rows is not None and not cacheable:
                chunks = weight.chunks_of_rows(rows)
                if len(chunks) == weight.chunk_count:
                    chunks = None
            start = time.perf_counter()
            out = self._buffer(weight.decoded_bytes, cacheable)
            with self._threads():
                weight.decode_into(out, chunks)
            tensor = _as_torch(out, weight.dtype, weight.shape)
            self._decode_seconds += time.perf_counter() - start
            self._decodes += 1
            self._partial += chunks is not None
            self._decoded_bytes += (weight.decoded_bytes if chunks is None else
                                    int(weight._chunk_symbol_counts[chunks].sum())
                                    * weight.decoded_bytes // max(weight.element_count, 1))
            if cacheable:
                self._cache[weight.name] = tensor
                self._cached_bytes += weight.decoded_bytes
                while self._cached_bytes > self.cache_bytes:
                    _, evicted = self._cache.popitem(last=False)
                    self._cached_bytes -= evicted.numel() * evicted.element_size()
            return tensor

    # -- the rows an embedding's forward will read ---------------------------------------------

    def _pending_rows(self) -> dict:
        pending = getattr(self._local, "rows", None)
        if pending is None:
            pending = self._local.rows = {}
        return pending


def lazy_weights(model) -> LazyWeights:
    """The :class:`LazyWeights` of a model loaded with ``load_compressed(..., mode="lazy")``."""
    for module in model.modules():
        if isinstance(module, CompressedWeight):
            return module.context
    raise ValueError("the model has no lazily decoded weights (load it with "
                     "load_compressed(model, path, mode='lazy'))")


_LAZY_CLASSES: dict = {}


def _lazy_property(attribute: str) -> property:
    def read(module):
        weight = module._modules[attribute + "_compressed"]
        if module.training and torch.is_grad_enabled():
            raise RuntimeError(
                f"{type(module).__name__}.{attribute} is decoded lazily from an .nrd file and "
                "cannot be trained: run inference under torch.no_grad() or "
                "torch.inference_mode(), or call model.eval(); to fine-tune, load the file with "
                "load_compressed(model, path, mode='eager')")
        context = weight.context
        rows = context._pending_rows().get(id(module))
        return context.materialize(weight, rows)

    def write(module, value):
        raise AttributeError(f"{type(module).__name__}.{attribute} is decoded lazily from an .nrd "
                             "file and is read-only; load the file with mode='eager' to change it")

    return property(read, write, doc=f"``{attribute}``, decoded from its compressed chunks "
                                     "each time it is read.")


def _make_lazy_class(cls: type, attributes: tuple) -> type:
    key = (cls, attributes)
    lazy = _LAZY_CLASSES.get(key)
    if lazy is None:
        namespace = {attribute: _lazy_property(attribute) for attribute in attributes}
        namespace["__doc__"] = (f"{cls.__name__} whose {', '.join(attributes)} "
                                "stay compressed (nncodec_rd.torch.lazy).")
        namespace["__module__"] = cls.__module__
        lazy = type(f"Compressed{cls.__name__}", (cls,), namespace)
        _LAZY_CLASSES[key] = lazy
    return lazy


def _embedding_rows_hook(module, args, kwargs=None):
    """Before an embedding lookup: note the rows it will read, so that only their chunks are
    decoded (the lookup reads no other row, so the result is exact)."""
    weight = module._modules["weight_compressed"]
    if args and isinstance(args[0], torch.Tensor):
        weight.context._pending_rows()[id(module)] = args[0].detach().cpu().numpy()
    return None


def _embedding_done_hook(module, args, output):
    module._modules["weight_compressed"].context._pending_rows().pop(id(module), None)
    return None


def _reads_rows_only(module) -> bool:
    """True for a plain ``nn.Embedding`` lookup (no in-place renormalisation)."""
    return (isinstance(module, torch.nn.Embedding)
            and type(module).forward is torch.nn.Embedding.forward and module.max_norm is None)


def _can_stay_compressed(handle: NrdFile, key: str, parameter) -> bool:
    record = handle.record(key)
    # A vector (a coded bias, a norm's scale) is decoded now: it is small, and a lazy one would
    # be decoded again beside its layer's weight at every forward.
    # A trellis grid's values need each column's state from its chunk's first row (spec §6.6):
    # such a tensor is decoded now, whole, like a transformed one.
    return (parameter.dim() >= 2 and record.coding == Coding.RANS and record.body.transform_kind == TransformKind.NONE
            and record.body.grid_kind != GridKind.UNIFORM_TRELLIS
            and TensorDtype(record.dtype) in _TORCH_DTYPES
            and _TORCH_DTYPES[TensorDtype(record.dtype)] == parameter.dtype
            and tuple(int(d) for d in record.shape) == tuple(parameter.shape)
            and parameter.device.type == "cpu")


def load_compressed(model, path, mode: str = "lazy", cache_bytes: int = 0,
                    threads: int | None = None, *, strict: bool = True,
                    verify: bool = True):
    """Load the .nrd file at ``path`` into ``model``, decoding weights now or when layers run.

    Parameters
    ----------
    model:
        A ``torch.nn.Module`` whose state-dict keys are the file's tensor names (the model the
        file was made from, as for :func:`nncodec_rd.torch.load.load_into`).
    path:
        The .nrd file.
    mode:
        ``"eager"``: decode everything into the model's parameters (:func:`load_into`).
        ``"lazy"``: every parameter the file holds rANS-coded (and untransformed) is replaced
        by a :class:`CompressedWeight` holding its compressed chunks; reading the layer's
        attribute decodes it. Tied weights (one parameter under several names) share one.
        Everything else (raw tensors, buffers) is loaded as in eager mode.
    cache_bytes:
        Lazy mode: the most bytes of decoded tensors kept in an LRU cache (0: none; each read
        decodes again). Tensors larger than this are never cached.
    threads:
        Threads of the parallel chunk decode; ``None`` keeps Numba's setting (all cores).
    strict:
        Every state-dict entry of the model must be in the file and every tensor of the file in
        the model.
    verify:
        Lazy mode: decode every lazy tensor once while loading (into the scratch buffer), so that
        a corrupt stream fails here rather than in the middle of inference. Payload checksums
        are verified in any case.

    Returns
    -------
    torch.nn.Module
        ``model``, modified in place.

    Raises
    ------
    EncoderError
        When the file does not match the model (``strict``), or shapes differ.
    FormatError, LimitExceededError
        When the file breaks the spec.
    ValueError
        For an unknown ``mode`` or a negative ``cache_bytes``.
    """
    if mode not in ("lazy", "eager"):
        raise ValueError(f"mode must be 'lazy' or 'eager', not {mode!r}")
    if isinstance(cache_bytes, bool) or not isinstance(cache_bytes, int) or cache_bytes < 0:
        raise ValueError(f"cache_bytes must be a non-negative int, not {cache_bytes!r}")
    if mode == "eager":
        return load_into(model, path, strict=strict, threads=threads)
    path = os.fspath(path)
    context = LazyWeights(cache_bytes=cache_bytes, threads=threads)
    with NrdFile(path, threads=threads) as handle:
        # transform matrices (method "transform") are not parameters: their layers are decoded
        # eagerly below (_can_stay_compressed keeps only untransformed tensors compressed)
        file_keys = {key for key in handle.keys() if not key.startswith(TRANSFORM_PREFIX)}
        state = model.state_dict(keep_vars=True)
        if strict:
            missing = sorted(set(state) - file_keys)
            unexpected = sorted(file_keys - set(state))
            if missing or unexpected:
                raise EncoderError(f"{path} does not match the model: missing "
                                   f"{missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected "
                                   f"{unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
        modules = dict(model.named_modules(remove_duplicate=False))
        # Every (module, attribute) holding each parameter object: tied weights have several.
        owners: dict = {}
        for key, parameter in model.named_parameters(remove_duplicate=False):
            module_name, _, attribute = key.rpartition(".")
            owners.setdefault(id(parameter), (parameter, []))[1].append(
                (key, modules[module_name], attribute))
        lazy_keys = set()
        compressed_of: dict = {}
        for parameter, places in owners.values():
            coded = [key for key, _, _ in places if key in file_keys]
            if not coded or not all(_can_stay_compressed(handle, key, parameter) for key in coded):
                continue
            if any(isinstance(module, torch.nn.Embedding) and not _reads_rows_only(module)
                   for _, module, _ in places):
                continue  # max_norm renormalises rows in place: keep it a dense parameter
            if any(isinstance(module, torch.nn.RNNBase) for _, module, _ in places):
                # LSTM/GRU/RNN run on _flat_weights, a list of the parameter tensors that an
                # attribute property would not reach: decoded now, dense
                continue
            compressed_of[id(parameter)] = CompressedWeight(handle, coded[0], context)
            lazy_keys.update(key for key, _, _ in places)
        # Everything else is decoded now, as load_into does.
        with torch.no_grad():
            for key, target in state.items():
                if key in lazy_keys or key not in file_keys:
                    continue
                value = handle.get_tensor(key)
                if tuple(value.shape) != tuple(target.shape):
                    raise EncoderError(f"{key}: the file holds shape {tuple(value.shape)}, the "
                                       f"model {tuple(target.shape)}")
                if value.dtype.name == "bfloat16":
                    source = torch.from_numpy(value.view(np.int16).copy()).view(torch.bfloat16)
                else:
                    source = torch.from_numpy(np.ascontiguousarray(value))
                target.copy_(source.to(target.dtype))
    _swap_in(owners, compressed_of, context)
    del owners, state  # the dense parameters go with the last references to them
    if verify:
        for weight in context.weights:
            context.materialize(weight)
        context.reset_stats()
    return model


def _swap_in(owners: dict, compressed_of: dict, context: LazyWeights) -> None:
    """Replace each parameter that stays compressed by its :class:`CompressedWeight`, in every
    module holding it, and give those modules the class whose attribute decodes it."""
    for parameter, places in owners.values():
        weight = compressed_of.get(id(parameter))
        if weight is None:
            continue
        context.weights.append(weight)
        for _, module, attribute in places:
            del module._parameters[attribute]
            module.add_module(attribute + "_compressed", weight)
            lazy_attributes = tuple(sorted(
                name[:-len("_compressed")] for name, child in module._modules.items()
                if isinstance(child, CompressedWeight) and name.endswith("_compressed")))
            base = getattr(type(module), "_nrd_base_class", type(module))
            module.__class__ = _make_lazy_class(base, lazy_attributes)
            module.__class__._nrd_base_class = base
            if attribute == "weight" and _reads_rows_only(module) \
                    and not getattr(module, "_nrd_rows_hooked", False):
                module.register_forward_pre_hook(_embedding_rows_hook)
                module.register_forward_hook(_embedding_done_hook, always_call=True)
                module._nrd_rows_hooked = True


__all__ = ["ALIGNMENT_BYTES", "CompressedWeight", "LazyWeights", "lazy_weights",
           "load_compressed"]
