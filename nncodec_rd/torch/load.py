"""Load decoded weights back into a PyTorch model: from a dict (:func:`load_weights`) or from an
.nrd file (:func:`load_into`)."""

from __future__ import annotations

import os

import torch

from ..api import load_file
from ..format.errors import EncoderError
from .layers import TRANSFORM_PREFIX
from .state_dict import numpy_to_tensor


def load_weights(model, weights: dict) -> dict:
    """Copy ``weights`` (state-dict key -> array) into ``model`` in place; returns the previous
    values of those entries (to restore them)."""
    state = model.state_dict()
    previous = {}
    with torch.no_grad():
        for key, value in weights.items():
            if key not in state:
                raise EncoderError(f"{key}: the model has no such parameter or buffer")
            target = state[key]
            previous[key] = target.detach().clone()
            source = value if isinstance(value, torch.Tensor) else numpy_to_tensor(value)
            if tuple(source.shape) != tuple(target.shape):
                raise EncoderError(f"{key}: the file holds shape {tuple(source.shape)}, the model "
                                   f"{tuple(target.shape)}")
            target.copy_(source.to(target.dtype))
    return previous


def load_into(model, path, *, strict: bool = True, threads: int | None = None):
    """Decode the .nrd file at ``path`` into ``model``'s parameters and buffers, in place.

    With ``strict``, every entry of the model's state dict must be in the file and every tensor
    of the file in the model (as ``load_state_dict`` does). Returns the model.
    """
    decoded = {name: value for name, value in load_file(path, threads=threads).items()
               if not name.startswith(TRANSFORM_PREFIX)}  # matrices of transforms, no parameters
    state_keys = set(model.state_dict().keys())
    if strict:
        missing = sorted(state_keys - set(decoded))
        unexpected = sorted(set(decoded) - state_keys)
        if missing or unexpected:
            raise EncoderError(f"{os.fspath(path)} does not match the model: missing "
                               f"{missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected "
                               f"{unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
    load_weights(model, {key: value for key, value in decoded.items() if key in state_keys})
    return model
