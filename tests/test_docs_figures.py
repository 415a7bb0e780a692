"""The measured figures of the pages are those of bench/results/*.json (docs/figures.py).

``make docs`` runs the same check before Sphinx. Here it runs on the repository as it is, and on
a copy of the pages and results in which one figure of a page was changed: the check must then
fail and name the page, the figure's key and both values.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("figures", ROOT / "docs" / "figures.py")
figures = importlib.util.module_from_spec(spec)
spec.loader.exec_module(figures)


def copy_of_pages_and_results(folder: Path) -> Path:
    shutil.copytree(ROOT / "docs", folder / "docs", ignore=shutil.ignore_patterns("_build"))
    shutil.copytree(ROOT / "bench" / "results", folder / "bench" / "results")
    shutil.copy(ROOT / "README.md", folder / "README.md")
    return folder


def test_the_pages_hold_the_figures_of_the_results():
    problems = figures.check(ROOT)
    assert not problems, "\n".join(problems) + "\n(python docs/figures.py --write)"


def test_every_block_key_is_used_on_a_page():
    used = set()
    for path in figures.page_paths(ROOT):
        used |= {m.group("key") for m in figures.BLOCK.finditer(path.read_text("utf-8"))}
    assert used == set(figures.BLOCKS)


def test_an_edited_inline_figure_fails_the_check(tmp_path):
    root = copy_of_pages_and_results(tmp_path)
    page = root / "docs" / "decode-speed.md"
    text = page.read_text("utf-8")
    match = next(figures.INLINE.finditer(text))
    spec, value = match.group("spec"), match.group("text")
    page.write_text(text[:match.start("text")] + "1.23" + text[match.end("text"):], "utf-8")
    assert value != "1.23"
    problems = figures.check(root, git_root=ROOT)
    assert len(problems) == 1, problems
    assert problems[0].startswith("docs/decode-speed.md:")
    assert spec in problems[0] and repr("1.23") in problems[0] and repr(value) in problems[0]


def test_an_edited_table_cell_fails_the_check(tmp_path):
    root = copy_of_pages_and_results(tmp_path)
    page = root / "docs" / "decode-speed.md"
    text = page.read_text("utf-8")
    line = next(line for line in text.splitlines() if line.startswith("| nncodec-rd, 1 thread, new"))
    edited = re.sub(r"\| (\d+\.\d) \|", "| 999.9 |", line, count=1)
    page.write_text(text.replace(line, edited, 1), "utf-8")
    problems = figures.check(root, git_root=ROOT)
    assert len(problems) == 1, problems
    assert "docs/decode-speed.md:" in problems[0] and "figures: decode_speed.table" in problems[0]
    assert repr(edited) in problems[0] and repr(line) in problems[0]


def test_a_changed_result_fails_the_check_and_write_repairs_it(tmp_path):
    root = copy_of_pages_and_results(tmp_path)
    results = root / "bench" / "results" / "decode_speed.json"
    # the one-thread speed the page quotes, changed in the copy (whatever the last run measured)
    data = json.loads(results.read_text("utf-8"))
    measured = data["results"][0]["weights_per_second"]
    data["results"][0]["weights_per_second"] = measured * 1.5
    results.write_text(json.dumps(data), "utf-8")
    before, after = f"'{measured / 1e6:.1f}'", f"'{1.5 * measured / 1e6:.1f}'"
    problems = figures.check(root, git_root=ROOT)
    assert any(before in problem and after in problem for problem in problems), problems
    assert "docs/decode-speed.md" in figures.write(root, git_root=ROOT)
    assert figures.check(root, git_root=ROOT) == []


def test_a_line_may_not_begin_with_an_inline_figure(tmp_path):
    # CommonMark reads a line that begins with "<!--" as an HTML block: the rest of the line
    # would lose its Markdown and end the paragraph
    results = figures.Results(ROOT / "bench" / "results")
    text = "The second thread\n<!--f:decode_speed.json:lanes:d-->4<!--/f--> lanes.\n"
    with pytest.raises(figures.FiguresError, match="line 2 begins with an inline figure"):
        figures.render(text, results)
    assert figures.render(text.replace("thread\n", "thread "), results)[1] == []


@pytest.mark.parametrize("expression, expected", [
    ("runs[1].size", 20), ("runs[-1].size", 30), ("runs[config=ray:2].size", 30),
    ('meta["odd key"]', "x"), ("(runs[0].size + runs[1].size) / 2 * 3", 45.0),
    ("runs[0].size / 1e1", 1.0), ("max(runs[*].size) - min(runs[*].size)", 20),
    ("len(runs[?config=local].size)", 1),
    ("max(runs[?config~=^ray:].size)", 30), ("max(runs[*].size / runs[*].size * 2)", 2.0),
    ("sum(runs[?config~=^ray][?size=30].size)", 30), ("runs[?config~=^ray][config=ray:1].size", 20), ("min(runs[?config~=^ray:].size)", 20), ("sum(runs[*].size) / len(runs[*].size)", 20.0)])
def test_expressions(expression, expected):
    data = {"runs": [{"config": "local", "size": 10}, {"config": "ray:1", "size": 20},
                     {"config": "ray:2", "size": 30}], "meta": {"odd key": "x"}}
    assert figures.evaluate(data, expression) == expected


@pytest.mark.parametrize("expression", ["runs[7].size", "runs[config=none].size", "missing",
                                        "__import__('os')", "runs[0].size ** 2",
                                        "runs[0].size.__class__", "max(runs[?config=none].size)",
                                        "open(runs[0].config)", "runs[*].size * 2"])
def test_bad_expressions_are_errors(expression):
    data = {"runs": [{"config": "local", "size": 10}]}
    with pytest.raises(figures.FiguresError):
        figures.evaluate(data, expression)
