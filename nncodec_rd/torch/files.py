"""safetensors-style functions for PyTorch: ``save_file``/``load_file`` on dicts of tensors and
``save_model``/``load_model`` on modules, as ``safetensors.torch`` names them.

>>> import torch, tempfile, os
>>> from nncodec_rd.torch import files
>>> path = os.path.join(tempfile.mkdtemp(), "weights.nrd")
>>> _ = files.save_file({"w": torch.ones(64, 32), "step": torch.tensor(3)}, path)
>>> sorted(files.load_file(path))
['step', 'w']
"""

from __future__ import annotations

import torch

from .. import api
from .model_encoder import compress, load_into
from .state_dict import numpy_to_tensor
from .state_dict import tensor_to_numpy


def save_file(tensors: dict, path, metadata: dict | None = None, **options) -> int:
    """Write a dict of torch tensors (a state dict) to an .nrd file without a model or data:
    floating tensors are rounded to a uniform grid (data-free ``rtn``) and entropy-coded, others
    stored raw. ``options`` are those of :func:`nncodec_rd.save_file` (``step``, ``bins``,
    ``per_row``, ``quantize``, ``settings``...). Returns the file size in bytes."""
    arrays = {}
    for name, tensor in tensors.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name!r} is a {type(tensor).__name__}, not a torch.Tensor")
        if tensor.layout != torch.strided:
            raise TypeError(f"{name!r} is a {tensor.layout} tensor: make it dense with "
                            f".to_dense() before saving")
        arrays[name] = tensor_to_numpy(tensor)
    return api.save_file(arrays, path, metadata=metadata, **options)


def load_file(path, device: str | torch.device = "cpu", threads: int | None = None,
              max_output_bytes: int | None = api.DEFAULT_MAX_OUTPUT_BYTES,
              memory_map: bool = True,
              max_transform_work: int | None = api.DEFAULT_MAX_TRANSFORM_WORK,
              max_header_bytes: int | None = api.DEFAULT_MAX_HEADER_BYTES) -> dict:
    """Decode every tensor of an .nrd file: name -> torch tensor on ``device`` (bfloat16 stays
    bfloat16). ``max_output_bytes`` bounds each decoded tensor (see
    :class:`~nncodec_rd.decoder.reader.NrdFile`; ``None`` for no bound); ``memory_map``,
    ``max_transform_work`` and ``max_header_bytes`` are :func:`nncodec_rd.safe_open`'s."""
    decoded = api.load_file(path, threads=threads, max_output_bytes=max_output_bytes,
                            memory_map=memory_map, max_transform_work=max_transform_work,
                            max_header_bytes=max_header_bytes)
    return {name: numpy_to_tensor(array).to(device) for name, array in decoded.items()}


class TorchFile:
    """An open .nrd file giving torch tensors on ``device``
    (``nncodec_rd.safe_open(path, framework="pt")``): ``keys()``, ``metadata()``,
    ``get_tensor``, ``get_slice``, ``info``, ``get_rows``; a context manager."""

    def __init__(self, handle, device="cpu"):
        self._handle, self.device = handle, device

    def keys(self) -> list:
        return self._handle.keys()

    def metadata(self) -> dict:
        return self._handle.metadata()

    def info(self, name):
        return self._handle.info(name)

    def get_tensor(self, name) -> torch.Tensor:
        return numpy_to_tensor(self._handle.get_tensor(name)).to(self.device)

    def get_rows(self, name, start: int, stop: int) -> torch.Tensor:
        return numpy_to_tensor(self._handle.get_rows(name, start, stop)).to(self.device)

    def get_slice(self, name):
        return _TorchSlice(self._handle.get_slice(name), self.device)

    def close(self) -> None:
        self._handle.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class _TorchSlice:
    def __init__(self, view, device):
        self._view, self._device = view, device

    def get_shape(self) -> list:
        return self._view.get_shape()

    def get_dtype(self) -> str:
        return self._view.get_dtype()

    def __getitem__(self, index) -> torch.Tensor:
        return numpy_to_tensor(self._view[index]).to(self._device)


def save_model(model: torch.nn.Module, path, calibration_batches=None, **options):
    """Compress ``model`` into an .nrd file: with ``calibration_batches`` by rate-constrained
    OBS (``method="cerwu"`` unless given), without them by data-free rounding (``rtn``). Tied
    weights are stored once. ``options`` go to :func:`nncodec_rd.torch.model_encoder.compress`
    (``lam``, ``target_bpw``, ``target_metric``, ``metadata``, ...). Returns its
    :class:`~nncodec_rd.torch.model_encoder.CompressionResult`."""
    options.setdefault("method", "cerwu" if calibration_batches is not None else "rtn")
    options.setdefault("progress", False)
    return compress(model, calibration_batches, path=path, **options)


def load_model(model: torch.nn.Module, path, strict: bool = True,
               threads: int | None = None) -> torch.nn.Module:
    """Decode an .nrd file into ``model``'s parameters and buffers in place (``strict`` as in
    ``load_state_dict``). Returns the model."""
    return load_into(model, path, strict=strict, threads=threads)
