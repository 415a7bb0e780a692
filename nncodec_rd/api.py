"""The file API, in the shape of ``safetensors``: save_file, load_file, safe_open."""

from __future__ import annotations

import numpy as np

from .decoder.reader import (
    DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_MAX_OUTPUT_BYTES,
    DEFAULT_MAX_TRANSFORM_WORK,
    NrdFile,
)
from .format.grids import EntropySettings
from .format.layout import RowGeometry


def save_file(tensors: dict, path, metadata: dict | None = None, *, quantize: str = "auto",
              step: float | None = None, relative_step: float | None = None,
              bins: int | None = None, per_row: bool = False,
              settings: EntropySettings | None = None, min_quantized_elements: int = 1024,
              report=None) -> int:
    """Write ``tensors`` (name -> NumPy array) to an .nrd file.

    Floating-point tensors are rounded to a uniform grid and entropy-coded (the data-free ``rtn``
    method); everything else is stored raw. To store already-quantized indices with a grid of
    your choosing, use :class:`nncodec_rd.encoder.NrdWriter` directly.

    Parameters
    ----------
    tensors:
        Name -> array. float32, float16 and bfloat16 arrays are coded; they decode to the same dtype.
    path:
        Output file; written atomically (nothing is left behind on failure).
    metadata:
        File metadata: str, int, float, bool or bytes values.
    quantize:
        ``"auto"`` codes floating tensors with at least ``min_quantized_elements`` elements;
        ``"all"`` codes every floating tensor; ``"none"`` stores everything raw.
    step, relative_step, bins, per_row:
        Grid choice, see :func:`nncodec_rd.encoder.quantize.quantize_rtn`.
    settings:
        Entropy-coding settings (:class:`nncodec_rd.EntropySettings`); by default each tensor
        gets the probability precision up to 14 bits that codes it smallest
        (``EntropySettings(choose_precision=True)``).
    report:
        An optional :class:`nncodec_rd.encoder.fidelity.SqnrReport` that gets each coded
        tensor's signal-to-quantization-noise ratio.

    Returns
    -------
    The size of the written file in bytes.
    """
    if quantize not in ("auto", "all", "none"):
        raise ValueError(f"quantize must be 'auto', 'all' or 'none', not {quantize!r}")
    for name, array in tensors.items():
        if type(array).__module__.split(".")[0] == "torch":
            raise TypeError(f"{name!r} is a torch tensor: nncodec_rd.save_file takes NumPy "
                            f"arrays; use nncodec_rd.torch.save_file for torch tensors (every "
                            f"dtype, bfloat16 included)")
    # The encoder is imported here, not with the package: decoding never loads it.
    from .encoder.settings import model_entropy_settings
    from .encoder.quantize import quantize_rtn
    from .encoder.writer import NrdWriter

    settings = model_entropy_settings() if settings is None else settings
    writer = NrdWriter(path, metadata=metadata)
    for name, array in tensors.items():
        array = np.asarray(array)
        floating = array.dtype.kind == "f" or array.dtype.name == "bfloat16"
        coded = floating and array.dtype.itemsize <= 4 and (
            quantize == "all" or (quantize == "auto" and array.size >= min_quantized_elements))
        if coded:
            indices, grid = quantize_rtn(array.astype(np.float32), step=step,
                                         relative_step=relative_step, bins=bins, per_row=per_row)
            if report is not None:
                report.add(name, array.astype(np.float64), _dequantized(indices, grid))
            dtype = "bfloat16" if array.dtype.name == "bfloat16" else array.dtype.name
            writer.add_indices(name, indices, grid, dtype, settings=settings,
                               metadata={"original_dtype": array.dtype.name})
        else:
            writer.add_raw(name, array)
    return writer.close()


def _dequantized(indices: np.ndarray, grid) -> np.ndarray:
    """The values a decoder reconstructs from ``quantize_rtn``'s indices and grid (float64)."""
    steps = np.asarray(grid.steps, dtype=np.float32).reshape(-1).astype(np.float64)
    if len(steps) == 1:
        return indices * steps[0]
    geometry = RowGeometry.of_shape(indices.shape)
    rows = indices.reshape(geometry.rows, geometry.row_length)
    return (rows * steps[:, None]).reshape(indices.shape)


def _check_framework(framework: str, device) -> str:
    if framework in ("np", "numpy"):
        if str(device) != "cpu":
            raise ValueError(f"NumPy arrays live on the CPU: device must be 'cpu', not {device!r}")
        return "np"
    if framework in ("pt", "torch"):
        return "pt"
    raise ValueError(f"framework must be 'np' or 'pt', not {framework!r}")


def load_file(path, device="cpu", threads: int | None = None,
              max_output_bytes: int | None = DEFAULT_MAX_OUTPUT_BYTES, memory_map: bool = True,
              max_transform_work: int | None = DEFAULT_MAX_TRANSFORM_WORK,
              max_header_bytes: int | None = DEFAULT_MAX_HEADER_BYTES) -> dict:
    """Decode every tensor of an .nrd file: name -> NumPy array (bfloat16 via ``ml_dtypes``);
    ``device`` is ``"cpu"`` (as in ``safetensors.numpy``; for torch tensors on a device,
    :func:`nncodec_rd.torch.load_file`).

    ``max_output_bytes`` bounds each decoded array (see :class:`NrdFile`; by default
    ``DEFAULT_MAX_OUTPUT_BYTES``, 64 GiB or the machine's memory if less; ``None`` for no
    bound); lower it for files from
    untrusted sources, since a few bytes of file can declare terabytes of tensor (spec §9).
    ``memory_map``, ``max_transform_work`` and ``max_header_bytes`` are :func:`safe_open`'s.
    """
    _check_framework("np", device)
    with NrdFile(path, threads=threads, max_output_bytes=max_output_bytes,
                 memory_map=memory_map, max_transform_work=max_transform_work,
                 max_header_bytes=max_header_bytes) as handle:
        return {name: handle.get_tensor(name) for name in handle.keys()}


def safe_open(path, framework: str = "np", device="cpu", threads: int | None = None,
              max_output_bytes: int | None = DEFAULT_MAX_OUTPUT_BYTES, memory_map: bool = True,
              max_transform_work: int | None = DEFAULT_MAX_TRANSFORM_WORK,
              max_header_bytes: int | None = DEFAULT_MAX_HEADER_BYTES):
    """Open an .nrd file lazily, as ``safetensors.safe_open``: ``keys()``, ``metadata()``,
    ``get_tensor(name)``, ``get_slice(name)`` (indexing decodes only the rows it needs),
    ``info(name)``, ``get_rows(name, start, stop)``. Use it as a context manager.

    ``framework="np"`` (the default) gives NumPy arrays; ``"pt"`` gives torch tensors on
    ``device`` (needs torch). ``max_output_bytes`` bounds each decoded array (see
    :class:`NrdFile`; by default ``DEFAULT_MAX_OUTPUT_BYTES``, 64 GiB or the machine's memory
    if less; ``None`` for no bound). ``memory_map=False`` reads the whole file into memory
    instead of mapping it, for files that other processes may truncate or rewrite while they
    are open (see :class:`NrdFile`). ``max_transform_work`` bounds a transform's product in
    multiply-adds and ``max_header_bytes`` the header's size (100 MiB by default; see
    :class:`NrdFile`).

    Examples
    --------
    >>> import numpy as np, os, tempfile, nncodec_rd
    >>> path = os.path.join(tempfile.mkdtemp(), "w.nrd")
    >>> _ = nncodec_rd.save_file({"w": np.arange(12, dtype=np.float32).reshape(4, 3)}, path,
    ...                          quantize="none")
    >>> with nncodec_rd.safe_open(path, framework="np") as f:
    ...     f.get_slice("w")[1:3, :2]
    array([[3., 4.],
           [6., 7.]], dtype=float32)
    """
    if _check_framework(framework, device) == "pt":
        from .torch.torch_file import TorchFile

        return TorchFile(NrdFile(path, threads=threads, max_output_bytes=max_output_bytes,
                                 memory_map=memory_map, max_transform_work=max_transform_work,
                                 max_header_bytes=max_header_bytes), device)
    return NrdFile(path, threads=threads, max_output_bytes=max_output_bytes,
                   memory_map=memory_map, max_transform_work=max_transform_work,
                   max_header_bytes=max_header_bytes)
