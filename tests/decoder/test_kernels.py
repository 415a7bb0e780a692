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


def test_slot_tables_give_each_symbol_its_frequency():
    frequencies = np.array([[3, 0, 8, 5], [16, 0, 0, 0]], dtype=np.int64)
    slot_symbol, starts = kernels.build_slot_tables(frequencies, 4)
    assert slot_symbol[0].tolist() == [0] * 3 + [2] * 8 + [3] * 5
    assert slot_symbol[1].tolist() == [0] * 16
    assert starts[0].tolist() == [0, 3, 3, 11]
