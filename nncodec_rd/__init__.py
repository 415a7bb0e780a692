"""nncodec-rd: a standardized codec for neural-network weights (the .nrd format).

The file API mirrors safetensors::

    import nncodec_rd
    nncodec_rd.save_file({"weight": w}, "model.nrd")
    tensors = nncodec_rd.load_file("model.nrd")
    with nncodec_rd.safe_open("model.nrd") as f:
        rows = f.get_rows("weight", 0, 16)
"""

from .api import load_file, safe_open, save_file  # noqa: F401
from .decoder.reader import DEFAULT_MAX_OUTPUT_BYTES  # noqa: F401
from .format.constants import FORMAT_MAJOR_VERSION, FORMAT_MINOR_VERSION  # noqa: F401
from .format.errors import (  # noqa: F401
    BadMagicError,
    ChecksumMismatchError,
    CorruptStreamError,
    EncoderError,
    ErrorCode,
    FormatError,
    LimitExceededError,
    NrdError,
    OutputTooLargeError,
    ReservedValueError,
    TruncatedError,
    UnsupportedFeatureError,
    UnsupportedVersionError,
)
from .format.grids import CodebookGrid, RightMatrixTransform, UniformGrid  # noqa: F401
from .encoder.entropy import EntropySettings  # noqa: F401

__version__ = "0.1.0"
FORMAT_VERSION = f"{FORMAT_MAJOR_VERSION}.{FORMAT_MINOR_VERSION}"
