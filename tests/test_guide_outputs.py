"""The printed output the guides show is what the commands print today.

The blocks between ``<!-- output: KEY -->`` markers come from ``docs/generate_outputs.py``, run
on all-MiniLM-L6-v2. This test runs the same recipes on a tiny model of its own and checks that
every line of every block has a line of the same form in today's output: the same words, with
numbers and tensor names masked (they differ between the two models).
"""

import importlib.util
import re
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).resolve().parent / "torch"))
from test_pretrained import model_folder  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("generate_outputs",
                                              ROOT / "docs" / "generate_outputs.py")
generate_outputs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(generate_outputs)

TEXTS = ["the model weights are small", "a codec of text and data", "the file is not small",
         "the weights of a model are data", "a file of text is not a codec",
         "the data are small and the file is small", "text and weights and data",
         "a small model of the codec"]


def masked(line: str) -> str:
    # tensor names, file names and paths (1_Pooling/config.json)
    line = re.sub(r"[\w/-]*[A-Za-z_][\w/-]*(\.[\w-]+)+/?", "NAME", line)
    return re.sub(r"[-+]?\d[\d,]*(\.\d+)?(e[-+]?\d+)?", "#", line)


@pytest.fixture(scope="module")
def printed(tmp_path_factory):
    folder = tmp_path_factory.mktemp("guide")
    model_folder(folder / "source")
    generate_outputs.prepare(folder, model_folder=folder / "source", texts=TEXTS)
    return generate_outputs.blocks(folder)


def test_every_recipe_is_shown_in_a_guide():
    shown = {}
    for page in generate_outputs.PAGES:
        shown.update(generate_outputs.page_blocks((ROOT / "docs" / page).read_text("utf-8")))
    assert set(shown) == set(generate_outputs.RECIPES)


@pytest.mark.parametrize("page", generate_outputs.PAGES)
def test_the_guides_show_what_the_commands_print_today(page, printed):
    text = (ROOT / "docs" / page).read_text(encoding="utf-8")
    for key, block in generate_outputs.page_blocks(text).items():
        today = {masked(line) for line in printed[key].splitlines()}
        for line in block.splitlines():
            assert masked(line) in today, (
                f"docs/{page}, block {key!r}: {line!r} is not what the command prints today "
                f"(run python docs/generate_outputs.py --write); today:\n{printed[key]}")
        wrote = [line for line in printed[key].splitlines() if line.startswith("wrote ")]
        assert all(masked(line) in {masked(shown) for shown in block.splitlines()}
                   for line in wrote), f"docs/{page}, block {key!r} lacks its summary line"
