"""The import directions of the README's layout hold: format imports nothing else of the package, the decoder
only format, torch only in encoder/ and torch/, ray only in the encoder's executor, nothing imports
conformance or tests."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "nncodec_rd"


def imports_of(path: Path) -> set[str]:
    """Absolute module names imported by a file (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = parts[:-1]  # the package a relative import of this file starts from
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module
            found.add(name)
            found.update(f"{name}.{alias.name}" for alias in node.names)
    return found


def files_in(subpackage: str):
    return sorted((PACKAGE / subpackage).rglob("*.py"))


def test_format_imports_nothing_else_of_the_package():
    for path in files_in("format"):
        for name in imports_of(path):
            if name.startswith("nncodec_rd."):
                assert name.startswith("nncodec_rd.format"), (path, name)


def test_decoder_imports_only_format():
    for path in files_in("decoder"):
        for name in imports_of(path):
            if name.startswith("nncodec_rd."):
                assert name.startswith(("nncodec_rd.format", "nncodec_rd.decoder")), (path, name)


def test_torch_only_in_encoder_and_torch():
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE).parts
        if relative[0] in ("encoder", "torch"):
            continue
        for name in imports_of(path):
            assert name.split(".")[0] != "torch", (path, name)


def test_ray_only_in_the_executor():
    """Ray is an optional extra: only the executor imports it (inside RayExecutor)."""
    for path in PACKAGE.rglob("*.py"):
        if path.relative_to(PACKAGE).as_posix() == "encoder/executor.py":
            continue
        for name in imports_of(path):
            assert name.split(".")[0] != "ray", (path, name)


def test_nothing_imports_conformance_or_tests():
    """The library never needs the conformance tools; only the command line's `conformance run`
    reaches the runner (shipped in the same distribution), and nothing reaches tests/."""
    for path in PACKAGE.rglob("*.py"):
        for name in imports_of(path):
            if path == PACKAGE / "cli" / "conformance.py" \
                    and name.startswith("conformance.runner"):
                continue
            assert name.split(".")[0] not in ("conformance", "tests"), (path, name)


def test_the_conformance_runner_imports_no_test_tooling():
    """`nncodec-rd conformance run` works on an install without Hypothesis or pytest."""
    root = PACKAGE.parent / "conformance"
    for module in ("runner.py", "manifest.py", "spec_literal_decoder.py", "mutators.py"):
        for name in imports_of(root / module):
            assert name.split(".")[0] not in ("hypothesis", "pytest", "tests"), (module, name)


def test_the_checker_sees_relative_imports():
    names = imports_of(PACKAGE / "decoder" / "reader.py")
    assert "nncodec_rd.format.container" in names and "nncodec_rd.decoder.kernels" in names


def _private_names_of_nrdfile() -> set[str]:
    """Attributes and methods of NrdFile whose names start with one underscore."""
    tree = ast.parse((PACKAGE / "decoder" / "reader.py").read_text(encoding="utf-8"))
    [cls] = [node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "NrdFile"]
    names = set()
    for node in ast.walk(cls):
        if isinstance(node, ast.FunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and node.value.id == "self":
            names.add(node.attr)
    return {name for name in names if name.startswith("_") and not name.startswith("__")}


def test_no_module_outside_the_decoder_touches_its_privates():
    """The torch layer, the command line and the API use NrdFile's public methods (record,
    chunk_payloads, chunk_decoder, ...), never its private state."""
    private = _private_names_of_nrdfile()
    assert {"_record", "_index", "_buffer", "_verify_payload"} <= private
    for path in PACKAGE.rglob("*.py"):
        if path.relative_to(PACKAGE).parts[0] in ("decoder", "format"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in private \
                    and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                raise AssertionError(f"{path.relative_to(PACKAGE)}:{node.lineno} uses "
                                     f"NrdFile's private {node.attr}")


def test_no_module_imports_a_private_name_of_another():
    """``from .x import _name`` couples two modules through a detail one of them may change."""
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (
                    node.level or (node.module or "").startswith("nncodec_rd")):
                for alias in node.names:
                    assert not (alias.name.startswith("_") and not alias.name.startswith("__")), \
                        f"{path.relative_to(PACKAGE)}:{node.lineno} imports {alias.name}"
