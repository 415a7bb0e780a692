"""The chunk kernels' argument records (kernels.ChunkTables, kernels.ChunkBatch): one Numba type
per output width whatever the file, so that no file compiles a signature of its own, and a
decode whose output words differ from its value table is refused before a kernel runs."""

import numba
import numpy as np
import pytest

import nncodec_rd
from nncodec_rd import EntropySettings
from nncodec_rd.decoder import dispatch, kernels
from nncodec_rd.decoder.reader import NrdFile


def _tables_of(handle, name, output_kind):
    decoder = handle._chunk_decoder(handle._record(name), handle.position(name), output_kind)
    return kernels.with_slot_tables(
        decoder.kernel_tables,
        *kernels.build_symbol_tables(decoder.frequencies, decoder.precision_bits))


def test_one_numba_type_per_output_width_for_every_kind_of_tensor(tmp_path):
    rng = np.random.default_rng(1)
    tensors = {"narrow": (rng.standard_normal((64, 48)) * 0.2).astype(np.float32),  # < 256 symbols
               "wide": (rng.standard_normal((64, 48)) * 300).astype(np.float32),
               "half": rng.standard_normal((32, 40)).astype(np.float16)}
    path = tmp_path / "kinds.nrd"
    nncodec_rd.save_file(tensors, path, step=0.01,
                         settings=EntropySettings(context_model="previous",
                                                  max_alphabet_size=4096))
    with NrdFile(path) as handle:
        by_width = {}
        slot_kinds = set()
        for name in tensors:
            for kind in (kernels.OUTPUT_INDEX, kernels.OUTPUT_FLOAT32, kernels.OUTPUT_FLOAT16):
                tables = _tables_of(handle, name, kind)
                slot_kinds.add(tables.wide_slots)
                by_width.setdefault(dispatch.output_width(tables), set()).add(
                    numba.typeof(tables))
    assert slot_kinds == {0, 1}  # both slot tables were exercised
    assert {width: len(types) for width, types in by_width.items()} == {4: 1, 2: 1}
    for width, (numba_type,) in by_width.items():
        assert numba_type == dispatch._signature(width)[0]  # what warmup compiles


def test_output_words_must_match_the_value_table(tmp_path):
    path = tmp_path / "w.nrd"
    nncodec_rd.save_file({"w": np.linspace(-1, 1, 4096, dtype=np.float32).reshape(64, 64)}, path)
    with NrdFile(path) as handle:
        tables = _tables_of(handle, "w", kernels.OUTPUT_FLOAT32)
    batch = kernels.chunk_batch(np.zeros(8, np.uint8), np.zeros((0, 5), np.int64),
                                np.zeros(4, np.uint16), np.zeros((0, 2), np.int64))
    with pytest.raises(TypeError, match="output words"):
        dispatch.decode_chunks(tables, batch)


def test_chunk_tables_takes_every_field_by_name():
    """A field left out, or one the record does not have, is refused (no positional slot to
    fall into)."""
    fields = {name: 0 for name in kernels.SCALAR_FIELDS}
    arrays = {name: np.zeros(0, dtype) for name, dtype in kernels.TABLE_ARRAY_DTYPES.items()}
    kernels.chunk_tables(value_table=np.zeros(0, np.float32), **fields, **arrays)
    with pytest.raises(TypeError):
        kernels.chunk_tables(value_table=np.zeros(0, np.float32), **arrays,
                             **{**fields, "row_lenght": 1})
    del fields["row_length"]
    with pytest.raises(TypeError):
        kernels.chunk_tables(value_table=np.zeros(0, np.float32), **fields, **arrays)
