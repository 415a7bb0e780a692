"""An open .nrd file that gives torch tensors: what ``nncodec_rd.safe_open(path,
framework="pt")`` returns. It wraps a :class:`~nncodec_rd.decoder.reader.NrdFile` and imports
nothing of the encoder, so opening a file for torch never loads it.
"""

from __future__ import annotations

import torch

from .state_dict import numpy_to_tensor


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
