"""Every example in a docstring of the package runs and prints what it shows (doctest)."""

import doctest
import importlib
import pkgutil

import pytest

import nncodec_rd

MODULES = sorted(info.name for info in pkgutil.walk_packages(nncodec_rd.__path__, "nncodec_rd.")
                 if not info.name.endswith("__main__"))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    try:
        module = importlib.import_module(name)
    except ImportError as error:  # an optional extra that is not installed
        pytest.skip(f"{name}: {error}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
