"""Checkpoints read lazily: a Hugging Face model folder, safetensors shards, a torch ``.bin``.

A model of billions of weights must never be in memory whole. :class:`CheckpointWeights` opens a
checkpoint and hands out one tensor at a time (safetensors through ``safe_open``, which maps the
file; a torch ``.bin`` through ``torch.load(weights_only=True, mmap=True)``), and
:func:`empty_model` builds a model from its config with every parameter on PyTorch's ``meta``
device (no memory). :func:`materialize` then loads the parameters of one submodule at a time,
and :func:`release` sends them back to ``meta`` when the encoder is done with them.

Examples
--------
>>> import os, tempfile, torch
>>> from safetensors.torch import save_file
>>> folder = tempfile.mkdtemp()
>>> save_file({"w": torch.ones(2, 3)}, os.path.join(folder, "model.safetensors"))
>>> weights = CheckpointWeights(folder)
>>> weights.keys(), weights.shape("w"), weights.dtype("w")
(['w'], (2, 3), torch.float32)
>>> weights.get("w").sum().item()
6.0
"""

from __future__ import annotations

import contextlib
import json
import os

import torch

from ..format.errors import EncoderError

SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_SINGLE = "model.safetensors"
TORCH_INDEX = "pytorch_model.bin.index.json"
TORCH_SINGLE = "pytorch_model.bin"


class CheckpointWeights:
    """The tensors of a checkpoint, read one at a time.

    ``source`` is a folder (``model.safetensors``, sharded safetensors with
    ``model.safetensors.index.json``, ``pytorch_model.bin`` or its sharded index) or one file
    (``.safetensors``, ``.bin``/``.pt``/``.pth``). Tensors keep the checkpoint's dtype; the order
    of :meth:`keys` is the checkpoint's (the index's weight map, or the file's own order).
    """

    def __init__(self, source):
        source = os.fspath(source)
        self.source = source
        self._files: dict[str, str] = {}       # tensor name -> file
        # file -> {name: (shape, safetensors dtype)}, or {name: mapped tensor} for a torch file
        self._handles: dict[str, dict] = {}
        if os.path.isdir(source):
            files = self._folder_files(source)
        elif os.path.isfile(source):
            files = [source]
        else:
            raise EncoderError(f"{source}: no such file or folder")
        for path in files:
            for name in self._open(path):
                if name in self._files:
                    raise EncoderError(f"{source}: tensor {name!r} is in two shards "
                                       f"({os.path.basename(self._files[name])} and "
                                       f"{os.path.basename(path)})")
                self._files[name] = path
        if not self._files:
            raise EncoderError(f"{source}: the checkpoint holds no tensors")

    @staticmethod
    def _folder_files(folder: str) -> list[str]:
        for index_name in (SAFETENSORS_INDEX, TORCH_INDEX):
            index_path = os.path.join(folder, index_name)
            if os.path.isfile(index_path):
                try:
                    with open(index_path, encoding="utf-8") as stream:
                        weight_map = json.load(stream)["weight_map"]
                    shards = list(dict.fromkeys(weight_map.values()))  # first-seen order
                except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
                    raise EncoderError(f"{index_path}: not a checkpoint index ({error})") from None
                paths = [os.path.join(folder, shard) for shard in shards]
                missing = [path for path in paths if not os.path.isfile(path)]
                if missing:
                    raise EncoderError(f"{index_path} names shards that are not in the folder: "
                                       f"{', '.join(os.path.basename(p) for p in missing[:3])}")
                return paths
        for single in (SAFETENSORS_SINGLE, TORCH_SINGLE):
            path = os.path.join(folder, single)
            if os.path.isfile(path):
                return [path]
        raise EncoderError(f"{folder}: no model.safetensors, sharded safetensors with "
                           f"{SAFETENSORS_INDEX}, or pytorch_model.bin in this folder")

    def _open(self, path: str) -> list[str]:
        if path.endswith(".safetensors"):
            # Shards are opened for each read and closed after it: a mapping kept open would
            # keep every page read so far resident, and the process would grow to the size of
            # the checkpoint. Names, shapes and dtypes are read once, here.
            with self._safetensors(path) as handle:
                names = list(handle.keys())
                self._handles[path] = {name: (tuple(handle.get_slice(name).get_shape()),
                                              handle.get_slice(name).get_dtype())
                                       for name in names}
            return names
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as error:  # torch raises many types for unreadable or unsafe files
            raise EncoderError(f"{path}: cannot load as a weights-only PyTorch file "
                               f"({type(error).__name__}: {str(error).splitlines()[0][:200]})") \
                from None
        if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
            loaded = loaded["state_dict"]
        if not isinstance(loaded, dict):
            raise EncoderError(f"{path}: holds a {type(loaded).__name__}, not a state dict")
        tensors = {str(k): v for k, v in loaded.items() if isinstance(v, torch.Tensor)}
        self._handles[path] = tensors
        return list(tensors)

    @staticmethod
    def _safetensors(path: str):
        try:
            from safetensors import safe_open
        except ImportError:
            raise EncoderError("reading safetensors checkpoints needs the safetensors "
                               "package: pip install 'nncodec-rd[hf]'") from None
        try:
            return safe_open(path, framework="pt", device="cpu")
        except Exception as error:  # safetensors raises its own error types
            raise EncoderError(f"{path}: not a readable safetensors file "
                               f"({str(error).splitlines()[0][:200]})") from None

    def keys(self) -> list[str]:
        """Tensor names, in the checkpoint's order."""
        return list(self._files)

    def __contains__(self, name) -> bool:
        return name in self._files

    def file_of(self, name: str) -> str:
        """The file (shard) holding ``name``."""
        return self._files[name]

    def _entry(self, name: str):
        try:
            path = self._files[name]
        except KeyError:
            raise EncoderError(f"{self.source}: the checkpoint has no tensor {name!r}") from None
        return path, self._handles[path][name]

    def shape(self, name: str) -> tuple:
        """The tensor's shape, without reading it."""
        _, entry = self._entry(name)
        return tuple(entry.shape) if isinstance(entry, torch.Tensor) else entry[0]

    def dtype(self, name: str) -> torch.dtype:
        """The tensor's dtype in the checkpoint, without reading it."""
        _, entry = self._entry(name)
        if isinstance(entry, torch.Tensor):
            return entry.dtype
        return _SAFETENSORS_TORCH_DTYPES.get(entry[1], None) or _unknown_dtype(name, entry[1])

    def get(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """A copy of the tensor (in ``dtype`` if given), read now."""
        path, entry = self._entry(name)
        if isinstance(entry, torch.Tensor):  # a .bin, mapped: a copy owns its memory
            return entry.to(dtype) if dtype is not None and dtype != entry.dtype \
                else entry.clone()
        with self._safetensors(path) as handle:
            tensor = handle.get_tensor(name)  # a copy, owned
        return tensor.to(dtype) if dtype is not None else tensor

    def total_bytes(self) -> int:
        """Bytes of all tensors in the checkpoint's dtypes."""
        total = 0
        for name in self._files:
            count = 1
            for size in self.shape(name):
                count *= size
            total += count * _itemsize(self.dtype(name))
        return total


_SAFETENSORS_TORCH_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool}


def _unknown_dtype(name, dtype_name):
    raise EncoderError(f"tensor {name!r}: safetensors dtype {dtype_name} is not supported")


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


@contextlib.contextmanager
def empty_parameters():
    """Inside this context, new modules' parameters live on the ``meta`` device (no memory, no
    initialisation cost); buffers are created as usual, since a model computes some of them
    (rotary frequencies) at construction and they are not in its checkpoint."""
    original = torch.nn.Module.register_parameter

    def register_parameter(module, name, parameter):
        original(module, name, parameter)
        if parameter is not None and parameter.device.type != "meta":
            kind = type(parameter)
            module._parameters[name] = kind(parameter.to("meta"),
                                            requires_grad=parameter.requires_grad)

    torch.nn.Module.register_parameter = register_parameter
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = original


def tied_parameters(model) -> dict[str, list[str]]:
    """State-dict name -> every name of the same Parameter object (tied weights such as a
    language model's input embedding and output projection), for names with several."""
    by_identity: dict[int, list[str]] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        by_identity.setdefault(id(parameter), []).append(name)
    return {name: names for names in by_identity.values() if len(names) > 1 for name in names}


class KeyMap:
    """Model state-dict names <-> checkpoint names: identical, or differing by the model's
    ``base_model_prefix`` (a checkpoint of ``BertModel`` loaded into ``BertForMaskedLM``, say)."""

    def __init__(self, model, weights: CheckpointWeights, names):
        prefix = getattr(model, "base_model_prefix", "") or ""
        self.to_checkpoint: dict[str, str] = {}
        for name in names:
            candidates = [name]
            if prefix:
                candidates += [f"{prefix}.{name}"]
                if name.startswith(prefix + "."):
                    candidates.append(name[len(prefix) + 1:])
            for candidate in candidates:
                if candidate in weights:
                    self.to_checkpoint[name] = candidate
                    break

    def __getitem__(self, name: str) -> str:
        return self.to_checkpoint[name]

    def get(self, name: str, default=None):
        return self.to_checkpoint.get(name, default)


def materialize(model, names, weights: CheckpointWeights, key_map: KeyMap, ties: dict,
                dtype: torch.dtype = torch.float32) -> None:
    """Load the parameters ``names`` (state-dict names) of ``model`` from ``weights`` as
    ``dtype``; tied names get the same Parameter object."""
    done = set()
    for name in names:
        if name in done:
            continue
        group = ties.get(name, [name])
        source = next((key_map.get(n) for n in group if key_map.get(n) is not None), None)
        if source is None:
            raise EncoderError(f"{weights.source}: the checkpoint has no tensor for the model's "
                               f"parameter {name!r}")
        tensor = weights.get(source, dtype)
        parameter = torch.nn.Parameter(tensor, requires_grad=False)
        for tied in group:
            owner_name, _, attribute = tied.rpartition(".")
            owner = model.get_submodule(owner_name) if owner_name else model
            owner._parameters[attribute] = parameter
            done.add(tied)


def release(module) -> None:
    """Send ``module``'s parameters back to ``meta``, freeing their memory."""
    for owner in module.modules():
        for attribute, parameter in list(owner._parameters.items()):
            if parameter is not None and parameter.device.type != "meta":
                owner._parameters[attribute] = torch.nn.Parameter(
                    parameter.detach().to("meta"), requires_grad=False)


def model_class_for(config):
    """The transformers class that the folder's ``config.json`` names (``architectures[0]``),
    or ``AutoModel``'s choice for the config."""
    import transformers

    for architecture in getattr(config, "architectures", None) or []:
        model_class = getattr(transformers, architecture, None)
        if model_class is not None:
            return model_class
    return transformers.AutoModel._model_mapping[type(config)]


def empty_model(folder):
    """The folder's transformers model with its parameters on ``meta`` and its config; float32
    compute, eval mode."""
    try:
        import transformers
    except ImportError:
        raise EncoderError("reading a Hugging Face model folder needs transformers: "
                           "pip install 'nncodec-rd[hf]'") from None
    folder = os.fspath(folder)
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise EncoderError(f"{folder}: no config.json; a Hugging Face model folder has one")
    try:
        config = transformers.AutoConfig.from_pretrained(folder)
    except Exception as error:  # transformers raises many types on a bad config
        raise EncoderError(f"{folder}/config.json: transformers cannot read it "
                           f"({str(error).splitlines()[0][:200]})") from None
    model_class = model_class_for(config)
    with empty_parameters():
        model = model_class(config)
    model.eval()
    return model, config


__all__ = ["CheckpointWeights", "KeyMap", "empty_model", "empty_parameters", "materialize",
           "model_class_for", "release", "tied_parameters"]
