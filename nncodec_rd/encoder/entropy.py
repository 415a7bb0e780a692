"""How the encoder entropy-codes a tensor's indices: :class:`EntropySettings` (spec §7).

An encoder setting, not part of the format: a decoder reads whatever a file declares. It is
declared here once, with one set of defaults for every encoder (the writer, ``save_file``,
``compress``, ``nncodec-rd encode``); the conformance recipes state every setting they use, so
that a change of these defaults never changes a frozen vector.

>>> EntropySettings().choose_precision
True
>>> EntropySettings(lane_count=64)
Traceback (most recent call last):
    ...
nncodec_rd.format.errors.EncoderError: encoder_settings: lane_count must be 1 ... 32, not 64
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

from ..format.constants import Limits
from ..format.errors import EncoderError

CONTEXT_MODELS = ("auto", "iid", "previous")
"""``iid`` (one table), ``previous`` (tables chosen by the previous index, spec §7.4), or
``auto``: whichever gives the smaller tensor, tables included."""


@dataclass(frozen=True)
class EntropySettings:
    """How a tensor's indices are entropy-coded (spec §7); the defaults suit weight matrices.
    Frozen, and checked on construction (:class:`~nncodec_rd.format.errors.EncoderError`).

    Parameters
    ----------
    precision_bits:
        Probability precision, 1 ... 16; with ``choose_precision``, the highest one tried.
    lane_count:
        Interleaved rANS states per chunk, 1 ... 32.
    context_model:
        One of :data:`CONTEXT_MODELS`.
    context_count:
        Tables for the ``"previous"`` model, 2 ... 16.
    symbols_per_chunk:
        Target number of symbols per chunk (chunks hold whole rows), >= 1.
    max_alphabet_size:
        Indices outside a window of this many symbols are escaped, 2 ... 4096.
    choose_precision:
        Give each tensor the precision in 1 ... ``precision_bits`` that codes it in the fewest
        bytes, frequency tables included (spec §7.2 lets every tensor have its own). A small
        tensor then gets smaller tables in the file and a smaller slot table in the decoder
        (2^precision entries per context). ``False`` codes every tensor at ``precision_bits``.
    """

    precision_bits: int = 14
    lane_count: int = 4
    context_model: str = "auto"
    context_count: int = 3
    symbols_per_chunk: int = 1 << 18
    max_alphabet_size: int = 4096
    choose_precision: bool = True

    def __post_init__(self):
        for name, low, high in (("precision_bits", 1, Limits.MAX_PRECISION_BITS),
                                ("lane_count", 1, Limits.MAX_LANE_COUNT),
                                ("context_count", 2, Limits.MAX_CONTEXT_COUNT),
                                ("max_alphabet_size", 2, Limits.MAX_ALPHABET_SIZE)):
            value = _integer(self, name)
            if not low <= value <= high:
                raise EncoderError(f"{name} must be {low} ... {high}, not {value!r}")
        if _integer(self, "symbols_per_chunk") < 1:
            raise EncoderError(f"symbols_per_chunk must be >= 1, not {self.symbols_per_chunk!r}")
        if not isinstance(self.choose_precision, bool):
            raise EncoderError(f"choose_precision must be True or False, not "
                               f"{self.choose_precision!r}")
        if self.context_model not in CONTEXT_MODELS:
            raise EncoderError(f"context_model must be iid, previous or auto, not "
                               f"{self.context_model!r}")

    def rows_per_chunk(self, rows: int, coded_row_length: int) -> int:
        """Rows per chunk of a tensor of ``rows`` x ``coded_row_length`` symbols (spec §7.1):
        whole rows, about ``symbols_per_chunk`` symbols. The quantizer of a trellis grid asks
        it too: the trellis state restarts at each chunk (spec §6.6).

        >>> EntropySettings().rows_per_chunk(10_000, 384)
        682
        """
        return max(1, min(rows, self.symbols_per_chunk // max(coded_row_length, 1)))


def _integer(settings: EntropySettings, name: str) -> int:
    """The integer field ``name`` (any integer type, stored as int); EncoderError otherwise."""
    value = getattr(settings, name)
    try:
        if isinstance(value, bool):
            raise TypeError
        number = operator.index(value)
    except TypeError:
        raise EncoderError(f"{name} must be an integer, not {value!r}") from None
    object.__setattr__(settings, name, number)
    return number
