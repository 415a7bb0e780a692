"""What every recipe of a frozen conformance file uses: the ``Recipe`` record, the two registries
(``VALID``, ``INVALID``) with their decorators, and the building blocks that write a file with the
reference encoder or patch one field of it. The recipes themselves are in
:mod:`nncodec_rd.conformance.recipes_valid` and :mod:`nncodec_rd.conformance.recipes_invalid`;
:mod:`nncodec_rd.conformance.generate` writes and checks the files they make."""

from __future__ import annotations

import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nncodec_rd.encoder.writer import NrdWriter
from nncodec_rd.format.constants import RANS_STATE_LOWER_BOUND
from nncodec_rd.format.errors import ErrorCode
from nncodec_rd.format.grids import UniformGrid
from nncodec_rd.encoder.entropy import EntropySettings

from .annex_example import field_rows
from .mutators import assemble, refresh_header_checksum, split_file


@dataclass(frozen=True)
class Recipe:
    """How one frozen file is made."""

    name: str
    version: int
    description: str
    build: object  # () -> bytes
    error: ErrorCode | None = None  # invalid files: the code a decoder must report
    sections: tuple[str, ...] = ()  # invalid files: the spec sections whose rule is broken
    # invalid files whose code differs for a decoder of an earlier format version ("1.0": code)
    earlier_errors: tuple = ()

    @property
    def file_name(self) -> str:
        return f"{self.name}.v{self.version}.nrd"


VALID: list[Recipe] = []
INVALID: list[Recipe] = []


def vector(name: str, description: str, version: int = 1):
    """Register a valid-vector recipe."""
    def register(function):
        VALID.append(Recipe(name, version, description, function))
        return function
    return register


def invalid(name: str, error: ErrorCode, sections: tuple[str, ...], description: str,
            version: int = 1, earlier_errors: tuple = ()):
    """Register an invalid-file recipe; ``build`` is given the bytes of the base file.
    ``earlier_errors``: ``(("1.0", code), ...)`` where a decoder of an earlier format version
    must report another code (a grid kind it does not know)."""
    def register(function):
        INVALID.append(Recipe(name, version, description, function, error, sections,
                              tuple(earlier_errors)))
        return function
    return register


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------

RECIPE_ENTROPY = dict(precision_bits=14, lane_count=4, context_model="auto", context_count=3,
                      symbols_per_chunk=1 << 18, max_alphabet_size=4096, choose_precision=False)
"""Every entropy setting of a recipe that does not state its own, spelled out: the frozen files
follow these, not the library's defaults, which may change."""


def recipe_entropy(**settings) -> EntropySettings:
    """The entropy settings of a recipe: ``settings`` over :data:`RECIPE_ENTROPY`."""
    return EntropySettings(**{**RECIPE_ENTROPY, **settings})


def written(populate, metadata: dict | None = None) -> bytes:
    """The bytes NrdWriter writes after ``populate(writer)`` (tensors added without settings get
    :func:`recipe_entropy`'s)."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "vector.nrd")
        with NrdWriter(path, metadata=metadata, entropy=recipe_entropy()) as writer:
            populate(writer)
        return Path(path).read_bytes()


def patch(data: bytes, offset: int, new: bytes, *, fix_checksum: bool = True) -> bytes:
    """``data`` with ``new`` written at ``offset`` (same length), header checksum refreshed."""
    out = data[:offset] + new + data[offset + len(new):]
    return refresh_header_checksum(out) if fix_checksum else out


def field_offset(data: bytes, path: str) -> tuple[int, int]:
    """(start, end) of the field at ``path`` (as Annex A names fields) in ``data``."""
    for start, end, field_path, _ in field_rows(data):
        if field_path == path:
            return start, end
    raise KeyError(path)


def patch_field(data: bytes, path: str, new: bytes, **options) -> bytes:
    """``data`` with the field at ``path`` replaced by ``new``, which has the field's size."""
    start, end = field_offset(data, path)
    if len(new) != end - start:
        raise ValueError(f"{path} is {end - start} bytes, not {len(new)}")
    return patch(data, start, new, **options)


def laplace_indices(shape, scale: float, seed: int) -> np.ndarray:
    """Rounded Laplacian indices: the shape of quantized weights."""
    rng = np.random.default_rng(seed)
    return np.round(rng.laplace(scale=scale, size=shape)).astype(np.int64)


def escape_only_file(name: str, values: np.ndarray, lane_count: int, step: float) -> bytes:
    """A file of one float32 tensor whose alphabet is the escape symbol alone (spec §7.5): every
    lane stays at 2^16, no word is written, and the indices are the escape values, in one chunk.
    """
    base = written(lambda w: w.add_indices(
        name, np.zeros(values.shape, np.int64), UniformGrid(step), "float32",
        settings=recipe_entropy(lane_count=lane_count, context_model="iid")))
    header, _ = split_file(base)
    body = header["tensors"][0]["body"]
    body.update(escape_mode=1, alphabet_size=1, index_offset=0,
                tables=[dict(frequencies=[1 << body["precision_bits"]])])
    flat = values.reshape(-1)
    chunk = (struct.pack("<I", len(flat)) + flat.astype("<i4").tobytes()
             + struct.pack(f"<{lane_count}I", *([RANS_STATE_LOWER_BOUND] * lane_count)))
    return assemble(header, [chunk])

