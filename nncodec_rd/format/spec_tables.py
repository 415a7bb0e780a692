"""Generate the spec's syntax and enumeration tables from the construct declarations.

The spec (``spec/nrd-format.md``) holds each table between markers::

    <!-- BEGIN GENERATED syntax:TensorRecord -->
    ...
    <!-- END GENERATED syntax:TensorRecord -->

``python -m nncodec_rd.format.spec_tables --write`` rewrites them; ``--check`` (and the test suite)
fails if the spec and the declarations disagree.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from construct import (
    Array,
    Const,
    FormatField,
    GreedyBytes,
    GreedyRange,
    Prefixed,
    Renamed,
    Switch,
    Tell,
)

from .syntax import (
    ENUMERATIONS,
    STRUCTURES,
    EnumField,
    LimitCheck,
    Utf8String,
    VarUInt,
)

_FORMAT_NAMES = {"<B": "u8", "<H": "u16", "<L": "u32", "<Q": "u64", "<b": "i8", "<h": "i16",
                 "<l": "i32", "<q": "i64", "<f": "f32", "<d": "f64"}
MARKER = re.compile(r"<!-- BEGIN GENERATED (\w+):(\w+) -->\n.*?<!-- END GENERATED \1:\2 -->",
                     re.DOTALL)


def _count_text(count) -> str:
    if isinstance(count, int):
        return str(count)
    text = str(count)
    names = re.findall(r"\['(\w+)'\]", text)
    names = [name for name in names if name != "_"]
    if names:
        return names[-1]
    return "see meaning"


def _unwrap(construct):
    while isinstance(construct, Renamed):
        construct = construct.subcon
    return construct


def type_text(construct) -> str:
    """A short name for a field's type, as the spec's syntax tables write it."""
    construct = _unwrap(construct)
    for name, structure in STRUCTURES.items():
        if construct is structure:
            return name
    if isinstance(construct, EnumField):
        return f"{type_text(construct.subcon)} ({construct.enum_class.__name__})"
    if isinstance(construct, FormatField):
        return _FORMAT_NAMES[construct.fmtstr]
    if isinstance(construct, Const):
        return f"bytes[{len(construct.value)}]"
    if isinstance(construct, VarUInt):
        return "varint"
    if isinstance(construct, Utf8String):
        inner = _unwrap(construct.subcon)
        if isinstance(inner, Prefixed):
            return f"string ({type_text(inner.lengthfield)} size)"
        return "UTF-8 bytes"
    if isinstance(construct, Array):
        return f"{type_text(construct.subcon)}[{_count_text(construct.count)}]"
    if isinstance(construct, GreedyRange):
        return f"{type_text(construct.subcon)}[...]"
    if construct is GreedyBytes:
        return "bytes"
    if isinstance(construct, Prefixed):
        return f"{type_text(construct.lengthfield)} size, then {type_text(construct.subcon)}"
    if isinstance(construct, Switch):
        options = " or ".join(type_text(option) for option in construct.cases.values())
        return f"{options}, by {_count_text(construct.keyfunc)}"
    raise TypeError(f"no spec name for {construct!r}")


def _size_text(construct) -> str:
    try:
        return str(_unwrap(construct).sizeof())
    except Exception:
        return "var"


def syntax_table(name: str) -> str:
    """The Markdown syntax table of structure ``name``: field, type, size in bytes, meaning."""
    lines = ["| field | type | size | meaning |", "| --- | --- | --- | --- |"]
    for field in STRUCTURES[name].subcons:
        inner = _unwrap(field)
        if inner is Tell or isinstance(inner, LimitCheck):
            continue
        meaning = (field.docs or "").replace("|", "\\|")
        lines.append(f"| `{field.name}` | {type_text(field)} | {_size_text(field)} | {meaning} |")
    return "\n".join(lines)


def enum_table(name: str) -> str:
    """The Markdown table of enumeration ``name``: value and name."""
    lines = ["| value | name |", "| --- | --- |"]
    for member in ENUMERATIONS[name]:
        lines.append(f"| {int(member)} | `{member.name}` |")
    return "\n".join(lines)


def render(kind: str, name: str) -> str:
    body = syntax_table(name) if kind == "syntax" else enum_table(name)
    return f"<!-- BEGIN GENERATED {kind}:{name} -->\n{body}\n<!-- END GENERATED {kind}:{name} -->"


def regenerate(text: str) -> str:
    """``text`` with every generated table replaced by its current rendering (other generated
    blocks, such as the annex example, are left to their own generators)."""
    def replace(match):
        if match.group(1) not in ("syntax", "enum"):
            return match.group(0)
        return render(match.group(1), match.group(2))

    return MARKER.sub(replace, text)


def markers_in(text: str) -> set[tuple[str, str]]:
    return {(match.group(1), match.group(2)) for match in MARKER.finditer(text)}


def default_spec_path() -> Path:
    return Path(__file__).resolve().parents[2] / "spec" / "nrd-format.md"


def run_generator(argv, description: str, regenerate_text, stale_message: str) -> int:
    """The ``--write`` / ``--check`` command shared by the spec's generators: rewrite the spec's
    generated blocks with ``regenerate_text(text)``, or fail (exit 1) if that would change it."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--spec", type=Path, default=default_spec_path())
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", action="store_true", help="rewrite the generated blocks")
    group.add_argument("--check", action="store_true", help="fail if the spec is out of date")
    arguments = parser.parse_args(argv)
    text = arguments.spec.read_text(encoding="utf-8")
    try:
        updated = regenerate_text(text)
    except ValueError as error:
        print(error, file=sys.stderr)
        return 1
    if arguments.write:
        arguments.spec.write_text(updated, encoding="utf-8")
        return 0
    if updated != text:
        print(stale_message, file=sys.stderr)
        return 1
    return 0


def _regenerate_all_tables(text: str) -> str:
    wanted = {("syntax", name) for name in STRUCTURES} | {("enum", name) for name in ENUMERATIONS}
    missing = wanted - markers_in(text)
    if missing:
        raise ValueError(f"spec lacks tables for: {sorted(missing)}")
    return regenerate(text)


def main(argv=None) -> int:
    return run_generator(argv, __doc__.splitlines()[0], _regenerate_all_tables,
                         "spec tables differ from the construct declarations; run "
                         "python -m nncodec_rd.format.spec_tables --write")


if __name__ == "__main__":
    raise SystemExit(main())
