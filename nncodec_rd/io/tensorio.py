"""Read and write plain tensor files: safetensors, .npz and PyTorch state dicts.

safetensors is simple enough to read and write here directly (8-byte header size, JSON header,
raw little-endian data), which also keeps bfloat16 exact without torch. PyTorch files are loaded
by :mod:`nncodec_rd.torch` with ``weights_only=True`` (no pickle execution), and only when asked.
"""

from __future__ import annotations

import json
import os
import struct
import sys

import numpy as np

from ..format.errors import ErrorCode, NrdError
from .atomic import atomic_write

_SAFETENSORS_DTYPES = {
    "F32": "<f4", "F16": "<f2", "F64": "<f8", "I8": "i1", "U8": "u1", "I16": "<i2", "I32": "<i4",
    "I64": "<i8", "U16": "<u2", "U32": "<u4", "U64": "<u8", "BOOL": "?",
}
_MAX_SAFETENSORS_HEADER_BYTES = 100 * 1024 * 1024


class InputFileError(NrdError, ValueError):
    """An input tensor file cannot be read."""

    code = ErrorCode.IO


def _bfloat16():
    import ml_dtypes

    return np.dtype(ml_dtypes.bfloat16)


def read_safetensors(path) -> tuple[dict, dict]:
    """Tensors and ``__metadata__`` of a safetensors file (arrays are copies, native order)."""
    with open(path, "rb") as stream:
        prefix = stream.read(8)
        if len(prefix) < 8:
            raise InputFileError(f"{path}: too short for a safetensors file")
        (header_size,) = struct.unpack("<Q", prefix)
        if header_size > _MAX_SAFETENSORS_HEADER_BYTES:
            raise InputFileError(f"{path}: safetensors header of {header_size} bytes is too large")
        try:
            header = json.loads(stream.read(header_size))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise InputFileError(f"{path}: safetensors header is not JSON ({error})") from None
        data = stream.read()
    metadata = header.pop("__metadata__", {}) or {}
    tensors = {}
    for name, entry in header.items():
        dtype_name = entry.get("dtype")
        start, end = entry.get("data_offsets", (0, -1))
        if not 0 <= start <= end <= len(data):
            raise InputFileError(f"{path}: tensor {name!r} has offsets outside the file")
        if dtype_name == "BF16":
            dtype = _bfloat16()
            raw = np.frombuffer(data[start:end], dtype="<u2").astype(np.uint16).view(dtype)
        elif dtype_name in _SAFETENSORS_DTYPES:
            raw = np.frombuffer(data[start:end], dtype=_SAFETENSORS_DTYPES[dtype_name])
            raw = raw.astype(raw.dtype.newbyteorder("="))
        else:
            raise InputFileError(f"{path}: tensor {name!r} has unsupported dtype {dtype_name}")
        shape = tuple(entry.get("shape", ()))
        if int(np.prod(shape, dtype=np.int64)) != raw.size:
            raise InputFileError(f"{path}: tensor {name!r} size does not match its shape {shape}")
        tensors[name] = raw.reshape(shape)
    return tensors, metadata


def _safetensors_dtype(array: np.ndarray) -> str:
    if array.dtype.name == "bfloat16":
        return "BF16"
    for name, dtype in _SAFETENSORS_DTYPES.items():
        if np.dtype(dtype) == array.dtype.newbyteorder("<") or np.dtype(dtype) == array.dtype:
            return name
    raise InputFileError(f"dtype {array.dtype} cannot be written to safetensors")


def write_safetensors(path, tensors: dict, metadata: dict | None = None) -> None:
    """Write ``tensors`` as a safetensors file, atomically."""
    entries = [(name, np.asarray(a).dtype.name, np.shape(a)) for name, a in tensors.items()]
    write_tensors_streaming(path, entries, tensors.__getitem__, metadata)


def _raw_view(array: np.ndarray) -> memoryview:
    """The array's little-endian bytes without a copy where possible (bfloat16 as uint16)."""
    array = np.asarray(array)
    if array.dtype.name == "bfloat16":
        array = array.view(np.uint16)
    if array.dtype.byteorder == ">" or (array.dtype.byteorder == "=" and sys.byteorder == "big"):
        array = array.astype(array.dtype.newbyteorder("<"))
    return memoryview(np.ascontiguousarray(array).reshape(-1)).cast("B")


def write_tensors_streaming(path, entries, produce, metadata: dict | None = None) -> None:
    """Write tensors one at a time, so that only one is in memory: ``entries`` lists
    ``(name, dtype name, shape)`` and ``produce(name)`` returns each array when it is written.
    The format (.safetensors or .npz) follows the suffix of ``path``; the write is atomic."""
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    if suffix == ".safetensors":
        header, offset = {}, 0
        if metadata:
            header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
        for name, dtype_name, shape in entries:
            dtype = _bfloat16() if dtype_name == "bfloat16" else np.dtype(dtype_name)
            size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            header[name] = {"dtype": _safetensors_dtype(np.empty(0, dtype)), "shape": list(shape),
                            "data_offsets": [offset, offset + size]}
            offset += size
        encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
        encoded += b" " * (-len(encoded) % 8)

        def write(stream):
            stream.write(struct.pack("<Q", len(encoded)))
            stream.write(encoded)
            for name, _, _ in entries:
                stream.write(_raw_view(produce(name)))
    elif suffix == ".npz":
        import zipfile

        def write(stream):
            with zipfile.ZipFile(stream, "w", compression=zipfile.ZIP_STORED) as archive:
                for name, _, _ in entries:
                    array = np.asarray(produce(name))
                    if array.dtype.name == "bfloat16":
                        array = array.view(np.uint16)
                    with archive.open(name + ".npy", "w", force_zip64=True) as member:
                        np.lib.format.write_array(member, array, allow_pickle=False)
    else:
        raise InputFileError(f"{path}: output must end in .safetensors or .npz")
    atomic_write(path, write)


def write_npz(path, tensors: dict) -> None:
    """Write ``tensors`` to an uncompressed .npz, atomically (bfloat16 as its uint16 bits)."""
    entries = [(name, np.asarray(a).dtype.name, np.shape(a)) for name, a in tensors.items()]
    write_tensors_streaming(path, entries, tensors.__getitem__)


def read_tensors(path) -> tuple[dict, dict]:
    """Tensors and metadata from a .safetensors, .npz, or PyTorch (.pt/.pth/.bin) file."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputFileError(f"{path}: no such file")
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".safetensors":
        return read_safetensors(path)
    if suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as archive:
                return {name: archive[name] for name in archive.files}, {}
        except ValueError as error:
            raise InputFileError(f"{path}: cannot read .npz ({error})") from None
    if suffix in (".pt", ".pth", ".bin"):
        from ..torch.state_dict import read_state_dict

        return read_state_dict(path), {"framework": "pytorch"}
    raise InputFileError(f"{path}: unknown input type {suffix!r}; use .safetensors, .npz or a "
                         "PyTorch state dict (.pt, .pth, .bin)")


def write_tensors(path, tensors: dict, metadata: dict | None = None) -> None:
    """Write decoded tensors to .safetensors or .npz, chosen by the suffix of ``path``."""
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    if suffix == ".safetensors":
        write_safetensors(path, tensors, metadata)
    elif suffix == ".npz":
        write_npz(path, tensors)
    else:
        raise InputFileError(f"{path}: output must end in .safetensors or .npz")
