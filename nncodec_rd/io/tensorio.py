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

from ..format.constants import Limits
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


class OutputFileError(NrdError, ValueError):
    """Tensors cannot be written to the output file as asked (a name its format cannot hold, a
    path that is not a regular file); nothing is written."""

    code = ErrorCode.IO


def _bfloat16():
    import ml_dtypes

    return np.dtype(ml_dtypes.bfloat16)


class _DuplicateKeyError(ValueError):
    def __init__(self, key):
        self.key = key
        super().__init__(key)


def _unique_object(pairs):
    """``object_pairs_hook`` of ``json.loads`` that refuses a key given twice: ``dict(pairs)``
    would keep the last and silently drop the other tensor or metadata entry (issue 17)."""
    result = dict(pairs)
    if len(result) != len(pairs):
        seen = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKeyError(key)
            seen.add(key)
    return result


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_text(path, text: str, what: str) -> None:
    """``text`` has a UTF-8 form: JSON's ``\\ud800`` parses to a lone surrogate, which no
    file format stores (safetensors itself refuses it)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InputFileError(f"{path}: {what} {text[:40]!r} holds a lone surrogate (not valid "
                             "Unicode)") from None


def _check_shape(path, name: str, shape) -> tuple:
    """A shape of at most 8 non-negative dimensions of at most 2^40 (the .nrd limits, spec §9),
    as a tuple of Python ints; an :class:`InputFileError` naming the file and tensor if not."""
    if not isinstance(shape, (list, tuple)) or not all(_is_int(d) for d in shape):
        raise InputFileError(f"{path}: tensor {name!r} has shape {str(shape)[:60]}, not a list of "
                             "integers")
    if len(shape) > Limits.MAX_RANK:
        raise InputFileError(f"{path}: tensor {name!r} has rank {len(shape)}; .nrd stores at most "
                             f"{Limits.MAX_RANK} dimensions")
    for dimension in shape:
        if not 0 <= dimension <= Limits.MAX_DIMENSION:
            raise InputFileError(f"{path}: tensor {name!r} has dimension {dimension}; dimensions "
                                 f"are 0 ... 2^40 (the .nrd limit)")
    return tuple(int(d) for d in shape)


def _element_count(shape: tuple) -> int:
    count = 1  # Python ints: np.prod wraps silently at 2^63
    for dimension in shape:
        count *= dimension
    return count


def parse_safetensors_header(path, raw: bytes, data_size: int) -> tuple[list, dict]:
    """Check a safetensors header as the safetensors library does, before anything is read:
    ``[(name, dtype name, shape, start, end)]`` and the metadata, or an :class:`InputFileError`
    naming ``path``.

    The header is a JSON object; ``__metadata__`` (optional) maps strings to strings; every
    other key is a tensor ``{"dtype": str, "shape": [int >= 0], "data_offsets": [start, end]}``
    whose bytes lie within the data and match its shape. Keys are unique (a duplicate would
    silently lose a tensor), and every string is valid Unicode.
    """
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_object)
    except UnicodeDecodeError as error:
        raise InputFileError(f"{path}: safetensors header is not UTF-8 ({error.reason} at byte "
                             f"{8 + error.start})") from None
    except _DuplicateKeyError as error:
        raise InputFileError(f"{path}: safetensors header has the key {error.key[:60]!r} twice; "
                             "one entry would be lost") from None
    except RecursionError:
        raise InputFileError(f"{path}: safetensors header nests too deeply to be a header") \
            from None
    except ValueError as error:  # json.JSONDecodeError and out-of-range numbers
        raise InputFileError(f"{path}: safetensors header is not JSON ({error})") from None
    if not isinstance(header, dict):
        raise InputFileError(f"{path}: safetensors header is a JSON {type(header).__name__}, not "
                             "an object of tensors")
    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise InputFileError(f"{path}: safetensors __metadata__ must map strings to strings, not "
                             f"{str(metadata)[:60]}")
    for key, value in metadata.items():
        _check_text(path, key, "metadata key")
        _check_text(path, value, f"metadata {key!r}: value")
    entries = []
    for name, entry in header.items():
        _check_text(path, name, "tensor name")
        if not isinstance(entry, dict):
            raise InputFileError(f"{path}: entry {name!r} is a JSON {type(entry).__name__}, not a "
                                 "tensor description {dtype, shape, data_offsets}")
        dtype_name = entry.get("dtype")
        if not isinstance(dtype_name, str) or (dtype_name != "BF16"
                                               and dtype_name not in _SAFETENSORS_DTYPES):
            raise InputFileError(f"{path}: tensor {name!r} has unsupported dtype "
                                 f"{str(dtype_name)[:40]}")
        shape = _check_shape(path, name, entry.get("shape"))
        offsets = entry.get("data_offsets")
        if not (isinstance(offsets, (list, tuple)) and len(offsets) == 2
                and all(_is_int(o) for o in offsets)):
            raise InputFileError(f"{path}: tensor {name!r} has data_offsets "
                                 f"{str(offsets)[:60]}, not [start, end]")
        start, end = offsets
        if not 0 <= start <= end <= data_size:
            raise InputFileError(f"{path}: tensor {name!r} has offsets outside the file")
        itemsize = 2 if dtype_name == "BF16" else np.dtype(_SAFETENSORS_DTYPES[dtype_name]).itemsize
        if _element_count(shape) * itemsize != end - start:
            raise InputFileError(f"{path}: tensor {name!r} size does not match its shape "
                                 f"{list(shape)}")
        entries.append((name, dtype_name, shape, start, end))
    return entries, metadata


def read_safetensors(path) -> tuple[dict, dict]:
    """Tensors and ``__metadata__`` of a safetensors file (arrays are copies, native order).

    Raises
    ------
    InputFileError
        (code ``io``) A file that breaks the safetensors format, see
        :func:`parse_safetensors_header`; the message names ``path``.
    """
    with open(path, "rb") as stream:
        prefix = stream.read(8)
        if len(prefix) < 8:
            raise InputFileError(f"{path}: too short for a safetensors file")
        (header_size,) = struct.unpack("<Q", prefix)
        if header_size > _MAX_SAFETENSORS_HEADER_BYTES:
            raise InputFileError(f"{path}: safetensors header of {header_size} bytes is too large")
        raw = stream.read(header_size)
        if len(raw) < header_size:
            raise InputFileError(f"{path}: the file ends inside its {header_size}-byte safetensors "
                                 "header")
        data = stream.read()
    entries, metadata = parse_safetensors_header(path, raw, len(data))
    tensors = {}
    for name, dtype_name, shape, start, end in entries:
        if dtype_name == "BF16":
            dtype = _bfloat16()
            raw = np.frombuffer(data[start:end], dtype="<u2").astype(np.uint16).view(dtype)
        else:
            raw = np.frombuffer(data[start:end], dtype=_SAFETENSORS_DTYPES[dtype_name])
            raw = raw.astype(raw.dtype.newbyteorder("="))
        tensors[name] = raw.reshape(shape)
    return tensors, metadata


def read_npz(path) -> dict:
    """The arrays of an uncompressed or deflated .npz, each member's header checked before its
    data is read: a member declaring more bytes than it holds (10^12 floats in a few bytes), a
    pickled (object) array, a member that is not a .npy array, a name given twice, a damaged or
    truncated archive raise :class:`InputFileError` naming ``path``."""
    import zipfile
    import zlib

    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError) as error:
        raise InputFileError(f"{path}: cannot read .npz ({error})") from None
    tensors = {}
    with archive:
        for info in archive.infolist():
            if info.is_dir():
                continue
            member_name = info.filename
            if not member_name.endswith(".npy"):
                raise InputFileError(f"{path}: member {member_name[:60]!r} is not a .npy array")
            name = member_name[:-len(".npy")]
            if name in tensors:
                raise InputFileError(f"{path}: member {member_name[:60]!r} appears twice; one "
                                     "array would be lost")
            try:
                with archive.open(info) as member:
                    version = np.lib.format.read_magic(member)
                    if version == (1, 0):
                        shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(member)
                    elif version == (2, 0):
                        shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(member)
                    else:
                        raise ValueError(f".npy version {version[0]}.{version[1]} is not read")
                    if dtype.hasobject:
                        raise ValueError("it holds Python objects (pickled data is never loaded)")
                    shape = _check_shape(path, name, shape)
                    needed = _element_count(shape) * dtype.itemsize
                    available = info.file_size - member.tell()
                    if needed != available:
                        raise ValueError(f"its header declares {needed} bytes of data, it holds "
                                         f"{available}")
                    buffer = bytearray(needed)
                    if member.readinto(buffer) != needed:
                        raise ValueError("the member ends early")
            except InputFileError:
                raise
            except (ValueError, zipfile.BadZipFile, zlib.error, EOFError, OSError) as error:
                raise InputFileError(f"{path}: cannot read member {member_name[:60]!r} "
                                     f"({error})") from None
            array = np.frombuffer(buffer, dtype=dtype)
            tensors[name] = array.reshape(shape, order="F" if fortran_order else "C")
    return tensors


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
    _check_output_names(path, suffix, [name for name, _, _ in entries])
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


def _check_output_names(path, suffix: str, names: list) -> None:
    """Refuse names the output format would silently change or lose (issue 17): a safetensors
    tensor named ``__metadata__`` (the key of the file's metadata: the file would be invalid and
    its metadata lost); a .npz name holding NUL (zipfile cuts member names at NUL, so two tensors
    could become one member)."""
    for name in names:
        if suffix == ".safetensors" and name == "__metadata__":
            raise OutputFileError(f"{path}: tensor name '__metadata__' cannot be stored in a "
                                  "safetensors file (the key holds the file's metadata); write "
                                  "a .npz instead")
        if suffix == ".npz" and "\0" in name:
            raise OutputFileError(f"{path}: tensor name {name[:60]!r} holds a NUL character, "
                                  "which a .npz member name cannot; write a .safetensors instead")


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
        return read_npz(path), {}
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
