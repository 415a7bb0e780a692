"""Per-layer grid choice on digits CNNs trained with other seeds (1 and 2): bits per weight at
the accuracy target for rtn, optq and cerwu with fixed and per-layer (rd) grids. The digits test
set is small (540 images, one image = 0.19 points), so one model alone is a noisy witness.

    python bench/digits_grid_choice_seeds.py   # writes bench/results/digits_grid_choice_seeds.json
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # the repository root: `import bench.x`

from bench.digits_rate_fidelity import build_workload  # noqa: E402
from bench.rate_fidelity import machine_description, run_workload  # noqa: E402
from run_info import run_info  # noqa: E402  (bench/ is sys.path[0] when run as a script)

OUTPUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                      "digits_grid_choice_seeds.json")


def main() -> int:
    report = {"machine": machine_description(), "seeds": {}}
    for seed in (1, 2):
        workload = build_workload(seed=seed)
        with tempfile.TemporaryDirectory() as folder:
            result = run_workload(workload, folder, methods=["rtn", "optq", "cerwu"],
                                  lam_factors=[1, 2, 4, 8, 16, 32, 64, 128], qps=[],
                                  grid_choices=("fixed", "rd"))
        report["seeds"][seed] = {
            "fidelity_target": workload.fidelity_target,
            "original_fidelity": result["original_fidelity"],
            "bits_per_weight_at_target": result["comparison"]["bits_per_weight_at_target"],
            "curves": result["ours"]["curves"]}
        print(f"seed {seed}: {report['seeds'][seed]['bits_per_weight_at_target']}", flush=True)
    os.makedirs(os.path.dirname(OUTPUT), exist_ok=True)
    with open(OUTPUT, "w", encoding="utf-8") as stream:
        json.dump({**run_info(), **report}, stream, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
