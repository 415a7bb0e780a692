"""Write the seed corpus: small valid files covering every feature of the format.

``python -m nncodec_rd.conformance.fuzz.seeds FOLDER`` writes (deterministically, a few seconds):

* hand-made files from :class:`NrdWriter`, one per feature: uniform grids (one step, per-row
  groups, zero points), codebooks, escapes, the PREVIOUS_INDEX context model, 1 to 32 lanes, many
  chunks, a right-matrix transform, metadata of every type, raw tensors of every dtype, 0-d and
  empty tensors, and the spec's Annex A file;
* one-symbol "output bombs": tiny files declaring large tensors (the spec §9 note);
* transform bombs: tiny files whose right-matrix products take 2^18 to 2^36 multiply-adds;
* large headers: 4,096 chunk entries, 8,192 metadata entries, 500 tensor records;
* files drawn from the Hypothesis strategy :func:`nncodec_rd.conformance.strategies.nrd_files`;
* every ``.nrd`` of ``conformance/vectors/`` (the frozen conformance vectors), when present.

Nothing of it is committed: only ``regressions/`` is.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from .common import MAX_INPUT_BYTES

VECTORS = Path(__file__).resolve().parent.parent / "vectors"


def _write(build) -> bytes:
    """The bytes of the file ``build(writer)`` writes."""
    from nncodec_rd.conformance.recipes import recipe_entropy
    from nncodec_rd.encoder.writer import NrdWriter

    folder = tempfile.mkdtemp()
    path = os.path.join(folder, "seed.nrd")
    try:
        # the recipes' pinned entropy settings: seeds keep their precision whatever the defaults
        writer = NrdWriter(path, metadata=getattr(build, "metadata", None),
                           entropy=recipe_entropy())
        with writer:
            build(writer)
        return Path(path).read_bytes()
    finally:
        if os.path.exists(path):
            os.unlink(path)
        os.rmdir(folder)


def feature_files() -> dict[str, bytes]:
    """One small file per feature, named for it."""
    import ml_dtypes

    from nncodec_rd.conformance.annex_example import build_example
    from nncodec_rd.format.grids import CodebookGrid, RightMatrixTransform, UniformGrid
    from nncodec_rd.conformance.recipes import recipe_entropy

    rng = np.random.default_rng(5)
    small = rng.integers(-3, 4, size=(6, 10))
    wide = np.round(rng.standard_normal((8, 16)) * 3).astype(np.int64)
    files = {"annex_a": build_example()}

    def add(name, build, metadata=None):
        build.metadata = metadata
        files[name] = _write(build)

    add("uniform_one_step", lambda w: w.add_indices("w", small, UniformGrid(0.25), "float32"))
    add("uniform_groups_zero_points", lambda w: w.add_indices(
        "w", small, UniformGrid([0.5, 0.25, 2.0], [0, 1, -2], rows_per_group=2), "float16"))
    add("uniform_step_per_row", lambda w: w.add_indices(
        "w", small, UniformGrid(np.linspace(0.1, 1, 6), rows_per_group=1), "bfloat16"))
    add("codebook", lambda w: w.add_indices(
        "w", small, CodebookGrid(np.linspace(-1, 1, 9), first_index=-4), "float32"))
    add("escapes", lambda w: w.add_indices(
        "w", np.where(small == 3, 900, small), UniformGrid(0.5), "float32",
        settings=recipe_entropy(max_alphabet_size=5)))
    add("context_previous", lambda w: w.add_indices(
        "w", wide, UniformGrid(0.5), "float32",
        settings=recipe_entropy(context_model="previous", context_count=5)))
    for lanes in (1, 3, 32):
        add(f"lanes_{lanes}", lambda w, lanes=lanes: w.add_indices(
            "w", wide, UniformGrid(0.5), "float32", settings=recipe_entropy(lane_count=lanes)))
    add("many_chunks", lambda w: w.add_indices(
        "w", wide, UniformGrid(0.5), "float32", settings=recipe_entropy(symbols_per_chunk=16)))
    add("precision_bits_10", lambda w: w.add_indices(
        "w", wide, UniformGrid(0.5), "float32", settings=recipe_entropy(precision_bits=10)))

    def transform(w):
        w.add_raw("basis", rng.standard_normal((4, 12)).astype(np.float32))
        w.add_indices("product", small[:, :4], UniformGrid(0.5), "bfloat16",
                      transform=RightMatrixTransform("basis"))
    add("transform_raw_matrix", transform)

    def coded_transform(w):
        w.add_indices("product", small[:, :4], UniformGrid(0.5), "float32",
                      transform=RightMatrixTransform("basis"))
        w.add_indices("basis", small[:4, :], UniformGrid(0.125), "float32")
    add("transform_coded_matrix_after", coded_transform)

    add("metadata_every_type", lambda w: w.add_indices(
        "w", small, UniformGrid(0.5), "float32",
        metadata={"text": "é", "int": -7, "float": 1.5, "bool": True, "bytes": b"\x00\x01"}),
        metadata={"model": "seed", "n": 2**63 - 1, "flag": False, "blob": b"abc", "x": -0.0})

    def raw_every_dtype(w):
        for dtype in ("float32", "float16", "float64", "int8", "uint8", "int16", "int32",
                      "int64", "bool", "uint16", "uint32", "uint64"):
            w.add_raw(dtype, rng.integers(0, 2 if dtype == "bool" else 100, (2, 3)).astype(dtype))
        w.add_raw("bfloat16", np.ones((2, 3), ml_dtypes.bfloat16))
    add("raw_every_dtype", raw_every_dtype)

    def odd_shapes(w):
        w.add_indices("scalar", np.array(3), UniformGrid(0.5), "float32")
        w.add_indices("empty", np.zeros((0, 4), np.int64), UniformGrid(0.5), "float32")
        w.add_indices("vector", np.arange(7), UniformGrid(0.5), "float16")
        w.add_raw("raw_scalar", np.array(2.5, np.float32))
        w.add_raw("raw_empty", np.zeros((3, 0), np.int16))
        w.add_indices("rank4", rng.integers(-1, 2, (2, 2, 2, 2)), UniformGrid(0.5), "float32")
    add("odd_shapes", odd_shapes)
    return files


def one_symbol_file(rows: int, columns: int, rows_per_chunk: int) -> bytes:
    """A conforming file whose tensor ``w`` is ``rows x columns`` zeros of a one-symbol table:
    every chunk is the same 20 bytes, however many symbols it codes (spec §9 note)."""
    from nncodec_rd.conformance.mutators import mutate_header
    from nncodec_rd.format.grids import UniformGrid
    from nncodec_rd.conformance.recipes import recipe_entropy

    small = _write(lambda w: w.add_indices("w", np.zeros((1, 8), np.int64), UniformGrid(0.5),
                                           "float32", settings=recipe_entropy(symbols_per_chunk=8)))

    def grow(header, payloads):
        body = header["tensors"][0]["body"]
        header["tensors"][0]["shape"] = [rows, columns]
        body["coded_row_length"] = columns
        body["rows_per_chunk"] = rows_per_chunk
        body["chunk_count"] = -(-rows // rows_per_chunk)
        body["chunks"] = [dict(body["chunks"][0]) for _ in range(body["chunk_count"])]
        payloads[:] = payloads[:1] * body["chunk_count"]
    return mutate_header(small, grow)


def output_bombs() -> dict[str, bytes]:
    """Conforming files of a one-symbol table whose tensors are far larger than the file."""
    return {f"one_symbol_{label}": one_symbol_file(rows, columns, rows_per_chunk)
            for label, rows, columns, rows_per_chunk in [
                ("64KiB", 64, 256, 16), ("1GiB", 1 << 14, 1 << 14, 1 << 12),
                ("4TiB", 1 << 20, 1 << 20, 1 << 12)]}


def transform_bomb(rows: int, inner: int, columns: int) -> bytes:
    """A conforming file of a few hundred bytes whose tensor ``product`` is the right-matrix
    product (spec §6.4) of ``rows x inner`` coefficients by an ``inner x columns`` matrix, both of
    one-symbol tables: ``rows * inner * columns`` multiply-adds to decode."""
    from nncodec_rd.conformance.mutators import mutate_header
    from nncodec_rd.format.grids import RightMatrixTransform, UniformGrid
    from nncodec_rd.conformance.recipes import recipe_entropy

    one_chunk = recipe_entropy(symbols_per_chunk=8)
    small = _write(lambda w: (
        w.add_indices("product", np.ones((1, 1), np.int64), UniformGrid(0.5), "float32",
                      transform=RightMatrixTransform("basis"), settings=one_chunk),
        w.add_indices("basis", np.ones((1, 1), np.int64), UniformGrid(0.5), "float32",
                      settings=one_chunk)))

    def grow(header, payloads):
        product, basis = header["tensors"]
        product["shape"], basis["shape"] = [rows, columns], [inner, columns]
        product["body"]["coded_row_length"] = inner
        basis["body"]["coded_row_length"] = columns
        for record in (product, basis):
            body = record["body"]
            body["rows_per_chunk"] = record["shape"][0]
            body["chunk_count"] = 1
    return mutate_header(small, grow)


def transform_bombs() -> dict[str, bytes]:
    """Small files whose transform products are large: within the fuzz targets' work bound
    (2^18 and 2^27 multiply-adds), at it, and far beyond (2^36, the output arrays at 64 MiB)."""
    return {f"transform_bomb_{label}": transform_bomb(rows, inner, columns)
            for label, rows, inner, columns in [
                ("2_18", 64, 64, 64), ("2_27", 512, 512, 512), ("2_28", 512, 1024, 512),
                ("2_36", 4096, 4096, 4096)]}


def large_headers() -> dict[str, bytes]:
    """Conforming files whose headers are large (75 to 350 KB): many chunk entries, many
    metadata entries, many tensor records: the parser's cost grows with the header (issue of
    opening cost, docs/opening-files.md)."""
    from nncodec_rd.format.grids import UniformGrid

    def many_metadata(w):
        w.add_indices("w", np.arange(8).reshape(2, 4), UniformGrid(0.5), "float32")
    many_metadata.metadata = {f"k{i}": (i if i % 3 else f"v{i}") for i in range(8192)}

    def many_tensors(w):
        for i in range(500):
            if i % 2:
                w.add_raw(f"t{i}", np.full((1,), i, np.float32))
            else:
                w.add_indices(f"t{i}", np.array([[i % 5]]), UniformGrid(0.5), "float32")

    return {"large_header_chunks_4096": one_symbol_file(4096, 8, 1),
            "large_header_metadata_8192": _write(many_metadata),
            "large_header_tensors_500": _write(many_tensors)}


def strategy_files(count: int = 40) -> list[bytes]:
    """``count`` files drawn (derandomized) from
    :func:`nncodec_rd.conformance.strategies.nrd_files`."""
    from hypothesis import HealthCheck, Phase, given, settings

    from nncodec_rd.conformance.strategies import nrd_files

    drawn: list[bytes] = []

    @settings(max_examples=count, derandomize=True, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck), deadline=None)
    @given(nrd_files())
    def collect(data):
        drawn.append(data)

    collect()
    return drawn


def vector_files() -> dict[str, bytes]:
    """The frozen conformance vectors, valid and invalid, if the folder exists."""
    if not VECTORS.is_dir():
        return {}
    return {f"vector_{path.relative_to(VECTORS).with_suffix('').as_posix().replace('/', '_')}":
            path.read_bytes() for path in sorted(VECTORS.rglob("*.nrd"))}


def all_seeds(strategy_count: int = 40) -> dict[str, bytes]:
    """Every seed by name, those over the fuzzers' input size left out."""
    seeds = {**feature_files(), **output_bombs(), **transform_bombs(), **large_headers(),
             **vector_files()}
    for data in strategy_files(strategy_count):
        seeds[f"strategy_{hashlib.sha1(data).hexdigest()[:10]}"] = data
    return {name: data for name, data in seeds.items() if len(data) <= MAX_INPUT_BYTES}


def write_seeds(folder, strategy_count: int = 40) -> int:
    """Write every seed into ``folder``; returns how many."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    seeds = all_seeds(strategy_count)
    for name, data in seeds.items():
        (folder / f"{name}.nrd").write_bytes(data)
    return len(seeds)


if __name__ == "__main__":
    print(write_seeds(sys.argv[1] if len(sys.argv) > 1 else "out/fuzz/seeds"), "seeds")
