"""Test images for EasyOCR's models (:mod:`bench.easyocr_models`), rendered here with Pillow:
text lines for the recogniser, pages of a few lines for the CRAFT detector.

Words
    Every word of the prose sentences of :mod:`nncodec_rd.torch.sentences` (the Python
    documentation shipped with CPython; letters, digits and apostrophes). Each word belongs to
    one of two disjoint pools, decided by a salted SHA-256 hash of its text (a third to
    calibration, the rest to evaluation), so no calibration string shares a word, let alone a
    string, with an evaluation one.
Font
    Pillow's built-in scalable font (``ImageFont.load_default(size=...)``, Pillow 10.1 or later
    with FreeType), so no font file is needed; without FreeType, Pillow's small bitmap font drawn
    at its own size and scaled up (blurrier text, the same pipeline).
Randomness
    Every choice (strings, sizes, grey levels, colours, positions, noise) comes from a NumPy
    generator with a fixed seed per set: the same call gives the same pixels.
Preprocessing (as EasyOCR 1.7.2 does it)
    Recogniser (``recognition.AlignCollate`` and ``NormalizePAD``): grey, resized with bicubic
    interpolation to height 64 keeping the aspect ratio (at most the model width), scaled to
    [-1, 1], padded on the right to the model width by repeating the last column. Detector
    (``imgproc.normalizeMeanVariance``): RGB minus ``255 x (0.485, 0.456, 0.406)``, divided by
    ``255 x (0.229, 0.224, 0.225)``, channels first.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from bench.easyocr_models import RECOGNISER_HEIGHT_PX
from nncodec_rd.torch.sentences import all_sentences

#: Mixed into the hash that assigns words to pools; changing it draws other pools.
WORD_POOL_SALT = b"nncodec-rd easyocr words 1"
#: One hash value in this many puts a word in the calibration pool.
CALIBRATION_WORD_SHARE = 3
#: The recogniser's input width in pixels: 63 time steps.
RECOGNISER_WIDTH_PX = 256
#: Longest line given to the recogniser: longer ones would be squeezed into the fixed width.
LONGEST_LINE_CHARACTERS = 16
#: The detector's image size (height, width), multiples of 32 as CRAFT needs.
CRAFT_SIZE_PX = (256, 256)
CRAFT_MEAN = (0.485, 0.456, 0.406)
CRAFT_STD = (0.229, 0.224, 0.225)
#: Seeds of the sets: calibration and evaluation images never share a seed.
SEEDS = {"calibration": 1, "evaluation": 2}
POOLS = ("calibration", "evaluation")

_WORD = re.compile(r"[A-Za-z0-9']+")


def _pool_key(word: str) -> int:
    return int.from_bytes(hashlib.sha256(WORD_POOL_SALT + word.encode("utf-8")).digest()[:8],
                          "big")


@functools.lru_cache(maxsize=1)
def word_pools() -> dict[str, tuple[str, ...]]:
    """``{"calibration": words, "evaluation": words}``: every word of the documentation's
    sentences (up to :data:`LONGEST_LINE_CHARACTERS` letters), in one pool each, sorted."""
    words = sorted({word.strip("'") for sentence in all_sentences()
                    for word in _WORD.findall(sentence)} - {""})
    words = [word for word in words if len(word) <= LONGEST_LINE_CHARACTERS]
    return {"calibration": tuple(w for w in words if _pool_key(w) % CALIBRATION_WORD_SHARE == 0),
            "evaluation": tuple(w for w in words if _pool_key(w) % CALIBRATION_WORD_SHARE != 0)}


def line_strings(pool: str, count: int, seed: int) -> list[str]:
    """``count`` text lines of one or two words of ``pool``, at most
    :data:`LONGEST_LINE_CHARACTERS` characters, drawn with ``seed``."""
    words = word_pools()[pool]
    generator = np.random.default_rng(seed)
    lines = []
    while len(lines) < count:
        line = " ".join(words[int(i)] for i in generator.integers(len(words),
                                                                   size=generator.integers(1, 3)))
        if len(line) <= LONGEST_LINE_CHARACTERS:
            lines.append(line)
    return lines


# -- drawing ----------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=64)
def scalable_font(size_px: int):
    """Pillow's built-in scalable font at ``size_px``, or None where Pillow cannot scale it
    (older than 10.1, or built without FreeType)."""
    try:
        font = ImageFont.load_default(size=size_px)
    except TypeError:  # Pillow < 10.1: no size argument
        return None
    return font if isinstance(font, ImageFont.FreeTypeFont) else None


def draw_text(text: str, size_px: int) -> Image.Image:
    """``text`` as a mask (mode ``L``, ink 255 on 0), cropped to its ink, about ``size_px``
    high for capitals."""
    font = scalable_font(size_px)
    if font is None:
        # Pillow's bitmap font (about 11 pixels high), drawn at its size and scaled up.
        small = draw_text_with(text, ImageFont.load_default())
        scale = size_px / 11.0
        return small.resize((max(1, round(small.width * scale)),
                             max(1, round(small.height * scale))), Image.BICUBIC)
    return draw_text_with(text, font)


def draw_text_with(text: str, font) -> Image.Image:
    """``text`` drawn with ``font`` as a mask, cropped to its ink."""
    left, top, right, bottom = ImageDraw.Draw(Image.new("L", (1, 1))).textbbox((0, 0), text,
                                                                               font=font)
    canvas = Image.new("L", (right - left + 4, bottom - top + 4), 0)
    ImageDraw.Draw(canvas).text((2 - left, 2 - top), text, fill=255, font=font)
    return canvas.crop(canvas.getbbox() or (0, 0, 1, 1))


def recogniser_line(text: str, generator: np.random.Generator) -> np.ndarray:
    """A grey crop of one text line as a detector would hand it over: dark ink on a light
    background, a margin of a few pixels, mild noise; uint8 ``(height, width)``."""
    mask = np.asarray(draw_text(text, int(generator.integers(28, 45))), dtype=np.float64) / 255
    margin = int(generator.integers(3, 9))
    mask = np.pad(mask, margin)
    paper, ink = generator.uniform(190, 255), generator.uniform(0, 70)
    image = paper + (ink - paper) * mask + generator.normal(0, 4, mask.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def craft_page(lines: list[str], generator: np.random.Generator,
               size_px: tuple[int, int] = CRAFT_SIZE_PX) -> np.ndarray:
    """An RGB page (uint8 ``(height, width, 3)``) with ``lines`` drawn one below the other at
    random sizes, indents and dark colours on a light, slightly noisy background."""
    height, width = size_px
    paper = generator.uniform(180, 255, size=3)
    page = np.broadcast_to(paper, (height, width, 3)).astype(np.float64).copy()
    y = int(generator.integers(4, 24))
    for text in lines:
        mask = np.asarray(draw_text(text, int(generator.integers(14, 31))), dtype=np.float64) / 255
        mask = mask[:height - y, :width - 8]  # a line that would leave the page is cut
        if mask.shape[0] < 8:
            break
        x = int(generator.integers(4, max(5, width - mask.shape[1] - 4)))
        mask = mask[:, :width - x]
        ink = generator.uniform(0, 90, size=3)
        region = page[y:y + mask.shape[0], x:x + mask.shape[1]]
        region += (ink - region) * mask[..., None]
        y += mask.shape[0] + int(generator.integers(8, 24))
    page += generator.normal(0, 3, page.shape)
    return np.clip(np.rint(page), 0, 255).astype(np.uint8)


# -- model inputs -----------------------------------------------------------------------------------

def recogniser_input(lines: list[np.ndarray], width_px: int = RECOGNISER_WIDTH_PX) -> torch.Tensor:
    """EasyOCR's recogniser preprocessing (module docstring) of grey crops: float32
    ``(N, 1, 64, width_px)`` in [-1, 1]."""
    batch = torch.empty(len(lines), 1, RECOGNISER_HEIGHT_PX, width_px)
    for number, line in enumerate(lines):
        height, width = line.shape
        resized_width = min(width_px, math.ceil(RECOGNISER_HEIGHT_PX * width / height))
        resized = Image.fromarray(line, "L").resize((resized_width, RECOGNISER_HEIGHT_PX),
                                                    Image.BICUBIC)
        values = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0).sub(0.5).div(0.5)
        batch[number, 0, :, :resized_width] = values
        batch[number, 0, :, resized_width:] = values[:, -1:]  # the last column, repeated
    return batch


def craft_input(pages: list[np.ndarray]) -> torch.Tensor:
    """EasyOCR's detector normalisation (module docstring) of RGB pages: float32
    ``(N, 3, height, width)``."""
    array = np.stack(pages).astype(np.float32)
    array -= np.float32(255.0) * np.asarray(CRAFT_MEAN, dtype=np.float32)
    array /= np.float32(255.0) * np.asarray(CRAFT_STD, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(array.transpose(0, 3, 1, 2)))


# -- the sets ---------------------------------------------------------------------------------------

def recogniser_set(pool: str, count: int) -> tuple[list[str], torch.Tensor]:
    """``count`` lines of the ``pool`` (``"calibration"`` or ``"evaluation"``) words: their
    strings and the recogniser's input ``(count, 1, 64, 256)``."""
    seed = SEEDS[pool]
    strings = line_strings(pool, count, seed)
    generator = np.random.default_rng([seed, 1])
    return strings, recogniser_input([recogniser_line(text, generator) for text in strings])


def craft_set(pool: str, count: int) -> tuple[list[list[str]], torch.Tensor]:
    """``count`` pages of two to five lines of the ``pool`` words: the lines of each page and
    the detector's input ``(count, 3, 256, 256)``."""
    seed = SEEDS[pool]
    generator = np.random.default_rng([seed, 2])
    line_counts = generator.integers(2, 6, size=count)
    strings = line_strings(pool, int(line_counts.sum()), seed + 100)
    pages, cursor = [], 0
    for lines in line_counts:
        pages.append(strings[cursor:cursor + int(lines)])
        cursor += int(lines)
    return pages, craft_input([craft_page(lines, generator) for lines in pages])
