"""What `pip install nncodec-rd` puts into site-packages: nncodec_rd alone (with the conformance
suite and its frozen files inside it as nncodec_rd.conformance), its dist-info and the
`nncodec-rd` command, and `nncodec-rd conformance run` works from that install alone.

The wheel is built from a copy of the sources (a few seconds), so that a stale build/ or
*.egg-info of the checkout cannot add files to it."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "conformance"

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("pip") is None or importlib.util.find_spec("setuptools") is None,
    reason="building the wheel needs pip and setuptools in this environment")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    ignored = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "*.nbi", "*.nbc")
    for folder in ("nncodec_rd", "conformance"):
        shutil.copytree(ROOT / folder, source / folder, ignore=ignored)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "--wheel-dir", str(out), str(source)],
                   check=True, capture_output=True, text=True, cwd=source)
    [built] = out.glob("nncodec_rd-*.whl")
    return built


def wheel_names(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


def packages_in(folder: Path, name: str) -> set[str]:
    """Dotted names of the folder's packages (folders with an __init__.py), the folder included."""
    return {".".join([name, *init.parent.relative_to(folder).parts])
            for init in folder.rglob("__init__.py") if "__pycache__" not in init.parts}


def test_the_only_top_level_names_are_the_package_and_its_dist_info(wheel):
    top = {name.split("/")[0] for name in wheel_names(wheel)}
    assert len(top) == 2 and "nncodec_rd" in top, top
    [dist_info] = top - {"nncodec_rd"}
    assert re.fullmatch(r"nncodec_rd-[\w.]+\.dist-info", dist_info), dist_info


def test_every_package_is_in_the_wheel_and_no_evidence_or_test_tooling(wheel):
    shipped = {name.rsplit("/", 1)[0].replace("/", ".") for name in wheel_names(wheel)
               if name.endswith("/__init__.py")}
    expected = packages_in(ROOT / "nncodec_rd", "nncodec_rd") | {
        name for name in packages_in(SUITE, "nncodec_rd.conformance")
        if not name.startswith("nncodec_rd.conformance.fuzz")}
    assert "nncodec_rd.conformance" in expected and "nncodec_rd.torch" in expected
    assert shipped == expected
    modules = set(wheel_names(wheel))
    for module in ("runner", "manifest", "spec_literal_decoder", "mutators"):
        assert f"nncodec_rd/conformance/{module}.py" in modules
    # the suite's own Python files, exactly, apart from the fuzz harness
    assert {name for name in modules if name.startswith("nncodec_rd/conformance/")
            and name.endswith(".py")} == {
        f"nncodec_rd/conformance/{path.relative_to(SUITE).as_posix()}"
        for path in SUITE.rglob("*.py")
        if "__pycache__" not in path.parts and path.relative_to(SUITE).parts[0] != "fuzz"}


def test_the_frozen_files_travel_inside_the_package_byte_for_byte(wheel):
    frozen = sorted([*SUITE.glob("vectors/*"), *SUITE.glob("invalid/*")])
    assert len(frozen) > 200 and any(path.name == "manifest.json" for path in frozen)
    with zipfile.ZipFile(wheel) as archive:
        data_files = {name for name in archive.namelist()
                      if re.match(r"nncodec_rd/conformance/(vectors|invalid)/", name)}
        assert data_files == {f"nncodec_rd/conformance/{path.relative_to(SUITE).as_posix()}"
                              for path in frozen}
        for path in frozen:
            packed = archive.read(f"nncodec_rd/conformance/{path.relative_to(SUITE).as_posix()}")
            assert hashlib.sha256(packed).digest() == hashlib.sha256(path.read_bytes()).digest()


def test_the_command_is_the_one_console_script(wheel):
    with zipfile.ZipFile(wheel) as archive:
        [entry_points] = [name for name in archive.namelist()
                          if name.endswith(".dist-info/entry_points.txt")]
        text = archive.read(entry_points).decode()
    scripts = re.search(r"\[console_scripts\]\n((?:.+\n?)*)", text).group(1).strip().splitlines()
    assert [line.replace(" ", "") for line in scripts] == ["nncodec-rd=nncodec_rd.cli:main"]


def test_conformance_run_works_from_the_wheel_alone(wheel, tmp_path):
    """Installed into a folder of its own and run from outside the repository, with Hypothesis
    made unimportable: the runner, the manifests and the frozen files all come from the wheel."""
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-compile", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, text=True)
    assert (target / "bin" / "nncodec-rd").exists()
    env = {**os.environ, "PYTHONPATH": str(target), "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    literal = f"{sys.executable} -m nncodec_rd.conformance.spec_literal_decoder {{input}} {{output}}"
    program = (
        "import sys\n"
        "sys.modules['hypothesis'] = None\n"
        "from nncodec_rd.cli import main\n"
        "import nncodec_rd.conformance.runner as runner\n"
        "print('RUNNER', runner.__file__)\n"
        "status = main(sys.argv[1:])\n"
        "print('TOP_LEVEL_CONFORMANCE', 'conformance' in sys.modules)\n"
        "sys.exit(status)\n")
    result = subprocess.run(
        [sys.executable, "-c", program, "conformance", "run", "--decoder", literal,
         "--select", "^(annex_a_example|trailing_bytes|bad_magic)$", "--quiet"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    runner_file = Path(re.search(r"RUNNER (.+)", result.stdout).group(1))
    assert runner_file.is_relative_to(target / "nncodec_rd" / "conformance")
    assert "TOP_LEVEL_CONFORMANCE False" in result.stdout
    assert re.search(r"CONFORMS: 1/1 valid vectors decoded exactly, 2/2 invalid files rejected",
                     result.stdout), result.stdout


def test_the_suite_under_test_is_this_checkouts():
    """nncodec_rd.conformance comes from an install (pip install -e . maps it to conformance/):
    an editable install of another checkout would test that checkout's suite."""
    import nncodec_rd
    import nncodec_rd.conformance

    assert Path(nncodec_rd.__file__).resolve().parent == ROOT / "nncodec_rd"
    assert Path(nncodec_rd.conformance.__file__).resolve().parent == SUITE, (
        f"nncodec_rd.conformance is {nncodec_rd.conformance.__file__}, not this checkout's "
        f"{SUITE}: run `pip install -e .` here")
