"""The names of the encoder's quantization methods, importable without torch (the command line
lists them in its help on installs that only decode)."""

METHODS = ("rtn", "optq", "optq-rd", "cerwu", "transform", "transform+cerwu")
