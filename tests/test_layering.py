"""The import directions of the README's layout hold: format imports nothing else of the package, the decoder
only format, torch only in encoder/ and torch/, ray only in the encoder's executor; the library
reaches the conformance suite only for `nncodec-rd conformance run`, never bench/ or tests/, and
nothing anywhere imports the suite under a second name (the top-level `conformance`)."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "nncodec_rd"
# The suite's home is the repository's conformance/ folder; it is the package
# nncodec_rd.conformance (pyproject.toml's package-dir), installed and editable alike.
SUITE = ROOT / "conformance"


def module_parts(path: Path) -> list[str]:
    """The dotted name of a file's module as parts (conformance/x.py is nncodec_rd.conformance.x)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ["nncodec_rd", *parts] if parts[0] == "conformance" else parts


def imports_of(path: Path) -> set[str]:
    """Absolute module names imported by a file (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    parts = module_parts(path)
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


def test_the_library_reaches_the_suite_only_for_conformance_run():
    """The library never needs the conformance tools; only the command line's `conformance run`
    reaches the runner (shipped in the same wheel as nncodec_rd.conformance)."""
    for path in PACKAGE.rglob("*.py"):
        for name in imports_of(path):
            if path == PACKAGE / "cli" / "conformance.py" \
                    and name.startswith("nncodec_rd.conformance.runner"):
                continue
            assert not name.startswith("nncodec_rd.conformance"), (path, name)


def test_neither_the_library_nor_the_suite_imports_bench_or_tests():
    """bench/ and tests/ are never installed: an import of either fails in every wheel install."""
    for path in [*PACKAGE.rglob("*.py"), *SUITE.rglob("*.py")]:
        for name in imports_of(path):
            assert name.split(".")[0] not in ("bench", "tests"), (path, name)


def python_files_of_the_repository():
    return [path for folder in ("nncodec_rd", "conformance", "tests", "bench", "docs")
            for path in (ROOT / folder).rglob("*.py") if "_build" not in path.parts]


def test_nothing_imports_the_suite_under_a_second_name():
    """With the repository root on sys.path (pytest, docs/conf.py, bench scripts) the folder
    conformance/ is also importable as a top-level `conformance`: the same file a second time,
    as other module objects (another identity for its classes and caches). Everything uses
    nncodec_rd.conformance, in imports and in the module names of `python -m` and
    importlib.import_module."""
    files = python_files_of_the_repository()
    assert SUITE / "runner.py" in files and ROOT / "bench" / "rate_fidelity.py" in files
    for path in files:
        for name in imports_of(path):
            assert name.split(".")[0] != "conformance", (path, name)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and not re.fullmatch(r"conformance\.(py|md|html)", node.value):  # file names
                assert not re.match(r"conformance\.\w", node.value), (path, node.lineno, node.value)


def test_the_checker_resolves_the_suites_relative_imports():
    assert "nncodec_rd.conformance.manifest" in imports_of(SUITE / "runner.py")
    assert "nncodec_rd.conformance.mutators.integer_fields" in imports_of(SUITE / "fuzz" / "mutate.py")
    assert "nncodec_rd.conformance.fuzz.TARGETS" in imports_of(SUITE / "fuzz" / "__main__.py")


def test_the_conformance_runner_imports_no_test_tooling():
    """`nncodec-rd conformance run` works on an install without Hypothesis or pytest."""
    for module in ("runner.py", "manifest.py", "spec_literal_decoder.py", "mutators.py"):
        for name in imports_of(SUITE / module):
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


def _type_checking_blocks(tree) -> set[int]:
    """Ids of the nodes inside ``if TYPE_CHECKING:`` blocks: imports for annotations only, which
    never run."""
    inside = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, (ast.Name, ast.Attribute)) and \
                getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING":
            for statement in node.body:
                inside.update(id(child) for child in ast.walk(statement))
    return inside


def module_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Module name -> the package's modules it imports, at its top or inside a function alike
    (a function-level import is an edge too: it only defers the cycle to the first call)."""
    modules = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skipped = _type_checking_blocks(tree)
        is_package = path.name == "__init__.py"
        package = name.split(".") if is_package else name.split(".")[:-1]
        targets = set()
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = ".".join(package[: len(package) - node.level + 1] + (
                    [node.module] if node.module else [])) if node.level else node.module
                candidates = [f"{base}.{alias.name}" for alias in node.names] + [base]
            else:
                continue
            for candidate in candidates:
                # the longest name that is a module of the package (``from .x import name``
                # names module x; ``from . import x`` names module x itself)
                while candidate and candidate not in modules:
                    candidate = candidate.rpartition(".")[0]
                if candidate and candidate != name and not name.startswith(candidate + "."):
                    targets.add(candidate)  # importing a parent package is no dependency
        graph[name] = targets
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm), each
    sorted: every module of one of them imports, through others, itself."""
    index, low, on_stack, stack, components = {}, {}, set(), [], []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def test_no_import_cycles_in_the_package():
    """Every module can be read before the modules that import it: no two import each other,
    directly or through others (encoder/obs.py once dispatched to grid_choice.py and
    transform.py, which imported obs.py back)."""
    cycles = import_cycles(module_graph())
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(cycle) for cycle in cycles)


def test_the_cycle_check_sees_a_cycle_through_a_function_level_import(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from .b import helper\nfrom . import d, e\n")
    (package / "e.py").write_text("")
    (package / "b.py").write_text("def helper():\n    from .c import thing\n")
    (package / "c.py").write_text("from . import a\nfrom typing import TYPE_CHECKING\n"
                                  "if TYPE_CHECKING:\n    from .d import nothing\n")
    (package / "d.py").write_text("from .c import thing\n")
    graph = module_graph(package)
    assert graph["pkg.c"] == {"pkg.a"}  # the TYPE_CHECKING import is no edge
    assert graph["pkg.a"] == {"pkg.b", "pkg.d", "pkg.e"}
    assert import_cycles(graph) == [["pkg.a", "pkg.b", "pkg.c", "pkg.d"]]
