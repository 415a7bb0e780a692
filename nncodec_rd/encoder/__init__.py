"""The encoder: quantizers, rANS tables and coder, and the file writer.

Modules here that need torch import it themselves; importing this package does not.
"""

from .quantize import quantize_rtn  # noqa: F401
from .writer import NrdWriter  # noqa: F401
