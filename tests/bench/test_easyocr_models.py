"""EasyOCR's two English models rebuilt in plain torch (bench/easyocr_models.py) and their
rendered test images (bench/easyocr_images.py): strict loads of the shipped checkpoints, output
shapes, deterministic rendering, disjoint calibration and evaluation text."""

from __future__ import annotations

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("easyocr_en_models")

from bench import easyocr_images as images  # noqa: E402
from bench.easyocr_models import (  # noqa: E402
    CRAFT_FILE,
    RECOGNISER_CLASSES,
    RECOGNISER_FILE,
    RECOGNISER_HEIGHT_PX,
    Craft,
    Recogniser,
    craft_model,
    greedy_ctc_decode,
    load_checkpoint,
    model_folder,
    recogniser_model,
)


@pytest.mark.parametrize("file_name, architecture", [(CRAFT_FILE, Craft),
                                                     (RECOGNISER_FILE, Recogniser)])
def test_the_checkpoints_load_strictly_without_the_data_parallel_prefix(file_name, architecture):
    state = load_checkpoint(os.path.join(model_folder(), file_name))
    assert not any(key.startswith("module.") for key in state)
    model = architecture()
    # strict: every key of the checkpoint is a parameter or buffer of the model, and back
    assert set(state) == set(model.state_dict())
    model.load_state_dict(state, strict=True)


def test_the_recogniser_gives_logits_per_time_step_and_reads_a_rendered_line():
    strings, batch = images.recogniser_set("evaluation", 4)
    assert batch.shape == (4, 1, RECOGNISER_HEIGHT_PX, images.RECOGNISER_WIDTH_PX)
    model = recogniser_model()
    assert not model.training and next(model.parameters()).dtype == torch.float32
    with torch.no_grad():
        logits = model(batch)
    # three pools halve the width twice: W/4 columns, and the last 2x2 convolution takes one
    assert logits.shape == (4, images.RECOGNISER_WIDTH_PX // 4 - 1, RECOGNISER_CLASSES)
    read = greedy_ctc_decode(logits)
    # the real weights read the rendered text (the architecture is right, not just loadable)
    assert sum(a == b for a, b in zip(read, strings)) >= 3, (read, strings)


def test_craft_gives_region_and_affinity_maps_at_half_resolution():
    pages, batch = images.craft_set("evaluation", 1)
    height, width = images.CRAFT_SIZE_PX
    assert batch.shape == (1, 3, height, width)
    model = craft_model()
    assert not model.training
    with torch.no_grad():
        maps = model(batch)
    assert maps.shape == (1, height // 2, width // 2, 2)
    # text was drawn, and the region score finds it: its peak is far above its median
    region = maps[0, ..., 0]
    assert float(region.max()) > float(region.median()) + 0.5


def test_rendering_is_deterministic():
    first_strings, first = images.recogniser_set("calibration", 3)
    second_strings, second = images.recogniser_set("calibration", 3)
    assert first_strings == second_strings and torch.equal(first, second)
    first_pages, first = images.craft_set("calibration", 2)
    second_pages, second = images.craft_set("calibration", 2)
    assert first_pages == second_pages and torch.equal(first, second)


def test_calibration_and_evaluation_text_are_disjoint():
    pools = images.word_pools()
    assert pools["calibration"] and pools["evaluation"]
    assert set(pools["calibration"]).isdisjoint(pools["evaluation"])
    calibration = images.line_strings("calibration", 300, images.SEEDS["calibration"])
    evaluation = images.line_strings("evaluation", 600, images.SEEDS["evaluation"])
    assert set(calibration).isdisjoint(evaluation)
    words = {pool: {word for line in lines for word in line.split()}
             for pool, lines in (("calibration", calibration), ("evaluation", evaluation))}
    assert words["calibration"].isdisjoint(words["evaluation"])
    assert all(len(line) <= images.LONGEST_LINE_CHARACTERS for line in calibration + evaluation)


def test_recogniser_input_follows_easyocr_preprocessing():
    # a dark-to-light ramp 32 high and 48 wide: resized to 64 x 96, then the last column repeated
    line = np.tile(np.linspace(0, 255, 48).astype(np.uint8), (32, 1))
    batch = images.recogniser_input([line], width_px=128)
    assert batch.shape == (1, 1, 64, 128)
    assert float(batch.min()) >= -1.0 and float(batch.max()) <= 1.0
    assert torch.equal(batch[0, 0, :, 96:], batch[0, 0, :, 95:96].expand(64, 32))


def test_craft_input_normalises_by_imagenet_mean_and_deviation():
    page = np.full((32, 32, 3), 255, dtype=np.uint8)
    batch = images.craft_input([page])
    expected = [(1 - mean) / std for mean, std in zip(images.CRAFT_MEAN, images.CRAFT_STD)]
    assert batch.shape == (1, 3, 32, 32)
    assert torch.allclose(batch[0, :, 0, 0], torch.tensor(expected), atol=1e-5)


def test_text_is_drawn_without_freetype_too(monkeypatch):
    # a machine whose Pillow cannot scale the built-in font: the bitmap font, scaled up
    monkeypatch.setattr(images, "scalable_font", lambda size_px: None)
    mask = images.draw_text("Hello", 33)
    assert mask.height >= 20 and np.asarray(mask).max() > 0
