"""Where does a data-free encode destroy a model? SQNR of the weights against model fidelity.

all-MiniLM-L6-v2 encoded with the data-free `rtn` of `nncodec-rd encode model.safetensors`
(`nncodec_rd.save_file`) over grids of a fixed number of bins (spanning each tensor's largest
weight) and steps relative to each tensor's RMS; for each: the overall and the lowest tensor SQNR
(nncodec_rd.encoder.fidelity), and the mean cosine of sentence embeddings of 512 evaluation
sentences against the original model. The warning threshold WARN_BELOW_DB comes from this table.

    python bench/sqnr_threshold.py --json bench/results/sqnr_threshold.json
"""

import argparse
import json
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # the repository root: `import bench.x`

from bench.minilm_rate_fidelity import build_workload  # noqa: E402

import nncodec_rd  # noqa: E402
from nncodec_rd.encoder.fidelity import SqnrReport  # noqa: E402
from nncodec_rd.torch.load import load_weights  # noqa: E402
from nncodec_rd.torch.state_dict import tensor_to_numpy  # noqa: E402
from run_info import run_info  # noqa: E402  (bench/ is sys.path[0] when run as a script)

SETTINGS = [{"bins": b} for b in (3, 7, 15, 31, 63, 127, 255)] + \
    [{"relative_step": r} for r in (2.0, 1.0, 0.5, 0.25, 0.125, 1 / 16, 1 / 32)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="bench/results/sqnr_threshold.json")
    arguments = parser.parse_args()
    workload = build_workload(calibration_count=8)
    model = workload.model
    originals = {k: v.detach().clone() for k, v in model.state_dict().items()}
    tensors = {k: tensor_to_numpy(v) for k, v in originals.items()}
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for setting in SETTINGS:
            report = SqnrReport()
            path = os.path.join(folder, "m.nrd")
            size = nncodec_rd.save_file(tensors, path, report=report, **setting)
            load_weights(model, nncodec_rd.load_file(path))
            cosine = float(workload.evaluate(model))
            load_weights(model, originals)
            name, lowest = report.lowest
            rows.append({"setting": setting, "file_bytes": size, "overall_db": report.overall_db,
                         "lowest_db": lowest, "lowest_tensor": name, "mean_cosine": cosine})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    with open(arguments.json, "w") as stream:
        json.dump({**run_info(), "command": "python " + " ".join(sys.argv), "model": "all-MiniLM-L6-v2",
                   "fidelity": workload.fidelity_name, "rows": rows}, stream, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
