"""Decode-speed benchmark: nncodec-rd's decoder against reference coders on the same symbols.

Run ``python bench/decode_speed.py`` or ``nncodec-rd bench decode``. It draws a realistic index
tensor (Laplacian or Gaussian, about 3 bits of entropy per weight, 50 M weights by default),
writes it as an .nrd file and times, best of several runs:

* nncodec-rd: whole-tensor decode to float32, with 1 thread and with all cores, into a new array
  and into a reused buffer (``get_tensor(name, out=...)``, the inference-time case: a new array
  also pays for the operating system zeroing its pages);
* constriction's ANS decoder (``stream.stack.AnsCoder`` with a ``Categorical`` model) on the
  same symbols, from Python;
* zstd on the int8 indices;
* NNCodec's decoder, when an environment with ``nncodec`` is given (``--nncodec-python``).

Peers that are not installed are reported as not measured, with the reason. Sizes are real
compressed bytes; "ideal" is the empirical entropy of the symbols.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np


def machine_description() -> dict:
    """CPU, cores and versions, so that numbers can be compared across machines."""
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as stream:
            for line in stream:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import numba

    return {"cpu": cpu, "cores": os.cpu_count(), "machine": platform.machine(),
            "python": platform.python_version(), "numpy": np.__version__,
            "numba": numba.__version__, "platform": platform.platform()}


def draw_indices(weight_count: int, distribution: str, entropy_bits: float, seed: int) -> np.ndarray:
    """Integer indices of about ``entropy_bits`` bits of entropy per weight, as a matrix."""
    rng = np.random.default_rng(seed)
    # Entropy of a rounded Laplacian of scale b is about log2(2 e b) for b >~ 1; of a rounded
    # Gaussian of deviation s, log2(sqrt(2 pi e) s).
    if distribution == "laplace":
        scale = 2 ** entropy_bits / (2 * np.e)
        values = rng.laplace(scale=scale, size=weight_count)
    else:
        scale = 2 ** entropy_bits / np.sqrt(2 * np.pi * np.e)
        values = rng.normal(scale=scale, size=weight_count)
    columns = 5000 if weight_count % 5000 == 0 else 1
    return np.clip(np.rint(values), -127, 127).astype(np.int64).reshape(-1, columns)


def empirical_entropy_bits(indices: np.ndarray) -> float:
    _, counts = np.unique(indices, return_counts=True)
    probabilities = counts / counts.sum()
    return float(-np.sum(probabilities * np.log2(probabilities)))


def best_time(function, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def bench_nrd(indices: np.ndarray, folder: str, repeats: int, lanes: int) -> list[dict]:
    from nncodec_rd.decoder.reader import NrdFile
    from nncodec_rd.encoder.writer import NrdWriter
    from nncodec_rd.format.grids import UniformGrid
    from nncodec_rd.encoder.entropy import EntropySettings

    path = os.path.join(folder, "bench.nrd")
    start = time.perf_counter()
    with NrdWriter(path) as writer:
        writer.add_indices("w", indices, UniformGrid(0.01), "float32",
                           settings=EntropySettings(choose_precision=False,
                                                    context_model="iid", lane_count=lanes))
    encode_seconds = time.perf_counter() - start
    size = os.path.getsize(path)
    results = []
    for threads in sorted({1, os.cpu_count() or 1}):
        label = f"{threads} thread{'s' if threads > 1 else ''}"
        with NrdFile(path, threads=threads) as handle:
            buffer = handle.get_tensor("w")  # compile and verify checksums once
            modes = [("new array", lambda: handle.get_tensor("w")),
                     ("reused buffer", lambda: handle.get_tensor("w", out=buffer))]
            for mode, decode in modes:
                seconds = best_time(decode, repeats)
                results.append({"coder": f"nncodec-rd ({label}, {mode})", "threads": threads,
                                "output": mode, "decode_seconds": seconds,
                                "weights_per_second": indices.size / seconds,
                                "bits_per_weight": 8 * size / indices.size, "bytes": size,
                                "encode_seconds": encode_seconds, "measured": True})
    return results


def bench_constriction(indices: np.ndarray, repeats: int) -> dict:
    try:
        import constriction
    except ImportError:
        return {"coder": "constriction AnsCoder", "measured": False,
                "reason": "constriction is not installed (pip install constriction)"}
    low = int(indices.min())
    symbols = (indices.reshape(-1) - low).astype(np.int32)
    counts = np.bincount(symbols).astype(np.float64)
    model = constriction.stream.model.Categorical(counts / counts.sum(), perfect=False)
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(symbols, model)
    compressed = coder.get_compressed()

    def decode():
        return constriction.stream.stack.AnsCoder(compressed).decode(model, len(symbols))

    assert np.array_equal(decode(), symbols)
    seconds = best_time(decode, repeats)
    return {"coder": "constriction AnsCoder", "threads": 1, "decode_seconds": seconds,
            "weights_per_second": indices.size / seconds,
            "bits_per_weight": 32 * len(compressed) / indices.size, "bytes": 4 * len(compressed),
            "measured": True, "note": "symbols only (no dequantization), from Python"}


def bench_zstd(indices: np.ndarray, repeats: int, level: int) -> dict:
    try:
        import zstandard
    except ImportError:
        return {"coder": f"zstd -{level}", "measured": False,
                "reason": "zstandard is not installed (pip install zstandard)"}
    raw = indices.astype(np.int8).tobytes()
    compressed = zstandard.ZstdCompressor(level=level).compress(raw)
    decompressor = zstandard.ZstdDecompressor()
    seconds = best_time(lambda: decompressor.decompress(compressed), repeats)
    return {"coder": f"zstd -{level} (int8 indices)", "threads": 1, "decode_seconds": seconds,
            "weights_per_second": indices.size / seconds,
            "bits_per_weight": 8 * len(compressed) / indices.size, "bytes": len(compressed),
            "measured": True, "note": "int8 indices only (no dequantization)"}


TORCHVISION_STUB = r'''
import importlib.abc, importlib.machinery, sys, types


class _AnyMeta(type):
    def __getattr__(cls, name):
        return _Any


class _Any(metaclass=_AnyMeta):
    # Stands in for any torchvision object (nncodec imports torchvision for its datasets only).
    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return _Any()

    def __getattr__(self, name):
        return _Any()


class _TorchvisionStub(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        if name == "torchvision" or name.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__path__ = []
        module.__getattr__ = lambda attribute: _Any
        return module

    def exec_module(self, module):
        pass


sys.meta_path.insert(0, _TorchvisionStub())
import nncodec.nnc as nnc
sys.meta_path.pop(0)
'''
"""Python source that imports ``nncodec.nnc`` as ``nnc`` in an environment without torchvision.

Executing it installs an import hook that answers every ``torchvision`` import with an empty
module whose attributes are inert placeholders (nncodec uses torchvision only in its dataset
helpers), imports ``nncodec.nnc`` under the name ``nnc``, and removes the hook again. Prepend it
to a script that runs in the NNCodec environment.
"""


def find_nncodec_python(explicit: str | None = None) -> str | None:
    """The Python interpreter of the NNCodec environment.

    Parameters
    ----------
    explicit : str or None
        An interpreter to use; returned as it is when given.

    Returns
    -------
    str or None
        ``explicit``, else ``.venv-nncodec/bin/python`` of the source checkout this package
        runs from (the folder above ``nncodec_rd/``; ``bench/setup_nncodec_env.sh`` makes it) if
        it exists, else None: an installed package has none.
    """
    if explicit:
        return explicit
    repository = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    default = os.path.join(repository, ".venv-nncodec", "bin", "python")
    return default if os.path.exists(default) else None


NNCODEC_SCRIPT = r"""
import json, os, sys, time
import numpy as np
""" + TORCHVISION_STUB + r"""
indices = np.load(sys.argv[1])
qp = -28  # NNC's step is 2^(qp / 4) at qp_density 2: the weights lie exactly on its grid
weights = (indices * 2.0 ** (qp / 4)).astype(np.float32)
path = sys.argv[2]
nnc.compress({"layer.weight": weights}, bitstream_path=path, qp=qp, use_dq=False, opt_qp=False,
             param_opt=False)
exact = bool(np.array_equal(nnc.decompress(path)["layer.weight"], weights))
best = float("inf")
for _ in range(int(sys.argv[3])):
    start = time.perf_counter()
    nnc.decompress(path)
    best = min(best, time.perf_counter() - start)
print(json.dumps({"decode_seconds": best, "bytes": os.path.getsize(path), "exact": exact}))
"""


def bench_nncodec(indices: np.ndarray, folder: str, repeats: int, python: str | None) -> dict:
    entry = {"coder": "NNCodec 2.1.3 (DeepCABAC)"}
    python = find_nncodec_python(python)  # made by bench/setup_nncodec_env.sh
    if not python:
        return {**entry, "measured": False,
                "reason": "no NNCodec environment: run bench/setup_nncodec_env.sh (or pass "
                          "--nncodec-python PATH); it needs numpy<2 and its own C++ build"}
    index_path = os.path.join(folder, "indices.npy")
    np.save(index_path, indices)
    script = os.path.join(folder, "nncodec_bench.py")
    with open(script, "w", encoding="utf-8") as stream:
        stream.write(NNCODEC_SCRIPT)
    result = subprocess.run([python, script, index_path, os.path.join(folder, "w.nnc"),
                             str(repeats)], capture_output=True, text=True)
    if result.returncode != 0:
        return {**entry, "measured": False,
                "reason": "NNCodec run failed: " + (result.stderr.strip().splitlines() or ["?"])[-1]}
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    return {**entry, "threads": 1, "decode_seconds": measured["decode_seconds"],
            "weights_per_second": indices.size / measured["decode_seconds"],
            "bits_per_weight": 8 * measured["bytes"] / indices.size, "bytes": measured["bytes"],
            "measured": True, "note": "float32 weights, uniform quantization (use_dq=False) on "
                                      f"the same indices; reconstruction exact: {measured['exact']}"}


def run(weight_count: int = 50_000_000, distribution: str = "laplace", entropy_bits: float = 3.0,
        repeats: int = 5, lanes: int = 4, seed: int = 0, nncodec_python: str | None = None,
        zstd_level: int = 19) -> dict:
    """Run every coder on the same indices; returns the report as a dict."""
    indices = draw_indices(weight_count, distribution, entropy_bits, seed)
    entropy = empirical_entropy_bits(indices)
    with tempfile.TemporaryDirectory() as folder:
        results = bench_nrd(indices, folder, repeats, lanes)
        results.append(bench_constriction(indices, repeats))
        results.append(bench_zstd(indices, repeats, zstd_level))
        results.append(bench_nncodec(indices, folder, repeats, nncodec_python))
    return {"benchmark": "decode_speed", "weights": int(indices.size),
            "distribution": distribution, "entropy_bits_per_weight": entropy,
            "repeats": repeats, "lanes": lanes, "machine": machine_description(),
            "results": results}


def print_report(report: dict) -> None:
    print(f"decode speed, {report['weights']:,} weights, {report['distribution']} indices, "
          f"entropy {report['entropy_bits_per_weight']:.3f} bits/weight "
          f"(best of {report['repeats']}); {report['machine']['cpu']}, "
          f"{report['machine']['cores']} cores")
    print(f"{'coder':<44} {'M weights/s':>12} {'bits/weight':>12} {'vs ideal':>9}")
    for entry in report["results"]:
        if not entry["measured"]:
            print(f"{entry['coder']:<44} {'not measured: ' + entry['reason']}")
            continue
        overhead = entry["bits_per_weight"] / report["entropy_bits_per_weight"] - 1
        print(f"{entry['coder']:<44} {entry['weights_per_second'] / 1e6:>12.1f} "
              f"{entry['bits_per_weight']:>12.3f} {overhead:>+8.2%}")


def plot_report(report: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [e for e in report["results"] if e["measured"]]
    names = [e["coder"] for e in measured]
    figure, (speed_axis, size_axis) = plt.subplots(1, 2, figsize=(12, 4.4))
    speed_axis.barh(names, [e["weights_per_second"] / 1e6 for e in measured], color="#3b6ea8")
    speed_axis.set_xlabel("million weights per second (higher is better)")
    speed_axis.invert_yaxis()
    size_axis.barh(names, [e["bits_per_weight"] for e in measured], color="#a8553b")
    size_axis.axvline(report["entropy_bits_per_weight"], color="black", linestyle="--",
                      label="entropy")
    size_axis.set_xlabel("bits per weight (lower is better)")
    size_axis.set_yticks([])
    size_axis.invert_yaxis()
    size_axis.legend(loc="lower right")
    figure.suptitle(f"Decoding {report['weights'] / 1e6:.0f} M weights "
                    f"({report['distribution']}, {report['entropy_bits_per_weight']:.2f} bits of "
                    f"entropy) on {report['machine']['cpu']}, {report['machine']['cores']} cores",
                    fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=int, default=50_000_000, help="number of weights")
    parser.add_argument("--distribution", choices=("laplace", "gaussian"), default="laplace")
    parser.add_argument("--entropy-bits", type=float, default=3.0,
                        help="target entropy per weight (2-4 is realistic)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs; the best counts")
    parser.add_argument("--lanes", type=int, default=4, help="rANS lanes of the .nrd file")
    parser.add_argument("--nncodec-python", help="python of an environment with nncodec installed")
    parser.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    parser.add_argument("--plot", metavar="PATH", help="also draw the report as a PNG")
    return parser


def main(argv=None, arguments=None, recorded: dict | None = None) -> int:
    """Run the benchmark from the command line; ``recorded`` (such as the commit and date the
    repository's benchmark script measures at) goes into the JSON first."""
    arguments = arguments or build_parser().parse_args(argv)
    report = run(arguments.weights, arguments.distribution, arguments.entropy_bits,
                 arguments.repeats, arguments.lanes, nncodec_python=arguments.nncodec_python)
    report = {**(recorded or {}), **report}
    print_report(report)
    if arguments.json:
        with open(arguments.json, "w", encoding="utf-8") as stream:
            json.dump(report, stream, indent=2)
    if arguments.plot:
        plot_report(report, arguments.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
