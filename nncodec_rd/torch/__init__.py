"""PyTorch side of nncodec-rd: compress a model (:func:`compress`, :mod:`.compress_model`), load a
file back eagerly (:func:`load_into`) or with weights kept compressed until layers run
(:func:`load_compressed`, :mod:`.lazy`), Hugging Face folders (:func:`compress_pretrained`,
:func:`from_pretrained`), and the safetensors-style ``save_file``/``load_file``/``save_model``/``load_model`` (:mod:`.files`).

The names below are imported on first use, so that importing one submodule (such as
:mod:`.digits_cnn`) does not load the encoder.
"""

_EXPORTS = {"compress": "compress_model", "load_into": "load",
            "CompressionResult": "layers",
            "load_compressed": "lazy", "lazy_weights": "lazy", "CompressedWeight": "lazy",
            "LazyWeights": "lazy", "save_file": "files", "load_file": "files",
            "save_model": "files", "load_model": "files",
            "compress_pretrained": "pretrained", "from_pretrained": "pretrained"}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__():
    return sorted(list(globals()) + __all__)
