"""Run any decoder over the frozen conformance files and judge it (``nncodec-rd conformance run``).

The decoder is a command template such as ``'./mydecoder {input} {output}'``: for each valid
vector it must exit with status 0 and write every tensor to ``{output}`` (an ``.npz`` or
``.safetensors`` file, by ``output_format``) with the bytes, dtype and shape the manifest lists;
for each invalid file it must exit with a non-zero status and leave no ``{output}`` behind (spec
§1.3: no output that depends on the fault). With ``error_pattern``, a regular expression whose
first group captures the error code (number or name, spec §10) from the decoder's standard
error, the reported code must also be the manifest's.

The report lists every file with the spec sections it exercises, and every spec section with
the files that failed in it, so that a failure points at the rule to read.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import struct
import subprocess
import tempfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from nncodec_rd.format.constants import FEATURE_TRELLIS, MAGIC, PREAMBLE_SIZE_BYTES
from nncodec_rd.format.errors import ErrorCode

from . import manifest

# safetensors dtype names -> the format's dtype names (spec §5.2)
SAFETENSORS_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64",
                      "I8": "int8", "U8": "uint8", "I16": "int16", "I32": "int32", "I64": "int64",
                      "BOOL": "bool", "U16": "uint16", "U32": "uint32", "U64": "uint64"}
# NumPy cannot hold bfloat16 natively: .npz writers store its 16-bit patterns as uint16 (or as
# ml_dtypes' bfloat16, which NumPy reads as a 2-byte void type).
NPZ_ALIASES = {"bfloat16": {"bfloat16", "uint16", "void16", "|V2"}, "bool": {"bool", "uint8"}}


class OutputFileError(ValueError):
    """A decoder's output file cannot be read as .npz or .safetensors."""


@dataclass
class FileResult:
    """The verdict on one conformance file."""

    kind: str  # "valid" or "invalid"
    name: str
    file: str
    sections: list[str]
    passed: bool
    reason: str = ""
    seconds: float = 0.0
    expected_error: str = ""
    reported_error: str = ""
    features: list[str] = field(default_factory=list)

    @property
    def specific_sections(self) -> list[str]:
        """The sections this file tests in particular: for a valid vector, those beyond what
        every file exercises (preamble, layout, checksums...); for an invalid file, all."""
        if self.kind == "invalid":
            return self.sections
        return [s for s in self.sections if s not in manifest.SECTIONS_OF_EVERY_FILE]


@dataclass
class ConformanceReport:
    """Every file's verdict, and the spec sections in which files failed."""

    decoder: str
    results: list[FileResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.results) and all(result.passed for result in self.results)

    def failures(self) -> list[FileResult]:
        return [result for result in self.results if not result.passed]

    def sections(self, specific: bool = False) -> dict[str, dict]:
        """For each spec section: how many files exercise it and which of them failed. With
        ``specific``, a valid vector counts only for the sections it tests in particular."""
        table: dict[str, dict] = {}
        for result in self.results:
            for section in (result.specific_sections if specific else result.sections):
                entry = table.setdefault(section, {"files": 0, "failed": []})
                entry["files"] += 1
                if not result.passed:
                    entry["failed"].append(result.name)
        return dict(sorted(table.items(), key=lambda item: manifest._section_key(item[0])))

    def suspect_features(self, limit: int = 6) -> dict[str, str]:
        """The likeliest causes of the failures: features (manifest ``features``) that at least
        half of the vectors having them failed, most failed first. Feature -> "failed/total"."""
        counts: dict[str, list[int]] = {}
        for result in self.results:
            for feature in result.features:
                entry = counts.setdefault(feature, [0, 0])
                entry[0] += 1
                entry[1] += not result.passed
        ranked = sorted(((failed / total, failed, feature) for feature, (total, failed)
                         in counts.items() if failed and 2 * failed >= total), reverse=True)
        return {feature: f"{failed}/{counts[feature][0]}" for _, failed, feature in ranked[:limit]}

    def to_json(self) -> dict:
        return {"decoder": self.decoder, "passed": self.passed,
                "counts": {"files": len(self.results), "failed": len(self.failures())},
                "sections": self.sections(), "suspect_features": self.suspect_features(),
                "results": [asdict(r) for r in self.results]}

    def render(self, verbose: bool = False) -> str:
        """The text report: failures (or every file with ``verbose``), sections, a summary."""
        lines = []
        for result in self.results:
            if verbose or not result.passed:
                verdict = "PASS" if result.passed else "FAIL"
                where = ", ".join("§" + s for s in result.specific_sections)
                detail = f": {result.reason}" if result.reason else ""
                lines.append(f"{verdict} {result.kind:7} {result.name} ({where}){detail}")
        failed_sections = {s: e for s, e in self.sections(specific=True).items() if e["failed"]}
        if failed_sections:
            lines.append("")
            lines.append("spec sections with failures (failed / files testing the section):")
            ranked = sorted(failed_sections.items(),
                            key=lambda item: -len(item[1]["failed"]) / item[1]["files"])
            for section, entry in ranked:
                names = ", ".join(entry["failed"][:6]) + (" ..." if len(entry["failed"]) > 6 else "")
                lines.append(f"  §{section}: {len(entry['failed'])} of {entry['files']} ({names})")
        suspects = self.suspect_features()
        if suspects:
            lines.append("")
            lines.append("features most of whose vectors failed: " + ", ".join(
                f"{feature} ({fraction})" for feature, fraction in suspects.items()))
        valid = [r for r in self.results if r.kind == "valid"]
        invalid = [r for r in self.results if r.kind == "invalid"]
        lines.append("")
        lines.append(f"{self.decoder}: {'CONFORMS' if self.passed else 'DOES NOT CONFORM'}: "
                     f"{sum(r.passed for r in valid)}/{len(valid)} valid vectors decoded exactly, "
                     f"{sum(r.passed for r in invalid)}/{len(invalid)} invalid files rejected, "
                     f"{len(self.sections())} spec sections exercised")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Reading what a decoder wrote
# ---------------------------------------------------------------------------------------------

def _little_endian_bytes(array) -> bytes:
    import numpy as np

    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return np.ascontiguousarray(array).tobytes()


def read_npz(path: Path) -> dict[str, tuple[str, tuple, bytes]]:
    """``{name: (dtype name, shape, little-endian bytes)}`` of an .npz, read member by member so
    that any tensor name works."""
    import numpy as np

    tensors = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.infolist():
                if not member.filename.endswith(".npy"):
                    raise OutputFileError(f"member {member.filename!r} is not an .npy array")
                with archive.open(member) as stream:
                    array = np.lib.format.read_array(stream, allow_pickle=False)
                dtype = array.dtype.name if array.dtype.kind != "V" else array.dtype.str
                tensors[member.filename[:-4]] = (dtype, tuple(array.shape),
                                                 _little_endian_bytes(array))
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as error:
        raise OutputFileError(f"not a readable .npz: {error}") from None
    return tensors


def read_safetensors(path: Path) -> dict[str, tuple[str, tuple, bytes]]:
    """``{name: (dtype name, shape, bytes)}`` of a .safetensors file (its layout is small enough
    to read here, so the runner needs no safetensors package)."""
    data = Path(path).read_bytes()
    try:
        (header_size,) = struct.unpack_from("<Q", data, 0)
        header = json.loads(data[8:8 + header_size].decode("utf-8"))
        tensors = {}
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            start, end = entry["data_offsets"]
            tensors[name] = (SAFETENSORS_DTYPES.get(entry["dtype"], entry["dtype"]),
                             tuple(entry["shape"]),
                             data[8 + header_size + start:8 + header_size + end])
    except (struct.error, UnicodeDecodeError, ValueError, KeyError, TypeError) as error:
        raise OutputFileError(f"not a readable .safetensors file: {error}") from None
    return tensors


def read_output(path: Path) -> dict[str, tuple[str, tuple, bytes]]:
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    return read_npz(path)


def compare_output(expected: list[dict], actual: dict) -> str:
    """Why ``actual`` is not the manifest's ``expected`` tensors ("" if it is)."""
    names = [entry["name"] for entry in expected]
    missing = [name for name in names if name not in actual]
    extra = [name for name in actual if name not in names]
    if missing or extra:
        return (f"tensors missing: {[n[:40] for n in missing]}" if missing else "") + \
               (f" unexpected tensors: {[n[:40] for n in extra]}" if extra else "")
    for entry in expected:
        dtype, shape, raw = actual[entry["name"]]
        label = entry["name"][:40]
        if dtype != entry["dtype"] and dtype not in NPZ_ALIASES.get(entry["dtype"], ()):
            return f"tensor {label!r}: dtype {dtype}, expected {entry['dtype']}"
        if list(shape) != entry["shape"]:
            return f"tensor {label!r}: shape {list(shape)}, expected {entry['shape']}"
        if manifest.sha256(raw) != entry["sha256"]:
            return (f"tensor {label!r} ({entry['dtype']} {entry['shape']}): bytes differ from the "
                    f"manifest (SHA-256 {manifest.sha256(raw)[:16]}...)")
    return ""


# ---------------------------------------------------------------------------------------------
# Running a decoder
# ---------------------------------------------------------------------------------------------

def _invoke(decoder, input_path: Path, output_path: Path, timeout_s: float) -> tuple[int | None, str]:
    """(exit status or None on timeout, standard error) of one decoder run."""
    if callable(decoder):
        return decoder(str(input_path), str(output_path))
    command = decoder.format(input=shlex.quote(str(input_path)), output=shlex.quote(str(output_path)))
    try:
        completed = subprocess.run(command, shell=True, capture_output=True, timeout=timeout_s,
                                   stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return None, ""
    return completed.returncode, completed.stderr.decode("utf-8", "replace")


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""


@contextlib.contextmanager
def _decoder_run(decoder, input_path: Path, output_format: str, timeout_s: float):
    """Run the decoder once into a fresh folder: yields (status or None on a hang, stderr, the
    output path, seconds); the folder goes away afterwards."""
    with tempfile.TemporaryDirectory(prefix="nrd-conformance-") as work:
        output = Path(work) / f"decoded.{output_format}"
        start = time.perf_counter()
        status, stderr = _invoke(decoder, input_path, output, timeout_s)
        yield status, stderr, output, round(time.perf_counter() - start, 3)


def judge_valid(decoder, entry: dict, folder: Path, output_format: str,
                timeout_s: float) -> FileResult:
    """Run the decoder on a valid vector: exit 0 and exactly the manifest's tensors."""
    result = FileResult("valid", entry["name"], entry["file"], entry["sections"], False,
                        features=entry["features"])
    with _decoder_run(decoder, folder / entry["file"], output_format, timeout_s) as run:
        status, stderr, output, result.seconds = run
        if status is None:
            result.reason = f"no result within {timeout_s:g} s (hang?)"
        elif status != 0:
            result.reason = f"exit status {status} for a valid file: {_last_line(stderr)}"
        elif not output.exists():
            result.reason = "exit status 0 but no output file"
        else:
            try:
                result.reason = compare_output(entry["tensors"], read_output(output))
            except OutputFileError as error:
                result.reason = str(error)
    result.passed = not result.reason
    return result


def _code_matches(reported: str, code: int) -> bool:
    return reported == str(code) or reported.lower() == manifest.error_name(code)


def judge_invalid(decoder, entry: dict, folder: Path, output_format: str, timeout_s: float,
                  error_pattern: re.Pattern | None) -> FileResult:
    """Run the decoder on an invalid file: a non-zero exit, no output, and (with
    ``error_pattern``) the manifest's code on stderr."""
    result = FileResult("invalid", entry["name"], entry["file"], entry["sections"], False,
                        expected_error=f"{entry['error_code']} {entry['error_name']}")
    with _decoder_run(decoder, folder / entry["file"], output_format, timeout_s) as run:
        status, stderr, output, result.seconds = run
        if status is None:
            result.reason = f"no result within {timeout_s:g} s (hang?)"
        elif status == 0:
            result.reason = f"accepted a file with {result.expected_error}"
        elif output.exists():
            result.reason = "rejected the file but left an output file behind"
        elif error_pattern is not None:
            found = error_pattern.search(stderr)
            result.reported_error = found.group(1) if found else ""
            if not found:
                result.reason = f"no error code found in: {_last_line(stderr)!r}"
            elif not _code_matches(result.reported_error, entry["error_code"]):
                result.reason = f"reported {result.reported_error}, expected {result.expected_error}"
    result.passed = not result.reason
    return result


FEATURES_OF_VERSION = {"1.0": 0, "1.1": FEATURE_TRELLIS}
"""The required-feature bits a decoder of each format version knows (spec §3.3)."""


def _needs_later_version(path: Path, version: str) -> bool:
    """Whether the file at ``path`` sets a required-feature bit that ``version`` does not
    define: a decoder of that version must refuse it (spec §4.8 step 4)."""
    head = path.read_bytes()[:PREAMBLE_SIZE_BYTES]
    if len(head) < PREAMBLE_SIZE_BYTES or head[:8] != MAGIC or struct.unpack_from("<H", head, 8)[0] != 1:
        return False  # refused before step 4 whatever the version (spec §4.8 steps 1-3)
    return bool(struct.unpack_from("<I", head, 12)[0] & ~FEATURES_OF_VERSION[version])


def _as_refused(entry: dict) -> dict:
    """The manifest entry of a file that a decoder of an earlier version must refuse."""
    code = ErrorCode.UNSUPPORTED_FEATURE
    return {**entry, "error_code": int(code), "error_name": code.slug,
            "sections": sorted(set(entry["sections"]) | {"3.3", "4.8"})}


def run_conformance(decoder, *, output_format: str = "npz", timeout_s: float = 60.0,
                    jobs: int | None = None, error_pattern: str | None = None,
                    select: str | None = None, format_version: str = "1.1",
                    vectors_manifest: Path = manifest.VECTORS_MANIFEST,
                    invalid_manifest: Path = manifest.INVALID_MANIFEST,
                    progress: Callable[[FileResult], None] | None = None) -> ConformanceReport:
    """Run ``decoder`` over every frozen vector and invalid file and judge each run.

    Parameters
    ----------
    decoder:
        A shell command template with ``{input}`` and ``{output}`` placeholders, or a callable
        ``(input_path, output_path) -> (exit status, standard error)``.
    output_format:
        ``"npz"`` or ``"safetensors"``: the suffix of ``{output}``.
    timeout_s:
        Seconds one run may take before it counts as a hang.
    jobs:
        Runs at once (default: the number of CPUs).
    error_pattern:
        Optional regular expression whose first group captures the error code or name the
        decoder writes to standard error; with it, invalid files must report the manifest's code.
    select:
        Optional regular expression: only files whose name matches are run.
    format_version:
        The format version the decoder implements: ``"1.1"`` (every file judged by its
        manifest), or ``"1.0"``: a file that needs a feature of 1.1 (the trellis grid) must then
        be refused with ``unsupported_feature``, valid vectors and invalid files alike.

    Returns
    -------
    ConformanceReport
    """
    if output_format not in ("npz", "safetensors"):
        raise ValueError(f"output_format must be npz or safetensors, not {output_format!r}")
    if isinstance(decoder, str) and ("{input}" not in decoder or "{output}" not in decoder):
        raise ValueError("the decoder command needs the placeholders {input} and {output}, e.g. "
                         "'./mydecoder {input} {output}'")
    if format_version not in FEATURES_OF_VERSION:
        raise ValueError(f"format_version must be one of {', '.join(FEATURES_OF_VERSION)}, not "
                         f"{format_version!r}")
    pattern = re.compile(error_pattern) if error_pattern else None
    chosen = re.compile(select) if select else None
    vectors, invalid = manifest.load(vectors_manifest), manifest.load(invalid_manifest)
    tasks = []
    for entry in vectors["vectors"]:
        if chosen is not None and not chosen.search(entry["name"]):
            continue
        if _needs_later_version(vectors_manifest.parent / entry["file"], format_version):
            tasks.append(lambda e=_as_refused(entry): judge_invalid(
                decoder, e, vectors_manifest.parent, output_format, timeout_s, pattern))
        else:
            tasks.append(lambda e=entry: judge_valid(decoder, e, vectors_manifest.parent,
                                                     output_format, timeout_s))
    for entry in invalid["files"]:
        if chosen is not None and not chosen.search(entry["name"]):
            continue
        if _needs_later_version(invalid_manifest.parent / entry["file"], format_version):
            entry = _as_refused(entry)
        elif format_version in entry.get("earlier_versions", {}):
            entry = {**entry, **entry["earlier_versions"][format_version]}
        tasks.append(lambda e=entry: judge_invalid(decoder, e, invalid_manifest.parent,
                                                   output_format, timeout_s, pattern))
    report = ConformanceReport(decoder if isinstance(decoder, str) else
                               getattr(decoder, "__name__", repr(decoder)))
    with ThreadPoolExecutor(max_workers=jobs or os.cpu_count() or 1) as pool:
        for result in pool.map(lambda task: task(), tasks):
            report.results.append(result)
            if progress is not None:
                progress(result)
    return report
