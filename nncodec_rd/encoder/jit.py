"""``njit`` with Numba's on-disk cache where a cache folder is writable, without it elsewhere.

Numba refuses to create a cached function when no cache folder is writable (read-only
site-packages, an unwritable NUMBA_CACHE_DIR and home): the import would fail. The encoder's
kernels then compile in every process instead. (The decoder has its own copy of this helper in
:mod:`nncodec_rd.decoder.kernels`: the two share no code.)
"""

from __future__ import annotations

from numba import njit


def cached_njit(**options):
    """``njit(cache=True, **options)``, falling back to ``cache=False`` when Numba finds no
    writable cache folder."""
    def decorate(function):
        try:
            return njit(cache=True, **options)(function)
        except RuntimeError:  # "cannot cache function ...: no locator available"
            return njit(cache=False, **options)(function)
    return decorate
