"""The recipes of the frozen conformance files: valid vectors and invalid files.

Each recipe is a small function that returns the bytes of one file, written by the reference
encoder (``NrdWriter``) and, where the encoder never writes a feature the spec allows (optional
extensions, a later minor version, an alphabet of escapes only), edited afterwards through
:mod:`nncodec_rd.conformance.mutators`. Recipes carry a version: the file on disk is
``vectors/<name>.v<version>.nrd`` (or ``invalid/...``) and is never overwritten with other bytes.
The recipes are in :mod:`nncodec_rd.conformance.recipes_valid` and
:mod:`nncodec_rd.conformance.recipes_invalid`, their registry and building blocks in
:mod:`nncodec_rd.conformance.recipes`; this module writes and checks the files they make.

``python -m nncodec_rd.conformance.generate --check`` fails when a recipe would now give other
bytes than the frozen file (the encoder changed: keep the old file, add a recipe with a new
version); ``--write`` writes files that do not exist yet and refreshes the manifests. The manifests record
what each file is for (the spec sections and features it exercises, computed from its bytes), the
SHA-256 of every decoded tensor, and for invalid files the error code a decoder must report.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nncodec_rd import FORMAT_VERSION

from . import recipes_invalid, recipes_valid  # noqa: F401  (importing them registers the recipes)
from .recipes import INVALID, VALID, Recipe
from .recipes_invalid import invalid_base  # noqa: F401  (the base file of the invalid files)

HERE = Path(__file__).resolve().parent
VECTORS_FOLDER = HERE / "vectors"
INVALID_FOLDER = HERE / "invalid"


# ---------------------------------------------------------------------------------------------
# Writing and checking the frozen files
# ---------------------------------------------------------------------------------------------

def valid_entry(recipe: Recipe, data: bytes) -> dict:
    """The manifest entry of a valid vector, computed from its bytes (both decoders must agree)."""
    from . import manifest

    decoded = manifest.decode_both(data)
    features = manifest.features_of(data, decoded)
    return dict(name=recipe.name, version=recipe.version, file=recipe.file_name,
                size_bytes=len(data), file_sha256=manifest.sha256(data),
                description=recipe.description,
                sections=manifest.sections_of(features, recipe.name),
                features=sorted(features), tensors=manifest.tensor_entries(decoded))


def invalid_entry(recipe: Recipe, data: bytes) -> dict:
    """The manifest entry of an invalid file; both decoders must report its code."""
    from . import manifest

    codes = manifest.error_codes_of_both(data)
    if codes != (int(recipe.error), int(recipe.error)):
        raise AssertionError(f"{recipe.name}: the decoders report {codes}, the recipe says "
                             f"{int(recipe.error)} {recipe.error.slug}")
    return dict(name=recipe.name, version=recipe.version, file=recipe.file_name,
                size_bytes=len(data), file_sha256=manifest.sha256(data),
                description=recipe.description, error_code=int(recipe.error),
                error_name=recipe.error.slug, sections=list(recipe.sections),
                **({"earlier_versions": {version: {"error_code": int(code),
                                                   "error_name": code.slug}
                                         for version, code in recipe.earlier_errors}}
                   if recipe.earlier_errors else {}))


def frozen_differences(folder: Path, recipes: list[Recipe]) -> list[str]:
    """Recipes whose output differs from their frozen file (or whose file is missing)."""
    problems = []
    for recipe in recipes:
        path = folder / recipe.file_name
        if not path.exists():
            problems.append(f"{path.name}: missing "
                            "(run python -m nncodec_rd.conformance.generate --write)")
        elif path.read_bytes() != recipe.build():
            problems.append(f"{path.name}: the encoder now writes other bytes; keep this file and "
                            f"add a recipe version {recipe.version + 1} instead of regenerating")
    names = {recipe.file_name for recipe in recipes}
    problems.extend(f"{path.name}: no recipe makes this file" for path in sorted(folder.glob("*.nrd"))
                    if path.name not in names)
    return problems


def write_files(folder: Path, recipes: list[Recipe], entry, manifest_path: Path, key: str) -> None:
    """Write missing files (never overwrite a frozen one) and the manifest."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for recipe in recipes:
        data = recipe.build()
        path = folder / recipe.file_name
        if path.exists() and path.read_bytes() != data:
            raise SystemExit(f"{path}: frozen and different from what the recipe makes now; add a "
                             f"recipe version {recipe.version + 1}")
        if not path.exists():
            path.write_bytes(data)
        entries.append(entry(recipe, data))
    # The specification the files are judged by (1.1: some use its trellis grid).
    document = {"format_version": FORMAT_VERSION, key: entries}
    manifest_path.write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n",
                             encoding="utf-8")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", action="store_true",
                        help="write missing files and the manifests")
    action.add_argument("--check", action="store_true",
                        help="fail if a recipe no longer makes its frozen file")
    arguments = parser.parse_args(argv)
    from . import manifest

    if arguments.write:
        write_files(VECTORS_FOLDER, VALID, valid_entry, manifest.VECTORS_MANIFEST, "vectors")
        write_files(INVALID_FOLDER, INVALID, invalid_entry, manifest.INVALID_MANIFEST, "files")
    problems = (frozen_differences(VECTORS_FOLDER, VALID)
                + frozen_differences(INVALID_FOLDER, INVALID))
    gaps = manifest.coverage_gaps(manifest.load(manifest.VECTORS_MANIFEST),
                                  manifest.load(manifest.INVALID_MANIFEST))
    for line in problems + gaps:
        print(line, file=sys.stderr)
    if not problems and not gaps:
        print(f"{len(VALID)} vectors and {len(INVALID)} invalid files match their recipes; every "
              f"spec section and error code is covered")
    return 1 if problems or gaps else 0


if __name__ == "__main__":
    sys.exit(main())
