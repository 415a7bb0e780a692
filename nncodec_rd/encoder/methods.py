"""The names of the encoder's quantization methods and its model-level defaults, importable
without torch (the command line lists them in its help on installs that only decode)."""

from ..format.grids import EntropySettings

METHODS = ("rtn", "optq", "optq-rd", "cerwu", "transform", "transform+cerwu")

GRID_CHOICES = ("auto", "fixed", "rd")
"""How layers get their grid: ``fixed`` (the λ rule), ``rd`` (a per-layer search,
:mod:`nncodec_rd.encoder.grid_choice`), or ``auto``: ``rd`` for the methods it helped on the
benchmarks (``optq``, ``optq-rd``, ``cerwu``, and the layers the transform methods code
directly), ``fixed`` for ``rtn`` (docs/grid-choice.md)."""

DEFAULT_GRID_CHOICE = "auto"

FIXED_GRID_METHODS = ("rtn",)
"""Methods that ``auto`` gives the λ rule's grid: per-layer grids made ``rtn`` worse at equal
fidelity on two of three digits CNNs."""


def model_entropy_settings() -> EntropySettings:
    """The entropy settings of the model-level encoders (``compress``, ``QuantizerSettings``,
    ``save_file``): the writer's defaults, with each tensor's probability precision chosen by
    size (``choose_precision``). A new object each call: the dataclass is mutable."""
    return EntropySettings(choose_precision=True)


def resolved_grid_choice(grid_choice: str, method: str) -> str:
    """``fixed`` or ``rd``: what ``grid_choice`` means for ``method``."""
    if grid_choice == "auto":
        return "fixed" if method in FIXED_GRID_METHODS else "rd"
    return grid_choice
