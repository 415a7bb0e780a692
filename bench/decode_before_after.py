"""Decode throughput before and after a change of the decoder, in one run (issue 18).

The package of a git revision (``--ref``, the "before") and of the working tree (the "after")
are exported side by side and imported through ``PYTHONPATH``, each with its own Numba cache
(filled by a first, untimed process). Then rounds alternate a process of each (``--rounds``),
so that load from other processes falls on both alike; each process decodes every tensor of one
file with 1 and 2 threads, into a new array and into a reused buffer, best of ``--repeats``.
Reported: the best of all rounds per case, and after / before.

The file: 20 M indices of the decode benchmark's rounded Laplacian (3 bits of entropy) as a
4,000 x 5,000 matrix, four ways: float32 and float16 with the IID model, float32 with the
PREVIOUS_INDEX model, and a 2,000 x 5,000 float32 tensor with a 4,096-symbol alphabet and
escapes (the general kernel's path for its chunks with escapes); 4 lanes, 2^18 symbols per chunk.

    python bench/decode_before_after.py --ref main --json bench/results/decode_before_after.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from cold_start import ROOT, WORK, export_source  # noqa: E402
from run_info import run_info  # noqa: E402

CHILD = r"""
import json, sys, time
import nncodec_rd
from nncodec_rd.decoder.reader import NrdFile
path, repeats = sys.argv[1], int(sys.argv[2])
speeds = {}
for threads in (1, 2):
    with NrdFile(path, threads=threads) as handle:
        for name in handle.keys():
            buffer = handle.get_tensor(name)
            best_new = best_reuse = float("inf")
            for _ in range(repeats):
                start = time.perf_counter(); handle.get_tensor(name)
                best_new = min(best_new, time.perf_counter() - start)
                start = time.perf_counter(); handle.get_tensor(name, out=buffer)
                best_reuse = min(best_reuse, time.perf_counter() - start)
            label = f"{name}, {threads} thread{'s' if threads > 1 else ''}"
            speeds[label + ", new array"] = buffer.size / best_new / 1e6
            speeds[label + ", reused buffer"] = buffer.size / best_reuse / 1e6
print(json.dumps({"module": nncodec_rd.__file__, "speeds": speeds}))
"""


def write_file(path: str) -> None:
    """The four tensors described in the module docstring."""
    from nncodec_rd import EntropySettings, UniformGrid
    from nncodec_rd.decode_speed import draw_indices
    from nncodec_rd.encoder import NrdWriter

    indices = draw_indices(20_000_000, "laplace", 3.0, 0).reshape(4000, 5000)
    rng = np.random.default_rng(0)
    wide = np.clip(np.rint(rng.laplace(scale=300.0, size=(2000, 5000))), -4000, 4000)
    iid = EntropySettings(choose_precision=False, lane_count=4, context_model="iid")
    with NrdWriter(path) as writer:
        writer.add_indices("float32 IID", indices, UniformGrid(0.01), "float32", settings=iid)
        writer.add_indices("float16 IID", indices, UniformGrid(0.01), "float16", settings=iid)
        writer.add_indices("float32 PREVIOUS_INDEX", indices, UniformGrid(0.01), "float32",
                           settings=EntropySettings(choose_precision=False,
                                                    lane_count=4, context_model="previous"))
        writer.add_indices("float32 4096 symbols + escapes", wide.astype(np.int64),
                           UniformGrid(0.001), "float32",
                           settings=EntropySettings(choose_precision=False,
                                                    lane_count=4, context_model="iid",
                                                    max_alphabet_size=4096))


def run_side(source: str, cache: str, path: str, repeats: int) -> dict:
    environment = {key: value for key, value in os.environ.items()
                   if not key.startswith(("NUMBA_", "PYTHON"))}
    environment.update(PYTHONPATH=source, NUMBA_CACHE_DIR=cache)
    result = subprocess.run([sys.executable, "-c", CHILD, path, str(repeats)], env=environment,
                            cwd=WORK, capture_output=True, text=True, check=True)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["module"].startswith(source), report["module"]
    return report["speeds"]


def main(argv=None) -> int:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ref", default="main", help="the revision before the change")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default=os.path.join(HERE, "results",
                                                       "decode_before_after.json"))
    arguments = parser.parse_args(argv)
    folder = os.path.join(WORK, "before-after")
    shutil.rmtree(folder, ignore_errors=True)
    sides = {"before": arguments.ref, "after": None}
    sources, caches = {}, {}
    for side, ref in sides.items():
        export_source(ref, os.path.join(folder, side))
        sources[side] = os.path.join(folder, side)
        caches[side] = os.path.join(folder, f"cache-{side}")
    path = os.path.join(folder, "speed.nrd")
    write_file(path)
    for side in sides:  # compile (untimed)
        run_side(sources[side], caches[side], path, 1)
    rounds = {side: [] for side in sides}
    for _ in range(arguments.rounds):
        for side in sides:
            rounds[side].append(run_side(sources[side], caches[side], path, arguments.repeats))
    rows = []
    for case in rounds["before"][0]:
        before = max(speeds[case] for speeds in rounds["before"])
        after = max(speeds[case] for speeds in rounds["after"])
        rows.append({"case": case, "before_m_per_s": round(before, 1),
                     "after_m_per_s": round(after, 1), "ratio": round(after / before, 3)})
    from nncodec_rd.decode_speed import machine_description

    report = {"command": "python bench/decode_before_after.py " + " ".join(sys.argv[1:]),
              "before": arguments.ref, "after": "working tree",
              "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
              "load_average_at_end": os.getloadavg()[0], "machine": machine_description(),
              "rounds": rounds, "rows": rows}
    os.makedirs(os.path.dirname(os.path.abspath(arguments.json)), exist_ok=True)
    with open(arguments.json, "w", encoding="utf-8") as stream:
        json.dump({**run_info(), **report}, stream, indent=1)
    print("| case | before (M weights/s) | after | after / before |")
    print("| --- | ---: | ---: | ---: |")
    for row in rows:
        print(f"| {row['case']} | {row['before_m_per_s']} | {row['after_m_per_s']} "
              f"| {row['ratio']:.3f} |")
    print(f"\nwritten to {arguments.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
