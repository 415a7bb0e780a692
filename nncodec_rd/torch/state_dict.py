"""Load PyTorch state dicts safely (``weights_only=True``: no arbitrary pickle code runs)."""

from __future__ import annotations

import numpy as np

from ..format.errors import EncoderError


def tensor_to_numpy(tensor) -> np.ndarray:
    """A CPU copy of a torch tensor as NumPy; bfloat16 becomes ``ml_dtypes.bfloat16``."""
    import torch

    tensor = tensor.detach().cpu().contiguous()
    if tensor.dtype == torch.bfloat16:
        import ml_dtypes

        return tensor.view(torch.int16).numpy().view(np.uint16).view(ml_dtypes.bfloat16).copy()
    return tensor.numpy().copy()


def numpy_to_tensor(array: np.ndarray):
    """A torch tensor of a NumPy array (``ml_dtypes.bfloat16`` becomes ``torch.bfloat16``);
    the inverse of :func:`tensor_to_numpy`, sharing memory where torch can."""
    import torch

    array = np.asarray(array)
    if array.dtype.name == "bfloat16":
        return torch.from_numpy(array.view(np.int16).copy()).view(torch.bfloat16)
    # not np.ascontiguousarray: it turns a 0-d array (a BatchNorm's num_batches_tracked) 1-d
    return torch.from_numpy(np.asarray(array, order="C"))


def read_state_dict(path) -> dict:
    """Name -> NumPy array from a PyTorch file holding a state dict (or a dict of tensors)."""
    try:
        import torch
    except ImportError:
        raise EncoderError("reading PyTorch files needs torch: pip install 'nncodec-rd[torch]' "
                           "(or convert the file to .safetensors)") from None
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for unreadable or unsafe files
        raise EncoderError(f"{path}: cannot load as a weights-only PyTorch file "
                           f"({type(error).__name__}: {str(error).splitlines()[0][:200]})") from None
    if isinstance(loaded, dict) and "state_dict" in loaded and isinstance(loaded["state_dict"], dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict):
        raise EncoderError(f"{path}: holds a {type(loaded).__name__}, not a state dict")
    tensors = {}
    for name, value in loaded.items():
        if isinstance(value, torch.Tensor):
            tensors[str(name)] = tensor_to_numpy(value)
    if not tensors:
        raise EncoderError(f"{path}: the state dict holds no tensors")
    return tensors
