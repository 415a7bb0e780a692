"""Rate–fidelity benchmark on a real model: our four methods against NNCodec, in one run.

For each method a sweep of λ writes real .nrd files; each file is decoded by the production
decoder into the model, whose fidelity is then measured. NNCodec (in its own environment, see
:mod:`bench.nncodec_peer`) codes the same state dict at a sweep of its
quantization parameter; its decoded tensors go into the same model and the same measurement.

Sizes are real file sizes, reported in bits per coded weight: 8 × file bytes / the number of
weights in the layers the encoder quantizes (biases, norms and buffers travel in the same files,
raw in ours and at NNCodec's fine ``nonweight_qp`` in NNCodec's, and count in the numerator).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from bench.nncodec_peer import find_nncodec_python, run_nncodec_sweep
from bench.run_info import run_info
from nncodec_rd import decode_speed
from nncodec_rd.encoder.entropy import EntropySettings
from nncodec_rd.encoder.methods import METHODS
from nncodec_rd.encoder.settings import QuantizerSettings
from nncodec_rd.torch.load import load_into, load_weights
from nncodec_rd.torch.model_encoder import ModelEncoder
from nncodec_rd.torch.nonweights import NonWeightPlan

DEFAULT_LAM_FACTORS = (0.5, 1, 2, 4, 8, 16, 32)


@dataclass
class Workload:
    """A model, its calibration batches and a fidelity measure (higher is better)."""

    name: str
    model: torch.nn.Module
    calibration_batches: list
    evaluate: object          # callable(model) -> float, or a mapping (see :func:`measure`)
    fidelity_name: str
    fidelity_target: float    # "equal fidelity": the level at which sizes are compared
    description: str = ""


def machine_description() -> dict:
    """CPU, cores and versions (those of the decode benchmark, plus torch)."""
    return {**decode_speed.machine_description(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads()}


def measure(workload: Workload, model) -> tuple[float, dict]:
    """``model``'s fidelity and the further figures of the same measurement: ``evaluate``
    returns the fidelity, or a mapping with it under ``"fidelity"`` and further figures (numbers,
    by name) beside it, which every point of the report records under ``"figures"``."""
    value = workload.evaluate(model)
    if isinstance(value, dict):
        figures = {name: float(figure) for name, figure in value.items() if name != "fidelity"}
        return float(value["fidelity"]), figures
    return float(value), {}


def bracket(points: list[dict], target: float, fidelity=lambda point: point["fidelity"]):
    """``(lower, upper, share)``: the two neighbouring points of a curve (ordered by
    ``"bits_per_weight"``) whose ``fidelity`` brackets ``target`` at the smallest rate, and how
    far between them the target lies (0 at ``lower``, 1 at ``upper``); None if no two do (never
    reached, or reached below the measured range: no extrapolation).

    >>> curve = [{"bits_per_weight": 2.0, "fidelity": 0.9},
    ...          {"bits_per_weight": 4.0, "fidelity": 1.0}]
    >>> round(bracket(curve, 0.95)[2], 6)
    0.5
    """
    ordered = sorted(points, key=lambda point: point["bits_per_weight"])
    for lower, upper in zip(ordered, ordered[1:]):
        if fidelity(lower) < target <= fidelity(upper):
            return lower, upper, (target - fidelity(lower)) / (fidelity(upper) - fidelity(lower))
    return None


def interpolate_bits_at(points: list[dict], target: float) -> float | None:
    """Bits per weight at fidelity ``target`` on a curve of ``{"bits_per_weight", "fidelity"}``
    points, linear between the two points that :func:`bracket` it; None if none do."""
    found = bracket(points, target)
    if found is None:
        return None
    lower, upper, share = found
    return lower["bits_per_weight"] + share * (upper["bits_per_weight"]
                                               - lower["bits_per_weight"])


def _progress(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


GRID_CHOICE_SUFFIX = "+grid"
"""Curves of methods run with ``grid_choice="rd"`` are labelled ``<method>+grid``."""


def curve_label(method: str, grid_choice: str) -> str:
    """The name of a curve: the method alone with the library's default grid choice
    (``auto``), else with :data:`GRID_CHOICE_SUFFIX` where the layers pick their grids."""
    if grid_choice == "auto":
        return method
    return method + (GRID_CHOICE_SUFFIX if METHODS[method].resolved_grid_choice(grid_choice) == "rd"
                     else "")


LEVERS = {
    "raw non-weights": "biases, norms and statistics stored raw (compress(nonweights=False))",
    "per-row rd": "a step per row where it pays (compress(per_channel=\"rd\"))",
    "uniform embedding rows": "every token's embedding row weighted alike, not by its "
                              "frequency in the calibration text "
                              "(compress(embedding_smoothing=math.inf))",
    "trellis": "trellis-coded quantization tried on every layer of one step, kept where it "
               "lowers D/λ + R (format 1.1, compress(trellis=True))",
}
"""One change at a time against the library's defaults: curves of ``cerwu`` named
``cerwu [LEVER]``, in the same run as the default's (the lever table of docs/rate-fidelity.md);
``optq`` (no rate-aware decisions) and ``rtn`` (no OBS update) are the methods' own curves."""

LEVER_METHOD = "cerwu"


@contextlib.contextmanager
def lever_applied(encoder: ModelEncoder, lever: str):
    """``encoder`` with one lever of :data:`LEVERS` changed, restored on leaving."""
    if lever == "raw non-weights":
        kept = encoder.nonweight_plan
        encoder.nonweight_plan = NonWeightPlan()
        try:
            yield
        finally:
            encoder.nonweight_plan = kept
    elif lever == "per-row rd":
        kept = [layer.per_channel for layer in encoder.layers]
        for layer in encoder.layers:
            if layer.per_channel is False and layer.kind != "transposed_linear":
                layer.per_channel = "rd"
        try:
            yield
        finally:
            for layer, value in zip(encoder.layers, kept):
                layer.per_channel = value
    elif lever == "uniform embedding rows":
        # The same as an encoder made with embedding_smoothing=math.inf: the row weights sum
        # to 2 either way, so the measured sensitivities do not move.
        embeddings = [layer for layer in encoder.layers if layer.kind == "embedding"]
        kept = [layer.problem.row_scale for layer in embeddings]
        for layer in embeddings:
            rows = len(layer.problem.row_scale)
            layer.problem.row_scale = np.full(rows, 2.0 / rows)
        try:
            yield
        finally:
            for layer, value in zip(embeddings, kept):
                layer.problem.row_scale = value
    elif lever == "trellis":
        yield  # a setting of the quantizer, not of the encoder: see run_ours
    else:
        raise ValueError(f"unknown lever {lever!r}; choose from {', '.join(LEVERS)}")


def run_ours(workload: Workload, folder: str, methods, lam_factors, *, sensitivity: bool = True,
             per_channel: bool | str = False, grid_scale: float = 1.0, lams: dict | None = None,
             entropy: EntropySettings | None = None, grid_choices=("auto",),
             pipelines=("whole",), levers=()) -> dict:
    """Every method (for each of ``grid_choices`` and ``pipelines``: ``"whole"``, the
    :class:`ModelEncoder` of the whole model, ``"sequential"``, the block-sequential encoder of
    :mod:`nncodec_rd.torch.sequential`, curves named METHOD+seq) over the λ sweep: real files,
    decoded, measured; then ``cerwu`` with each of ``levers`` (:data:`LEVERS`) changed, curves
    named ``cerwu [LEVER]``. Returns the curves."""
    start = time.perf_counter()
    encoder = ModelEncoder(workload.model, workload.calibration_batches,
                           sensitivity=sensitivity, progress=False)
    setup_seconds = time.perf_counter() - start
    base_lam = encoder.default_lam()
    originals = {key: value.detach().clone() for key, value in workload.model.state_dict().items()}
    curves = {}
    raw_weights: dict = {}
    runs = [(m, g, p, None) for m in methods for g in grid_choices for p in pipelines]
    runs += [(LEVER_METHOD, grid_choices[0], "whole", lever) for lever in levers]
    skipped_levers = {}
    for method, grid_choice, pipeline, lever in runs:
        label = curve_label(method, grid_choice) + ("+seq" if pipeline == "sequential" else "")
        if lever is not None:
            label += f" [{lever}]"
        if lever == "per-row rd" and not any(layer.problem.groups > 1
                                             for layer in encoder.layers):
            # per_channel="rd" tries only grouped layers: the files would be cerwu's own
            skipped_levers[lever] = "no grouped or depthwise layer: the files would be cerwu's"
            continue
        if lever == "uniform embedding rows" and not any(layer.kind == "embedding"
                                                        for layer in encoder.layers):
            skipped_levers[lever] = "no embedding: the files would be cerwu's"
            continue
        points = []
        sequential_base = None
        channel_steps = per_channel
        for factor in (lams or {}).get(label, lam_factors):
            lam = base_lam * factor
            path = os.path.join(folder, f"{workload.name}-{label}-{factor:g}.nrd")
            settings = QuantizerSettings(method=method, lam=lam, grid_scale=grid_scale,
                                         per_channel=channel_steps,
                                         grid_choice=grid_choice,
                                         trellis=lever == "trellis",
                                         entropy=entropy or EntropySettings())
            if pipeline == "sequential":
                # Its sensitivities are relative to each block's output, so its λ has other
                # units: the sweep is around its own default λ (from the first block).
                from nncodec_rd.torch.sequential import SequentialEncoder

                sequential_encoder = SequentialEncoder(
                    workload.model, workload.calibration_batches, sensitivity=sensitivity,
                    per_channel=channel_steps, progress=False)
                if sequential_base is None:
                    sequential_base = sequential_encoder.initial_lam()
                lam = sequential_base * factor
                outcome = sequential_encoder.encode(replace(settings, lam=lam), path, lam=lam)
            elif lever is not None:
                with lever_applied(encoder, lever):
                    outcome = encoder.encode(settings, path)
            else:
                outcome = encoder.encode(settings, path)
            decode_start = time.perf_counter()
            load_into(workload.model, path)
            decode_seconds = time.perf_counter() - decode_start
            fidelity, figures = measure(workload, workload.model)
            load_weights(workload.model, originals)
            grids = [layer.grid for layer in outcome.layers]
            points.append({"lam": lam, "lam_factor": factor, "bytes": outcome.size_bytes,
                           "grids": {grid: grids.count(grid) for grid in sorted(set(grids))},
                           "bits_per_weight": outcome.bits_per_weight, "fidelity": fidelity,
                           "transform_bytes": outcome.transform_bytes,
                           "transform_layers": outcome.transform_layers,
                           "encode_seconds": outcome.encode_seconds,
                           "decode_seconds": decode_seconds,
                           # weight matrices no coded layer holds (an LSTM's), stored raw
                           "raw_weights": sum(outcome.raw_weights.values()),
                           **({"figures": figures} if figures else {})})
            raw_weights = dict(outcome.raw_weights)
            _progress(f"{workload.name} {label:8s} lambda x{factor:<5g} "
                      f"{outcome.bits_per_weight:6.3f} bits/weight  {workload.fidelity_name} "
                      f"{fidelity:.5f}  encode {outcome.encode_seconds:.1f} s")
            os.unlink(path)
        curves[label] = points
    kinds: dict = {}
    for layer in encoder.layers:  # what the encoder codes, by layer type
        entry = kinds.setdefault(layer.kind, {"layers": 0, "weights": 0})
        entry["layers"] += 1
        entry["weights"] += int(layer.problem.weights.size)
    return {"curves": curves, "coded_weights": encoder.coded_weights,
            "coded_layer_kinds": kinds, "raw_weights": raw_weights,
            "skipped_levers": skipped_levers,
            "hessian_seconds": encoder.hessian_seconds,
            "sensitivity_seconds": encoder.sensitivity_seconds,
            "nonweight_seconds": encoder.nonweight_seconds,
            "setup_seconds": setup_seconds, "base_lam": base_lam}


def run_nncodec(workload: Workload, folder: str, qps, coded_weights: int,
                python: str | None = None) -> dict:
    """NNCodec over its qp sweep on the model's float32 state dict; decoded and measured."""
    python = find_nncodec_python(python)
    if python is None:
        return {"measured": False, "reason": "no NNCodec environment: run "
                                             "bench/setup_nncodec_env.sh"}
    state = workload.model.state_dict()
    tensors = {key: value.detach().cpu().numpy() for key, value in state.items()
               if value.dtype == torch.float32}
    originals = {key: value.detach().clone() for key, value in state.items()}
    results = run_nncodec_sweep(tensors, list(qps), folder, python=python,
                                progress=lambda line: _progress(f"NNCodec {line}"))
    points = []
    for result in results:
        with np.load(result["decoded_path"]) as decoded:
            load_weights(workload.model, {key: decoded[key] for key in decoded.files})
        fidelity, figures = measure(workload, workload.model)
        load_weights(workload.model, originals)
        points.append({"qp": result["qp"], "bytes": result["bytes"],
                       "bits_per_weight": 8.0 * result["bytes"] / coded_weights,
                       "fidelity": fidelity, "encode_seconds": result["encode_seconds"],
                       "decode_seconds": result["decode_seconds"],
                       **({"figures": figures} if figures else {})})
        _progress(f"{workload.name} NNCodec qp {result['qp']:4d} "
                  f"{points[-1]['bits_per_weight']:6.3f} bits/weight  {workload.fidelity_name} "
                  f"{fidelity:.5f}")
        for path in (result["decoded_path"], result.get("bitstream_path")):
            if path and os.path.exists(path):
                os.unlink(path)
    return {"measured": True, "curve": points, "use_dq": True,
            "note": "NNCodec 2.1.3 defaults (dependent quantization on), data-free"}


def compare_at_target(report: dict) -> dict:
    """Bits per weight of every curve at the workload's fidelity target, and ratios to NNCodec."""
    target = report["fidelity_target"]
    at_target = {method: interpolate_bits_at(points, target)
                 for method, points in report["ours"]["curves"].items()}
    if report["nncodec"].get("measured"):
        at_target["NNCodec"] = interpolate_bits_at(report["nncodec"]["curve"], target)
    reference = at_target.get("NNCodec")
    ratios = {method: (bits / reference if bits is not None and reference else None)
              for method, bits in at_target.items()}
    return {"bits_per_weight_at_target": at_target, "ratio_to_nncodec": ratios}


def run_workload(workload: Workload, folder: str, *, methods=METHODS,
                 lam_factors=DEFAULT_LAM_FACTORS, qps=None, nncodec_python=None,
                 baseline: float | None = None, **options) -> dict:
    """The whole benchmark for one workload: our curves, NNCodec's, and the comparison."""
    os.makedirs(folder, exist_ok=True)
    start = time.perf_counter()
    original_figures = {}
    if baseline is None:
        baseline, original_figures = measure(workload, workload.model)
    ours = run_ours(workload, folder, methods, lam_factors, **options)
    nncodec = (run_nncodec(workload, folder, qps, ours["coded_weights"], nncodec_python)
               if qps else {"measured": False, "reason": "skipped"})
    report = {"workload": workload.name, "description": workload.description,
              "fidelity_name": workload.fidelity_name,
              "fidelity_target": workload.fidelity_target, "original_fidelity": baseline,
              "machine": machine_description(), "options": {k: str(v) for k, v in
                                                             options.items()},
              "ours": ours, "nncodec": nncodec,
              "wall_seconds": time.perf_counter() - start}
    if original_figures:
        report["original_figures"] = original_figures
    report["comparison"] = compare_at_target(report)
    return report


def load_report(path: str) -> dict:
    """A report written by :func:`write_report`."""
    with open(path, encoding="utf-8") as stream:
        return json.load(stream)


def merge_reports(stored: dict, new: dict) -> dict:
    """``new`` with the curves of ``stored`` for the methods ``new`` did not run (and its NNCodec
    curve if ``new`` skipped NNCodec); the comparison is recomputed. Each curve's points keep the
    run they came from; ``merged_from`` lists which methods came from the stored report."""
    merged = dict(new)
    curves = dict(stored["ours"]["curves"])
    kept = [method for method in curves if method not in new["ours"]["curves"]]
    curves.update(new["ours"]["curves"])
    merged["ours"] = {**new["ours"], "curves": curves}
    if not new["nncodec"].get("measured") and stored["nncodec"].get("measured"):
        merged["nncodec"] = stored["nncodec"]
        kept.append("NNCodec")
    merged["merged_from"] = {"methods": kept, "original_fidelity": stored["original_fidelity"]}
    merged["comparison"] = compare_at_target(merged)
    return merged


def write_report(report: dict, stem: str) -> None:
    """``stem.json``, ``stem.png`` (the curves) and ``stem.md`` (a table)."""
    with open(stem + ".json", "w", encoding="utf-8") as stream:
        json.dump(report, stream, indent=2)
    with open(stem + ".md", "w", encoding="utf-8") as stream:
        stream.write(markdown_table(report))
    plot_report(report, stem + ".png")


def markdown_table(report: dict) -> str:
    """The comparison at the fidelity target, then every measured point."""
    name = report["fidelity_name"]
    lines = [f"Fidelity target: {name} ≥ {report['fidelity_target']:.4g} "
             f"(original model: {report['original_fidelity']:.4g}).", "",
             "| coder | bits/weight at target | vs NNCodec |", "| --- | --- | --- |"]
    comparison = report["comparison"]
    for method, bits in comparison["bits_per_weight_at_target"].items():
        ratio = comparison["ratio_to_nncodec"].get(method)
        lines.append(f"| {method} | {'not reached' if bits is None else f'{bits:.3f}'} | "
                     f"{'-' if ratio is None else f'{ratio:.3f}'} |")
    nncodec_points = report["nncodec"]["curve"] if report["nncodec"].get("measured") else []
    # further figures of the measurement (string agreement), one column each
    extra = list(report.get("original_figures", {}))
    lines += ["", f"| coder | setting | bits/weight | {name} | "
                  + "".join(f"{figure} | " for figure in extra) + "encode s | decode s |",
              "| --- " * (6 + len(extra)) + "|"]

    def extra_cells(point: dict) -> str:
        return "".join(f"{point.get('figures', {}).get(figure, float('nan')):.4f} | "
                       for figure in extra)

    for method, points in report["ours"]["curves"].items():
        for point in points:
            matrix = (f" (matrices {8.0 * point['transform_bytes'] / report['ours']['coded_weights']:.3f}"
                      f" bits/weight, {point['transform_layers']} layers)"
                      if point.get("transform_bytes") else "")
            lines.append(f"| {method} | λ×{point['lam_factor']:g} | "
                         f"{point['bits_per_weight']:.3f}{matrix} | {point['fidelity']:.5f} | "
                         f"{extra_cells(point)}"
                         f"{point['encode_seconds']:.1f} | {point['decode_seconds']:.2f} |")
    for point in nncodec_points:
        lines.append(f"| NNCodec | qp {point['qp']} | {point['bits_per_weight']:.3f} | "
                     f"{point['fidelity']:.5f} | {extra_cells(point)}"
                     f"{point['encode_seconds']:.1f} | {point['decode_seconds']:.2f} |")
    ours = report["ours"]
    raw = ours.get("raw_weights") or {}
    nonweights = (f", non-weight grids: {ours['nonweight_seconds']:.1f} s"
                  if "nonweight_seconds" in ours else "")
    lines += ["", f"Hessians: {ours['hessian_seconds']:.1f} s, layer sensitivities: "
                  f"{ours['sensitivity_seconds']:.1f} s{nonweights}, "
                  f"{ours['coded_weights']:,} coded weights"
                  + (f"; stored raw in our files (no coded layer holds them): {len(raw)} weight "
                     f"tensors, {sum(raw.values()):,} weights" if raw else "") + ".",
              *([f"Curves of {', '.join(report['merged_from']['methods'])} are from the stored "
                 f"results of an earlier run (merged with --merge)."]
                if report.get("merged_from") else []),
              f"Machine: {report['machine']['cpu']}, {report['machine']['cores']} cores, "
              f"Python {report['machine']['python']}, torch {report['machine']['torch']}.", ""]
    return "\n".join(lines)


def plot_report(report: dict, path: str) -> None:
    """Rate–fidelity curves of every coder, with the target level drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    curves = dict(report["ours"]["curves"])
    if report["nncodec"].get("measured"):
        curves["NNCodec 2.1.3"] = report["nncodec"]["curve"]
    for label, points in curves.items():
        ordered = sorted(points, key=lambda point: point["bits_per_weight"])
        axes.plot([p["bits_per_weight"] for p in ordered], [p["fidelity"] for p in ordered],
                  marker="o", label=label, linestyle="--" if label.startswith("NNCodec") else "-")
    axes.axhline(report["fidelity_target"], color="grey", linewidth=0.8, linestyle=":")
    axes.set_xlabel("bits per coded weight (real file size)")
    axes.set_ylabel(report["fidelity_name"])
    target = report["fidelity_target"]
    low = min(target - 3 * (report["original_fidelity"] - target), target)
    axes.set_ylim(low, report["original_fidelity"] + 0.1 * (report["original_fidelity"] - low))
    axes.set_title(f"{report['workload']}: rate–fidelity")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def bench_main(argv, *, description: str, build_workload, output: str, lam_factors: str,
               qps, quick_factors, methods=None, grid_choice: str = "auto") -> int:
    """The command line shared by the scripts in ``bench/``: sweep, NNCodec, write results
    (``output``: the default path stem of the results; ``methods`` and ``grid_choice``: the
    script's defaults, every method and the library's default grid choice unless given)."""
    default_methods = ",".join(methods or METHODS)
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--output", default=output,
                        help="path stem of the .json/.png/.md results")
    parser.add_argument("--methods", default=default_methods)
    parser.add_argument("--lam-factors", default=lam_factors,
                        help="λ values as multiples of the default λ (steps ≈ RMS/16)")
    parser.add_argument("--qps", default=",".join(map(str, qps)),
                        help="NNCodec quantization parameters ('' to skip NNCodec)")
    parser.add_argument("--nncodec-python", help="python of the NNCodec environment")
    parser.add_argument("--grid-choice", default=grid_choice,
                        choices=("fixed", "rd", "auto", "both"),
                        help=f"(default here: {grid_choice}) auto: the library's default, "
                             "what users get (curves named METHOD); fixed: the λ rule's grid for every layer; rd: each "
                             "layer picks its grid by rate-distortion (curves named METHOD+grid); "
                             "both: fixed and rd")
    parser.add_argument("--pipeline", default="whole", choices=("whole", "sequential", "both"),
                        help="whole (default): Hessians of the whole model at once; sequential: "
                             "block by block, each block calibrated on the quantized blocks "
                             "before it (curves named METHOD+seq); both")
    parser.add_argument("--levers", default=",".join(LEVERS),
                        help=f"cerwu curves with one change each ('' for none): "
                             f"{'; '.join(f'{k}: {v}' for k, v in LEVERS.items())}")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 λ, no NNCodec")
    parser.add_argument("--merge", action="store_true",
                        help="keep the stored results (OUTPUT.json) of the methods not run now, "
                             "and its NNCodec curve if NNCodec is skipped")
    arguments = parser.parse_args(argv)
    measured_at = run_info()  # the code measured: HEAD when the run starts
    stored = None
    if arguments.merge and os.path.exists(arguments.output + ".json"):
        stored = load_report(arguments.output + ".json")
        if stored.get("grid_choice", "fixed") != arguments.grid_choice:
            # curves are named by method alone under auto and fixed alike: never mix them
            parser.error(f"--merge: {arguments.output}.json holds --grid-choice "
                         f"{stored.get('grid_choice', 'fixed')} curves, not "
                         f"{arguments.grid_choice}")
    factors = [float(f) for f in arguments.lam_factors.split(",")]
    chosen_qps = [int(q) for q in arguments.qps.split(",") if q.strip()]
    if arguments.quick:
        factors, chosen_qps = list(quick_factors), []
    started = time.perf_counter()
    workload = build_workload()
    os.makedirs(os.path.dirname(arguments.output) or ".", exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        report = run_workload(workload, folder, methods=arguments.methods.split(","),
                              lam_factors=factors, qps=chosen_qps,
                              nncodec_python=arguments.nncodec_python,
                              grid_choices=(("fixed", "rd") if arguments.grid_choice == "both"
                                            else (arguments.grid_choice,)),
                              pipelines=(("whole", "sequential") if arguments.pipeline == "both"
                                         else (arguments.pipeline,)),
                              levers=[lever for lever in arguments.levers.split(",") if lever])
    # the whole run, the model, images and calibration batches built included
    # the sweep run, and whether it is the script's whole default sweep (the page says so)
    full = (arguments.methods == default_methods and factors == [float(f) for f in
                                                                   lam_factors.split(",")]
            and chosen_qps == list(qps) and arguments.levers == ",".join(LEVERS))
    report.update(measured_at, grid_choice=arguments.grid_choice, quick=arguments.quick,
                  sweep={"full": full and arguments.grid_choice == grid_choice,
                         "methods": arguments.methods.split(","),
                         "lam_factors": factors, "qps": chosen_qps},
                  total_seconds=time.perf_counter() - started)
    if stored is not None:
        # the stored curves kept were measured at other commits: the page must say so
        report = merge_reports(stored, report)
        report["merged"] = True
    write_report(report, arguments.output)
    with open(arguments.output + ".md", encoding="utf-8") as stream:
        print(stream.read())
    return 0
