"""The README's Python examples run as written (in a temporary folder)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_examples_run(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.DOTALL)
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)
    namespace = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    assert (tmp_path / "model.nrd").exists() and (tmp_path / "custom.nrd").exists()


def test_readme_starts_with_the_two_commands():
    first_block = README.read_text(encoding="utf-8").split("```")[1]
    assert "make demo" in first_block and "make test" in first_block
    assert "make test" in (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
