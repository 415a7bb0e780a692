"""The PyTorch side of ``nncodec-rd encode --calibration``: reading a file of calibration batches
and checking what an entry point returned, so that mistakes give one clear line before any slow
work starts."""

from __future__ import annotations

import os
import re

import numpy as np
import torch

from ..format.errors import EncoderError, first_line


def is_module(value) -> bool:
    """True for a ``torch.nn.Module``."""
    return isinstance(value, torch.nn.Module)


def floating_dtype(model):
    """The dtype of the model's first floating-point parameter, or None."""
    for parameter in model.parameters():
        if parameter.dtype.is_floating_point:
            return parameter.dtype
    return None


def check_batches(batches, source: str) -> list:
    """The batches an entry point returned, as a list (so that the encoder can run them twice:
    for the Hessians and for the layer sensitivities); an :class:`EncoderError` if they are not
    an iterable of batches."""
    if isinstance(batches, (torch.Tensor, np.ndarray, str, bytes)) or hasattr(batches, "keys") \
            or not hasattr(batches, "__iter__"):
        raise EncoderError(f"{source} returned a {type(batches).__name__} as its batches; return "
                           f"an iterable of batches: a list of tensors, of tuples of positional "
                           f"inputs or of dicts of keyword inputs")
    try:
        batches = list(batches)
    except Exception as error:  # a user's iterator failing
        raise EncoderError(f"{source}: iterating its batches raised {type(error).__name__}: "
                           f"{first_line(error)}") from None
    if not batches:
        raise EncoderError(f"{source} returned no calibration batches")
    return batches


def load_batches(path, batch_size: int = 32, dtype=None) -> list:
    """Calibration batches from a ``.pt`` or ``.npz`` file.

    ``.pt`` (loaded with ``weights_only=True``): a tensor, split along its first dimension into
    batches of ``batch_size``; or a list / tuple whose items are batches: tensors, dicts of tensors
    (keyword inputs) or lists / tuples of tensors (positional inputs). ``.npz``: one array is split
    like a tensor; several arrays are one batch each, in natural key order (``arr_2`` before
    ``arr_10``). Floating-point inputs are cast to ``dtype`` (the model's) when given.
    """
    path = os.fspath(path)
    if batch_size < 1:
        raise EncoderError(f"--batch-size must be at least 1, not {batch_size}")
    if not os.path.isfile(path):
        raise EncoderError(f"{path}: no such file of calibration batches")
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as archive:
                arrays = {name: archive[name] for name in archive.files}
        except Exception as error:  # zipfile, ValueError, OSError: a file that is not an .npz
            raise EncoderError(f"{path}: cannot read as .npz ({type(error).__name__}: "
                               f"{first_line(error)})") from None
        if not arrays:
            raise EncoderError(f"{path}: holds no arrays")
        for name, array in arrays.items():
            if array.dtype.kind not in "biuf":
                raise EncoderError(f"{path}: array {name!r} has dtype {array.dtype}; calibration "
                                   f"inputs must be numbers")
        if len(arrays) == 1:
            batches = _split(torch.from_numpy(next(iter(arrays.values()))), batch_size, path)
        else:
            batches = [torch.from_numpy(arrays[name]) for name in sorted(arrays, key=_natural)]
    elif suffix in (".pt", ".pth"):
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises many types for unreadable or unsafe files
            raise EncoderError(f"{path}: cannot load as a weights-only PyTorch file "
                               f"({type(error).__name__}: {first_line(error)})") from None
        if isinstance(loaded, torch.Tensor):
            batches = _split(loaded, batch_size, path)
        elif isinstance(loaded, (list, tuple)):
            batches = [_check_batch(batch, f"{path}: batch {number}")
                       for number, batch in enumerate(loaded)]
        else:
            raise EncoderError(f"{path}: holds a {type(loaded).__name__}; save a tensor (split "
                               f"into batches of --batch-size) or a list of batches")
    else:
        raise EncoderError(f"{path}: a file of calibration batches must end in .pt, .pth or .npz")
    if not batches:
        raise EncoderError(f"{path}: holds no calibration batches")
    return [_cast(batch, dtype) for batch in batches] if dtype is not None else batches


def check_runs(model, batches, source: str) -> None:
    """Run the first batch through the model (eval mode, no grad), so that inputs that do not fit
    the model give one clear :class:`EncoderError` instead of a traceback from deep inside."""
    from .hessians import run_batch

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            run_batch(model, batches[0])
    except Exception as error:  # the user's model rejecting the user's inputs
        raise EncoderError(f"the model cannot run the first calibration batch from {source} "
                           f"({type(error).__name__}: {first_line(error)})") from None
    finally:
        model.train(was_training)


def _split(tensor, batch_size: int, path: str) -> list:
    if tensor.dim() == 0 or tensor.shape[0] == 0:
        raise EncoderError(f"{path}: the tensor of shape {tuple(tensor.shape)} has no samples "
                           f"along its first dimension")
    return list(torch.split(tensor, batch_size))


def _check_batch(batch, where: str):
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, dict) and batch and all(
            isinstance(key, str) and isinstance(value, torch.Tensor)
            for key, value in batch.items()):
        return batch
    if isinstance(batch, (list, tuple)) and batch and all(
            isinstance(value, torch.Tensor) for value in batch):
        return tuple(batch)
    raise EncoderError(f"{where} is a {type(batch).__name__}; a batch is a tensor, a dict of "
                       f"tensors or a list of tensors")


def _cast(batch, dtype):
    if isinstance(batch, torch.Tensor):
        return batch.to(dtype) if batch.dtype.is_floating_point else batch
    if isinstance(batch, dict):
        return {key: _cast(value, dtype) for key, value in batch.items()}
    return tuple(_cast(value, dtype) for value in batch)


def _natural(name: str):
    return [(0, int(part), "") if part.isdigit() else (1, 0, part)
            for part in re.split(r"(\d+)", name)]
