"""The names of the encoder's quantization methods, importable without torch (the command line
lists them in its help on installs that only decode)."""

METHODS = ("rtn", "optq", "optq-rd", "cerwu", "transform", "transform+cerwu")

GRID_CHOICES = ("fixed", "rd")
"""How layers get their grid: ``fixed`` (the λ rule) or ``rd`` (a per-layer search,
:mod:`nncodec_rd.encoder.grid_choice`)."""

DEFAULT_GRID_CHOICE = "fixed"
