"""The production decoder: Numba kernels over a memory-mapped file. Imports only ``format``."""

from .reader import NrdFile, TensorInfo, numpy_dtype  # noqa: F401
