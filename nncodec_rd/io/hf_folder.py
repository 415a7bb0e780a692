"""A Hugging Face model folder inside one .nrd file, and back out (no torch needed).

Encoding a folder (:func:`nncodec_rd.torch.pretrained.compress_pretrained`) stores, besides the
tensors, the folder's small files (``config.json``, ``generation_config.json``, tokenizer files,
the model card, files of subfolders such as ``1_Pooling/config.json``) as metadata entries
``hf/file/<relative path>`` (bytes, unchanged), and the shard layout of a sharded checkpoint as
``hf/weight_map`` (the index's tensor -> shard map, JSON). :func:`write_folder` restores the
folder: every stored file byte for byte, and the tensors as safetensors with ``"format": "pt"``
(what ``transformers`` asks of a safetensors file), sharded like the original when it was
sharded (a torch ``.bin`` checkpoint comes back as safetensors: no pickle is ever written).

Examples
--------
>>> is_archived_file("config.json"), is_archived_file("model-00001-of-00002.safetensors")
(True, False)
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

from ..format.errors import NrdError
from .atomic import OutputPathError

FILE_PREFIX = "hf/file/"
"""Metadata key prefix of a stored file of the folder (the rest is its relative path)."""
WEIGHT_MAP = "hf/weight_map"
"""Metadata key of the original shard layout: JSON ``{tensor name: shard file name}``."""
MAX_FILE_BYTES = 32 << 20
"""Larger files are not archived (the header of a file is at most 256 MiB, spec §9)."""

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
SAFETENSORS_FORMAT = {"format": "pt"}
"""File metadata transformers' loader requires of a safetensors checkpoint."""

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx",
                    ".gguf", ".nrd", ".npz", ".tflite", ".ot")
_WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def is_archived_file(relative_path: str) -> bool:
    """True for a file of a model folder that goes into the archive as metadata: everything but
    weights (and their indexes, rebuilt on decoding) and hidden files."""
    name = os.path.basename(relative_path)
    return not (name.startswith(".") or name.lower().endswith(_WEIGHT_SUFFIXES)
                or name in _WEIGHT_INDEXES)


def folder_metadata(folder) -> tuple[dict, list]:
    """The metadata entries archiving ``folder``'s small files and shard layout, and the
    relative paths of files left out (too large)."""
    folder = os.fspath(folder)
    entries, skipped = {}, []
    for root, directories, files in os.walk(folder):
        directories[:] = sorted(d for d in directories if not d.startswith("."))
        for name in sorted(files):
            path = os.path.join(root, name)
            relative = os.path.relpath(path, folder).replace(os.sep, "/")
            if not is_archived_file(relative) or not os.path.isfile(path):
                continue
            if os.path.getsize(path) > MAX_FILE_BYTES:
                skipped.append(relative)
                continue
            with open(path, "rb") as stream:
                entries[FILE_PREFIX + relative] = stream.read()
    for index_name in _WEIGHT_INDEXES:
        index_path = os.path.join(folder, index_name)
        if os.path.isfile(index_path):
            with open(index_path, encoding="utf-8") as stream:
                weight_map = json.load(stream).get("weight_map", {})
            entries[WEIGHT_MAP] = json.dumps(weight_map, sort_keys=True)
            break
    return entries, skipped


def _safetensors_shard_name(original: str) -> str:
    stem = original
    for suffix in (".safetensors", ".bin"):
        if stem.endswith(suffix):
            stem = stem[:-len(suffix)]
    return stem.replace("pytorch_model", "model") + ".safetensors"


def shard_plan(names: list, metadata: dict) -> dict:
    """Shard file name -> tensor names, in the file's order: the original layout when the
    archive records one (tensors it does not name go to the last shard), else one file."""
    raw = metadata.get(WEIGHT_MAP)
    if not raw:
        return {SINGLE_FILE: list(names)}
    weight_map = json.loads(raw)
    plan: dict[str, list] = {}
    for shard in dict.fromkeys(weight_map.values()):
        plan[_safetensors_shard_name(shard)] = []
    last = list(plan)[-1]
    for name in names:
        shard = weight_map.get(name)
        plan[_safetensors_shard_name(shard) if shard else last].append(name)
    return {shard: members for shard, members in plan.items() if members}


def write_folder(handle, folder, metadata_extra: dict | None = None) -> list[str]:
    """Restore the model folder archived in the open .nrd ``handle`` into ``folder`` (created;
    an existing folder gets the files replaced one by one). Returns the files written.

    The files are first written into a temporary folder beside ``folder`` and then moved into
    place, so an error leaves no half-written file in ``folder``.
    """
    from .tensorio import write_tensors_streaming

    folder = os.path.abspath(os.fspath(folder))
    parent = os.path.dirname(folder)
    if not os.path.isdir(parent):
        raise OutputPathError(f"cannot write {folder}: the folder {parent} does not exist")
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise OutputPathError(f"{folder} exists and is not a folder")
    metadata = handle.metadata()
    names = list(handle.keys())
    infos = {name: handle.info(name) for name in names}
    plan = shard_plan([n for n in names if not n.startswith("__transform__/")], metadata)
    staging = tempfile.mkdtemp(prefix=f".nrd-{os.path.basename(folder)[:80]}.", dir=parent)
    written = []
    try:
        for key, value in metadata.items():
            if key.startswith(FILE_PREFIX) and isinstance(value, bytes):
                relative = key[len(FILE_PREFIX):]
                if relative.startswith("/") or ".." in relative.split("/"):
                    raise NrdError(f"metadata {key!r}: a stored file must stay inside the folder")
                path = os.path.join(staging, *relative.split("/"))
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "wb") as stream:
                    stream.write(value)
                written.append(relative)
        file_metadata = dict(SAFETENSORS_FORMAT, **(metadata_extra or {}))
        weight_map = {}
        for shard, members in plan.items():
            write_tensors_streaming(os.path.join(staging, shard),
                                    [(n, infos[n].dtype, infos[n].shape) for n in members],
                                    handle.get_tensor, file_metadata)
            weight_map.update({name: shard for name in members})
            written.append(shard)
        if len(plan) > 1:
            total = sum(infos[n].element_count * _itemsize(infos[n].dtype) for n in weight_map)
            with open(os.path.join(staging, INDEX_FILE), "w", encoding="utf-8") as stream:
                json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, stream,
                          indent=2, sort_keys=True)
                stream.write("\n")
            written.append(INDEX_FILE)
        os.makedirs(folder, exist_ok=True)
        for relative in written:
            target = os.path.join(folder, *relative.split("/"))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.replace(os.path.join(staging, *relative.split("/")), target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return written


def _itemsize(dtype_name: str) -> int:
    import numpy as np

    return 2 if dtype_name == "bfloat16" else np.dtype(dtype_name).itemsize


__all__ = ["FILE_PREFIX", "WEIGHT_MAP", "folder_metadata", "is_archived_file", "shard_plan",
           "write_folder"]
