"""The whole-model encoder: :class:`ModelEncoder` collects every layer's Hessian once (and each
layer's sensitivity), quantizes the layers with one global λ (:mod:`nncodec_rd.encoder.methods`)
and writes the whole state dict: quantized layer weights entropy-coded, biases, norms and
statistics on the fine grids :mod:`nncodec_rd.torch.nonweights` measures, everything else
(integer buffers, small tensors, matrices of layer types it does not code) stored raw. :func:`nncodec_rd.torch.compress_model.compress` drives it.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import replace

import numpy as np
import torch

from ..encoder.executor import executor_from
from ..encoder.methods import quantize_layer
from ..encoder.problem import expected_noise_distortion, layer_distortion
from ..encoder.settings import QuantizerSettings
from ..encoder.transform import TransformLayerResult
from ..encoder.writer import NrdWriter
from ..format.errors import EncoderError, first_line
from ..format.grids import RightMatrixTransform, UniformGrid
from .hessians import (
    CONVOLUTION_GRAMS,
    check_embedding_smoothing,
    collect_hessians,
    find_layers,
    matrix_to_stored_layout,
    output_at_tokens,
    parameter_name,
    weight_attributes,
)
from .layers import (
    CODED_LAYER_TYPES,
    TRANSFORM_MATRIX_KIND,
    TRANSFORM_PREFIX,
    CodedLayer,
    CompressionResult,
    LayerSummary,
    default_lam,
    is_uncoded_weight,
    make_layer,
    reconstruction_of,
    write_layer,
)
from .nonweights import NonWeightPlan, coded_nonweight, plan_nonweights, write_nonweight
from .progress import Progress
from .state_dict import tensor_to_numpy


SENSITIVITY_ESTIMATORS = ("gradient", "perturbation")
"""How :meth:`ModelEncoder.measure_sensitivities` measures each layer's sensitivity; the first is
the default."""


SENSITIVITY_PROBES = 4
"""Gaussian probes (backward passes) a batch of the gradient estimator. Each probe's estimate of a
small layer varies more than one perturbation did (a 2 x 16 output convolution of CRAFT: log10
spread 0.19 over seeds with one probe, 0.10 with four, 0.12 by perturbation); four cost a
quarter of the perturbation's time there."""


class _NotDifferentiable(Exception):
    """The model's output cannot be differentiated by its weights (the reason as the message)."""


class ModelEncoder:
    """The model's layers with their Hessians, ready to be quantized at any λ.

    Built once by :func:`compress` (collecting Hessians is the slow part); :meth:`encode` then
    writes a file for one λ.
    """

    def __init__(self, model, calibration_batches, *, include=None, per_channel: bool | str = False,
                 embedding_smoothing: float = 1.0, sensitivity: bool = True,
                 sensitivity_batches: int = 1, sensitivity_exponent: float = 0.7,
                 sensitivity_estimator: str = SENSITIVITY_ESTIMATORS[0],
                 convolution_gram: str = CONVOLUTION_GRAMS[0],
                 nonweights: bool = True, progress=True, executor=None):
        check_embedding_smoothing(embedding_smoothing)  # before any calibration work
        self.model = model
        self.progress = Progress(progress)
        # Where the layers are quantized (nncodec_rd.encoder.executor); the file is the same.
        self.executor = executor_from(executor)
        layers = find_layers(model, include)
        if not layers:
            raise EncoderError(f"the model has no supported layers ({CODED_LAYER_TYPES})")
        start = time.perf_counter()
        if calibration_batches is not None:
            # Used twice (Hessians, sensitivities): a one-shot iterator must not run dry.
            calibration_batches = list(calibration_batches)
            if len(calibration_batches) == 0:
                raise EncoderError("calibration_batches is empty")
            collected = collect_hessians(
                model, calibration_batches, layers,
                progress=lambda done, total: self.progress.step("calibration batch", done,
                                                                total),
                convolution_gram=convolution_gram)
        else:
            collected = None
        self.hessian_seconds = time.perf_counter() - start
        modules = dict(model.named_modules())
        self.trials: list[dict] = []  # λ values tried by search_lam
        self.layers: list[CodedLayer] = []
        self.aliases: dict[str, str] = {}  # tied weights: state-dict key -> key coded first
        seen = {}
        for name, kind in layers.items():
            module = modules[name]
            # one weight a layer; an LSTM's every matrix, each coded as a Linear of its gates
            for attribute in weight_attributes(module, kind):
                parameter = parameter_name(name, attribute)
                weight = getattr(module, attribute)
                pointer = weight.data_ptr()
                if pointer in seen:
                    self.aliases[parameter] = seen[pointer]
                    continue
                seen[pointer] = parameter
                hessian, row_scale = (None, None)
                if collected is not None:
                    hessian, row_scale = collected.accumulators[name].hessian(
                        embedding_smoothing, attribute)
                self.layers.append(make_layer(name, parameter, weight, kind, hessian, row_scale,
                                              per_channel))
        self.progress(f"Hessians of {len(self.layers)} layers collected in "
                      f"{self.hessian_seconds:.1f} s", final=True)
        self.sensitivity_seconds = 0.0
        if sensitivity and calibration_batches is not None:
            start = time.perf_counter()
            batches = list(calibration_batches)[:max(1, sensitivity_batches)]
            self.measure_sensitivities(batches, exponent=sensitivity_exponent,
                                       estimator=sensitivity_estimator)
            self.sensitivity_seconds = time.perf_counter() - start
            self.progress(f"layer sensitivities measured in {self.sensitivity_seconds:.1f} s",
                          final=True)
        # Biases, norms, statistics: each role's grid measured on a calibration batch.
        self.nonweight_plan = NonWeightPlan()
        self.nonweight_seconds = 0.0
        if nonweights and calibration_batches is not None:
            start = time.perf_counter()
            coded = {layer.parameter for layer in self.layers} | set(self.aliases)
            self.nonweight_plan = plan_nonweights(
                model, calibration_batches[:1], coded, include=include,
                progress=lambda role, bits, count: self.progress(
                    f"non-weight tensors '{role}' ({count}): "
                    + (f"step RMS/2^{bits}" if bits is not None else "raw")))
            self.nonweight_seconds = time.perf_counter() - start

    def measure_sensitivities(self, batches, relative_noise: float = 0.01, seed: int = 0,
                              exponent: float = 0.7, estimator: str = "gradient") -> None:
        """Weigh each layer's loss by how much it moves the model's output.

        The layer loss ``½ tr(D H Dᵀ)`` measures the error of the layer's own output; layers
        differ in how much of that error reaches the model's output. A layer's sensitivity is
        the mean squared change ε of the model's first output tensor per unit of layer loss δ
        when the layer's weights take small Gaussian noise; the layer's λ is then the global λ
        divided by it, so one λ is a slope in units of output error per bit for every layer.

        ``estimator`` (:data:`SENSITIVITY_ESTIMATORS`) says how ε / δ is measured:

        - ``"gradient"`` (the default): every layer at once, from one forward pass and
          :data:`SENSITIVITY_PROBES` backward passes a batch. For noise of variance σ², the
          mean of ε is ``σ² ‖J‖²_F / M`` (``J`` the Jacobian of the ``M`` outputs by the
          layer's weights) and that of δ is ``½ σ² Σ_r s_r tr(H)``
          (:func:`~nncodec_rd.encoder.problem.expected_noise_distortion`); ``‖J‖²_F`` is the
          mean of ``‖Jᵀ v‖²`` over Gaussian probes ``v`` of the output (Hutchinson), one
          gradient a probe. A model whose output autograd cannot differentiate falls back to
          ``"perturbation"``, and so does each layer no gradient reaches (both say so).
        - ``"perturbation"``: one layer at a time, noise of ``relative_noise`` × the weights'
          RMS added and the batches run again: a forward pass per layer and batch.

        Both measure the same ratio of means from random draws (``bench/calibration_speed.py``
        compares them and their files).

        The sensitivity is raised to ``exponent``: random noise is not the quantization error's
        direction, and trusting the measurement partly was best on all-MiniLM-L6-v2 (at mean
        cosine 0.99: about 3.06 bits per weight with exponent 0.7, 3.1 with 0.5, 3.3 with 1;
        ``bench/minilm_rate_fidelity.py``).
        """
        if estimator not in SENSITIVITY_ESTIMATORS:
            raise EncoderError(f"unknown sensitivity estimator {estimator!r}; choose one of "
                               f"{', '.join(SENSITIVITY_ESTIMATORS)}")
        was_training = self.model.training
        self.model.eval()
        try:
            ratios = None
            if estimator == "gradient":
                try:
                    ratios = self._sensitivities_by_gradient(batches, seed)
                except _NotDifferentiable as reason:
                    self.progress(f"layer sensitivities: {reason}; measured by perturbing "
                                  f"each layer instead", final=True)
            if ratios is None:
                ratios = self._sensitivities_by_perturbation(batches, relative_noise, seed)
            missing = {index for index, ratio in enumerate(ratios) if ratio is None}
            if missing:  # weights no gradient reached: perturbed one by one
                names = [self.layers[index].parameter for index in sorted(missing)]
                self.progress(f"layer sensitivities: no gradient reached {len(missing)} "
                              f"layer(s) ({', '.join(names[:3])}"
                              f"{', ...' if len(names) > 3 else ''}); measured by perturbing "
                              f"them", final=True)
                again = self._sensitivities_by_perturbation(batches, relative_noise, seed,
                                                            only=missing)
                ratios = [again[index] if index in missing else ratio
                          for index, ratio in enumerate(ratios)]
        finally:
            self.model.train(was_training)
        for layer, ratio in zip(self.layers, ratios):
            if ratio is not None and ratio > 0:
                layer.sensitivity = ratio ** exponent

    def _sensitivities_by_gradient(self, batches, seed: int,
                                   probes: int = SENSITIVITY_PROBES) -> list[float | None]:
        """ε / δ of every layer from backward passes (:meth:`measure_sensitivities`); None for
        a layer no gradient reached (a weight used outside autograd, or not at all)."""
        weights = [self.model.get_parameter(layer.parameter) for layer in self.layers]
        wanted = {id(weight) for weight in weights}
        flags = [(parameter, parameter.requires_grad) for parameter in self.model.parameters()]
        generator = torch.Generator().manual_seed(seed)  # on the CPU: the same draws anywhere
        squares = np.zeros(len(weights))
        reached = np.zeros(len(weights), dtype=bool)
        try:
            for parameter, _ in flags:  # gradients of the coded weights only
                parameter.requires_grad_(id(parameter) in wanted)
            # cuDNN runs no RNN backward in eval mode; the native kernels do
            with torch.enable_grad(), torch.backends.cudnn.flags(enabled=False):
                for number, batch in enumerate(batches, 1):
                    self.progress.step("sensitivity (gradient)", number, len(batches))
                    output = output_at_tokens(self.model, batch)
                    if not output.requires_grad:
                        raise _NotDifferentiable("the model's output carries no gradient")
                    for number_of_probe in range(probes):
                        probe = torch.randn(output.shape, generator=generator,
                                            dtype=torch.float64).to(output.device, output.dtype)
                        projection = (output * probe).sum()
                        try:
                            gradients = torch.autograd.grad(
                                projection, weights, allow_unused=True,
                                retain_graph=number_of_probe + 1 < probes)
                        except RuntimeError as error:  # an operation autograd cannot undo
                            raise _NotDifferentiable(
                                f"backward failed ({first_line(error)})") from None
                        for index, gradient in enumerate(gradients):
                            if gradient is not None:
                                reached[index] = True
                                squares[index] += (float(gradient.double().pow(2).sum())
                                                   / output.numel())
        finally:
            for parameter, flag in flags:
                parameter.requires_grad_(flag)
        return [float(total / (len(batches) * probes))
                / expected_noise_distortion(layer.problem, 1.0) if hit else None
                for total, hit, layer in zip(squares, reached, self.layers)]

    def _sensitivities_by_perturbation(self, batches, relative_noise: float, seed: int,
                                       only=None) -> list[float | None]:
        """ε / δ of every layer (of the indices ``only``, None for the others), one layer
        perturbed at a time (:meth:`measure_sensitivities`)."""
        generator = np.random.default_rng(seed)
        ratios = []
        with torch.no_grad():
            reference = [output_at_tokens(self.model, batch).double() for batch in batches]
            for number, layer in enumerate(self.layers, 1):
                if only is not None and number - 1 not in only:
                    ratios.append(None)
                    continue
                self.progress.step("sensitivity", number, len(self.layers), layer.parameter)
                problem = layer.problem
                rms = float(np.sqrt(np.mean(problem.weights ** 2))) or 1.0
                noise = generator.standard_normal(problem.weights.shape) * relative_noise * rms
                layer_loss = layer_distortion(problem, problem.weights + noise)
                weight = self.model.get_parameter(layer.parameter)
                original = weight.detach().clone()
                perturbed = matrix_to_stored_layout(problem.weights + noise,
                                                    layer.stored_shape, layer.kind)
                weight.copy_(torch.from_numpy(np.ascontiguousarray(perturbed)).to(weight.dtype))
                try:
                    change = [float(torch.mean((output_at_tokens(self.model, batch).double()
                                                - expected) ** 2))
                              for batch, expected in zip(batches, reference)]
                finally:
                    weight.copy_(original)
                ratios.append(float(np.mean(change)) / layer_loss if layer_loss > 0 else 0.0)
        return ratios

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
                        or problem.row_scale is not None or layer.per_channel is True):
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

    def _quantize_groups(self, settings: QuantizerSettings) -> dict:
        # The method codes the layers sharing a Hessian together (a transform matrix for all of
        # them); the other layers go to its fallback method, one by one.
        method = settings.quantization_method
        results = {}
        grouped = {layer.parameter for group in self.transform_groups() for layer in group}
        for group in self.transform_groups():
            names = ", ".join(layer.parameter for layer in group)
            self.progress(f"{settings.method} lambda={settings.lam:.3g} [{names}]")
            start = time.perf_counter()
            lams = [settings.lam / layer.sensitivity for layer in group]
            outcome = method.quantize_group([layer.problem.weights for layer in group],
                                            group[0].problem.hessian[0], lams,
                                            replace(settings, per_channel=False),
                                            cache=group[0].problem.cache)
            seconds = (time.perf_counter() - start) / len(group)
            chosen = list(zip(outcome.layers, [seconds] * len(group)))
            if method.group_must_beat_fallback:
                # Keep the transform only where it wins the layers' objective D/λ + R
                # (matrix bits included) against the direct method.
                direct = [(quantize_layer(layer.problem, replace(
                    settings, method=method.fallback, lam=lam,
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
                               f"{method.fallback})")
            start = time.perf_counter()
            layer_settings = replace(settings, method=method.fallback,
                                     per_channel=layer.per_channel,
                                     lam=settings.lam / layer.sensitivity)
            results[layer.parameter] = (quantize_layer(layer.problem, layer_settings),
                                        time.perf_counter() - start)
        return results

    def quantize(self, settings: QuantizerSettings) -> dict:
        """Parameter name -> (LayerResult, seconds) for every layer at ``settings``
        (a :class:`~nncodec_rd.encoder.transform.TransformLayerResult` for a layer coded with a
        transform)."""
        if settings.quantization_method.quantize_group is not None:
            return self._quantize_groups(settings)
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
        """State-dict key -> what the file would decode for ``results``: the dequantized weights
        (float32, stored layout), and the non-weight tensors the file would code."""
        weights = {layer.parameter: reconstruction_of(layer, results[layer.parameter][0])
                   for layer in self.layers}
        for alias, original in self.aliases.items():
            weights[alias] = weights[original]
        state = self.model.state_dict()
        for key in self.nonweight_plan.roles:
            coded = coded_nonweight(key, tensor_to_numpy(state[key]),
                                    self.nonweight_plan.bits_of(key))
            if coded is not None:
                weights[key] = coded[1]
        return weights

    def write(self, results: dict, path: str, settings: QuantizerSettings,
              metadata: dict | None = None) -> tuple[int, list]:
        """Write the state dict with the quantized layers; returns (file bytes, layer summaries)."""
        coded = {layer.parameter: layer for layer in self.layers}
        file_metadata = {"encoder": "nncodec-rd", "method": settings.method,
                         "lambda": float(settings.lam), **(metadata or {})}
        summaries = []
        written_matrices = set()
        self.raw_weights = {}
        self.coded_nonweights = {}
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
                    array = tensor_to_numpy(value)
                    if is_uncoded_weight(array):
                        self.raw_weights[key] = int(array.size)
                    bits = self.nonweight_plan.bits_of(key)
                    if write_nonweight(writer, key, array, bits):
                        self.coded_nonweights[key] = bits
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
        outcome.raw_weights = dict(self.raw_weights)
        outcome.coded_nonweights = dict(self.coded_nonweights)
        outcome.transform_bytes = sum(summary.payload_bytes for summary in summaries
                                      if summary.kind == TRANSFORM_MATRIX_KIND)
        outcome.transform_layers = sum(isinstance(result, TransformLayerResult)
                                       for result, _ in results.values())
        self.progress(f"{settings.method} lambda={settings.lam:.4g}: {size:,} bytes, "
                      f"{outcome.bits_per_weight:.3f} bits/weight", final=True)
        return outcome

    def default_lam(self, relative_step: float = 1.0 / 16.0) -> float:
        """A λ whose steps are about ``relative_step`` × the weights' RMS in a typical layer
        (:func:`~nncodec_rd.torch.layers.default_lam`)."""
        return default_lam(self.layers, relative_step)
