"""PyTorch side of nncodec-rd: compress a model (:func:`compress`, :mod:`.compress_model`), load a
file back eagerly (:func:`load_into`) or with weights kept compressed until layers run
(:func:`load_compressed`, :mod:`.lazy`), Hugging Face folders (:func:`compress_pretrained`,
:func:`from_pretrained`), and the safetensors-style ``save_file``/``load_file``/``save_model``/``load_model`` (:mod:`.files`).

The names below are imported on first use, so that importing one submodule (such as
:mod:`.sentences`) does not load the encoder.
"""

from ..lazy_exports import lazy_exports

_EXPORTS = {"compress": "compress_model", "load_into": "load",
            "CompressionResult": "layers",
            "load_compressed": "lazy", "lazy_weights": "lazy", "CompressedWeight": "lazy",
            "LazyWeights": "lazy", "save_file": "files", "load_file": "files",
            "save_model": "files", "load_model": "files",
            "compress_pretrained": "pretrained", "from_pretrained": "pretrained"}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
