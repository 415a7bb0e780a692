"""Cold start: the first decode after installing, as a new user meets it (issue 18).

A fresh virtual environment gets a decode-only install of the package (``pip install SOURCE``, no
extras, no torch; from the local wheel indexes, nothing is downloaded), then for each file two
fresh processes run ``nncodec_rd.load_file`` with one new, empty Numba cache folder
(``NUMBA_CACHE_DIR``): the first compiles (cold cache), the second finds the cache (warm).
Each process reports the wall time of ``import nncodec_rd`` and of the first ``load_file``,
and, from Numba's compile events, every signature compiled and its time.

Files: (a) ``tiny``: one 16 x 16 float32 tensor; (b) the demo's MiniLM file (``make demo``
writes ``out/demo/all-MiniLM-L6-v2.nrd``); (c) ``every_kind``: every output dtype (float32,
float16, bfloat16) with both context models, small and large alphabets, escapes, a codebook and
a right-matrix transform. (a) and (c) are written here with the encoder of the calling
environment (the repository's ``.venv``).

    python bench/cold_start.py               # the working tree, into bench/results/cold_start.json
    python bench/cold_start.py --ref main --json bench/results/cold_start_before.json

``--ref`` installs a git revision instead of the working tree (the "before" of a change).
"""

from __future__ import annotations

import argparse
import json
import re
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
from run_info import run_info  # bench/ is sys.path[0] when run as a script

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEFAULT_MINILM = os.path.join(ROOT, "out", "demo", "all-MiniLM-L6-v2.nrd")
WORK = os.path.join(ROOT, "out", "bench-cold")

# Run in each fresh process: times the import and the first load_file, records every compile.
CHILD = r"""
import json, sys, time
start = time.perf_counter()
from numba.core import event
compiles, started = [], []
class Recorder(event.Listener):
    def on_start(self, ev):
        started.append(time.perf_counter())
    def on_end(self, ev):
        began = started.pop()
        depth = len(started)
        function = ev.data["dispatcher"].py_func
        compiles.append({"function": function.__module__ + "." + function.__qualname__,
                         "signature": str(ev.data["args"]), "seconds": time.perf_counter() - began,
                         "depth": depth})
event.register("numba:compile", Recorder())
import nncodec_rd
imported = time.perf_counter()
tensors = nncodec_rd.load_file(sys.argv[1])
loaded = time.perf_counter()
again = nncodec_rd.load_file(sys.argv[1])
second = time.perf_counter()
print(json.dumps({"module": nncodec_rd.__file__, "import_s": imported - start,
                  "first_load_s": loaded - imported, "second_load_same_process_s": second - loaded,
                  "tensors": len(tensors), "compiles": compiles}))
"""


def write_tiny(path: str) -> None:
    """(a): one small float32 tensor, rANS-coded (IID, 4 lanes)."""
    from nncodec_rd import EntropySettings, UniformGrid
    from nncodec_rd.encoder import NrdWriter

    indices = np.random.default_rng(0).integers(-8, 9, size=(16, 16))
    with NrdWriter(path) as writer:
        writer.add_indices("w", indices, UniformGrid(steps=0.01), "float32",
                           settings=EntropySettings(choose_precision=False,
                                                    lane_count=4, context_model="iid"))


def write_every_kind(path: str) -> None:
    """(c): every output dtype x both context models, large alphabets, escapes, a codebook, a
    transform."""
    from nncodec_rd import EntropySettings, UniformGrid
    from nncodec_rd.encoder import NrdWriter
    from nncodec_rd.format.grids import CodebookGrid, RightMatrixTransform

    rng = np.random.default_rng(1)
    small = np.clip(np.rint(rng.laplace(scale=3.0, size=(64, 96))), -60, 60).astype(np.int64)
    large = np.clip(np.rint(rng.laplace(scale=200.0, size=(64, 96))), -2000, 2000).astype(np.int64)
    with NrdWriter(path) as writer:
        for dtype in ("float32", "float16", "bfloat16"):
            for context in ("iid", "previous"):
                settings = EntropySettings(choose_precision=False,
                                           lane_count=4, context_model=context)
                writer.add_indices(f"{dtype}.{context}.small", small, UniformGrid(0.01), dtype,
                                   settings=settings)
                writer.add_indices(f"{dtype}.{context}.large", large, UniformGrid(0.001), dtype,
                                   settings=settings)
                writer.add_indices(f"{dtype}.{context}.escapes", small, UniformGrid(0.01), dtype,
                                   settings=EntropySettings(choose_precision=False,
                                                            lane_count=4, context_model=context,
                                                            max_alphabet_size=16))
        writer.add_indices("codebook", np.clip(small, -4, 4) + 4,
                           CodebookGrid(np.linspace(-1, 1, 9)), "float32",
                           settings=EntropySettings(choose_precision=False,
                                                    lane_count=2, context_model="iid"))
        writer.add_raw("basis", rng.standard_normal((96, 32)).astype(np.float32))
        writer.add_indices("projected", small, UniformGrid(0.01), "bfloat16",
                           transform=RightMatrixTransform("basis"))


def export_source(ref: str | None, destination: str) -> None:
    """The package source to install: the working tree (tracked and untracked, not ignored
    files) or the git revision ``ref``."""
    os.makedirs(destination)
    if ref:
        archive = subprocess.run(["git", "-C", ROOT, "archive", ref], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", destination], input=archive, check=True)
        return
    files = subprocess.run(["git", "-C", ROOT, "ls-files", "-z", "--cached", "--others",
                            "--exclude-standard"], check=True, capture_output=True).stdout
    for name in filter(None, files.decode().split("\0")):
        source = os.path.join(ROOT, name)
        if os.path.isfile(source):
            os.makedirs(os.path.dirname(os.path.join(destination, name)), exist_ok=True)
            shutil.copy2(source, os.path.join(destination, name))


def make_venv(ref: str | None, folder: str) -> tuple[str, float]:
    """A fresh venv with a decode-only install; returns its python and the install time."""
    shutil.rmtree(folder, ignore_errors=True)
    source = os.path.join(folder, "source")
    export_source(ref, source)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", os.path.join(folder, "venv")], check=True)
    python = os.path.join(folder, "venv", "bin", "python")
    subprocess.run([python, "-m", "pip", "install", "-q", source], check=True)
    return python, time.perf_counter() - start


def run_child(python: str, path: str, cache: str) -> dict:
    """One fresh process: import, first and second load_file of ``path`` with ``cache``."""
    environment = {key: value for key, value in os.environ.items()
                   if not key.startswith(("NUMBA_", "PYTHON"))}
    environment["NUMBA_CACHE_DIR"] = cache
    start = time.perf_counter()
    result = subprocess.run([python, "-c", CHILD, os.path.abspath(path)], cwd=tempfile.gettempdir(),
                            env=environment, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"decoding {path} failed:\n{result.stderr}")
    report = json.loads(result.stdout.strip().splitlines()[-1])
    report["process_wall_s"] = wall
    report["stderr"] = result.stderr[-2000:]
    return report


# ChunkBatch(buffer, chunks, out, errors): the third array holds the output words
OUTPUT_WORDS = re.compile(r"ChunkBatch\((?:[^()]*array\([^)]*\), ){2}array\(uint(\d+)")


def kernel_name(entry: dict) -> str:
    """A compiled signature's name as the decoder's messages give it: the kernel's, with the
    output width of a chunk kernel (``decode_general_32``; dispatch.signature_name)."""
    name = entry["function"].rsplit(".", 1)[-1]
    width = OUTPUT_WORDS.search(entry["signature"])
    return f"{name}_{width.group(1)}" if width else name


def summarize(compiles: list[dict]) -> dict:
    """Signatures compiled (top level: the kernels the decoder calls; all: with callees)."""
    top = [entry for entry in compiles if entry["depth"] == 0
           and entry["function"].startswith("nncodec_rd.")]
    return {"top_level_signatures": len(top),
            "all_signatures": len(compiles),
            "compile_s": sum(entry["seconds"] for entry in compiles if entry["depth"] == 0),
            "top_level": [{"function": kernel_name(entry),
                           "seconds": round(entry["seconds"], 3),
                           "signature": entry["signature"][:300]} for entry in top]}


def run(ref: str | None, minilm: str, skip_minilm: bool = False) -> dict:
    """Build the venv and the files, run each file cold then warm."""
    from nncodec_rd.decode_speed import machine_description

    label = ref or "working-tree"
    folder = os.path.join(WORK, label.replace("/", "_"))
    python, install_s = make_venv(ref, folder)
    files = {"tiny": os.path.join(WORK, "tiny.nrd"),
             "every_kind": os.path.join(WORK, "every_kind.nrd")}
    write_tiny(files["tiny"])
    write_every_kind(files["every_kind"])
    if not skip_minilm:
        if not os.path.exists(minilm):
            raise SystemExit(f"{minilm} is missing: run `make demo` first (or pass --minilm)")
        files = {"tiny": files["tiny"], "minilm": minilm, "every_kind": files["every_kind"]}
    rows = []
    for name, path in files.items():
        cache = tempfile.mkdtemp(prefix=f"numba-cache-{name}-", dir=folder)
        cold = run_child(python, path, cache)
        warm = run_child(python, path, cache)
        rows.append({"file": name, "path": os.path.relpath(path, ROOT),
                     "size_bytes": os.path.getsize(path), "tensors": cold["tensors"],
                     "cold": {key: cold[key] for key in ("import_s", "first_load_s",
                                                         "second_load_same_process_s",
                                                         "process_wall_s", "stderr")}
                     | summarize(cold["compiles"]),
                     "warm": {key: warm[key] for key in ("import_s", "first_load_s",
                                                         "second_load_same_process_s",
                                                         "process_wall_s")}
                     | summarize(warm["compiles"])})
        shutil.rmtree(cache, ignore_errors=True)
    return {"command": "python bench/cold_start.py " + " ".join(sys.argv[1:]),
            "source": label, "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
            "load_average_at_start": os.getloadavg()[0], "install_s": install_s,
            "machine": machine_description(), "rows": rows}


def print_report(report: dict) -> None:
    """The table the issue asks for."""
    print(f"cold start of {report['source']} ({report['date_utc']} UTC, "
          f"{report['machine']['cpu']}, {report['machine']['cores']} cores)")
    print("| file | size | cold: import | cold: first load_file | signatures compiled "
          "| compile s | warm: import | warm: first load_file |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in report["rows"]:
        cold, warm = row["cold"], row["warm"]
        print(f"| {row['file']} | {row['size_bytes']:,} B | {cold['import_s']:.2f} s "
              f"| {cold['first_load_s']:.2f} s | {cold['top_level_signatures']} "
              f"({cold['all_signatures']} with callees) | {cold['compile_s']:.1f} "
              f"| {warm['import_s']:.2f} s | {warm['first_load_s']:.2f} s |")
    print()
    for row in report["rows"]:
        print(f"{row['file']}: compile time per kernel signature (cold)")
        for entry in row["cold"]["top_level"]:
            print(f"  {entry['seconds']:7.2f} s  {entry['function']}")


def main(argv=None) -> int:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ref", help="install this git revision instead of the working tree")
    parser.add_argument("--minilm", default=DEFAULT_MINILM, help="the demo's .nrd file")
    parser.add_argument("--skip-minilm", action="store_true", help="files (a) and (c) only")
    parser.add_argument("--json", default=os.path.join(HERE, "results", "cold_start.json"))
    arguments = parser.parse_args(argv)
    report = run(arguments.ref, arguments.minilm, arguments.skip_minilm)
    os.makedirs(os.path.dirname(os.path.abspath(arguments.json)), exist_ok=True)
    with open(arguments.json, "w", encoding="utf-8") as stream:
        json.dump({**run_info(), **report}, stream, indent=1)
    print_report(report)
    print(f"\nwritten to {arguments.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
