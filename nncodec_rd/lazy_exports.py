"""Names of a package imported from its submodules on first use (PEP 562), so that importing the
package, or one of its submodules, does not load the others (torch, the writer, the encoders)."""

from __future__ import annotations

import importlib


def lazy_exports(package: str, exports: dict[str, str]):
    """``(__getattr__, __dir__, __all__)`` for the package named ``package``: ``exports`` maps
    each exported name to the submodule that defines it.

    >>> getattr_, dir_, all_ = lazy_exports("nncodec_rd.encoder", {"NrdWriter": "writer"})
    >>> getattr_("NrdWriter").__name__, all_
    ('NrdWriter', ['NrdWriter'])
    """
    names = sorted(exports)

    def __getattr__(name):
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{module}"), name)

    def __dir__():
        return sorted(set(vars(importlib.import_module(package))) | set(names))

    return __getattr__, __dir__, names
