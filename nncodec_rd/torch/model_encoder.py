"""Compress a PyTorch model with calibration data, and load an .nrd file back into a model.

:func:`compress` collects the layer Hessians once, quantizes every supported layer with one global
λ (:mod:`nncodec_rd.encoder.obs`), and writes the whole state dict: quantized layer weights
entropy-coded, everything else (biases, norms, buffers) stored raw. ``target_bpw`` and
``target_metric`` search λ by bisection on the real file, reusing the Hessians.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from ..format.errors import EncoderError
from ..format.grids import EntropySettings, RightMatrixTransform, UniformGrid
from ..encoder.executor import executor_from, opened_executor
from ..encoder.methods import DEFAULT_GRID_CHOICE, model_entropy_settings
from ..encoder.obs import (LayerProblem, LayerResult, QuantizerSettings, layer_distortion,
                           quantize_layer)
from ..encoder.transform import (FALLBACK_METHOD, TRANSFORM_METHODS, TransformLayerResult,
                                 quantize_transform_group)
from ..encoder.writer import NrdWriter
from .hessians import (collect_hessians, find_layers, first_tensor, matrix_to_stored_layout,
                       run_batch, weight_matrix)
from .progress import Progress
from .state_dict import numpy_to_tensor, tensor_to_numpy

TRANSFORM_PREFIX = "__transform__/"
"""Names of the matrices of transform-coded layers (spec §6.4) start with this; they are no
parameters of the model, and :func:`load_into` skips them."""

TRANSFORM_MATRIX_KIND = "transform matrix"  # LayerSummary.kind of a transform's matrix

FORMAT_OF_TORCH_DTYPE = {torch.float32: "float32", torch.float16: "float16",
                         torch.bfloat16: "bfloat16"}


@dataclass
class LayerSummary:
    """One coded layer in a :class:`CompressionResult`."""

    name: str
    shape: tuple
    kind: str
    steps: int
    payload_bytes: int
    bits_per_weight: float
    distortion: float
    seconds: float
    grid: str = ""
    """How the layer's grid was chosen (``λ rule``, or the candidate ``grid_choice="rd"``
    kept: ``step x1.19``, ``15 bins``)."""


@dataclass
class CompressionResult:
    """What :func:`compress` did: the file, its real size, and a row per coded layer."""

    path: str | None
    size_bytes: int
    coded_weights: int
    method: str
    lam: float
    layers: list = field(default_factory=list)
    hessian_seconds: float = 0.0
    encode_seconds: float = 0.0
    lam_trials: list = field(default_factory=list)
    results: dict | None = field(default=None, repr=False)
    transform_bytes: int = 0
    """Payload bytes of the transform matrices (inside ``size_bytes``; 0 without transforms)."""
    transform_layers: int = 0
    """Layers coded as coefficients times a matrix."""
    sqnr: object = field(default=None, repr=False)
    """The weights' signal-to-quantization-noise ratios
    (:class:`~nncodec_rd.encoder.fidelity.SqnrReport`), where the encoder recorded them."""
    fidelity: float | None = None
    """The model output's mean cosine on held-out data, where a fidelity target was given."""
    quantize_seconds: float = 0.0
    """Wall time of the quantization phase: the layers quantized (wherever the executor ran
    them) and written, calibration and the rest of the encode not included."""

    @property
    def bits_per_weight(self) -> float:
        """File bits (everything included) per coded weight."""
        return 8.0 * self.size_bytes / max(self.coded_weights, 1)

    def summary(self) -> str:
        """A table: layer, shape, bits/weight, distortion, time; then the totals."""
        lines = [f"{'layer':<48} {'shape':>14} {'bits/w':>7} {'distortion':>11} {'time s':>7}"
                 f"  grid"]
        for layer in self.layers:
            shape = "x".join(str(d) for d in layer.shape)
            lines.append(f"{layer.name[-48:]:<48} {shape:>14} {layer.bits_per_weight:7.3f} "
                         f"{layer.distortion:11.4g} {layer.seconds:7.2f}  {layer.grid}")
        lines.append(f"total: {self.size_bytes:,} bytes, {self.bits_per_weight:.3f} bits per coded "
                     f"weight ({self.coded_weights:,} weights), method {self.method}, "
                     f"lambda {self.lam:.4g}; "
                     + (f"transform matrices {self.transform_bytes:,} bytes "
                        f"({8.0 * self.transform_bytes / max(self.coded_weights, 1):.3f} bits per "
                        f"coded weight) for {self.transform_layers} layers; "
                        if self.transform_layers else "")
                     + f"Hessians {self.hessian_seconds:.1f} s, "
                     f"quantize+code {self.encode_seconds:.1f} s")
        return "\n".join(lines)


@dataclass
class _Layer:
    name: str          # module name
    parameter: str     # state-dict key of its weight
    kind: str
    problem: LayerProblem
    stored_shape: tuple
    dtype: str
    per_channel: bool
    sensitivity: float = 1.0  # output error per unit of layer loss (measure_sensitivities)


def make_layer(name: str, parameter: str, module, kind: str, hessian, row_scale,
               per_channel: bool, dtype: torch.dtype | None = None) -> _Layer:
    """A layer to quantize: its float64 weight matrix and Hessian, and how the file stores it
    (``dtype``: the stored dtype if not the module's, such as a checkpoint's bfloat16)."""
    problem = LayerProblem(weight_matrix(module, kind), hessian, row_scale)
    stored = FORMAT_OF_TORCH_DTYPE.get(dtype or module.weight.dtype)
    if stored is None:
        raise EncoderError(f"{parameter}: dtype {dtype or module.weight.dtype} cannot be coded "
                           f"(float32, float16 or bfloat16)")
    # The file keeps the stored layout, whose rows are the inputs for transformers' Conv1D: a
    # step per output would be a step per column there, so it gets one step. Embeddings get a
    # step per row (token) always: rows are weighted by token frequency, and rare tokens can
    # take coarser steps (measured: smaller files at equal fidelity).
    row_steps = kind == "embedding" or (per_channel and kind != "transposed_linear")
    return _Layer(name, parameter, kind, problem, tuple(module.weight.shape), stored, row_steps)


def write_layer(writer: NrdWriter, key: str, layer: _Layer, result, seconds: float,
                settings: QuantizerSettings, summaries: list | None) -> int:
    """Add one quantized layer's indices to ``writer`` under ``key`` (in the stored layout);
    append its :class:`LayerSummary` to ``summaries`` unless None. Returns the payload bytes."""
    indices, grid = result.stored_indices_and_grid()
    if layer.kind == "transposed_linear":
        indices = np.ascontiguousarray(indices.T)
    indices = indices.reshape(layer.stored_shape)
    center = 0 if result.zero_points is None else int(result.zero_points[0])
    payload = writer.add_indices(key, indices, grid, layer.dtype, settings=settings.entropy,
                                 context_center=center)
    if summaries is not None:
        summaries.append(LayerSummary(key, layer.stored_shape, layer.kind, len(result.steps),
                                      payload, 8.0 * payload / max(indices.size, 1),
                                      result.distortion, seconds, result.grid))
    return payload


def reconstruction_of(layer: _Layer, result) -> np.ndarray:
    """The dequantized weights of ``layer`` (float32, stored layout)."""
    if isinstance(result, TransformLayerResult):
        return result.reconstruction.reshape(layer.stored_shape)
    steps = result.steps.astype(np.float32)
    matrix = result.indices.astype(np.float32) * (steps[:, None] if len(steps) > 1 else steps[0])
    return matrix_to_stored_layout(matrix, None, layer.kind) \
        if layer.kind == "transposed_linear" else matrix.reshape(layer.stored_shape)


class ModelEncoder:
    """The model's layers with their Hessians, ready to be quantized at any λ.

    Built once by :func:`compress` (collecting Hessians is the slow part); :meth:`encode` then
    writes a file for one λ.
    """

    def __init__(self, model, calibration_batches, *, include=None, per_channel: bool = False,
                 embedding_smoothing: float = 1.0, sensitivity: bool = True,
                 sensitivity_batches: int = 1, sensitivity_exponent: float = 0.7,
                 progress=True, executor=None):
        self.model = model
        self.progress = Progress(progress)
        # Where the layers are quantized (nncodec_rd.encoder.executor); the file is the same.
        self.executor = executor_from(executor)
        layers = find_layers(model, include)
        if not layers:
            raise EncoderError("the model has no supported layers (Linear, Conv1d/2d, Embedding, "
                               "transformers Conv1D)")
        start = time.perf_counter()
        if calibration_batches is not None:
            # Used twice (Hessians, sensitivities): a one-shot iterator must not run dry.
            calibration_batches = list(calibration_batches)
            if len(calibration_batches) == 0:
                raise EncoderError("calibration_batches is empty")
            collected = collect_hessians(
                model, calibration_batches, layers,
                progress=lambda done, total: self.progress.step("calibration batch", done,
                                                                total))
        else:
            collected = None
        self.hessian_seconds = time.perf_counter() - start
        modules = dict(model.named_modules())
        self.trials: list[dict] = []  # λ values tried by search_lam
        self.layers: list[_Layer] = []
        self.aliases: dict[str, str] = {}  # tied weights: state-dict key -> key coded first
        seen = {}
        for name, kind in layers.items():
            module = modules[name]
            parameter = f"{name}.weight" if name else "weight"
            pointer = module.weight.data_ptr()
            if pointer in seen:
                self.aliases[parameter] = seen[pointer]
                continue
            seen[pointer] = parameter
            hessian, row_scale = (None, None)
            if collected is not None:
                hessian, row_scale = collected.accumulators[name].hessian(embedding_smoothing)
            self.layers.append(make_layer(name, parameter, module, kind, hessian, row_scale,
                                          per_channel))
        self.progress(f"Hessians of {len(self.layers)} layers collected in "
                      f"{self.hessian_seconds:.1f} s", final=True)
        self.sensitivity_seconds = 0.0
        if sensitivity and calibration_batches is not None:
            start = time.perf_counter()
            batches = list(calibration_batches)[:max(1, sensitivity_batches)]
            self.measure_sensitivities(batches, exponent=sensitivity_exponent)
            self.sensitivity_seconds = time.perf_counter() - start
            self.progress(f"layer sensitivities measured in {self.sensitivity_seconds:.1f} s",
                          final=True)

    def measure_sensitivities(self, batches, relative_noise: float = 0.01, seed: int = 0,
                              exponent: float = 0.7) -> None:
        """Weigh each layer's loss by how much it moves the model's output.

        The layer loss ``½ tr(D H Dᵀ)`` measures the error of the layer's own output; layers
        differ in how much of that error reaches the model's output. Adding Gaussian noise of
        known layer loss δ to one layer at a time and measuring the mean squared change ε of
        the model's first output tensor gives the layer's sensitivity ε / δ; the layer's λ is
        then the global λ divided by it, so one λ is a slope in units of output error per bit
        for every layer.

        The sensitivity is raised to ``exponent``: random noise is not the quantization error's
        direction, and trusting the measurement partly was best on all-MiniLM-L6-v2 (at mean
        cosine 0.99: about 3.06 bits per weight with exponent 0.7, 3.1 with 0.5, 3.3 with 1;
        ``bench/minilm_rate_fidelity.py``).
        """
        modules = dict(self.model.named_modules())
        was_training = self.model.training
        self.model.eval()
        generator = np.random.default_rng(seed)
        try:
            with torch.no_grad():
                reference = [first_tensor(run_batch(self.model, batch)).double()
                             for batch in batches]
                for number, layer in enumerate(self.layers, 1):
                    self.progress.step("sensitivity", number, len(self.layers), layer.parameter)
                    problem = layer.problem
                    rms = float(np.sqrt(np.mean(problem.weights ** 2))) or 1.0
                    noise = generator.standard_normal(problem.weights.shape) * relative_noise * rms
                    layer_loss = layer_distortion(problem, problem.weights + noise)
                    weight = modules[layer.name].weight
                    original = weight.detach().clone()
                    perturbed = matrix_to_stored_layout(problem.weights + noise, modules[layer.name],
                                                        layer.kind)
                    weight.copy_(torch.from_numpy(np.ascontiguousarray(perturbed)).to(weight.dtype))
                    try:
                        change = [float(torch.mean((first_tensor(run_batch(self.model, batch))
                                                    .double() - expected) ** 2))
                                  for batch, expected in zip(batches, reference)]
                    finally:
                        weight.copy_(original)
                    if layer_loss > 0 and np.mean(change) > 0:
                        layer.sensitivity = (float(np.mean(change)) / layer_loss) ** exponent
        finally:
            self.model.train(was_training)

    @property
    def coded_weights(self) -> int:
        """Number of weights in the quantized layers."""
        return sum(layer.problem.weights.size for layer in self.layers)

    def transform_groups(self) -> list:
        """Groups of layers that can share one transform matrix: Linear layers with one Hessian
        and no row weights, grouped by identical Hessians (layers fed the same input, such as
        attention's query, key and value)."""
        if getattr(self, "_transform_groups", None) is None:
            groups = []
            for layer in self.layers:
                problem = layer.problem
                if (layer.kind != "linear" or problem.hessian is None or problem.groups != 1
                        or problem.row_scale is not None or layer.per_channel):
                    continue
                for group in groups:
                    other = group[0].problem.hessian
                    if other.shape == problem.hessian.shape and np.array_equal(other,
                                                                               problem.hessian):
                        group.append(layer)
                        break
                else:
                    groups.append([layer])
            self._transform_groups = groups
        return self._transform_groups

    def _quantize_transform(self, settings: QuantizerSettings) -> dict:
        results = {}
        grouped = {layer.parameter for group in self.transform_groups() for layer in group}
        for group in self.transform_groups():
            names = ", ".join(layer.parameter for layer in group)
            self.progress(f"{settings.method} lambda={settings.lam:.3g} [{names}]")
            start = time.perf_counter()
            lams = [settings.lam / layer.sensitivity for layer in group]
            outcome = quantize_transform_group([layer.problem.weights for layer in group],
                                               group[0].problem.hessian[0], lams,
                                               replace(settings, per_channel=False),
                                               cache=group[0].problem.cache)
            seconds = (time.perf_counter() - start) / len(group)
            chosen = list(zip(outcome.layers, [seconds] * len(group)))
            if settings.method == "transform+cerwu":
                # Keep the transform only where it wins the layers' objective D/λ + R
                # (matrix bits included) against the direct method.
                direct = [(quantize_layer(layer.problem, replace(
                    settings, method=FALLBACK_METHOD[settings.method], lam=lam,
                    per_channel=False)), seconds) for layer, lam in zip(group, lams)]
                direct_objective = sum(result.distortion / lam + result.rate_bits
                                       for (result, _), lam in zip(direct, lams))
                if direct_objective <= outcome.objective_bits:
                    chosen = direct
            for layer, (result, seconds) in zip(group, chosen):
                if isinstance(result, TransformLayerResult):
                    result.group = outcome
                    result.matrix_name = TRANSFORM_PREFIX + group[0].parameter
                results[layer.parameter] = (result, seconds)
        for number, layer in enumerate(self.layers, 1):
            if layer.parameter in grouped:
                continue
            self.progress.step(f"{settings.method} lambda={settings.lam:.3g}", number,
                               len(self.layers), f"{layer.parameter} (no transform: "
                               f"{FALLBACK_METHOD[settings.method]})")
            start = time.perf_counter()
            layer_settings = replace(settings, method=FALLBACK_METHOD[settings.method],
                                     per_channel=layer.per_channel,
                                     lam=settings.lam / layer.sensitivity)
            results[layer.parameter] = (quantize_layer(layer.problem, layer_settings),
                                        time.perf_counter() - start)
        return results

    def quantize(self, settings: QuantizerSettings) -> dict:
        """Parameter name -> (LayerResult, seconds) for every layer at ``settings``
        (a :class:`~nncodec_rd.encoder.transform.TransformLayerResult` for a layer coded with a
        transform)."""
        if settings.method in TRANSFORM_METHODS:
            return self._quantize_transform(settings)
        results = {}
        # Every layer is independent here: the executor may quantize them all at once (Ray).
        outcomes = self.executor.map(
            (layer.problem, replace(settings, per_channel=layer.per_channel,
                                    lam=settings.lam / layer.sensitivity))
            for layer in self.layers)
        try:
            for number, layer in enumerate(self.layers, 1):
                self.progress.step(f"{settings.method} lambda={settings.lam:.3g}", number,
                                   len(self.layers), f"{layer.parameter} "
                                   f"{'x'.join(map(str, layer.problem.weights.shape))}")
                results[layer.parameter] = next(outcomes)
        finally:
            outcomes.close()
        return results

    def reconstruction(self, results: dict) -> dict:
        """Parameter name -> dequantized weights (float32, stored layout) for ``results``."""
        weights = {layer.parameter: reconstruction_of(layer, results[layer.parameter][0])
                   for layer in self.layers}
        for alias, original in self.aliases.items():
            weights[alias] = weights[original]
        return weights

    def write(self, results: dict, path: str, settings: QuantizerSettings,
              metadata: dict | None = None) -> tuple[int, list]:
        """Write the state dict with the quantized layers; returns (file bytes, layer summaries)."""
        coded = {layer.parameter: layer for layer in self.layers}
        file_metadata = {"encoder": "nncodec-rd", "method": settings.method,
                         "lambda": float(settings.lam), **(metadata or {})}
        summaries = []
        written_matrices = set()
        state = self.model.state_dict()
        with NrdWriter(path, metadata=file_metadata) as writer:
            for number, (key, value) in enumerate(state.items(), 1):
                self.progress.step("coding", number, len(state), key)
                source = self.aliases.get(key, key)
                if source in coded:
                    layer = coded[source]
                    result, seconds = results[source]
                    if isinstance(result, TransformLayerResult):
                        self._write_transformed(writer, key, source, layer, result, seconds,
                                                settings, summaries, written_matrices)
                        continue
                    write_layer(writer, key, layer, result, seconds, settings,
                                summaries if key == source else None)
                else:
                    writer.add_raw(key, tensor_to_numpy(value))
        return os.path.getsize(path), summaries

    def _write_transformed(self, writer, key, source, layer, result, seconds, settings,
                           summaries, written_matrices) -> None:
        """The coefficients of a transform-coded layer, and its group's matrix (once)."""
        name = result.matrix_name
        if name not in written_matrices:
            written_matrices.add(name)
            group = result.group
            matrix_bytes = writer.add_indices(
                name, group.matrix_indices, UniformGrid(group.matrix_steps, rows_per_group=1),
                "float32", settings=settings.entropy,
                metadata={"role": "transform", "precision": int(group.precision)})
            summaries.append(LayerSummary(name, tuple(group.matrix_indices.shape),
                                          TRANSFORM_MATRIX_KIND, len(group.matrix_steps),
                                          matrix_bytes, 8.0 * matrix_bytes
                                          / max(group.matrix_indices.size, 1), 0.0, 0.0))
        payload = writer.add_indices(key, result.indices, UniformGrid(result.steps), layer.dtype,
                                     settings=settings.entropy,
                                     transform=RightMatrixTransform(name))
        if key == source:
            weights = result.reconstruction.size
            summaries.append(LayerSummary(key, layer.stored_shape, layer.kind + " (transform, "
                                          f"K={result.indices.shape[1]})", 1, payload,
                                          8.0 * payload / max(weights, 1), result.distortion,
                                          seconds))

    def encode(self, settings: QuantizerSettings, path: str | None,
               metadata: dict | None = None) -> CompressionResult:
        """Quantize at ``settings`` and write ``path`` (a temporary file if None, removed after
        measuring it)."""
        start = time.perf_counter()
        results = self.quantize(settings)
        if path is None:
            handle, temporary = tempfile.mkstemp(suffix=".nrd")
            os.close(handle)
            try:
                size, summaries = self.write(results, temporary, settings, metadata)
            finally:
                os.unlink(temporary)
        else:
            size, summaries = self.write(results, path, settings, metadata)
        outcome = CompressionResult(path, size, self.coded_weights, settings.method, settings.lam,
                                    summaries, self.hessian_seconds, time.perf_counter() - start)
        outcome.results = results
        outcome.transform_bytes = sum(summary.payload_bytes for summary in summaries
                                      if summary.kind == TRANSFORM_MATRIX_KIND)
        outcome.transform_layers = sum(isinstance(result, TransformLayerResult)
                                       for result, _ in results.values())
        self.progress(f"{settings.method} lambda={settings.lam:.4g}: {size:,} bytes, "
                      f"{outcome.bits_per_weight:.3f} bits/weight", final=True)
        return outcome

    def default_lam(self, relative_step: float = 1.0 / 16.0) -> float:
        """A λ whose steps are about ``relative_step`` × the weights' RMS in a typical layer."""
        candidates = []
        for layer in self.layers:
            problem = layer.problem
            rms = float(np.sqrt(np.mean(problem.weights ** 2)))
            if rms == 0:
                continue
            if problem.hessian is None:
                curvature = 1.0 if problem.row_scale is None else float(problem.row_scale.mean())
            else:
                curvature = float(np.mean([np.diagonal(h).mean() for h in problem.hessian]))
            candidates.append(layer.sensitivity * math.log(2) * curvature
                              * (relative_step * rms) ** 2 / 12.0)
        return float(np.median(candidates)) if candidates else 1e-6


def compress(model, calibration_batches=None, *, method: str = "cerwu", lam: float | None = None,
             target_bpw: float | None = None, target_metric=None, path=None,
             per_channel: bool = False, grid_scale: float = 1.0, act_order: bool = True,
             grid_choice: str = DEFAULT_GRID_CHOICE,
             entropy: EntropySettings | None = None, include=None,
             embedding_smoothing: float = 1.0, sensitivity: bool = True,
             metadata: dict | None = None,
             progress=True, tolerance: float = 0.01, sequential: bool = False,
             stack: str | None = None, executor=None) -> CompressionResult:
    """Quantize and entropy-code ``model``'s weights; write an .nrd file.

    Parameters
    ----------
    model:
        A ``torch.nn.Module`` (any ``transformers`` model works as is).
    calibration_batches:
        An iterable of model inputs: a mapping is passed as keyword arguments (a tokenizer's
        output), a tuple positionally, anything else as the one argument. ``None`` (only with
        ``method="rtn"``, or to use identity Hessians) means no data.
    method:
        ``"rtn"``, ``"optq"``, ``"optq-rd"`` or ``"cerwu"`` (see :mod:`nncodec_rd.encoder.obs`),
        ``"transform"`` or ``"transform+cerwu"`` (:mod:`nncodec_rd.encoder.transform`: Linear
        layers coded as coefficients times a stored matrix, spec §6.4; other layers with
        ``optq`` and ``cerwu`` respectively).
    lam, target_bpw, target_metric:
        At most one. ``lam``: the rate–distortion trade-off. ``target_bpw``: bits per coded
        weight of the real file (found by bisection on λ within ``tolerance``, relative).
        ``target_metric``: a callable taking the model with quantized weights and returning True
        when it is good enough; the largest λ (smallest file) that passes is kept. With none,
        a λ giving steps of about RMS/16 is used.
    path:
        Where to write the file (atomically). ``None`` measures the size without keeping a file.
    per_channel, grid_scale, act_order, grid_choice:
        See :class:`nncodec_rd.encoder.obs.QuantizerSettings`. With ``grid_choice="rd"`` each
        layer that the λ rule codes below 2 bits per weight picks its grid (a step, or a
        bounded number of bins with a zero point) by rate–distortion
        (:mod:`nncodec_rd.encoder.grid_choice`), at the cost of several quantizations of that
        layer; ``"auto"`` (the default) does so for every method but ``rtn``.
    entropy:
        Entropy-coding settings (:class:`nncodec_rd.EntropySettings`); by default each tensor
        gets the probability precision up to 14 bits that codes it smallest, tables included
        (``choose_precision=True``), which also keeps small layers' decoding tables small.
    include:
        Optional predicate on module names: only those layers are quantized.
    embedding_smoothing:
        Added to every token's count before embedding rows are weighted by frequency.
    sensitivity:
        Weigh each layer's λ by how much its output error moves the model's output
        (:meth:`ModelEncoder.measure_sensitivities`); needs calibration data.
    metadata:
        Extra file metadata.
    progress:
        True for per-layer progress on stderr, False for none, or a callable taking a line.
    tolerance:
        Relative tolerance of the ``target_bpw`` bisection.
    sequential:
        Encode block by block (:mod:`nncodec_rd.torch.sequential`): each block of the model's
        stack is calibrated on the outputs of the already quantized blocks before it, and only
        one block's Hessians exist at a time. Needs ``path``; ``target_bpw``,
        ``target_metric`` and the transform methods need ``sequential=False`` for now. Off by
        default for a model in memory: on all-MiniLM-L6-v2 both reach the same size at cosine
        0.99 (3.013 and 3.011 bits per weight, docs/rate-fidelity.md), and the whole-model
        encoder supports every option. Model folders (:mod:`nncodec_rd.torch.pretrained`) are
        always encoded block by block.
    stack:
        With ``sequential``, the module name of the stack of blocks if the guess is wrong.
    executor:
        Where the layers are quantized (:mod:`nncodec_rd.encoder.executor`): ``None`` for this
        process; a Ray address (``"local"``, ``"auto"``, ``"HOST:PORT"``) or a
        :class:`~nncodec_rd.encoder.executor.RayExecutor` for Ray tasks (the ``ray`` extra;
        docs/ray.md). The file is byte for byte the same. The transform methods' matrices are
        computed in this process.

    Returns
    -------
    CompressionResult
        The path, the real size, the λ used and a summary per layer
        (:meth:`CompressionResult.summary`).
    """
    if sum(option is not None for option in (lam, target_bpw, target_metric)) > 1:
        raise EncoderError("give at most one of lam, target_bpw and target_metric")
    if calibration_batches is None and method != "rtn":
        raise EncoderError(f"method {method!r} needs calibration_batches (only 'rtn' is data-free)")
    if target_bpw is not None and not (math.isfinite(target_bpw) and target_bpw > 0):
        raise EncoderError(f"target_bpw must be > 0, not {target_bpw}")
    # Check the settings before the slow part (Hessians, sensitivities).
    QuantizerSettings(method=method, lam=1.0 if lam is None else lam, per_channel=per_channel,
                      grid_scale=grid_scale, act_order=act_order, grid_choice=grid_choice)
    with opened_executor(executor) as executor:
        if sequential:
            return _compress_sequential(
                model, calibration_batches, method=method, lam=lam, target_bpw=target_bpw,
                target_metric=target_metric, path=path, per_channel=per_channel,
                grid_scale=grid_scale, act_order=act_order, grid_choice=grid_choice,
                entropy=entropy, include=include, embedding_smoothing=embedding_smoothing,
                sensitivity=sensitivity, metadata=metadata, progress=progress, stack=stack,
                executor=executor)
        encoder = ModelEncoder(model, calibration_batches, include=include,
                               per_channel=per_channel, embedding_smoothing=embedding_smoothing,
                               sensitivity=sensitivity, progress=progress, executor=executor)
        base = QuantizerSettings(method=method,
                                 lam=encoder.default_lam() if lam is None else lam,
                                 per_channel=per_channel, grid_scale=grid_scale,
                                 act_order=act_order, grid_choice=grid_choice,
                                 entropy=entropy or model_entropy_settings())
        path = os.fspath(path) if path is not None else None
        if target_bpw is not None:
            # The smallest λ whose file fits in target_bpw: the best model of that size.
            _, chosen = search_lam(encoder, base, metadata,
                                   lambda outcome: outcome.bits_per_weight <= target_bpw,
                                   lambda outcome: abs(outcome.bits_per_weight / target_bpw - 1)
                                   <= tolerance)
            if chosen is None:
                smallest = min(trial["bits_per_weight"] for trial in encoder.trials)
                raise EncoderError(f"no λ gives a file of {target_bpw} bits per coded weight or "
                                   f"less (the smallest reached: {smallest:.3f}, with everything "
                                   f"not coded stored raw); the target is out of reach")
        elif target_metric is not None:
            def fails(outcome):
                originals = load_weights(model, encoder.reconstruction(outcome.results))
                try:
                    return not bool(target_metric(model))
                finally:
                    load_weights(model, originals)

            # The largest λ (smallest file) whose model still passes.
            chosen, _ = search_lam(encoder, base, metadata, fails)
            if chosen is None:
                raise EncoderError("target_metric fails even at the smallest λ tried; the "
                                   "target may be out of reach of this method")
        else:
            chosen = base.lam
        outcome = encoder.encode(replace(base, lam=chosen), path, metadata)
        outcome.lam_trials = list(encoder.trials)
        if encoder.progress.enabled and encoder.progress.callback is None:
            print(outcome.summary(), file=sys.stderr)
        return outcome


def _compress_sequential(model, calibration_batches, *, method, lam, target_bpw, target_metric,
                         path, per_channel, grid_scale, act_order, grid_choice, entropy, include,
                         embedding_smoothing, sensitivity, metadata, progress, stack, executor):
    from .sequential import SequentialEncoder

    if target_metric is not None:
        raise EncoderError("target_metric needs sequential=False (each trial would repeat the "
                           "whole pass); give lam or target_bpw")
    if path is None:
        raise EncoderError("sequential=True writes as it goes: give path")
    encoder = SequentialEncoder(model, calibration_batches, stack=stack, include=include,
                                per_channel=per_channel, embedding_smoothing=embedding_smoothing,
                                sensitivity=sensitivity, progress=progress, executor=executor)
    settings = QuantizerSettings(method=method, lam=1.0 if lam is None else lam,
                                 per_channel=per_channel, grid_scale=grid_scale,
                                 act_order=act_order, grid_choice=grid_choice,
                                 entropy=entropy or model_entropy_settings())
    return encoder.encode(settings, path, metadata, lam=lam, target_bpw=target_bpw)


def search_lam(encoder: ModelEncoder, base: QuantizerSettings, metadata: dict | None, holds,
               close_enough=None, iterations: int = 14) -> tuple[float | None, float | None]:
    """Bracket the λ where ``holds`` (a predicate on a trial's :class:`CompressionResult`, False
    for small λ and True for large λ, like "the file is small enough") switches, by steps of ×4
    and then bisection in log λ. Returns ``(largest λ found False, smallest λ found True)``, either
    None if not found; a trial that holds and is ``close_enough`` ends the search at once.
    """
    def trial(lam):
        # With the final file's metadata: its bytes count in the size being searched.
        outcome = encoder.encode(replace(base, lam=lam), None, metadata)
        verdict = bool(holds(outcome))
        encoder.trials.append({"lam": lam, "bits_per_weight": outcome.bits_per_weight,
                               "holds": verdict})
        return verdict and close_enough is not None and close_enough(outcome), verdict

    below = above = None
    lam = base.lam
    done, verdict = trial(lam)
    if done:
        return below, lam
    for _ in range(12):
        if verdict:
            above = lam
            if below is not None:
                break
            lam /= 4
        else:
            below = lam
            if above is not None:
                break
            lam *= 4
        done, verdict = trial(lam)
        if done:
            return below, lam
    else:
        if verdict:
            above = lam
        else:
            below = lam
    if below is None or above is None:
        return below, above
    for _ in range(iterations):
        if above / below < 1.02:
            break
        middle = math.sqrt(below * above)
        done, verdict = trial(middle)
        if done:
            return below, middle
        if verdict:
            above = middle
        else:
            below = middle
    return below, above


def load_weights(model, weights: dict) -> dict:
    """Copy ``weights`` (state-dict key -> array) into ``model`` in place; returns the previous
    values of those entries (to restore them)."""
    state = model.state_dict()
    previous = {}
    with torch.no_grad():
        for key, value in weights.items():
            if key not in state:
                raise EncoderError(f"{key}: the model has no such parameter or buffer")
            target = state[key]
            previous[key] = target.detach().clone()
            source = value if isinstance(value, torch.Tensor) else numpy_to_tensor(value)
            if tuple(source.shape) != tuple(target.shape):
                raise EncoderError(f"{key}: the file holds shape {tuple(source.shape)}, the model "
                                   f"{tuple(target.shape)}")
            target.copy_(source.to(target.dtype))
    return previous


def load_into(model, path, *, strict: bool = True, threads: int | None = None):
    """Decode the .nrd file at ``path`` into ``model``'s parameters and buffers, in place.

    With ``strict``, every entry of the model's state dict must be in the file and every tensor
    of the file in the model (as ``load_state_dict`` does). Returns the model.
    """
    from ..api import load_file

    decoded = {name: value for name, value in load_file(path, threads=threads).items()
               if not name.startswith(TRANSFORM_PREFIX)}  # matrices of transforms, no parameters
    state_keys = set(model.state_dict().keys())
    if strict:
        missing = sorted(state_keys - set(decoded))
        unexpected = sorted(set(decoded) - state_keys)
        if missing or unexpected:
            raise EncoderError(f"{os.fspath(path)} does not match the model: missing "
                               f"{missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected "
                               f"{unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
    load_weights(model, {key: value for key, value in decoded.items() if key in state_keys})
    return model
