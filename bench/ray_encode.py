"""Encoding on Ray: the same encode in this process and on local Ray clusters of 1, 2 and 4 workers.

The model is the 250 M-parameter Llama-architecture checkpoint of bench/any_size.py (random
initialisation, bf16 shards; built there if missing). Each configuration runs in a fresh process
(its own Ray instance, started with ``num_cpus=N``: N workers of one CPU each; 4 workers
oversubscribe a 2-core machine) through ``compress_pretrained`` with the defaults of
``nncodec-rd encode MODEL_DIR``. Every file's SHA-256 is compared with the in-process file.

    python bench/ray_encode.py --configs local,ray:1,ray:2,ray:4 \
        --json bench/results/ray_encode.json

Per configuration the JSON holds the wall time of the encode, the quantization phase (layers
quantized and written, nncodec_rd.torch.sequential), the sum of the layers' own task seconds,
peak RSS of the driver, the file's size and hash; per layer its shape and task seconds, from which
:func:`estimate_70b` computes a paper estimate of a 70 B model's quantization phase on 16 and 64
workers.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import subprocess
import sys
import time
from run_info import run_info  # noqa: E402  (bench/ is sys.path[0] when run as a script)

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

# Llama-2-70B's shapes: (rows, columns) of each layer of a block, 80 blocks.
LLAMA_70B_BLOCK = {"q_proj": (8192, 8192), "k_proj": (1024, 8192), "v_proj": (1024, 8192),
                   "o_proj": (8192, 8192), "gate_proj": (28672, 8192),
                   "up_proj": (28672, 8192), "down_proj": (8192, 28672)}
LLAMA_70B_BLOCKS = 80


def child(config: str, model_dir: str, output: str) -> dict:
    """One encode in this process; returns its figures."""
    from nncodec_rd.encoder.executor import RayExecutor
    from nncodec_rd.torch.pretrained import compress_pretrained

    executor = None
    started = time.perf_counter()
    if config.startswith("ray:"):
        executor = RayExecutor("local", num_cpus=int(config.split(":")[1]))
    ray_start_seconds = time.perf_counter() - started
    try:
        outcome = compress_pretrained(model_dir, output, method="cerwu", progress=False,
                                      executor=executor)
    finally:
        if executor is not None:
            executor.close()
    wall = time.perf_counter() - started
    with open(output, "rb") as stream:
        digest = hashlib.sha256(stream.read()).hexdigest()
    return dict(config=config, wall_seconds=round(wall, 1),
                ray_start_seconds=round(ray_start_seconds, 1),
                hessian_seconds=round(outcome.hessian_seconds, 1),
                quantize_seconds=round(outcome.quantize_seconds, 1),
                layer_task_seconds=round(sum(layer.seconds for layer in outcome.layers), 1),
                peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                size_bytes=outcome.size_bytes, bits_per_weight=round(outcome.bits_per_weight, 4),
                lam=outcome.lam, sha256=digest,
                layers=[dict(name=layer.name, shape=list(layer.shape),
                             seconds=round(layer.seconds, 3)) for layer in outcome.layers])


def estimate_70b(layers: list[dict], workers: list[int]) -> dict:
    """Paper estimate of a 70 B model's quantization phase from measured per-layer seconds.

    Fits ``seconds = a * rows * columns^2 + b * columns^3`` (the OBS sweep's updates, as GPTQ's,
    and the factorisation of the columns x columns Hessian) by non-negative least squares to the
    block layers measured, then schedules the 80 blocks of Llama-2-70B: block-sequentially, each
    block's 7 layers on ``workers`` (longest first; a block waits for the one before it), and all
    560 layers at once (the whole-model encoder, which needs every Hessian in memory). Hessian
    collection, the driver's forward passes, is not included. The fit is extrapolated from the
    measured widths to 8,192 and 28,672 columns: an estimate, not a measurement."""
    import numpy as np
    from scipy.optimize import nnls

    rows = [(layer["shape"][0], layer["shape"][1], layer["seconds"]) for layer in layers
            if len(layer["shape"]) == 2 and "layers." in layer["name"]]
    features = np.array([[r * float(c) ** 2, float(c) ** 3] for r, c, _ in rows])
    seconds = np.array([s for _, _, s in rows])
    (a, b), _ = nnls(features, seconds)
    predicted = features @ np.array([a, b])
    error = float(np.max(np.abs(predicted - seconds) / np.maximum(seconds, 1e-9)))

    def layer_seconds(shape):
        return a * shape[0] * float(shape[1]) ** 2 + b * float(shape[1]) ** 3

    block = [layer_seconds(shape) for shape in LLAMA_70B_BLOCK.values()]

    def makespan(tasks, count):
        loads = [0.0] * count
        for task in sorted(tasks, reverse=True):
            loads[loads.index(min(loads))] += task
        return max(loads)

    out = dict(fit=dict(seconds_per_row_column_squared=a, seconds_per_column_cubed=b,
                        layers_fitted=len(rows), largest_relative_error=round(error, 3)),
               block_layer_seconds={name: round(layer_seconds(shape), 1)
                                    for name, shape in LLAMA_70B_BLOCK.items()})
    for count in workers:
        out[f"workers_{count}"] = dict(
            sequential_hours=round(makespan(block, count) * LLAMA_70B_BLOCKS / 3600, 2),
            whole_model_hours=round(makespan(block * LLAMA_70B_BLOCKS, count) / 3600, 2))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="local,ray:1,ray:2,ray:4")
    parser.add_argument("--model", default="out/any_size/llama-250m")
    parser.add_argument("--work", default="out/ray_encode")
    parser.add_argument("--json", default="bench/results/ray_encode.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.child:
        print(json.dumps(child(arguments.child, arguments.model, arguments.output)))
        return 0
    if not os.path.isdir(arguments.model):
        from any_size import build

        print(f"building {arguments.model} (bench/any_size.py's 250m)", file=sys.stderr)
        build("250m", arguments.model)
    os.makedirs(arguments.work, exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=HERE).stdout.strip()
    report = dict(command="python bench/ray_encode.py " + " ".join(sys.argv[1:]), commit=commit,
                  machine=f"{platform.machine()} {os.cpu_count()} CPUs, {platform.platform()}",
                  python=platform.python_version(), model=arguments.model, runs=[])
    for config in arguments.configs.split(","):
        output = os.path.join(arguments.work, config.replace(":", "-") + ".nrd")
        load_before = os.getloadavg()[0]
        completed = subprocess.run([sys.executable, __file__, "--child", config, "--model",
                                    arguments.model, "--output", output],
                                   capture_output=True, text=True)
        if completed.returncode != 0:
            print(completed.stderr[-3000:], file=sys.stderr)
            return 1
        row = json.loads(completed.stdout.strip().splitlines()[-1])
        row["load_average_before"] = round(load_before, 2)
        report["runs"].append(row)
        print(f"{config}: {row['wall_seconds']} s wall, quantization phase "
              f"{row['quantize_seconds']} s, layers {row['layer_task_seconds']} s, "
              f"{row['size_bytes']:,} bytes, sha256 {row['sha256'][:12]}", file=sys.stderr)
        with open(arguments.json, "w") as stream:  # after every run: a stopped run keeps some
            json.dump({**run_info(), **report}, stream, indent=1)
    runs = {row["config"]: row for row in report["runs"]}
    if "local" in runs:
        report["identical_to_local"] = {config: row["sha256"] == runs["local"]["sha256"]
                                        for config, row in runs.items()}
    if "ray:1" in runs:
        report["quantize_speedup_over_ray_1"] = {
            config: round(runs["ray:1"]["quantize_seconds"] / row["quantize_seconds"], 2)
            for config, row in runs.items() if config.startswith("ray:")}
    source = runs.get("local") or report["runs"][0]
    report["estimate_70b"] = estimate_70b(source["layers"], [1, 16, 64])
    with open(arguments.json, "w") as stream:
        json.dump({**run_info(), **report}, stream, indent=1)
    print(json.dumps({k: v for k, v in report.items() if k != "runs"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
