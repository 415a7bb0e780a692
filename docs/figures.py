"""The measured figures of the pages, rendered from the benchmarks' JSON in ``bench/results/``.

    python docs/figures.py            # check: exit 1, naming page, key and both values, on a drift
    python docs/figures.py --write    # render every figure into the pages

``make docs`` runs the check before Sphinx; ``tests/test_docs_figures.py`` runs it too. A page
holds figures in two forms, both invisible in the rendered page and on GitHub:

* **a block** between ``<!-- figures: KEY -->`` and ``<!-- /figures -->``: a table or a few
  sentences written by the function :data:`BLOCKS` ``[KEY]`` from one JSON file, ending with the
  commit and date that JSON was measured at;
* **an inline figure** ``<!--f:FILE:EXPRESSION:FORMAT-->1.35<!--/f-->``: FILE is a JSON file in
  ``bench/results/``, EXPRESSION a path into it (``runs[config=ray:2].quantize_seconds``: keys
  after dots, ``[3]`` an index, ``[-1]`` the last, ``["odd key"]`` a key, ``[field=value]`` the
  first element of a list whose ``field`` is ``value``; ``[*]`` every element and
  ``[?field=value]`` every matching one, ``[?field~=REGEX]`` every one whose field the regular
  expression finds, giving a list; arithmetic on a list of numbers applies to each) or arithmetic (``+ - * /``, parentheses,
  numbers, ``min max sum len median`` of a list) over such paths, FORMAT a Python format specification
  (``.2f``, ``,d``, ``+.2%``; empty for text).

The commit and date of a JSON are its own ``commit`` (or ``code``: the commit of the package it
measured) and ``date`` (or ``date_utc``) where the benchmark recorded them (``bench/run_info.py``); else the commit that last changed the file in
git ("recorded in commit X"), or ``recorded_in_commit`` where a file was restored from git
history.
"""

from __future__ import annotations

import argparse
import ast
import functools
import json
import re
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent

INLINE = re.compile(r"<!--f:(?P<spec>[^>]*?)-->(?P<text>.*?)<!--/f-->")
BLOCK = re.compile(r"(?P<open><!-- figures: (?P<key>[\w.-]+) -->\n)(?P<body>.*?)"
                   r"(?P<close><!-- /figures -->)", re.DOTALL)
TOKEN = re.compile(r"(?P<number>\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)"
                   r'|(?P<path>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*|\["[^"]*"\]|\[[^\]]*\])*)')


class FiguresError(Exception):
    """A marker that cannot be rendered: unknown file or key, a path that is not in the JSON, a
    bad expression or format."""


def page_paths(root: Path) -> list[Path]:
    """Every page that may hold figures: ``README.md``, ``docs/*.md``, ``docs/guides/*.md``."""
    paths = [root / "README.md", *sorted((root / "docs").glob("*.md")),
             *sorted((root / "docs" / "guides").glob("*.md"))]
    return [path for path in paths if path.exists()]


class Results:
    """The JSON files of one ``bench/results`` folder, read once each."""

    def __init__(self, folder: Path, git_root: Path = ROOT):
        self.folder = folder
        self.git_root = git_root  # where `git log` finds bench/results/NAME's history

    @functools.lru_cache(maxsize=None)
    def load(self, name: str):
        path = self.folder / name
        if not path.exists():
            raise FiguresError(f"no file bench/results/{name}")
        with open(path, encoding="utf-8") as stream:
            return json.load(stream)

    @functools.lru_cache(maxsize=None)
    def _git_commit(self, name: str) -> tuple[str, str] | None:
        try:
            line = subprocess.run(
                ["git", "-C", str(self.git_root), "log", "-1", "--format=%h %cs",
                 "--", f"bench/results/{name}"],
                capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None
        return tuple(line.split(" ", 1)) if line else None

    def provenance(self, name: str) -> str:
        """One sentence: the commit and date ``name`` was measured at, and where it lies."""
        data = self.load(name)
        link = f"[bench/results/{name}](../bench/results/{name})"
        date = data.get("date") or data.get("date_utc")
        if date and not date.endswith("UTC") and " " in date:
            date += " UTC"
        # "code": the commit of the package a benchmark measured, where it imports another
        # checkout than its own (bench/header_parsing.py)
        commit = data.get("code") or data.get("commit")
        if commit:
            when = f" on {date}" if date else ""
            return f"Measured at commit `{commit}`{when}; raw: {link}."
        recorded = data.get("recorded_in_commit")
        if recorded:
            return f"Recorded in commit `{recorded}` on {date}; raw: {link}."
        found = self._git_commit(name)
        if found is None:
            return f"Measured on {date or 'an unrecorded date'}, not yet committed; raw: {link}."
        commit, committed = found
        if date:
            return f"Measured on {date}, recorded in commit `{commit}`; raw: {link}."
        return f"Recorded in commit `{commit}` on {committed}; raw: {link}."


class _Each(list):
    """The values a ``[*]`` or ``[?field=value]`` step selected: later steps apply to each."""


def _step(value, name: str, bracket: str):
    if isinstance(value, _Each) and "=" in bracket and all(isinstance(v, dict) for v in value):
        # a selector after a selection of records selects among them: [?kind=a][?entries=2]
        value = list(value)
    elif isinstance(value, _Each):
        selected = _Each()
        for item in value:
            result = _step(item, name, bracket)
            selected.extend(result if isinstance(result, _Each) else [result])
        return selected
    if name:
        return value[name]
    if re.fullmatch(r"-?\d+", bracket):
        return value[int(bracket)]
    if bracket.startswith('"'):
        return value[bracket.strip('"')]
    if bracket == "*":
        return _Each(value)
    field, wanted = bracket.lstrip("?").split("=", 1)
    if field.endswith("~"):  # [?field~=REGEX]: a regular expression search
        matching = [item for item in value if re.search(wanted, str(item.get(field[:-1])))]
    else:
        matching = [item for item in value if str(item.get(field)) == wanted]
    if bracket.startswith("?"):
        return _Each(matching)
    return matching[0]


def resolve(data, path: str):
    """The value at ``path`` (see the module docstring) in ``data``; a list after ``[*]`` or
    ``[?field=value]``."""
    value = data
    # a quoted key may hold brackets: ["cerwu [trellis]"]
    for name, quoted, bracket in re.findall(r'\.?([A-Za-z_]\w*)|\[("[^"]*")\]|\[([^\]]*)\]',
                                            path):
        bracket = quoted or bracket
        try:
            value = _step(value, name, bracket)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError):
            raise FiguresError(f"{path!r}: no {name or '[' + bracket + ']'} there") from None
    if isinstance(value, _Each):
        # numbers become an array, so that arithmetic applies to each (bytes * 8 / weights)
        numeric = all(isinstance(item, (int, float)) and not isinstance(item, bool)
                      for item in value)
        return numpy.asarray(value, dtype=float) if numeric and value else list(value)
    return value


FUNCTIONS = {"min": min, "max": max, "sum": sum, "len": len, "median": statistics.median}
"""The functions an expression may call (on the list a ``[*]`` path gives)."""


def evaluate(data, expression: str):
    """The value of ``expression``: a path, or arithmetic (``+ - * /``) and :data:`FUNCTIONS`
    over paths and numbers."""
    values = {}

    def placeholder(match: re.Match) -> str:
        if match.group("number"):
            return match.group("number")
        if match.group("path") in FUNCTIONS:
            return match.group("path")
        values[f"_v{len(values)}"] = resolve(data, match.group("path"))
        return f"_v{len(values) - 1}"

    # paths may contain '=' and spaces inside brackets; replace them before Python parses the rest
    code = TOKEN.sub(placeholder, expression.strip())
    try:
        tree = ast.parse(code, mode="eval")
    except SyntaxError:
        raise FiguresError(f"{expression!r} is not an expression") from None
    allowed = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Add, ast.Sub, ast.Mult, ast.Div,
               ast.USub, ast.Constant, ast.Name, ast.Load, ast.Call)
    for node in ast.walk(tree):
        if not isinstance(node, allowed) or (
                isinstance(node, ast.Call) and not (isinstance(node.func, ast.Name)
                                                    and node.func.id in FUNCTIONS)):
            raise FiguresError(f"{expression!r}: only + - * /, {', '.join(FUNCTIONS)} over "
                               "paths and numbers")
    try:
        value = eval(compile(tree, "<figures>", "eval"), {"__builtins__": {}, **FUNCTIONS}, values)
    except (TypeError, ValueError, ZeroDivisionError) as error:
        raise FiguresError(f"{expression!r}: {error}") from None
    if isinstance(value, numpy.ndarray):
        raise FiguresError(f"{expression!r} is a list; take its min, max, sum, len or median")
    return value.item() if isinstance(value, numpy.generic) else value


def format_value(value, spec: str) -> str:
    """``value`` in the Python format ``spec`` (integral floats allowed for ``d``)."""
    if spec.endswith("d") and isinstance(value, float) and value.is_integer():
        value = int(value)
    try:
        return format(value, spec)
    except (TypeError, ValueError) as error:
        raise FiguresError(f"cannot format {value!r} as {spec!r}: {error}") from None


def inline_value(results: Results, spec: str) -> str:
    """The text of an inline marker ``FILE:EXPRESSION:FORMAT``."""
    try:
        name, rest = spec.split(":", 1)
        expression, fmt = rest.rsplit(":", 1)  # a path may hold ':' (config=ray:2), a format not
    except ValueError:
        raise FiguresError(f"{spec!r}: want FILE:EXPRESSION:FORMAT") from None
    try:
        return format_value(evaluate(results.load(name), expression), fmt)
    except FiguresError as error:
        raise FiguresError(f"<!--f:{spec}-->: {error}") from None


# -- blocks ---------------------------------------------------------------------------------------

BLOCKS: dict[str, Callable[[Results], str]] = {}
"""KEY -> the function that writes the block ``<!-- figures: KEY -->`` (Markdown, no final
newline)."""


def block(key: str):
    """Register the decorated function as the writer of the block ``key``."""
    def register(function):
        BLOCKS[key] = function
        return function
    return register


def table(header: list[str], align: str, rows: list[list]) -> str:
    """A Markdown table; ``align`` holds one letter per column (``l`` left, ``r`` right)."""
    rule = ["---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


# -- decode-speed.md ------------------------------------------------------------------------------

DECODE_SPEED_LABELS = {
    "nncodec-rd (1 thread, new array)": "nncodec-rd, 1 thread, new array",
    "nncodec-rd (1 thread, reused buffer)": "nncodec-rd, 1 thread, reused buffer",
    "nncodec-rd (2 threads, new array)": "nncodec-rd, 2 threads, new array",
    "nncodec-rd (2 threads, reused buffer)": "nncodec-rd, 2 threads, reused buffer",
    "constriction AnsCoder": "constriction `AnsCoder` (from Python)",
    "zstd -19 (int8 indices)": "zstd -19",
    "NNCodec 2.1.3 (DeepCABAC)": "NNCodec 2.1.3 (DeepCABAC, `use_dq=False`)",
}
DECODE_SPEED_OUTPUT = {"constriction AnsCoder": "int32 symbols",
                       "zstd -19 (int8 indices)": "int8 indices"}


def decode_speed_table(results: Results, name: str, first_column: str) -> str:
    data = results.load(name)
    entropy = data["entropy_bits_per_weight"]
    rows = [[DECODE_SPEED_LABELS[row["coder"]], f"{row['weights_per_second'] / 1e6:.1f}",
             f"{row['bits_per_weight']:.3f}", f"{row['bits_per_weight'] / entropy - 1:+.2%}",
             DECODE_SPEED_OUTPUT.get(row["coder"], "float32 weights")]
            for row in data["results"]]
    machine = data["machine"]
    return (table([first_column, "M weights/s", "bits/weight", "vs entropy", "what is decoded"],
                  "lrrrl", rows)
            + f"\n\n{data['weights']:,} weights, best of {data['repeats']} runs, on "
              f"{machine['cpu']} ({machine['cores']} cores, {machine['machine']}), Python "
              f"{machine['python']}, NumPy {machine['numpy']}, Numba {machine['numba']}. "
            + results.provenance(name))


@block("decode_speed.table")
def _decode_speed(results: Results) -> str:
    return decode_speed_table(results, "decode_speed.json", "coder")


@block("decode_speed.general_kernel")
def _decode_speed_general(results: Results) -> str:
    return decode_speed_table(results, "decode_speed_general_kernel.json",
                              "coder (general kernel)")


@block("decode_speed.2026-11-23")
def _decode_speed_1123(results: Results) -> str:
    return decode_speed_table(results, "decode_speed_2026-11-23.json", "coder (2026-11-23)")


# -- any-size.md ----------------------------------------------------------------------------------

def bench_module(name: str):
    """``bench/NAME.py`` of this repository, imported (for its table functions)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    if spec.name in sys.modules:
        return sys.modules[spec.name]
    module = importlib.util.module_from_spec(spec)
    # registered before it runs, as an import does (its dataclasses look their module up); the
    # repository root too, for the scripts' `import bench.x`
    sys.modules[spec.name] = module
    sys.path[:0] = [str(ROOT / "bench"), str(ROOT)]  # as when run as a script
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[spec.name]
        raise
    finally:
        sys.path.remove(str(ROOT / "bench"))
        sys.path.remove(str(ROOT))
    return module


@block("any_size.table")
def _any_size(results: Results) -> str:
    data = results.load("any_size.json")
    return (bench_module("any_size").markdown_table(data) + "\n\n"
            + results.provenance("any_size.json"))


# -- calibration-speed.md -------------------------------------------------------------------------

CALIBRATION_MODELS = {"digits": "digits CNN", "crnn": "EasyOCR CRNN", "craft": "EasyOCR CRAFT",
                      "mobilenet_v2_shape": "MobileNetV2 shape (random init.)",
                      "minilm": "all-MiniLM-L6-v2"}


@block("calibration_speed.seconds")
def _calibration_seconds(results: Results) -> str:
    data = results.load("calibration_speed.json")
    rows = []
    for name, model in data["models"].items():
        for label in ("earlier", "now"):
            seconds = model["calibrations"][label]["seconds"]
            rows.append([CALIBRATION_MODELS.get(name, name) if label == "earlier" else "",
                         label, model["layers"] if label == "earlier" else "",
                         f"{seconds['hessians']:.1f}", f"{seconds['sensitivities']:.1f}",
                         f"{seconds['nonweights']:.1f}", f"{seconds['total']:.1f}",
                         f"**{model['speedup']:.1f}×**" if label == "now" else ""])
    return (table(["model", "calibration", "layers", "Hessians (s)", "sensitivities (s)",
                   "non-weight grids (s)", "total (s)", "speed-up"], "llrrrrrr", rows)
            + "\n\n" + results.provenance("calibration_speed.json"))


@block("calibration_speed.agreement")
def _calibration_agreement(results: Results) -> str:
    data = results.load("calibration_speed.json")
    rows = []
    for name, model in data["models"].items():
        seed = {label: model.get(f"sensitivity_log10_ratio_seed_1_{label}")
                for label in ("earlier", "now")}
        rows.append([CALIBRATION_MODELS.get(name, name),
                     f"{model['hessian_max_relative_difference']:.1e}",
                     f"{model['sensitivity_log10_ratio']['mean_abs']:.3f}",
                     *(f"{seed[label]['mean_abs']:.3f}" if seed[label] else "–"
                       for label in ("earlier", "now"))])
    return table(["model", "Hessians: largest difference (relative to the largest entry)",
                  "sensitivities, earlier vs now: mean abs. log10 ratio",
                  "earlier, seed 0 vs seed 1", "now, seed 0 vs seed 1"], "lrrrr", rows)


@block("calibration_speed.files")
def _calibration_files(results: Results, name: str = "calibration_speed.json") -> str:
    data = results.load(name)
    rows = []
    for name, model in data["models"].items():
        files = model.get("files")
        if not files:
            continue
        for number, label in enumerate(("earlier", "earlier, sensitivities seed 1", "now",
                                        "now, sensitivities seed 1")):
            found = files[label]
            bits = found["bits_at_target"]
            points = "; ".join(f"λ × {point['lam_factor']:g}: {point['bits_per_weight']:.3f}, "
                               f"{point['fidelity']:.4f}" for point in
                               sorted(found["points"], key=lambda point: point["lam_factor"]))
            rows.append([f"{CALIBRATION_MODELS.get(name, name)} (target "
                         f"{files['fidelity_target']:.4g})" if number == 0 else "", label,
                         "–" if bits is None else f"**{bits:.3f}**", points])
    return table(["model", "calibration", "bits per coded weight at the target",
                  "files measured (bits per coded weight, fidelity)"], "llrl", rows)


@block("calibration_speed.files_minilm")
def _calibration_files_minilm(results: Results) -> str:
    name = "calibration_speed_minilm.json"
    return _calibration_files(results, name) + "\n\n" + results.provenance(name)


# -- ray.md ---------------------------------------------------------------------------------------

RAY_CONFIGS = {"local": "in this process", "ray:1": "Ray, 1 worker", "ray:2": "Ray, 2 workers",
               "ray:4": "Ray, 4 workers (2 cores)"}


@block("ray.table")
def _ray(results: Results) -> str:
    data = results.load("ray_encode.json")
    rows = [[RAY_CONFIGS[run["config"]], f"{run['wall_seconds']:.1f} s",
             f"{run['ray_start_seconds']:.1f} s" if run["ray_start_seconds"] else "–",
             f"{run['hessian_seconds']:.1f} s", f"{run['quantize_seconds']:.1f} s",
             f"{run['layer_task_seconds']:.1f} s", f"{run['peak_rss_bytes'] / 1e9:.2f} GB",
             f"{run['size_bytes']:,} B"] for run in data["runs"]]
    return (table(["configuration", "wall time", "Ray start", "Hessians", "quantization phase",
                   "layers' own time, summed", "driver peak RSS", "file"], "lrrrrrrr", rows)
            + "\n\n" + results.provenance("ray_encode.json"))


@block("ray.down_proj_share")
def _ray_down_proj(results: Results) -> str:
    run = next(run for run in results.load("ray_encode.json")["runs"] if run["config"] == "ray:1")
    blocks: dict[str, dict[str, float]] = {}
    for layer in run["layers"]:
        parts = layer["name"].split(".")
        if len(parts) > 3 and parts[1] == "layers":
            blocks.setdefault(parts[2], {})[parts[-2]] = layer["seconds"]
    shares = [layers["down_proj"] / sum(layers.values()) for layers in blocks.values()]
    return (f"  that the other worker cannot share: `down_proj` took {min(shares) * 100:.0f} % to "
            f"{max(shares) * 100:.0f} % of a block's\n  time with one worker, "
            f"{sum(shares) / len(shares) * 100:.0f} % on average.")


@block("ray.estimate_70b")
def _ray_70b(results: Results) -> str:
    estimate = results.load("ray_encode.json")["estimate_70b"]
    def hours(value: float) -> str:
        return f"{value:.0f} h" if value >= 100 else f"{value:.1f} h"

    rows = [[workers, hours(estimate[f"workers_{workers}"]["sequential_hours"]),
             hours(estimate[f"workers_{workers}"]["whole_model_hours"])] for workers in (1, 16, 64)]
    return table(["workers", "block-sequential (`encode MODEL_DIR`)",
                  "all layers at once (whole-model encoder)"], "rrr", rows)


# -- fuzzing.md -----------------------------------------------------------------------------------

@block("fuzz.long")
def _fuzz_long(results: Results) -> str:
    data = results.load("fuzz_long.json")
    targets = data["targets"]
    mib = 1 << 20
    rows = [[f"`{t['target']}`", f"{t['seconds']:.0f} s", f"{t['executions']:,}",
             f"{t['executions_per_second']:.0f}",
             f"{t['corpus_files']} files, {t['corpus_bytes'] / 1000:.0f} KB",
             f"{t['max_seconds_one_input']:.2f} s", f"{t['max_peak_bytes'] / mib:.1f} MiB",
             len(t["crashes"])] for t in targets]
    rows.append(["all", f"{len(targets)} x {max(t['seconds'] for t in targets):.0f} s",
                 f"**{data['executions']:,}**",
                 f"{sum(t['executions_per_second'] for t in targets):.0f}", "",
                 f"{max(t['max_seconds_one_input'] for t in targets):.2f} s",
                 f"{max(t['max_peak_bytes'] for t in targets) / mib:.1f} MiB",
                 f"**{sum(len(t['crashes']) for t in targets)}**"])
    return (table(["target", "fuzzing time", "executions", "executions/s", "corpus at the end",
                   "slowest input", "largest memory growth, one input", "crashes"],
                  "lrrrrrrr", rows) + "\n\n" + results.provenance("fuzz_long.json"))


@block("fuzz.outcomes")
def _fuzz_outcomes(results: Results) -> str:
    targets = {t["target"]: t["outcomes"] for t in results.load("fuzz_long.json")["targets"]}
    parser, reader, literal = (targets[name] for name in
                               ("fuzz_container", "fuzz_reader", "fuzz_spec_literal"))
    parser_codes = sum(key.startswith("error:") for key in parser)
    faults = sum(key.startswith("decode:") for key in reader)
    literal_codes = sum(key.startswith("error:") for key in literal)
    return (f"- **Outcomes**: the parser accepted {parser['ok']:,} inputs and rejected the rest "
            f"with {parser_codes} different codes\n  (`duplicate_key` included, which the "
            f"2026-12-01 runs never reached); the reader decoded {reader['ok']:,} files "
            f"completely, stopped {reader['output_bound']:,} at its output or transform\n  bound "
            f"and met {faults} different payload faults; the spec-literal decoder reported "
            f"{literal_codes} different codes.")


# -- cold-start.md --------------------------------------------------------------------------------

COLD_START_FILES = {"tiny": "(a) tiny", "minilm": "(b) MiniLM", "every_kind": "(c) every kind"}
COLD_START_TARGETS = {"tiny": ("≤ 3 s", "≤ 1 s"), "minilm": ("≤ 10 s", "≤ 1 s"),
                      "every_kind": ("≤ 20 s", "–")}
"""The targets of issue 18: first ``load_file`` cold and warm, on an idle machine."""


def cold_start_rows(results: Results):
    before = {row["file"]: row for row in results.load("cold_start_before.json")["rows"]}
    for row in results.load("cold_start.json")["rows"]:
        yield row["file"], before[row["file"]], row


def cold_start_sources(results: Results) -> str:
    return (f"Before: {results.provenance('cold_start_before.json')} "
            f"After: {results.provenance('cold_start.json')}")


@block("cold_start.first_load")
def _cold_start_first_load(results: Results) -> str:
    rows = [[COLD_START_FILES[name], f"{after['size_bytes']:,} B, {after['tensors']}",
             f"{before['cold']['first_load_s']:.2f} s", f"{after['cold']['first_load_s']:.3f} s",
             COLD_START_TARGETS[name][0], f"{before['warm']['first_load_s']:.2f} s",
             f"{after['warm']['first_load_s']:.3f} s", COLD_START_TARGETS[name][1]]
            for name, before, after in cold_start_rows(results)]
    return (table(["file", "size, tensors", "cold: before", "cold: after", "target",
                   "warm: before", "warm: after", "target"], "lrrrrrrr", rows)
            + "\n\n" + cold_start_sources(results))


@block("cold_start.import")
def _cold_start_import(results: Results) -> str:
    def pair(before, after, phase, key):
        return f"{before[phase][key]:.2f} / {after[phase][key]:.2f} s"

    rows = [[COLD_START_FILES[name], pair(before, after, "cold", "import_s"),
             pair(before, after, "warm", "import_s"), pair(before, after, "cold", "process_wall_s"),
             pair(before, after, "warm", "process_wall_s")]
            for name, before, after in cold_start_rows(results)]
    return table(["file", "import, cold: before / after", "import, warm: before / after",
                  "cold process: before / after", "warm process: before / after"], "lrrrr", rows)


@block("cold_start.compiled")
def _cold_start_compiled(results: Results) -> str:
    def kernels(row):
        return f"{row['cold']['top_level_signatures']} ({row['cold']['all_signatures']} with callees)"

    rows = [[COLD_START_FILES[name], kernels(before), kernels(after),
             f"{before['cold']['compile_s']:.1f} s", f"{after['cold']['compile_s']:.1f} s"]
            for name, before, after in cold_start_rows(results)]
    return table(["file", "kernels compiled: before", "after", "compile time: before", "after"],
                 "lrrrr", rows)


@block("cold_start.per_kernel")
def _cold_start_per_kernel(results: Results) -> str:
    lines = []
    for name, before, after in cold_start_rows(results):
        for label, row in (("before", before), ("after", after)):
            compiled = ", ".join(f"`{kernel['function']}` {kernel['seconds']:.2f} s"
                                 for kernel in row["cold"]["top_level"])
            lines.append(f"* {COLD_START_FILES[name]}, {label}: {compiled or 'nothing'}")
    return "\n".join(lines)


@block("cold_start.decode_before_after")
def _decode_before_after(results: Results) -> str:
    data = results.load("decode_before_after.json")
    rows = [[row["case"], f"{row['before_m_per_s']:.1f}", f"{row['after_m_per_s']:.1f}",
             f"{row['ratio']:.3f}"] for row in data["rows"]]
    return (table(["case", "before (M weights/s)", "after", "after / before"], "lrrr", rows)
            + "\n\n" + results.provenance("decode_before_after.json"))


# -- lazy-inference.md ----------------------------------------------------------------------------

def megabytes(count: float) -> str:
    """As bench/lazy_inference.py writes MB: two decimals, four below 1 MB."""
    return bench_module("lazy_inference").megabytes(count)


@block("lazy.latency")
def _lazy_latency(results: Results) -> str:
    data = results.load("lazy_inference.json")
    rows = []
    for model in data["models"]:
        entry = data["results"][model]
        for variant, timing in entry["latency"]["variants"].items():
            memory = entry["memory"][variant]
            label = variant
            if variant == "lazy, cache on":
                cached = memory["cached_bytes"] / 1e6
                label += f" ({cached:.1f} MB)" if cached >= 1 else f" ({cached:.2f} MB)"
            ratio = f"{timing['vs_eager']:.2f}x"
            if model == "minilm" and variant == "lazy, cache off":
                ratio = f"**{ratio}**"  # the latency target's figure
            if "decode_ms_median" not in timing:
                decode, share = "-", "-"
            elif timing["decode_ms_median"] == 0:
                decode, share = "0", "0 %"
            else:
                decode = f"{timing['decode_ms_median']:.2f}"
                share = f"{100 * timing['decode_share_median']:.1f} %"
            rows.append([entry["name"], label,
                         f"{timing['forward_ms_median']:.2f} ({timing['forward_ms_min']:.2f})",
                         ratio, decode, share, megabytes(memory["loaded_bytes"]),
                         megabytes(memory["peak_during_forward_bytes"])])
    return (table(["model", "variant", "forward ms, median (min)", "vs eager", "decode ms",
                   "decode share", "loaded MB", "peak in forward MB"], "llrrrrrr", rows)
            + "\n\n" + results.provenance("lazy_inference.json"))


@block("lazy.memory_bound")
def _lazy_memory_bound(results: Results) -> str:
    data = results.load("lazy_inference.json")
    rows = []
    for model in data["models"]:
        check = data["results"][model]["memory_check"]
        peaks = check["lazy_model_peak_bytes_per_process"]
        under = (1 - check["lazy_model_peak_bytes"] / check["bound_bytes"]) * 100
        met = f"yes ({under:.0f} % under" if check["met"] else f"no ({-under:.0f} % over"
        over = [peak for peak in peaks if peak > check["bound_bytes"]]
        if over:
            count = "one process" if len(over) == 1 else f"{len(over)} processes, up to"
            met += f"; {count} {(max(over) / check['bound_bytes'] - 1) * 100:.0f} % over"
        rows.append([data["results"][model]["name"], megabytes(check["file_bytes"]),
                     megabytes(check["largest_decoded_bytes"]), megabytes(check["bound_bytes"]),
                     f"**{megabytes(check['lazy_model_peak_bytes'])}**",
                     ", ".join(map(megabytes, peaks)),
                     f"{check['processes_within_bound']} of {len(peaks)}", met + ")"])
    return table(["model", "file MB", "largest layer MB", "bound MB",
                  "lazy model peak MB (median)", "peak of each process MB", "within the bound",
                  "met"], "lrrrrlrl", rows)


# -- grid-choice.md ---------------------------------------------------------------------------------

GRID_COLUMNS = ("rtn", "rtn+grid", "optq", "optq+grid", "cerwu", "cerwu+grid")


def grid_choice_rows(results: Results, first: bool = False):
    """(label, fidelity target text, bits at the target per method) of the grid-choice table:
    the digits CNN's three seeds, then MiniLM with and without the 2-bit limit."""
    suffix = "_first" if first else ""
    digits = results.load(f"digits_grid_choice{suffix}.json")
    yield ("digits CNN, seed 0", f"accuracy ≥ {digits['fidelity_target']:.2f} %",
           digits["comparison"]["bits_per_weight_at_target"])
    for seed, run in results.load(f"digits_grid_choice_seeds{suffix}.json")["seeds"].items():
        yield (f"digits CNN, seed {seed}", f"accuracy ≥ {run['fidelity_target']:.2f} %",
               run["bits_per_weight_at_target"])
    if first:
        return
    for name, label in (("minilm_grid_choice.json", "all-MiniLM-L6-v2"),
                        ("minilm_grid_choice_every_layer.json",
                         "all-MiniLM-L6-v2, searched in every layer")):
        data = results.load(name)
        yield (label, f"cosine ≥ {data['fidelity_target']:.2f}",
               data["comparison"]["bits_per_weight_at_target"])


@block("grid_choice.table")
def _grid_choice(results: Results) -> str:
    rows = []
    for label, target, bits in grid_choice_rows(results):
        best = min(GRID_COLUMNS, key=lambda method: bits[method])
        # bold: a per-layer grid that beats every other column of the row
        cells = [f"**{bits[m]:.3f}**" if m == best and m.endswith("+grid")
                 and bits[m] < bits[m[:-5]] else f"{bits[m]:.3f}" for m in GRID_COLUMNS]
        rows.append([label, target, *cells])
    names = ["digits_grid_choice.json", "digits_grid_choice_seeds.json",
             "minilm_grid_choice.json", "minilm_grid_choice_every_layer.json"]
    return (table(["model", "target", *GRID_COLUMNS], "llrrrrrr", rows) + "\n\n"
            + " ".join(results.provenance(name) for name in names))


@block("grid_choice.rerun")
def _grid_choice_rerun(results: Results) -> str:
    changes = [1 - now[m] / before[m]
               for (_, _, now), (_, _, before) in zip(grid_choice_rows(results),
                                                      grid_choice_rows(results, first=True))
               for m in GRID_COLUMNS]
    first = results.load("digits_grid_choice_first.json")["comparison"]["bits_per_weight_at_target"]
    now = results.load("digits_grid_choice.json")["comparison"]["bits_per_weight_at_target"]
    return (f"every digits figure fell by {min(changes) * 100:.1f} % to {max(changes) * 100:.1f} % "
            f"against the first run ({first['cerwu']:.3f} → {now['cerwu']:.3f} for `cerwu`,\n"
            f"{first['cerwu+grid']:.3f} → {now['cerwu+grid']:.3f} for `cerwu+grid` on seed 0), "
            "and the comparison between the columns is unchanged.\nThe first run (digits): "
            + " ".join(results.provenance(name) for name in
                       ("digits_grid_choice_first.json", "digits_grid_choice_seeds_first.json")))


# -- rate-fidelity.md -------------------------------------------------------------------------------

RATE_LABELS = {"rtn": "rtn (calibrated steps)", "optq": "optq", "optq-rd": "optq-rd",
               "cerwu": "cerwu", "NNCodec": "NNCodec 2.1.3"}


def rate_fidelity_table(results: Results, name: str, target: str) -> str:
    """Bits per coded weight at the fidelity target and the ratio to NNCodec, per coder; the
    smallest of ours in bold."""
    comparison = results.load(name)["comparison"]
    bits, ratio = comparison["bits_per_weight_at_target"], comparison["ratio_to_nncodec"]
    best = min((method for method in RATE_LABELS if method != "NNCodec"), key=bits.get)
    rows = []
    for method, label in RATE_LABELS.items():
        cells = [label, f"{bits[method]:.3f}", f"{ratio[method]:.3f}"]
        rows.append([f"**{cell}**" for cell in cells] if method == best else cells)
    return (table(["coder", f"bits per coded weight at {target}", "vs NNCodec"], "lrr", rows)
            + "\n\n" + results.provenance(name))


@block("rate_fidelity.minilm")
def _rate_fidelity_minilm(results: Results) -> str:
    return rate_fidelity_table(results, "minilm_rate_fidelity.json", "cosine 0.99")


@block("rate_fidelity.digits")
def _rate_fidelity_digits(results: Results) -> str:
    target = results.load("digits_rate_fidelity.json")["fidelity_target"]
    return rate_fidelity_table(results, "digits_rate_fidelity.json",
                               f"accuracy ≥ {target:.2f}%")


@block("rate_fidelity.minilm_timings")
def _rate_fidelity_timings(results: Results) -> str:
    curves = results.load("minilm_rate_fidelity.json")["ours"]["curves"]
    rows = []
    for method in ("rtn", "optq", "optq-rd", "cerwu"):
        seconds = [point["encode_seconds"] for point in curves[method][1:]]  # after the first λ
        rows.append([f"`{method}`", f"{min(seconds):.1f}–{max(seconds):.1f}"])
    return ("  " + table(["method", "seconds"], "ll", rows).replace("\n", "\n  ")
            + f"\n\n  The first λ of each method takes longer (compilation, and for `cerwu` the "
              f"eigendecompositions):\n  " + ", ".join(
                  f"`{method}` {curves[method][0]['encode_seconds']:.1f} s"
                  for method in ("rtn", "optq", "optq-rd", "cerwu")) + ".")


@block("rate_fidelity.sequential")
def _rate_fidelity_sequential(results: Results) -> str:
    data = results.load("minilm_sequential.json")
    bits = data["comparison"]["bits_per_weight_at_target"]
    rows = []
    for curve, label in (("cerwu", "whole model (`compress(...)`, the default for a model in "
                                   "memory)"),
                         ("cerwu+seq", "block by block (`compress(..., sequential=True)`, and "
                                       "every model folder)")):
        seconds = [point["encode_seconds"] for point in data["ours"]["curves"][curve]]
        rows.append([label, f"{bits[curve]:.3f}", f"{min(seconds):.1f}–{max(seconds):.1f}"])
    return (table(["encoder", "bits per coded weight at cosine 0.99", "encode s per λ"], "lrr",
                  rows) + "\n\n" + results.provenance("minilm_sequential.json"))


@block("rate_fidelity.transform")
def _rate_fidelity_transform(results: Results) -> str:
    digits = results.load("digits_rate_fidelity.json")
    minilm = results.load("minilm_rate_fidelity.json")
    rows = []
    for name, data, target in (
            ("DigitsCNN", digits, f"accuracy ≥ {digits['fidelity_target']:.2f}%"),
            ("all-MiniLM-L6-v2", minilm, "cosine ≥ 0.99")):
        bits = data["comparison"]["bits_per_weight_at_target"]
        rows.append([name, target] + [f"{bits[method]:.3f}" for method in
                                      ("cerwu", "optq", "transform", "transform+cerwu")])
    return (table(["model", "target", "`cerwu`", "`optq`", "`transform`", "`transform+cerwu`"],
                  "llrrrr", rows)
            + "\n\nDigitsCNN (one run): " + results.provenance("digits_rate_fidelity.json")
            + " all-MiniLM-L6-v2 (one run, the table above): "
            + results.provenance("minilm_rate_fidelity.json"))


# -- rate-fidelity.md: the four models, EasyOCR's two ----------------------------------------------

RATE_FIDELITY_MODELS = (("digits_rate_fidelity.json", "DigitsCNN"),
                        ("minilm_rate_fidelity.json", "all-MiniLM-L6-v2"),
                        ("craft_rate_fidelity.json", "EasyOCR CRAFT (text detector)"),
                        ("crnn_rate_fidelity.json", "EasyOCR english_g2 (CRNN recogniser)"))
LAYER_KIND_LABELS = {"linear": "Linear", "conv2d": "Conv2d", "conv1d": "Conv1d",
                     "embedding": "Embedding", "transposed_linear": "transformers Conv1D",
                     "recurrent": "LSTM weight matrices"}
LAYER_KIND_CODING = {
    "linear": "its `(out, in)` weight matrix, Hessian of the layer's inputs",
    "conv2d": "its weight as an `(out, in × kh × kw)` matrix, Hessian of the unfolded (im2col) "
              "input patches",
    "conv1d": "its weight as an `(out, in × k)` matrix, Hessian of the unfolded input patches",
    "embedding": "one step per row (token), rows weighted by token frequency",
    "transposed_linear": "its transposed weight, Hessian of the layer's inputs",
    "recurrent": "each `weight_ih_l*` and `weight_hh_l*` as a Linear of the gates, Hessian of "
                 "the inputs it is fed: the layer's input, or the hidden state of the step "
                 "before (after, in reverse)"}


def bits_text(bits) -> str:
    """Bits per weight at a target, or why there is none: no two points of the curve on either
    side of it (never reached, or reached at every point of the sweep)."""
    return "not bracketed" if bits is None else f"{bits:.3f}"


def target_text(data: dict) -> str:
    """The fidelity target of a rate-fidelity JSON, in its own words."""
    return f"{data['fidelity_name']} ≥ {data['fidelity_target']:.4g}"


def sweep_note(data: dict) -> str:
    """Empty for a JSON of the script's whole default sweep; else which sweep it holds."""
    sweep = data.get("sweep", {"full": True})  # JSONs from before the field were whole sweeps
    if sweep["full"]:
        return ""
    qps = ", ".join(str(qp) for qp in sweep["qps"]) or "none"
    return (f" A partial sweep, not the script's whole one: "
            f"{', '.join(sweep['methods'])} at λ × {', '.join(f'{f:g}' for f in sweep['lam_factors'])}"
            f"; NNCodec qp {qps}.")


def raw_weights_text(data: dict) -> str:
    """How many weights our files store raw (not recorded in JSONs from before the field)."""
    raw = data["ours"].get("raw_weights")
    if raw is None:
        return "not recorded"
    return f"{sum(raw.values()):,}"


@block("rate_fidelity.summary")
def _rate_fidelity_summary(results: Results) -> str:
    rows = []
    for name, label in RATE_FIDELITY_MODELS:
        data = results.load(name)
        bits = data["comparison"]["bits_per_weight_at_target"]
        ours, theirs = bits.get("cerwu"), bits.get("NNCodec")
        measured = data["nncodec"].get("measured")
        ratio = f"{ours / theirs:.3f}" if ours is not None and theirs else "–"
        rows.append([label, f"{data['ours']['coded_weights']:,}", target_text(data),
                     bits_text(ours), bits_text(theirs) if measured else "not measured", ratio,
                     raw_weights_text(data)])
    return (table(["model", "coded weights", "target", "`cerwu` bits/weight",
                   "NNCodec bits/weight", "`cerwu` / NNCodec", "weights stored raw by ours"],
                  "lrlrrrr", rows) + "\n\n"
            + " ".join(f"{label}: {results.provenance(name)}{sweep_note(results.load(name))}"
                       for name, label in RATE_FIDELITY_MODELS))


def rate_fidelity_any_table(results: Results, name: str) -> str:
    """Bits per coded weight at the target and the ratio to NNCodec for every curve of the JSON
    (``not reached`` where a curve does not bracket the target); the smallest of ours in bold."""
    data = results.load(name)
    comparison = data["comparison"]
    bits, ratio = comparison["bits_per_weight_at_target"], comparison["ratio_to_nncodec"]
    reached = [method for method in data["ours"]["curves"] if bits.get(method) is not None]
    best = min(reached, key=bits.get) if reached else None
    rows = []
    for method in bits:
        cells = [RATE_LABELS.get(method, method), bits_text(bits[method]),
                 "–" if ratio.get(method) is None else f"{ratio[method]:.3f}"]
        rows.append([f"**{cell}**" for cell in cells] if method == best else cells)
    return (table(["coder", f"bits per coded weight at {target_text(data)}", "vs NNCodec"],
                  "lrr", rows)
            + f"\n\nOriginal model: {data['original_fidelity']:.4f}. "
            + results.provenance(name) + sweep_note(data))


def layers_text(results: Results, name: str) -> str:
    """What the encoder coded (by layer type, from the JSON) and what it stored raw."""
    data = results.load(name)
    ours = data["ours"]
    lines = [f"- **{LAYER_KIND_LABELS.get(kind, kind)}**: {entry['layers']} layers, "
             f"{entry['weights']:,} weights, coded ({LAYER_KIND_CODING.get(kind, 'coded')})."
             for kind, entry in ours["coded_layer_kinds"].items()]
    raw = ours.get("raw_weights") or {}
    if raw:
        lines.append(f"- **Stored raw** (float32, lossless) because no coded layer type holds "
                     f"them: {len(raw)} weight tensors, {sum(raw.values()):,} weights "
                     f"(`{'`, `'.join(raw)}`); they add "
                     f"{32.0 * sum(raw.values()) / ours['coded_weights']:.2f} bits per coded "
                     f"weight to every file of ours. NNCodec codes them like any other matrix.")
    else:
        lines.append("- No weight matrix is stored raw: every one is in a coded layer.")
    lines.append("- Biases, norms and batch-norm statistics: in ours, each role on the grid "
                 "`RMS / 2^b` that keeps its measured output error within budget, where that "
                 "is smaller than raw (the `raw non-weights` lever below shows what it buys); "
                 "at NNCodec's fine `nonweight_qp` in NNCodec's.")
    return "\n".join(lines)


LEVER_COLUMNS = (("cerwu", "`cerwu`, defaults"),
                 ("cerwu [raw non-weights]", "non-weights raw instead"),
                 ("cerwu [per-row rd]", "with per-row steps by RD"),
                 ("cerwu [uniform embedding rows]", "embedding rows weighted alike"),
                 ("cerwu [trellis]", "with the trellis grid (1.1)"),
                 ("optq", "`optq`: no rate-aware decisions"),
                 ("rtn", "`rtn`: no OBS update"),
                 ("NNCodec", "NNCodec 2.1.3"))


def skipped_levers(data: dict) -> dict:
    """Lever -> why its files would be the defaults' (the run's own list; the embedding lever,
    added later, for a model the run shows without an embedding)."""
    skipped = dict(data["ours"].get("skipped_levers", {}))
    if "embedding" not in data["ours"]["coded_layer_kinds"]:
        skipped.setdefault("uniform embedding rows", "no embedding: the files would be cerwu's")
    return skipped


@block("rate_fidelity.levers")
def _rate_fidelity_levers(results: Results) -> str:
    rows = []
    for name, label in RATE_FIDELITY_MODELS:
        data = results.load(name)
        bits = data["comparison"]["bits_per_weight_at_target"]
        default = bits.get("cerwu")
        skipped = skipped_levers(data)
        cells = [label, target_text(data)]
        for curve, _ in LEVER_COLUMNS:
            lever = curve[len("cerwu ["):-1] if curve.startswith("cerwu [") else None
            if lever in skipped:
                cells.append("same files")
            elif curve not in bits:
                cells.append("not run")
            elif bits[curve] is None:
                cells.append("not bracketed")
            elif curve in ("cerwu", "NNCodec") or default is None:
                cells.append(f"{bits[curve]:.3f}")
            else:
                cells.append(f"{bits[curve]:.3f} ({bits[curve] / default - 1:+.1%})")
        rows.append(cells)
    notes = []
    for name, label in RATE_FIDELITY_MODELS:
        for lever, why in skipped_levers(results.load(name)).items():
            notes.append(f"{label}, {lever}: {why}.")
    return (table(["model", "target", *[title for _, title in LEVER_COLUMNS]],
                  "ll" + "r" * len(LEVER_COLUMNS), rows)
            + "\n\n" + (" ".join(notes) + " " if notes else "")
            + " ".join(f"{label}: {results.provenance(name)}{sweep_note(results.load(name))}"
                       for name, label in RATE_FIDELITY_MODELS))


DOMAIN_FIGURE = "cosine on license text"


@block("rate_fidelity.domain")
def _rate_fidelity_domain(results: Results) -> str:
    data = results.load("minilm_rate_fidelity.json")
    curves = {curve: data["ours"]["curves"][curve] for curve in DOMAIN_CURVES
              if curve in data["ours"]["curves"]}
    if data["nncodec"].get("measured"):
        curves["NNCodec"] = data["nncodec"]["curve"]
    rows = []
    for method, points in curves.items():
        for point in sorted(points, key=lambda point: point["bits_per_weight"]):
            other = point["figures"][DOMAIN_FIGURE]
            setting = f"qp {point['qp']}" if "qp" in point else f"λ × {point['lam_factor']:g}"
            rows.append([RATE_LABELS.get(method, method), setting,
                         f"{point['bits_per_weight']:.3f}", f"{point['fidelity']:.4f}",
                         f"{other:.4f}", f"{point['fidelity'] - other:.4f}"])
    at_target, gaps = [], []
    target = data["fidelity_target"]
    for method, points in curves.items():
        other = [{"bits_per_weight": point["bits_per_weight"],
                  "fidelity": point["figures"][DOMAIN_FIGURE]} for point in points]
        bits = bench_module("rate_fidelity").interpolate_bits_at(other, target)
        at_target.append(f"{RATE_LABELS.get(method, method)} {bits_text(bits)}")
        in_domain = figure_at_target(points, target, DOMAIN_FIGURE)
        if in_domain is not None:
            bits_there, cosine = in_domain
            gaps.append(f"{RATE_LABELS.get(method, method)} {target - cosine:.4f} "
                        f"({bits_there:.3f} bits)")
    return (table(["coder", "setting", "bits/weight", "cosine, Python documentation",
                   "cosine, license text", "gap"], "llrrrr", rows)
            + f"\n\nBits per coded weight at cosine {target:g} on the license "
              f"text (interpolated as at the main target): {', '.join(at_target)}. "
            + f"The gap at the file of cosine {target:g} on the Python documentation "
              f"(both interpolated between the same two files): {', '.join(gaps)}. "
            + results.provenance("minilm_rate_fidelity.json"))


@block("domain_gap.parts")
def _domain_gap_parts(results: Results) -> str:
    """Per curve and λ: the gap with the whole file, the word embedding alone and all but the
    embeddings decoded (bench/domain_gap.py)."""
    data = results.load("domain_gap.json")
    rows = []
    for curve, entry in data["curves"].items():
        for point in entry["points"]:
            parts = point["parts"]
            cells = [curve, f"λ × {point['lam_factor']:g}", f"{point['bits_per_weight']:.3f}"]
            for part in ("all", "word embedding only", "all but the embeddings"):
                figures = parts[part]
                cells.append(f"{figures['cosine, documentation']:.4f} / "
                             f"{figures['cosine, license text']:.4f} / {figures['gap']:.4f}")
            ratio = parts["all but the embeddings"]["loss ratio"]
            cells.append("-" if ratio is None else f"{ratio:.2f}")
            rows.append(cells)
    return (table(["curve", "λ", "bits/weight", "whole file", "word embedding only",
                   "all but the embeddings", "loss ratio, all but the embeddings"],
                  "llrrrrr", rows)
            + "\n\n" + results.provenance("domain_gap.json"))


@block("domain_gap.at_target")
def _domain_gap_at_target(results: Results) -> str:
    """Per curve: bits and gap where the whole file reaches the target on the documentation."""
    data = results.load("domain_gap.json")
    rows = []
    for curve, entry in data["curves"].items():
        target = entry["at_target"]
        rows.append([curve] + (["not bracketed", "", ""] if target is None else [
            f"{target['bits_per_weight']:.3f}", f"{target['cosine, license text']:.4f}",
            f"{target['gap']:.4f}"]))
    shares = data["unseen token share"]
    return (table(["curve", "bits/weight at cosine 0.99 (documentation)",
                   "cosine, license text", "gap"], "lrrr", rows)
            + f"\n\nTokens whose id the 256 calibration sentences never show: "
              f"{shares['documentation (held out)']:.1%} of the held-out documentation's, "
              f"{shares['license text']:.1%} of the license text's. "
            + results.provenance("domain_gap.json"))


@block("trellis_layers")
def _trellis_layers(results: Results) -> str:
    """The trellis against cerwu on MiniLM's Linear layers: dB at equal rate, and the step factor
    of least objective at each λ (bench/trellis_layers.py)."""
    data = results.load("trellis_layers.json")
    factor = data["trellis_step_factor"]
    columns = (("optq-rd", "`optq-rd`"), (f"trellis x{factor:g}", f"trellis, Δ = {factor:g} × step"),
               ("cerwu, trellis=True", "`cerwu`, `trellis=True` (each layer's choice)"))
    rows = []
    for row in data["db_against_cerwu_at_equal_rate"]:
        if all(row.get(curve) is None for curve, _ in columns):
            continue  # outside every curve of the sweep
        rows.append([f"{row['bits_per_weight']:.1f}"] + [
            "outside the sweep" if row.get(curve) is None else f"{row[curve]:+.2f} dB"
            for curve, _ in columns])
    best = ", ".join(f"{entry['cerwu_bits_per_weight']:.2f} → {entry['best_factor']:g}"
                     for entry in data["objective_by_factor"])
    return (table(["bits per weight", *[title for _, title in columns]], "l" + "r" * len(columns),
                  rows)
            + f"\n\nDistortion (the OBS loss summed over {len(data['layers'])} Linear layers, "
              f"{data['weights']:,} weights) against `cerwu`'s at the same bits per weight, "
              f"indices and tables counted; negative is less. The step factor of least "
              f"`D/λ + R`, by `cerwu`'s bits per weight at each λ of the sweep: {best}. "
            + results.provenance("trellis_layers.json"))


DOMAIN_CURVES = ("cerwu", "cerwu [uniform embedding rows]")
"""Our curves in the table of the other domain: the defaults, and the lever that weighs every
embedding row alike."""


def figure_at_target(points: list, target: float, figure: str) -> tuple | None:
    """(bits per weight, ``figure``) where the curve reaches fidelity ``target``, both linear
    between the two files that bracket it (``bench.rate_fidelity.bracket``); None if none do."""
    found = bench_module("rate_fidelity").bracket(points, target)
    if found is None:
        return None
    lower, upper, share = found
    return tuple(low + share * (high - low) for low, high in (
        (lower["bits_per_weight"], upper["bits_per_weight"]),
        (lower["figures"][figure], upper["figures"][figure])))


for _model in ("craft", "crnn"):  # the EasyOCR models: a table and what is coded, each
    block(f"rate_fidelity.{_model}")(
        lambda results, name=f"{_model}_rate_fidelity.json": rate_fidelity_any_table(results,
                                                                                   name))
    block(f"rate_fidelity.{_model}_layers")(
        lambda results, name=f"{_model}_rate_fidelity.json": layers_text(results, name))


@block("rate_fidelity.crnn_strings")
def _rate_fidelity_crnn_strings(results: Results) -> str:
    data = results.load("crnn_rate_fidelity.json")
    curves = dict(data["ours"]["curves"])
    if data["nncodec"].get("measured"):
        curves["NNCodec"] = data["nncodec"]["curve"]
    rows = []
    for method, points in curves.items():
        passing = [point for point in points if point["fidelity"] >= data["fidelity_target"]]
        if not passing:
            rows.append([RATE_LABELS.get(method, method), "no point reaches it", "", "", ""])
            continue
        point = min(passing, key=lambda point: point["bits_per_weight"])
        setting = f"qp {point['qp']}" if "qp" in point else f"λ × {point['lam_factor']:g}"
        rows.append([RATE_LABELS.get(method, method), setting, f"{point['bits_per_weight']:.3f}",
                     f"{point['fidelity']:.4f}",
                     f"{point['figures']['string agreement'] * 100:.1f} %"])
    original = data["original_figures"]["strings read"] * 100
    return (table(["coder", "smallest file at the target", "bits/weight", "cosine",
                   "lines read as the original reads them"], "llrrr", rows)
            + f"\n\nThe original model reads {original:.1f} % of the evaluation lines exactly as "
              f"rendered. " + results.provenance("crnn_rate_fidelity.json"))


# -- opening-files.md -------------------------------------------------------------------------------

@block("header_parsing.table")
def _header_parsing(results: Results) -> str:
    table_text = bench_module("header_parsing").markdown_table(
        results.load("header_parsing.json"), results.load("header_parsing_before.json"))
    return (table_text + "\n\nAfter: " + results.provenance("header_parsing.json")
            + " Before: " + results.provenance("header_parsing_before.json"))


# -- rendering and checking -----------------------------------------------------------------------

def render(text: str, results: Results) -> tuple[str, list[tuple[int, str, str, str]]]:
    """``text`` with every block and inline figure rendered, and the differences found:
    (line, key, what the page says, what the results give)."""
    differences = []
    pieces = []
    position = 0
    # markers quoted in code spans (`<!--f:...-->`, as in docs/README.md) are text, not markers
    quoted = [span.span() for span in re.finditer(r"`[^`\n]+`", text)]

    def real(matches):
        return [m for m in matches if not any(a <= m.start() < b for a, b in quoted)]

    for line_number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("<!--f:"):
            # Markdown reads a line that begins with "<!--" as an HTML block, not as text
            raise FiguresError(f"line {line_number} begins with an inline figure; put a word "
                               "before it (Markdown would read the line as raw HTML)")
    for opening, matched in (("<!--f:", INLINE), ("<!-- figures:", BLOCK)):
        if len(real(re.finditer(re.escape(opening), text))) != len(real(matched.finditer(text))):
            raise FiguresError(f"a marker {opening!r} without its closing marker")
    for match in real(BLOCK.finditer(text)) + [None]:
        # inline figures are looked for outside blocks only (a block is rendered as a whole)
        end = match.start() if match else len(text)
        for inline in real(INLINE.finditer(text, position, end)):
            spec = inline.group("spec")
            made = inline_value(results, spec)
            if made != inline.group("text"):
                differences.append((text.count("\n", 0, inline.start()) + 1, spec,
                                    inline.group("text"), made))
            pieces += [text[position:inline.start()], f"<!--f:{spec}-->{made}<!--/f-->"]
            position = inline.end()
        pieces.append(text[position:end])
        if match is None:
            break
        key = match.group("key")
        if key not in BLOCKS:
            raise FiguresError(f"no block {key!r} in docs/figures.py")
        # a block inside a list item keeps the item's indentation before its closing marker
        indent = text[text.rfind("\n", 0, match.start()) + 1:match.start()]
        made = BLOCKS[key](results).strip("\n") + "\n" + indent
        if made != match.group("body"):
            old, new = match.group("body").splitlines(), made.splitlines()
            at = next((i for i, (a, b) in enumerate(zip(old, new)) if a != b),
                      min(len(old), len(new)))
            differences.append((text.count("\n", 0, match.start("body")) + 1 + at,
                                f"figures: {key}", old[at] if at < len(old) else "(nothing)",
                                new[at] if at < len(new) else "(nothing)"))
        pieces.append(match.group("open") + made + match.group("close"))
        position = match.end()
    return "".join(pieces), differences


def check(root: Path = ROOT, git_root: Path = ROOT) -> list[str]:
    """One message per figure whose page text and results disagree (or cannot be rendered)."""
    results = Results(root / "bench" / "results", git_root)
    problems = []
    for path in page_paths(root):
        page = path.relative_to(root).as_posix()
        try:
            _, differences = render(path.read_text(encoding="utf-8"), results)
        except FiguresError as error:
            problems.append(f"{page}: {error}")
            continue
        problems += [f"{page}:{line}: {key}: the page says {said!r}, the results give {given!r}"
                     for line, key, said, given in differences]
    return problems


def write(root: Path = ROOT, git_root: Path = ROOT) -> list[str]:
    """Render every page in place; returns the pages changed."""
    results = Results(root / "bench" / "results", git_root)
    changed = []
    for path in page_paths(root):
        text = path.read_text(encoding="utf-8")
        new, _ = render(text, results)
        if new != text:
            path.write_text(new, encoding="utf-8")
            changed.append(path.relative_to(root).as_posix())
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true",
                        help="render the figures into the pages instead of checking them")
    arguments = parser.parse_args(argv)
    if arguments.write:
        try:
            print("changed:", ", ".join(write()) or "nothing")
        except FiguresError as error:
            print(error, file=sys.stderr)
            return 1
        return 0
    problems = check()
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"{len(problems)} figure(s) differ from bench/results/*.json; "
              "run python docs/figures.py --write (after checking why)", file=sys.stderr)
        return 1
    print("every figure matches bench/results/*.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
