"""What every command shares: the exit status of an error, text safe to print, byte counts."""

from __future__ import annotations

import argparse
import math

from ..decoder.reader import DEFAULT_MAX_HEADER_BYTES
from ..format.errors import NrdError

EXIT_ERROR = 1


def human_bytes(size: float) -> str:
    """``size`` bytes for a person: ``512 B``, ``1.50 KiB``, ... up to GiB."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.2f} {unit}"
        size /= 1024
    return f"{size:.2f} GiB"


def printable(value) -> str:
    """``value`` as text safe to print on a terminal: every character Python does not count as
    printable (ESC, BEL, CR, C1 controls, bidirectional overrides, line separators) is shown as
    its Python escape (``\\x1b``), so a name or metadata value in a file cannot move the cursor,
    retitle the window or hide text (issue 17). Other text, accents included, prints as is."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def jsonable(metadata: dict) -> dict:
    """``metadata`` with its bytes values as hex text, for ``json.dumps``."""
    return {k: (v.hex() if isinstance(v, bytes) else v) for k, v in metadata.items()}


def byte_count(text: str) -> int | None:
    """``--max-output-bytes``: an integer with an optional K/M/G/T suffix (powers of 1024), or
    ``none`` for no bound."""
    value = text.strip().lower().removesuffix("b").removesuffix("i")
    if value == "none":
        return None
    scale = 1
    if value[-1:] in _BYTE_SUFFIXES:
        value, scale = value[:-1], _BYTE_SUFFIXES[value[-1]]
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"expected bytes such as 1000, 512M, 64G or none, "
                                         f"not {text!r}")
    return int(value) * scale


_BYTE_SUFFIXES = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def add_max_header_bytes(parser) -> None:
    """Add ``--max-header-bytes`` (the commands that read a header: info, decode, validate)."""
    parser.add_argument("--max-header-bytes", type=byte_count, default=DEFAULT_MAX_HEADER_BYTES,
                        metavar="BYTES",
                        help="refuse (output_too_large) a file whose header is larger: bytes with "
                             "an optional K, M, G or T suffix, or 'none' for the spec's limit of "
                             "256M (default: 100M)")


def parse_metadata(pairs) -> dict:
    """The ``--metadata KEY=VALUE`` entries as a dict; a pair without ``=`` is an error."""
    metadata = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise NrdError(f"--metadata expects KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        metadata[key] = value
    return metadata


def quantizer_settings_of(arguments) -> dict:
    """The keywords of ``QuantizerSettings`` (and of ``compress()``) that ``encode``'s flags give
    (the flags declared with the settings, ``command_line_flags``); a flag not given leaves its
    setting out, so that its declared default holds."""
    from ..encoder.settings import command_line_flags

    given = {}
    for name, flag, _ in command_line_flags():
        value = getattr(arguments, flag.flag.lstrip("-").replace("-", "_"))
        if flag.negated:
            if value:
                given[name] = False
        elif value is not None:
            given[name] = value
    return given


def quantizer_metadata_of(given: dict) -> dict:
    """Every flagged setting as the file's ``encoder_settings`` records it: the value given, or
    the declared default."""
    from ..encoder.settings import QuantizerSettings, command_line_flags

    defaults = QuantizerSettings.__dataclass_fields__
    return {name: given.get(name, defaults[name].default) for name, _, _ in command_line_flags()}


def entropy_settings_of(arguments):
    """The entropy coder's settings that ``encode``'s flags give (``--precision-bits``,
    ``--fixed-precision``, ``--lanes``, ``--context``), for every kind of input alike."""
    from ..encoder.entropy import EntropySettings

    return EntropySettings(precision_bits=arguments.precision_bits, lane_count=arguments.lanes,
                           context_model=arguments.context,
                           choose_precision=not arguments.fixed_precision)


def entropy_metadata_of(arguments) -> dict:
    """The same settings as they are recorded in the file's ``encoder_settings`` metadata."""
    return {"precision_bits": arguments.precision_bits,
            "choose_precision": not arguments.fixed_precision, "lane_count": arguments.lanes,
            "context_model": arguments.context}


def json_number(value):
    """``value`` for a file's JSON metadata: itself if None or finite, else its text
    (``"inf"``): JSON has no infinity, and a strict reader refuses Python's ``Infinity``.

    >>> json_number(1.0), json_number(float("inf")), json_number(None)
    (1.0, 'inf', None)
    """
    return value if value is None or math.isfinite(value) else str(value)
