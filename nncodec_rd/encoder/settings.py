"""The settings of the layer quantizer (:class:`QuantizerSettings`); each setting is declared
here once, and the model encoders take theirs from it. The entropy coder's settings are
:class:`~nncodec_rd.encoder.entropy.EntropySettings`.

>>> settings = QuantizerSettings(method="optq", lam=1e-3)
>>> settings.quantization_method.rate_aware, settings.grid_choice
(False, 'auto')
>>> QuantizerSettings(method="optq", lam=-1.0)
Traceback (most recent call last):
    ...
nncodec_rd.format.errors.EncoderError: encoder_settings: lam must be finite and > 0, not -1.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from ..format.errors import EncoderError
from .entropy import EntropySettings
from .methods import DEFAULT_GRID_CHOICE, GRID_CHOICES, QuantizationMethod, method_named


@dataclass(frozen=True)
class CommandLineFlag:
    """How a setting of :class:`QuantizerSettings` is given to ``nncodec-rd encode``: the flag,
    its help, its choices, and whether it turns off a setting that is on by default
    (``--no-act-order``). The command line makes its flags from these (:func:`command_line_flags`).
    """

    flag: str
    help: str
    choices: tuple | None = None
    negated: bool = False


def command_line_flags() -> list[tuple[str, CommandLineFlag, type]]:
    """``(setting, flag, type)`` for every setting of :class:`QuantizerSettings` that the
    command line takes, in declaration order.

    >>> [(name, flag.flag) for name, flag, _ in command_line_flags()]
    [('grid_scale', '--grid-scale'), ('act_order', '--no-act-order'), ('grid_choice', '--grid-choice'), ('trellis', '--trellis')]
    """
    return [(item.name, item.metadata["flag"], type(item.default))
            for item in fields(QuantizerSettings) if "flag" in item.metadata]


PER_CHANNEL_CHOICES = (False, True, "rd")
"""The values of :attr:`QuantizerSettings.per_channel`."""


@dataclass(frozen=True)
class QuantizerSettings:
    """How a layer is quantized (:func:`nncodec_rd.encoder.methods.quantize_layer`): frozen, and
    checked on construction.

    Parameters
    ----------
    method:
        The name of a registered method (:data:`nncodec_rd.encoder.methods.METHODS`): ``"rtn"``,
        ``"optq"``, ``"optq-rd"``, ``"cerwu"``, or the transform methods ``"transform"`` and
        ``"transform+cerwu"`` (:mod:`nncodec_rd.encoder.transform`). The method object is
        ``quantization_method``, looked up on construction; ``dataclasses.replace`` carries it
        over while ``method`` stays the same, so settings that reached a Ray worker by value
        keep their method there even if the worker never registered it.
    lam:
        The rate–distortion trade-off λ (loss units per bit), > 0. It sets the grid step of every
        layer (the λ rule of :mod:`nncodec_rd.encoder.obs`) and, for rate-aware methods, weighs
        the rate in each decision.
    per_channel:
        ``False``: one step per tensor. ``True``: one step per output row (for ``cerwu``, rounded
        to classes a factor √2 apart, :data:`~nncodec_rd.encoder.obs.CHANNEL_STEP_CLASS_RATIO`:
        its ``H + μI`` is shared by the rows of a class). ``"rd"``: each layer takes whichever of
        the two has the least ``D/λ + R``, the extra steps' bits counted
        (:func:`~nncodec_rd.encoder.grid_choice.choose_channel_steps`).
    step:
        An absolute step for every row, overriding the λ rule.
    grid_scale:
        Multiplies the step the λ rule gives: below 1 a finer grid, leaving more of the rate to
        the rate-aware decisions.
    act_order:
        Quantize columns in order of decreasing Hessian diagonal (GPTQ's "act-order").
    damping:
        Added to the Hessian's diagonal, as a fraction of its mean diagonal. Raised ×10 and ×100
        when the Cholesky factorisation fails.
    block_size:
        Columns per lazy-update block (GPTQ's lazy batch).
    max_passes:
        Quantize–recount–rebuild passes of the rate model (docs/algorithms.md §1). The second pass
        brings most of the gain: on a 768×384 heavy-tailed layer, a third lowered the objective
        by under 0.1% at 2.7 bits per weight, for 50% more time.
    entropy:
        The coder's settings, whose table the rate model reproduces (by default each tensor's
        probability precision is chosen by size).
    grid_choice:
        ``"fixed"``: every layer's step from the λ rule, any index allowed. ``"rd"``: each layer
        tries several grids (step scales around the λ rule, and bounded grids of ``grid_bins``
        bins with a zero point, their step from the weights' clipped range) and keeps the one
        with the least ``D/λ + R`` (:mod:`nncodec_rd.encoder.grid_choice`). ``"auto"`` (the
        default): ``"rd"`` except for ``rtn``, where it lost on the benchmarks.
    grid_bins:
        The odd numbers of bins ``"rd"`` tries for layers with one step.
    trellis:
        Also quantize each layer with one step onto a trellis grid (format 1.1, spec §6.6;
        :mod:`nncodec_rd.encoder.trellis`) and keep whichever has the least ``D/λ + R``. A file
        with a trellis layer needs a 1.1 decoder.
    grid_search_below_bits:
        ``"rd"`` searches only layers that the λ rule codes at fewer bits per weight than this.
    """

    method: str = "cerwu"
    lam: float = 1e-6
    per_channel: bool | str = False
    step: float | None = None
    grid_scale: float = field(default=1.0, metadata={"flag": CommandLineFlag(
        "--grid-scale", "multiplies the grid step lambda gives (default 1; below 1: a finer "
                        "grid)")})
    act_order: bool = field(default=True, metadata={"flag": CommandLineFlag(
        "--no-act-order", "quantize columns in their order, not by decreasing Hessian "
                          "diagonal", negated=True)})
    damping: float = 0.01
    block_size: int = 128
    max_passes: int = 2
    entropy: EntropySettings = field(default_factory=EntropySettings)
    grid_choice: str = field(default=DEFAULT_GRID_CHOICE, metadata={"flag": CommandLineFlag(
        "--grid-choice", "fixed: every layer's step from lambda; rd: each layer below 2 bits per "
                         "weight picks its grid (step, or 3 to 31 bins with a zero point) by "
                         "rate-distortion, several quantizations per layer; auto (default): rd "
                         "except for rtn", choices=GRID_CHOICES)})
    grid_bins: tuple = (3, 5, 7, 15, 31)
    trellis: bool = field(default=False, metadata={"flag": CommandLineFlag(
        "--trellis", "also try trellis-coded quantization (format 1.1: decoders before 1.1 "
                     "refuse the file) on each layer and keep it where it lowers D/lambda + R")})
    grid_search_below_bits: float = 2.0
    quantization_method: QuantizationMethod | None = field(default=None, repr=False,
                                                           compare=False)

    def __post_init__(self):
        # The method object travels with the settings (to Ray workers too): the sweep and the
        # model encoders ask it, never the name. A given object of the same name is kept.
        if self.quantization_method is None or self.quantization_method.name != self.method:
            object.__setattr__(self, "quantization_method", method_named(self.method))
        object.__setattr__(self, "grid_bins", tuple(self.grid_bins))
        if not (math.isfinite(self.lam) and self.lam > 0):
            raise EncoderError(f"lam must be finite and > 0, not {self.lam}")
        if self.step is not None and not (math.isfinite(self.step) and self.step > 0):
            raise EncoderError(f"step must be finite and > 0, not {self.step}")
        if not (math.isfinite(self.grid_scale) and self.grid_scale > 0):
            raise EncoderError(f"grid_scale must be finite and > 0, not {self.grid_scale}")
        if not (self.per_channel in PER_CHANNEL_CHOICES
                and isinstance(self.per_channel, (bool, str))):
            raise EncoderError(f"per_channel must be False, True or 'rd', not "
                               f"{self.per_channel!r}")
        if self.grid_choice not in GRID_CHOICES:
            raise EncoderError(f"unknown grid_choice {self.grid_choice!r}; choose one of "
                               f"{', '.join(GRID_CHOICES)}")
        if any(int(bins) != bins or bins < 3 or bins % 2 == 0 for bins in self.grid_bins):
            raise EncoderError(f"grid_bins must be odd numbers >= 3 (so 0 is a grid point), not "
                               f"{self.grid_bins}")
        if self.block_size < 1 or self.max_passes < 1 or self.damping < 0:
            raise EncoderError("block_size and max_passes must be >= 1 and damping >= 0")
