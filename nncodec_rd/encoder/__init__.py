"""The encoder: quantizers, rANS tables and coder, and the file writer.

Modules here that need torch import it themselves; importing this package does not, nor does
it load the writer until ``NrdWriter`` or ``quantize_rtn`` is asked for (``import nncodec_rd``
reads :class:`~nncodec_rd.encoder.entropy.EntropySettings` from here, and decoding never needs
the rest).
"""

from ..lazy_exports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {"NrdWriter": "writer",
                                                        "quantize_rtn": "quantize"})
