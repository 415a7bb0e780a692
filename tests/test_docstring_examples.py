"""Every example in a docstring runs and prints what it shows (doctest): the package's modules,
the conformance suite's (``nncodec_rd.conformance``, from ``conformance/``) and the benchmarks'
(``bench``) that hold an example."""

import doctest
import importlib
import pkgutil
from pathlib import Path

import pytest

import nncodec_rd

ROOT = Path(__file__).resolve().parents[1]


def _with_examples(folder: Path, package: str) -> list[str]:
    """Modules of ``package`` (the files of ``folder``) whose source holds a ``>>>`` example."""
    names = []
    for info in pkgutil.walk_packages([str(folder)], package + "."):
        if info.name.endswith("__main__"):
            continue
        relative = info.name[len(package) + 1:].replace(".", "/")
        path = folder / (relative + ".py")
        if not path.exists():
            path = folder / relative / "__init__.py"
        if ">>> " in path.read_text(encoding="utf-8"):
            names.append(info.name)
    return names


MODULES = sorted(info.name for info in pkgutil.walk_packages(nncodec_rd.__path__, "nncodec_rd.")
                 if not info.name.endswith("__main__"))
MODULES += _with_examples(ROOT / "conformance", "nncodec_rd.conformance")
MODULES += _with_examples(ROOT / "bench", "bench")


def test_the_examples_of_the_suite_and_the_benchmarks_are_found():
    assert "bench.digits_cnn" in MODULES  # one that has examples today
    assert not any(name.startswith("conformance.") for name in MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    try:
        module = importlib.import_module(name)
    except ImportError as error:  # an optional extra that is not installed
        pytest.skip(f"{name}: {error}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
