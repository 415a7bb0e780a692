"""Calibration time of the whole-model encoder on the CNN benchmarks: the calibration of earlier
versions against today's, in one process, one after the other, and what it does to the files.

The calibration side is everything :class:`~nncodec_rd.torch.model_encoder.ModelEncoder` does
before it quantizes: the layers' Hessians, their sensitivities and the non-weight tensors' grids.
Two settings of it:

- **earlier**: every convolution's Gram summed over its materialised patches
  (``convolution_gram="unfold"``) and each layer's sensitivity measured by perturbing it and
  running the model again (``sensitivity_estimator="perturbation"``), as every version did
  before this benchmark existed;
- **now**: the defaults (stride-1 convolutions' Grams from shifted inputs, where that takes
  fewer operations; every sensitivity from one backward pass a batch).

Each model's seconds are measured with nothing else running. Then, for the models with real
weights and data, ``cerwu`` files at one λ near the model's fidelity target (its
rate–fidelity benchmark's grid choice): files at λ values a factor 2 apart until two bracket
the model's fidelity target, the bits per weight there by interpolation (as in
``bench/rate_fidelity.py``); with each calibration and, to show what "noise" is here, with each
one's sensitivities measured again from another random draw (seed 1). Sizes are real file
sizes; fidelity is the rate–fidelity benchmark's measure.

Models: the three CNN benchmarks of ``make bench-rd`` (digits CNN, EasyOCR CRNN, EasyOCR CRAFT,
each with its own calibration batches) and a MobileNetV2-shaped network (53 layers: BatchNorm,
depthwise convolutions) with **random initialisation** on random 224 x 224 images: its seconds
only, its files would mean nothing.

    python bench/calibration_speed.py           # writes bench/results/calibration_speed.json
    python bench/calibration_speed.py --quick   # the digits CNN and the MobileNetV2 shape only
    python bench/calibration_speed.py --models minilm --output bench/results/calibration_speed_minilm.json
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import sys
import tempfile
import time
from dataclasses import replace

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # the repository root: `import bench.x`

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from bench.rate_fidelity import (  # noqa: E402
    Workload,
    interpolate_bits_at,
    machine_description,
    measure,
)
from bench.run_info import run_info, write_results  # noqa: E402
from nncodec_rd.encoder.settings import QuantizerSettings  # noqa: E402
from nncodec_rd.torch.hessians import run_batch  # noqa: E402
from nncodec_rd.torch.load import load_into, load_weights  # noqa: E402
from nncodec_rd.torch.model_encoder import ModelEncoder  # noqa: E402

CALIBRATIONS = {
    "earlier": {"convolution_gram": "unfold", "sensitivity_estimator": "perturbation"},
    "now": {},  # the defaults
}

# The first λ factor (× the encoder's default λ) tried when bracketing each model's target: that
# of the smallest cerwu file that met it in bench/results/<model>_rate_fidelity.json of
# 2026-12-05; the grid choice is that benchmark's.
FILE_LAM_FACTORS = {"digits": 16.0, "crnn": 64.0, "craft": 64.0, "minilm": 2.0}


def _mobilenet_v2_shape() -> nn.Module:
    """MobileNetV2's layout (inverted residuals: 1x1 expansion, 3x3 depthwise, 1x1
    projection, BatchNorm and ReLU6 between), 1000 classes, random initialisation."""

    def conv(inputs, outputs, kernel, stride=1, groups=1, activation=True):
        layers = [nn.Conv2d(inputs, outputs, kernel, stride, kernel // 2, groups=groups,
                            bias=False), nn.BatchNorm2d(outputs)]
        return layers + ([nn.ReLU6()] if activation else [])

    class Inverted(nn.Module):
        def __init__(self, inputs, outputs, stride, expansion):
            super().__init__()
            hidden = inputs * expansion
            layers = conv(inputs, hidden, 1) if expansion != 1 else []
            layers += conv(hidden, hidden, 3, stride, groups=hidden)
            layers += conv(hidden, outputs, 1, activation=False)
            self.body = nn.Sequential(*layers)
            self.residual = stride == 1 and inputs == outputs

        def forward(self, x):
            return x + self.body(x) if self.residual else self.body(x)

    blocks, channels = conv(3, 32, 3, 2), 32
    for expansion, outputs, repeats, stride in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2),
                                                (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                                                (6, 320, 1, 1)):
        for number in range(repeats):
            blocks.append(Inverted(channels, outputs, stride if number == 0 else 1, expansion))
            channels = outputs
    blocks += conv(channels, 1280, 1)
    model = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1280, 1000))
    with torch.no_grad():  # BatchNorm statistics of a trained network's order, not 0 and 1
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def mobilenet_workload(images: int = 32, batch_size: int = 16) -> Workload:
    """The MobileNetV2 shape on random images (seconds only: no fidelity)."""
    torch.manual_seed(0)
    model = _mobilenet_v2_shape()
    data = torch.randn(images, 3, 224, 224)
    return Workload(name="MobileNetV2 shape", model=model,
                    calibration_batches=list(torch.split(data, batch_size)),
                    evaluate=None, fidelity_name="", fidelity_target=0.0,
                    description=f"MobileNetV2's layout with random initialisation, "
                                f"{sum(p.numel() for p in model.parameters()):,} parameters; "
                                f"{images} random images of 224 x 224 in batches of "
                                f"{batch_size}")


MODELS = ("digits", "crnn", "craft", "mobilenet", "minilm")
"""What ``--models`` may name; the CNN benchmarks and the MobileNetV2 shape by default, the
transformer (all-MiniLM-L6-v2, whose λ unit and files the estimator moves too) on request."""

DEFAULT_MODELS = MODELS[:4]


def _workload(name: str) -> tuple[Workload, str | None]:
    """(the model's workload, its rate–fidelity benchmark's grid choice or None)."""
    if name == "mobilenet":
        return mobilenet_workload(), None
    module = importlib.import_module(f"bench.{name}_rate_fidelity")
    return module.build_workload(), getattr(module, "GRID_CHOICE", None)


def _calibrate(workload: Workload, calibration: dict) -> tuple[ModelEncoder, dict]:
    start = time.perf_counter()
    encoder = ModelEncoder(workload.model, workload.calibration_batches, progress=False,
                           **calibration)
    seconds = {"hessians": encoder.hessian_seconds,
               "sensitivities": encoder.sensitivity_seconds,
               "nonweights": encoder.nonweight_seconds,
               "total": time.perf_counter() - start}
    return encoder, seconds


def _file(workload: Workload, encoder: ModelEncoder, settings: QuantizerSettings,
          originals: dict, folder: str) -> dict:
    path = os.path.join(folder, "file.nrd")
    outcome = encoder.encode(settings, path)
    load_into(workload.model, path)
    fidelity, _ = measure(workload, workload.model)
    load_weights(workload.model, originals)
    with open(path, "rb") as stream:
        digest = hashlib.sha256(stream.read()).hexdigest()[:16]
    os.unlink(path)
    return {"bytes": outcome.size_bytes, "bits_per_weight": outcome.bits_per_weight,
            "fidelity": fidelity, "sha256_16": digest}


def _bits_at_target(workload: Workload, encoder: ModelEncoder, settings: QuantizerSettings,
                    base_lam: float, factor: float, originals: dict, folder: str) -> dict:
    """Files at λ factors a factor 2 apart, from ``factor`` on, until two neighbours bracket
    the fidelity target; the bits there by linear interpolation (the rate–fidelity
    benchmark's rule)."""
    points, tried = [], set()
    for _ in range(6):
        tried.add(factor)
        point = _file(workload, encoder, replace(settings, lam=base_lam * factor), originals,
                      folder)
        points.append({"lam_factor": factor, **point})
        passing = [p["lam_factor"] for p in points if p["fidelity"] >= workload.fidelity_target]
        failing = [p["lam_factor"] for p in points if p["fidelity"] < workload.fidelity_target]
        if passing and failing and any(2 * f in failing for f in passing):
            break
        factor = max(passing) * 2 if passing else min(failing) / 2
        if factor in tried:
            break
    return {"points": points,
            "bits_at_target": interpolate_bits_at(points, workload.fidelity_target)}


def run_model(name: str, workload: Workload, grid_choice: str | None, folder: str) -> dict:
    """Both calibrations of one model: seconds, Hessian agreement, sensitivities, files."""
    entry = {"description": workload.description, "calibrations": {}}
    with torch.no_grad():  # one pass first: start-up costs fall on neither calibration
        for batch in workload.calibration_batches:
            run_batch(workload.model, batch)
    encoders = {}
    for label, calibration in CALIBRATIONS.items():
        encoder, seconds = _calibrate(workload, calibration)
        encoders[label] = encoder
        entry["calibrations"][label] = {"options": calibration, "seconds": seconds}
        print(f"{name:8s} {label:8s} " + "  ".join(f"{k} {v:6.1f} s"
                                                   for k, v in seconds.items()), flush=True)
    earlier, now = encoders["earlier"], encoders["now"]
    entry["layers"] = len(now.layers)
    entry["speedup"] = (entry["calibrations"]["earlier"]["seconds"]["total"]
                        / entry["calibrations"]["now"]["seconds"]["total"])
    entry["hessian_max_relative_difference"] = max(
        float(np.abs(a.problem.hessian - b.problem.hessian).max()
              / max(np.abs(a.problem.hessian).max(), 1e-300))
        for a, b in zip(earlier.layers, now.layers) if a.problem.hessian is not None)
    log_ratio = np.log10([b.sensitivity / a.sensitivity
                          for a, b in zip(earlier.layers, now.layers)])
    entry["sensitivity_log10_ratio"] = {"mean_abs": float(np.mean(np.abs(log_ratio))),
                                        "max_abs": float(np.max(np.abs(log_ratio)))}
    if workload.evaluate is None:
        return entry
    originals = {key: value.detach().clone() for key, value in workload.model.state_dict().items()}
    base_lam = now.default_lam()
    settings = QuantizerSettings(method="cerwu", lam=base_lam, grid_choice=grid_choice or "auto")
    entry["files"] = {"first_lam_factor": FILE_LAM_FACTORS[name], "base_lam": base_lam,
                      "grid_choice": settings.grid_choice,
                      "fidelity_target": workload.fidelity_target}
    for label, encoder in encoders.items():
        estimator = CALIBRATIONS[label].get("sensitivity_estimator", "gradient")
        first = [layer.sensitivity for layer in encoder.layers]
        entry["files"][label] = _bits_at_target(workload, encoder, settings, base_lam,
                                                FILE_LAM_FACTORS[name], originals, folder)
        # the same calibration with the sensitivities drawn again: the files' own noise
        encoder.measure_sensitivities(workload.calibration_batches[:1], seed=1,
                                      estimator=estimator)
        second = [layer.sensitivity for layer in encoder.layers]
        entry["files"][f"{label}, sensitivities seed 1"] = _bits_at_target(
            workload, encoder, settings, base_lam, FILE_LAM_FACTORS[name], originals, folder)
        ratio = np.log10(np.array(second) / np.array(first))
        entry[f"sensitivity_log10_ratio_seed_1_{label}"] = {
            "mean_abs": float(np.mean(np.abs(ratio))), "max_abs": float(np.max(np.abs(ratio)))}
        for key in (label, f"{label}, sensitivities seed 1"):
            found = entry["files"][key]
            points = ", ".join(f"x{p['lam_factor']:g}: {p['bits_per_weight']:.4f} bits "
                               f"{p['fidelity']:.5f}" for p in found["points"])
            bits = found["bits_at_target"]
            print(f"{name:8s} {key:32s} at target: "
                  f"{'none' if bits is None else f'{bits:.4f}'} bits/weight ({points})",
                  flush=True)
    return entry


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="the digits CNN and the MobileNetV2 shape only, nothing written")
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS),
                        help=f"comma-separated, of {', '.join(MODELS)} (default: "
                             f"{','.join(DEFAULT_MODELS)})")
    parser.add_argument("--output", default=os.path.join(HERE, "results",
                                                         "calibration_speed.json"))
    arguments = parser.parse_args(argv)
    names = ["digits", "mobilenet"] if arguments.quick else arguments.models.split(",")
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    command = "python bench/calibration_speed.py" + (" --quick" if arguments.quick else "")
    if not arguments.quick and names != list(DEFAULT_MODELS):
        command += f" --models {','.join(names)}"
    report = {"command": command, **run_info(), "machine": machine_description(),
              "torch_threads": torch.get_num_threads(), "models": {}}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        for name in names:
            workload, grid_choice = _workload(name)
            key = "mobilenet_v2_shape" if name == "mobilenet" else name
            report["models"][key] = run_model(name, workload, grid_choice, folder)
    report["total_seconds"] = time.perf_counter() - started
    if not arguments.quick:
        write_results(report, arguments.output)
    else:
        print(json.dumps({name: {"speedup": model["speedup"]}
                          for name, model in report["models"].items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
