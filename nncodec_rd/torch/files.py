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
from .compress_model import compress
from .load import load_into
from .state_dict import numpy_to_tensor, tensor_to_numpy


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


def save_model(model: torch.nn.Module, path, calibration_batches=None, **options):
    """Compress ``model`` into an .nrd file: with ``calibration_batches`` by rate-constrained
    OBS (``method="cerwu"`` unless given), without them by data-free rounding (``rtn``). Tied
    weights are stored once. ``options`` go to :func:`nncodec_rd.torch.compress_model.compress`
    (``lam``, ``target_bpw``, ``target_metric``, ``metadata``, ...). Returns its
    :class:`~nncodec_rd.torch.layers.CompressionResult`."""
    options.setdefault("method", "cerwu" if calibration_batches is not None else "rtn")
    options.setdefault("progress", False)
    return compress(model, calibration_batches, path=path, **options)


def load_model(model: torch.nn.Module, path, strict: bool = True,
               threads: int | None = None) -> torch.nn.Module:
    """Decode an .nrd file into ``model``'s parameters and buffers in place (``strict`` as in
    ``load_state_dict``). Returns the model."""
    return load_into(model, path, strict=strict, threads=threads)
