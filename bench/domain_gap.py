"""Where all-MiniLM-L6-v2's calibration-domain gap comes from: one file per method and λ, decoded,
and its tensors put back into the model in groups.

The rate–fidelity benchmark (``bench/minilm_rate_fidelity.py``) measures every file on two
texts: held-out sentences of the Python documentation (the calibration's domain) and sentences
of legal English (license texts, :mod:`bench.other_domain_text`). The gap is the first mean
cosine minus the second, for the same file. Here each file is measured three more ways, the
rest of the model exact (original weights):

- **word embedding only**: only ``embeddings.word_embeddings.weight`` decoded;
- **all but the embeddings**: every decoded tensor but those of the embeddings module (the
  three embeddings and their LayerNorm);
- **all**: the whole decoded file (the rate–fidelity benchmark's figure).

For each it records both cosines, the gap and the *loss ratio* ``(1 − cosine on license text)
/ (1 − cosine on the documentation)``: 1 where the file's error hurts both texts alike. Methods:
``cerwu`` (the default), ``optq`` (the OBS update, no rate-aware decisions), ``rtn`` (no OBS
update: every weight rounded), and ``cerwu`` with embedding rows weighted more evenly than by
default (``compress(embedding_smoothing=16)``, 16 counts added to every token's instead of 1)
and alike (``math.inf``). Each curve's files are interpolated to cosine 0.99 on the
documentation, the rate–fidelity benchmark's target. It also counts how much of each text's
tokens the calibration never shows.

    python bench/domain_gap.py              # writes bench/results/domain_gap.json
    python bench/domain_gap.py --quick      # cerwu at one λ, nothing written
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # the repository root: `import bench.x`


from bench.minilm_rate_fidelity import OTHER_DOMAIN_FIGURE, build_workload  # noqa: E402
from bench.other_domain_text import license_sentences  # noqa: E402
from bench.rate_fidelity import (  # noqa: E402
    bracket,
    load_into,
    load_weights,
    machine_description,
)
from bench.run_info import run_info, write_results  # noqa: E402
from nncodec_rd.encoder.settings import QuantizerSettings  # noqa: E402
from nncodec_rd.torch.model_encoder import ModelEncoder  # noqa: E402
from nncodec_rd.torch.sentences import calibration_sentences, evaluation_sentences  # noqa: E402

WORD_EMBEDDING = "embeddings.word_embeddings.weight"

PARTS = {
    "all": lambda key: True,
    "word embedding only": lambda key: key == WORD_EMBEDDING,
    "all but the embeddings": lambda key: ".embeddings." not in f".{key}",
}
"""Which decoded tensors go into the model (state-dict key -> decoded?); the rest stay exact."""

CURVES = {"cerwu": ("cerwu", 1.0), "optq": ("optq", 1.0), "rtn": ("rtn", 1.0),
          "cerwu, embedding_smoothing=16": ("cerwu", 16.0),
          "cerwu, embedding_smoothing=inf": ("cerwu", math.inf)}
"""Curve -> (method, ``embedding_smoothing``): the defaults are ``cerwu`` and 1."""

LAM_FACTORS = (1.0, 2.0, 4.0, 8.0)
"""Multiples of the default λ (that of the default smoothing, for every curve): files that
bracket cosine 0.99 on the documentation for each curve."""

TARGET = 0.99
"""The rate–fidelity benchmark's target: mean cosine on the documentation."""


def at_target(points: list) -> dict | None:
    """Bits per weight, the cosine on the license text and the gap where the whole file's
    cosine on the documentation reaches :data:`TARGET`, each linear between the two files that
    bracket it (``bench.rate_fidelity.bracket``); None if none do."""
    found = bracket(points, TARGET, lambda point: point["parts"]["all"]["cosine, documentation"])
    if found is None:
        return None
    lower, upper, share = found
    low, high = lower["parts"]["all"], upper["parts"]["all"]
    other = low["cosine, license text"] + share * (high["cosine, license text"]
                                                   - low["cosine, license text"])
    return {"bits_per_weight": lower["bits_per_weight"] + share * (
                upper["bits_per_weight"] - lower["bits_per_weight"]),
            "cosine, license text": other, "gap": TARGET - other}


def unseen_share(tokenizer, calibration, text) -> float:
    """The share of ``text``'s tokens (all sentences, special tokens included) whose id never
    occurs in ``calibration``'s."""
    def ids(sentences):
        return [i for sentence in sentences
                for i in tokenizer(sentence, truncation=True)["input_ids"]]

    seen = set(ids(calibration))
    text_ids = ids(text)
    return sum(i not in seen for i in text_ids) / len(text_ids)


def measure_parts(workload, model, decoded: dict, originals: dict) -> dict:
    """Both cosines, the gap and the loss ratio with each of :data:`PARTS` decoded."""
    figures = {}
    for part, chosen in PARTS.items():
        load_weights(model, {key: decoded[key] if chosen(key) else value
                             for key, value in originals.items()})
        measured = workload.evaluate(model)
        inside, other = measured["fidelity"], measured[OTHER_DOMAIN_FIGURE]
        figures[part] = {"cosine, documentation": inside, "cosine, license text": other,
                         "gap": inside - other,
                         "loss ratio": (1 - other) / (1 - inside) if inside < 1 else None}
    load_weights(model, originals)
    return figures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="cerwu at λ × 2 only, nothing written")
    parser.add_argument("--output", default=os.path.join(HERE, "results", "domain_gap.json"))
    arguments = parser.parse_args(argv)
    report = {"command": "python bench/domain_gap.py" + (" --quick" if arguments.quick else ""),
              **run_info(), "machine": machine_description()}
    started = time.perf_counter()
    workload = build_workload()
    model = workload.model
    from sentence_transformers import SentenceTransformer

    from nncodec_rd.demo import bundled_model_folder

    tokenizer = SentenceTransformer(bundled_model_folder(), device="cpu").tokenizer
    calibration = calibration_sentences(256)
    report["unseen token share"] = {
        "documentation (held out)": unseen_share(tokenizer, calibration,
                                                 evaluation_sentences(512)),
        "license text": unseen_share(tokenizer, calibration, license_sentences(256))}
    originals = {key: value.detach().clone() for key, value in model.state_dict().items()}
    encoders = {}

    def encoder_of(smoothing: float) -> ModelEncoder:
        if smoothing not in encoders:
            encoders[smoothing] = ModelEncoder(model, workload.calibration_batches,
                                               embedding_smoothing=smoothing, progress=False)
        return encoders[smoothing]

    base_lam = encoder_of(1.0).default_lam()
    curves = {"cerwu": CURVES["cerwu"]} if arguments.quick else CURVES
    factors = LAM_FACTORS[1:2] if arguments.quick else LAM_FACTORS
    report["curves"] = {}
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "file.nrd")
        for curve, (method, smoothing) in curves.items():
            points = []
            for factor in factors:
                settings = QuantizerSettings(method=method, lam=base_lam * factor)
                outcome = encoder_of(smoothing).encode(settings, path)
                load_into(model, path)
                decoded = {key: value.detach().clone()
                           for key, value in model.state_dict().items()}
                load_weights(model, originals)
                points.append({"lam_factor": factor, "bytes": outcome.size_bytes,
                               "bits_per_weight": outcome.bits_per_weight,
                               "parts": measure_parts(workload, model, decoded, originals)})
                whole = points[-1]["parts"]["all"]
                print(f"{curve:32s} lambda x{factor:g}: {outcome.bits_per_weight:.3f} "
                      f"bits/weight, "
                      f"gap {whole['gap']:.4f} (word embedding only "
                      f"{points[-1]['parts']['word embedding only']['gap']:.4f}, all but the "
                      f"embeddings {points[-1]['parts']['all but the embeddings']['gap']:.4f})",
                      flush=True)
            target = at_target(points)
            report["curves"][curve] = {"points": points, "at_target": target}
            if target is not None:
                print(f"{curve:32s} at cosine {TARGET:g}: {target['bits_per_weight']:.3f} "
                      f"bits/weight, gap {target['gap']:.4f}", flush=True)
    report["total_seconds"] = time.perf_counter() - started
    if not arguments.quick:
        write_results(report, arguments.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
