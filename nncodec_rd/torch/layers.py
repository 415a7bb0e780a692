"""What the model encoders share: a layer to quantize (:class:`CodedLayer`, made by
:func:`make_layer`), how a quantized layer is written (:func:`write_layer`) and dequantized
(:func:`reconstruction_of`), the default λ (:func:`default_lam`), and what an encode returns
(:class:`CompressionResult`, a :class:`LayerSummary` per tensor).

Both encoders use these: the whole-model :class:`~nncodec_rd.torch.model_encoder.ModelEncoder`
and the block-sequential :class:`~nncodec_rd.torch.sequential.SequentialEncoder`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from ..encoder.problem import LayerProblem
from ..encoder.settings import QuantizerSettings
from ..encoder.transform import TransformLayerResult
from ..encoder.writer import NrdWriter
from ..format.errors import EncoderError
from ..format.layout import RowGeometry
from .hessians import (
    matrix_to_stored_layout,
    weight_matrix,
)

TRANSFORM_PREFIX = "__transform__/"
"""Names of the matrices of transform-coded layers (spec §6.4) start with this; they are no
parameters of the model, and :func:`load_into` skips them."""

TRANSFORM_MATRIX_KIND = "transform matrix"  # LayerSummary.kind of a transform's matrix

CODED_LAYER_TYPES = ("Linear, Conv1d, Conv2d, Embedding, transformers' Conv1D, LSTM, GRU and RNN "
                     "(without proj_size)")
"""The layer types whose weights the whole-model encoder codes, in words
(:func:`~nncodec_rd.torch.hessians.find_layers`)."""

SEQUENTIAL_CODED_LAYER_TYPES = ("Linear, Conv1d, Conv2d, Embedding, transformers' Conv1D; the "
                                "block-sequential encoder leaves LSTM, GRU and RNN weights raw")
"""The same for the block-sequential encoder, which leaves recurrent modules raw."""

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
    raw_weights: dict = field(default_factory=dict)
    """Weight matrices stored raw because no layer the encoder codes holds them (an LSTM's, a
    custom module's): file name -> elements (:func:`is_uncoded_weight`). The summary names
    them; biases, norms and other small or one-dimensional tensors are not counted."""

    coded_nonweights: dict = field(default_factory=dict)
    """Non-weight tensors (biases, norms, statistics) coded on a fine grid: file name -> the
    relative bits of its step ``RMS · 2^-bits`` (:mod:`nncodec_rd.torch.nonweights`); the others
    are raw."""
    coded_layer_types: str = CODED_LAYER_TYPES
    """The layer types the encoder codes, in words (for the summary's line on raw weights)."""

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
        if self.coded_nonweights:
            lines.append(f"non-weight tensors coded on a fine grid: {len(self.coded_nonweights)} "
                         f"(steps RMS/2^{min(self.coded_nonweights.values())} ... "
                         f"RMS/2^{max(self.coded_nonweights.values())}); the rest raw")
        if self.raw_weights:
            names = list(self.raw_weights)
            lines.append(f"stored raw, not coded: {len(names)} weight tensors, "
                         f"{sum(self.raw_weights.values()):,} weights ({', '.join(names[:4])}"
                         f"{', ...' if len(names) > 4 else ''}): no coded layer type holds them "
                         f"(coded: {self.coded_layer_types})")
        return "\n".join(lines)


RAW_NOTICE_ELEMENTS = 1024
"""A weight matrix stored raw is named in the summary from this many elements on."""


def is_uncoded_weight(array: np.ndarray) -> bool:
    """Whether a tensor stored raw is a weight matrix the user should hear about: floating
    point, two or more dimensions, at least :data:`RAW_NOTICE_ELEMENTS` elements (an LSTM's
    ``weight_ih_l0``, not a bias or a norm's scale)."""
    floating = array.dtype.kind == "f" or array.dtype.name == "bfloat16"
    return floating and array.ndim >= 2 and array.size >= RAW_NOTICE_ELEMENTS


@dataclass
class CodedLayer:
    """A layer to quantize: its problem (float64 weights, Hessian) and how the file stores it."""

    name: str          # module name
    parameter: str     # state-dict key of its weight
    kind: str
    problem: LayerProblem
    stored_shape: tuple
    dtype: str
    per_channel: bool | str  # QuantizerSettings.per_channel for this layer
    sensitivity: float = 1.0  # output error per unit of layer loss (measure_sensitivities)


def make_layer(name: str, parameter: str, weight: torch.Tensor, kind: str, hessian, row_scale,
               per_channel: bool | str, dtype: torch.dtype | None = None) -> CodedLayer:
    """A layer to quantize: its float64 weight matrix and Hessian, and how the file stores it
    (``weight``: the module's tensor named ``parameter``; ``dtype``: the stored dtype if not the
    weight's, such as a checkpoint's bfloat16)."""
    # A trellis grid (spec §6.6) needs the matrix's rows to be the stored tensor's.
    problem = LayerProblem(weight_matrix(weight, kind), hessian, row_scale,
                           trellis_allowed=kind != "transposed_linear")
    stored = FORMAT_OF_TORCH_DTYPE.get(dtype or weight.dtype)
    if stored is None:
        raise EncoderError(f"{parameter}: dtype {dtype or weight.dtype} cannot be coded "
                           f"(float32, float16 or bfloat16)")
    # The file keeps the stored layout, whose rows are the inputs for transformers' Conv1D: a
    # step per output would be a step per column there, so it gets one step. Embeddings get a
    # step per row (token) always: rows are weighted by token frequency, and rare tokens can
    # take coarser steps (measured: smaller files at equal fidelity).
    row_steps = True if kind == "embedding" else (False if kind == "transposed_linear"
                                                  else per_channel)
    return CodedLayer(name, parameter, kind, problem, tuple(weight.shape), stored, row_steps)


def write_layer(writer: NrdWriter, key: str, layer: CodedLayer, result, seconds: float,
                settings: QuantizerSettings, summaries: list | None) -> int:
    """Add one quantized layer's indices to ``writer`` under ``key`` (in the stored layout);
    append its :class:`LayerSummary` to ``summaries`` unless None. Returns the payload bytes."""
    indices, grid = result.stored_indices_and_grid()
    geometry = RowGeometry.of_shape(layer.stored_shape)
    if grid.trellis and result.trellis_rows_per_chunk != settings.entropy.rows_per_chunk(
            geometry.rows, geometry.row_length):
        # spec §6.6: the states restart at each chunk; the quantizer must have seen the same.
        raise EncoderError(f"{key}: quantized for a trellis of {result.trellis_rows_per_chunk} "
                           f"rows per chunk, written with other chunks")
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


def reconstruction_of(layer: CodedLayer, result) -> np.ndarray:
    """The dequantized weights of ``layer`` (float32, stored layout)."""
    if isinstance(result, TransformLayerResult):
        return result.reconstruction.reshape(layer.stored_shape)
    matrix = result.dequantized()
    return matrix_to_stored_layout(matrix, layer.stored_shape, layer.kind) \
        if layer.kind == "transposed_linear" else matrix.reshape(layer.stored_shape)


def default_lam(layers: list, relative_step: float = 1.0 / 16.0) -> float:
    """A λ whose steps are about ``relative_step`` × the weights' RMS in a typical layer of
    ``layers`` (:class:`CodedLayer`, each weighed by its sensitivity)."""
    candidates = []
    for layer in layers:
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
