"""The decoder's float rounding (spec §6.5) against NumPy / ml_dtypes, and its slot tables."""

import ml_dtypes
import numpy as np
from numba import njit

from nncodec_rd.decoder import kernels


@njit(cache=False)
def _convert_all(bits, to_half):
    out = np.empty(len(bits), np.uint16)
    for i in range(len(bits)):
        if to_half:
            out[i] = kernels.float32_bits_to_float16_bits(bits[i])
        else:
            out[i] = kernels.float32_bits_to_bfloat16_bits(bits[i])
    return out


def _interesting_bits(rng) -> np.ndarray:
    """Random patterns plus every exponent's edges and the rounding boundaries of both formats."""
    random = rng.integers(0, 1 << 32, size=400_000, dtype=np.uint64).astype(np.uint32)
    exponents = np.arange(256, dtype=np.uint32) << 23
    tails = np.array([0, 1, 0x0FFF, 0x1000, 0x1001, 0x1FFF, 0x2000, 0x3000, 0x7FFF, 0x8000,
                      0x8001, 0x18000, 0x7FFFFF], dtype=np.uint32)
    edges = (exponents[:, None] | tails[None, :]).ravel()
    return np.concatenate([random, edges, edges | np.uint32(0x80000000)])


def test_float16_conversion_matches_numpy(rng):
    bits = _interesting_bits(rng)
    values = bits.view(np.float32)
    finite = ~np.isnan(values)
    ours = _convert_all(bits, True)
    with np.errstate(over="ignore"):
        expected = values[finite].astype(np.float16).view(np.uint16)
    assert np.array_equal(ours[finite], expected)
    assert np.all(ours[~finite] == 0x7E00)


def test_bfloat16_conversion_matches_ml_dtypes(rng):
    bits = _interesting_bits(rng)
    values = bits.view(np.float32)
    finite = ~np.isnan(values)
    ours = _convert_all(bits, False)
    expected = values[finite].astype(ml_dtypes.bfloat16).view(np.uint16)
    assert np.array_equal(ours[finite], expected)
    assert np.all(ours[~finite] == 0x7FC0)


def test_symbol_tables_give_each_symbol_its_slots_frequency_and_start():
    frequencies = np.array([[3, 0, 8, 5], [16, 0, 0, 0]], dtype=np.int64)
    slot_symbols, symbol_info = kernels.build_symbol_tables(frequencies, 4)
    assert slot_symbols.dtype == np.uint8
    assert slot_symbols[:16].tolist() == [0] * 3 + [2] * 8 + [3] * 5
    assert slot_symbols[16:].tolist() == [0] * 16
    assert (symbol_info & np.uint64(0xFFFFFFFF)).astype(int).tolist() == [3, 0, 8, 5, 16, 0, 0, 0]
    assert (symbol_info >> np.uint64(32)).astype(int).tolist() == [0, 3, 3, 11, 0, 16, 16, 16]
    wide, _ = kernels.build_symbol_tables(np.ones((1, 300), dtype=np.int64)
                                          * np.r_[np.full(299, 0), 1 << 9][None], 9)
    assert wide.dtype == np.uint16 and wide.max() == 299


def test_value_tables_equal_the_spec_arithmetic():
    steps = np.array([0.1, 3.0e38], dtype=np.float32)
    zero_points = np.array([2, -1], dtype=np.int64)
    values, invalid = kernels.build_value_table(
        5, -2, kernels.GRID_UNIFORM, 2, steps, zero_points, np.zeros(0, np.float32), 0,
        kernels.OUTPUT_FLOAT32)
    bits16, _ = kernels.build_value_table(
        5, -2, kernels.GRID_UNIFORM, 2, steps, zero_points, np.zeros(0, np.float32), 0,
        kernels.OUTPUT_FLOAT16)
    indices = np.arange(5) - 2
    with np.errstate(over="ignore"):  # 3e38 x 3 overflows to infinity, as the spec says
        expected = np.concatenate([steps[0] * (indices - 2).astype(np.float32),
                                   steps[1] * (indices + 1).astype(np.float32)])
    assert values.tobytes() == expected.astype(np.float32).tobytes()
    with np.errstate(over="ignore"):
        assert np.array_equal(bits16, expected.astype(np.float32).astype(np.float16).view(np.uint16))
    assert not invalid.any()
    _, invalid = kernels.build_value_table(4, 0, kernels.GRID_CODEBOOK, 1, steps, zero_points,
                                           np.array([1, 2], np.float32), 1, kernels.OUTPUT_FLOAT32)
    assert invalid.tolist() == [1, 0, 0, 1]
