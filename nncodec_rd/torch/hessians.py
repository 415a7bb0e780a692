"""Layer-wise Hessians ``H = (2/N) Σ x xᵀ`` from calibration batches, with forward hooks
(docs/algorithms.md §1, "Hessian details").

Supported layers and how their weights are seen as a ``(rows, columns)`` matrix:

- ``nn.Linear``: ``(out, in)``; the inputs are the rows of the layer's input.
- ``Conv1D`` of GPT-style ``transformers`` models: its weight is stored ``(in, out)``; the matrix
  is its transpose, and the file keeps the stored layout.
- ``nn.Conv1d`` / ``nn.Conv2d``: ``(out, in/groups · kernel)``; the inputs are the unfolded
  (im2col) patches. A grouped or depthwise convolution gets one Hessian per group. Stride-1
  convolutions sum the same Gram from shifted copies of the input where that is cheaper
  (:func:`convolution_gram_by_shifts`, :data:`CONVOLUTION_GRAMS`).
- ``nn.Embedding``: an identity Hessian with each row (token) weighted by its smoothed frequency
  in the calibration data, since an embedding's output error for a token is that token's row error.
- ``nn.LSTM``, ``nn.GRU``, ``nn.RNN`` (without ``proj_size``): each of their weight matrices
  (``weight_ih_l0``, ``weight_hh_l0``, ``weight_ih_l0_reverse``, ...) is a Linear layer of the
  gates: ``(gates · hidden, in)`` for the input weights, fed the layer's input at every time step,
  and ``(gates · hidden, hidden)`` for the recurrent weights, fed the hidden state the step
  before (the step after, in reverse). :class:`RecurrentHessianAccumulator` recomputes those
  inputs layer by layer from the module's own weights.

Padding is not calibration data: a batch that is a mapping with a 2-D ``attention_mask`` (a
tokenizer's output) counts only the positions that mask marks, in the inputs of Linear layers
and embeddings of shape ``(batch, sequence, ...)`` and in the model's output
(:func:`token_positions`, :func:`at_token_positions`); convolutions and recurrent layers see
every position. Sentences padded to the longest of a batch were otherwise half [PAD] on
all-MiniLM-L6-v2's calibration, and the Hessians and token frequencies followed the padding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as functional

from ..format.errors import EncoderError

RECURRENT = "recurrent"
"""The kind of ``nn.LSTM``, ``nn.GRU`` and ``nn.RNN`` modules: several weight matrices a module
(:func:`weight_attributes`)."""

DIRECTION_SUFFIXES = ("", "_reverse")
"""What a recurrent module's parameter names end with, per direction (``weight_hh_l0_reverse``)."""

CONVOLUTION_GRAMS = ("cheapest", "shifts", "unfold")
"""How a convolution's Gram ``Σ p pᵀ`` over its patches is summed: ``"unfold"`` materialises the
patches (any stride); ``"shifts"`` sums shifted copies of the input instead
(:func:`convolution_gram_by_shifts`, stride 1 only, the same sums up to rounding);
``"cheapest"`` (the default) takes the shifts where they apply and save enough operations
(:func:`gram_costs`, :data:`MIN_SHIFT_CHANNELS`, :data:`MIN_SHIFT_SAVING`), else the patches."""

# The torch classes of the recurrent modes, to rerun one layer of a module (RNNBase.mode).
_RECURRENT_CLASSES = {"LSTM": ("LSTM", None), "GRU": ("GRU", None),
                      "RNN_TANH": ("RNN", "tanh"), "RNN_RELU": ("RNN", "relu")}


def is_transformers_conv1d(module) -> bool:
    """True for the ``Conv1D`` of ``transformers`` (a Linear with its weight stored transposed)."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and hasattr(module, "weight")


def layer_kind(module) -> str | None:
    """``"linear"``, ``"conv1d"``, ``"conv2d"``, ``"transposed_linear"``, ``"embedding"`` or None
    for a module whose weight the encoder does not treat as a layer."""
    if isinstance(module, torch.nn.Linear):
        return "linear"
    if isinstance(module, torch.nn.Conv2d):
        return "conv2d"
    if isinstance(module, torch.nn.Conv1d):
        return "conv1d"
    if isinstance(module, torch.nn.Embedding):
        return "embedding"
    if is_transformers_conv1d(module):
        return "transposed_linear"
    if (isinstance(module, torch.nn.RNNBase) and module.mode in _RECURRENT_CLASSES
            and getattr(module, "proj_size", 0) == 0):
        # proj_size > 0 feeds the recurrent weights a projection of h; not modelled: raw.
        return RECURRENT
    return None


def weight_attributes(module, kind: str) -> list[str]:
    """The attribute names of the weights a layer of ``kind`` codes: ``["weight"]``, or for a
    recurrent module its input and recurrent matrices of every layer and direction.

    >>> weight_attributes(torch.nn.LSTM(4, 3, num_layers=2, bidirectional=True), RECURRENT)[:4]
    ['weight_ih_l0', 'weight_hh_l0', 'weight_ih_l0_reverse', 'weight_hh_l0_reverse']
    """
    if kind != RECURRENT:
        return ["weight"]
    suffixes = DIRECTION_SUFFIXES[:2 if module.bidirectional else 1]
    return [f"weight_{which}_l{layer}{suffix}" for layer in range(module.num_layers)
            for suffix in suffixes for which in ("ih", "hh")]


def parameter_name(module_name: str, attribute: str) -> str:
    """The state-dict key of ``attribute`` of the module named ``module_name`` ("" is the
    model itself).

    >>> parameter_name("encoder.rnn", "weight_hh_l0"), parameter_name("", "weight")
    ('encoder.rnn.weight_hh_l0', 'weight')
    """
    return f"{module_name}.{attribute}" if module_name else attribute


SECOND_SEQUENCE_KEYS = ("decoder_input_ids", "decoder_inputs_embeds", "decoder_attention_mask",
                        "labels")
"""Keys of an encoder–decoder batch: its decoder runs on a second sequence, which the
``attention_mask`` does not describe and whose tensors cannot be told from the encoder's by
shape, so such a batch counts every position."""


def token_positions(batch) -> torch.Tensor | None:
    """The positions of a calibration batch that hold tokens: a mapping's 2-D
    ``attention_mask`` as booleans (``False`` where it pads); None where every position counts
    (no such mask, nothing padded, or an encoder–decoder batch: :data:`SECOND_SEQUENCE_KEYS`).
    A mask that marks no token at all is refused (EncoderError): that batch holds no data.

    >>> token_positions({"input_ids": torch.ones(2, 3), "attention_mask": torch.tensor(
    ...     [[1, 1, 1], [1, 1, 0]])}).tolist()
    [[True, True, True], [True, True, False]]
    >>> token_positions({"attention_mask": torch.ones(2, 3)}) is None
    True
    >>> token_positions(torch.ones(2, 3)) is None
    True
    """
    if not (isinstance(batch, dict) or hasattr(batch, "keys")) or "attention_mask" not in batch:
        return None
    mask = batch["attention_mask"]
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2:
        return None
    if any(key in batch for key in SECOND_SEQUENCE_KEYS):
        return None
    mask = mask.detach() != 0
    if not bool(mask.any()):
        raise EncoderError("a calibration batch's attention_mask marks no token: every "
                           "position is padding")
    return None if bool(mask.all()) else mask


def at_token_positions(x: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
    """The rows of ``x`` at the token positions: ``x[positions]``, of shape ``(tokens, ...)``,
    where ``x`` is ``(batch, sequence, ...)`` like ``positions`` (or integer ids of shape
    ``(1, sequence)``, broadcast over the batch, as position ids are); otherwise ``x`` itself,
    since then its positions cannot be told apart. (A float ``(1, n, ...)`` input is no batch of
    tokens: DeBERTa's relative-position rows, for one.)

    >>> positions = torch.tensor([[True, True], [True, False]])
    >>> at_token_positions(torch.arange(4.).reshape(2, 2), positions).tolist()
    [0.0, 1.0, 2.0]
    >>> at_token_positions(torch.arange(2).reshape(1, 2), positions).tolist()
    [0, 1, 0]
    >>> at_token_positions(torch.ones(3, 2), positions).shape
    torch.Size([3, 2])
    """
    if positions is None or x.dim() < 2 or x.shape[1] != positions.shape[1]:
        return x
    if x.shape[0] == 1 and positions.shape[0] > 1 and not x.is_floating_point():
        x = x.expand(positions.shape[0], *x.shape[1:])
    elif x.shape[0] != positions.shape[0]:
        return x
    return x[positions.to(x.device)]


def weight_matrix(weight: torch.Tensor, kind: str) -> np.ndarray:
    """A layer's weight tensor as a float64 ``(rows, columns)`` matrix (module docstring)."""
    weight = weight.detach().to(torch.float64).cpu()
    if kind == "transposed_linear":
        return weight.T.contiguous().numpy()
    return weight.reshape(weight.shape[0], -1).numpy()


def matrix_to_stored_layout(matrix: np.ndarray, shape: tuple, kind: str) -> np.ndarray:
    """Undo :func:`weight_matrix`: an array of the weight's stored ``shape``."""
    if kind == "transposed_linear":
        return np.ascontiguousarray(matrix.T)
    return matrix.reshape(tuple(shape))


def check_embedding_smoothing(smoothing: float) -> None:
    """Refuse an ``embedding_smoothing`` that is not positive (EncoderError): a token never seen
    would weigh nothing, and no step fits a row of weight 0.

    >>> check_embedding_smoothing(math.inf)
    >>> check_embedding_smoothing(0.0)
    Traceback (most recent call last):
    ...
    nncodec_rd.format.errors.EncoderError: encoder_settings: embedding_smoothing must be positive ...
    """
    if not smoothing > 0:
        raise EncoderError(f"embedding_smoothing must be positive (math.inf weighs every token "
                           f"alike), not {smoothing!r}")


@dataclass
class HessianAccumulator:
    """Running sum of ``x xᵀ`` (per group) and the number of samples, for one layer."""

    kind: str
    groups: int
    columns: int
    vocabulary: int = 0
    total: torch.Tensor | None = None
    samples: int = 0
    token_counts: np.ndarray | None = None
    method: str = CONVOLUTION_GRAMS[0]  # how a convolution's Gram is summed

    def add(self, module, inputs, positions: torch.Tensor | None = None) -> None:
        """Add one batch of the layer's inputs; of a Linear layer or an embedding only those
        at the token ``positions`` (:func:`token_positions`; None: all)."""
        x = inputs[0] if isinstance(inputs, tuple) else inputs
        if self.kind == "embedding":
            ids = at_token_positions(x.detach(), positions)
            ids = ids.reshape(-1).cpu().numpy().astype(np.int64)
            ids = ids[(ids >= 0) & (ids < self.vocabulary)]
            counts = np.bincount(ids, minlength=self.vocabulary)
            self.token_counts = counts if self.token_counts is None else self.token_counts + counts
            self.samples += int(ids.size)
            return
        x = x.detach()
        if self.kind in ("linear", "transposed_linear"):
            x = at_token_positions(x, positions) if x.dim() > 2 else x
            patches = x.reshape(-1, x.shape[-1]).to(torch.float32)[None]  # (1, N, in)
            gram, samples = patches.transpose(1, 2) @ patches, patches.shape[1]
        else:
            x, kernel, dilation, stride = _padded_2d(module, self.kind, x)
            if all(step == 1 for step in stride) and (self.method == "shifts" or (
                    self.method == "cheapest" and _shifts_are_cheaper(x, kernel, dilation,
                                                                       self.groups))):
                gram, samples = convolution_gram_by_shifts(x, kernel, dilation, self.groups)
            else:
                gram, samples = convolution_gram_by_unfold(x, kernel, dilation, stride,
                                                           self.groups)
        # One batch's sum in float32 (fast, exact enough for thousands of rows), the running
        # total in float64 (many batches).
        gram = gram.to(torch.float64)
        self.total = gram if self.total is None else self.total + gram
        self.samples += samples

    def hessian(self, smoothing: float = 1.0, attribute: str = "weight"
                ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(Hessian, row scale): ``2/N Σ x xᵀ`` per group, or for an embedding (None, the
        token frequencies ``2 (n_t + smoothing) / (N + smoothing · V)``; ``smoothing=math.inf``
        weighs every token alike, ``2 / V``). ``attribute``: the layer's one weight (the
        signature of :meth:`RecurrentHessianAccumulator.hessian`)."""
        if self.kind == "embedding":
            check_embedding_smoothing(smoothing)
            if math.isinf(smoothing):
                return None, np.full(self.vocabulary, 2.0 / self.vocabulary)
            counts = np.zeros(self.vocabulary) if self.token_counts is None else self.token_counts
            total = counts.sum() + smoothing * self.vocabulary
            return None, 2.0 * (counts + smoothing) / total
        if self.total is None or self.samples == 0:
            raise EncoderError("a layer saw no calibration inputs: the calibration batches do "
                               "not reach it (check that the model's forward uses it)")
        return (2.0 / self.samples * self.total).numpy(), None


class RecurrentHessianAccumulator:
    """The Hessians of every weight matrix of an ``nn.LSTM``, ``nn.GRU`` or ``nn.RNN``
    (:data:`RECURRENT`), from the module's inputs (a forward pre-hook, like
    :class:`HessianAccumulator`).

    The gates of layer ``l`` are ``W_ih x_t + W_hh h_(t-1)`` (+ biases): ``weight_ih_l{l}`` is a
    Linear layer fed the layer's input ``x_t``, ``weight_hh_l{l}`` one fed the hidden state of
    the step before (``h_(t+1)`` for the ``_reverse`` direction; the initial state where there
    is none). Only the module's output is visible from outside, so each layer is rerun here, one
    layer at a time, with the module's own weights; its output is the next layer's input.
    Padded steps of a ``PackedSequence`` are left out.
    """

    kind = RECURRENT

    def __init__(self, module):
        self.attributes = weight_attributes(module, RECURRENT)
        self.totals: dict[str, torch.Tensor] = {}
        self.samples: dict[str, int] = {}

    def add(self, module, inputs, keywords=None) -> None:
        """Add one batch of the module's inputs ``(input, hx)`` (``hx`` optional, positional or
        the keyword ``hx``)."""
        x = inputs[0]
        hx = inputs[1] if len(inputs) > 1 else (keywords or {}).get("hx")
        packed = isinstance(x, torch.nn.utils.rnn.PackedSequence)
        if packed:
            # pad_packed_sequence restores the batch's own order, the order of hx.
            x, lengths = torch.nn.utils.rnn.pad_packed_sequence(x, batch_first=True)
        else:
            if x.dim() == 2:  # unbatched: (time, features), and hx (layers · directions, H)
                x = x.unsqueeze(0)
                hx = None if hx is None else (tuple(h.unsqueeze(1) for h in hx)
                                              if isinstance(hx, tuple) else hx.unsqueeze(1))
            elif not module.batch_first:
                x = x.transpose(0, 1)
            lengths = torch.full((x.shape[0],), x.shape[1], dtype=torch.int64)
        x = x.detach().to(torch.float32)
        batch, steps = x.shape[:2]
        directions = 2 if module.bidirectional else 1
        hidden = module.hidden_size
        initial_h = hx[0] if isinstance(hx, tuple) else hx  # (layers · directions, batch, H)
        valid = torch.arange(steps)[None, :] < lengths[:, None]          # (batch, steps)
        last = torch.arange(steps)[None, :] == (lengths - 1)[:, None]
        for layer in range(module.num_layers):
            suffixes = DIRECTION_SUFFIXES[:directions]
            self._accumulate(f"weight_ih_l{layer}", x[valid])
            output = self._rerun_layer(module, layer, x, hx, lengths, packed)
            for direction, suffix in enumerate(suffixes):
                h_all = output[..., direction * hidden:(direction + 1) * hidden]
                start = (torch.zeros(batch, hidden) if initial_h is None else
                         initial_h[layer * directions + direction].detach().to(torch.float32))
                if direction == 0:  # h_(t-1); the initial state at t = 0
                    before = torch.cat([start[:, None, :], h_all[:, :-1]], dim=1)
                else:  # h_(t+1); the initial state at each sequence's last step
                    before = torch.cat([h_all[:, 1:], h_all.new_zeros(batch, 1, hidden)], dim=1)
                    before = torch.where(last[..., None], start[:, None, :], before)
                self._accumulate(f"weight_hh_l{layer}{suffix}", before[valid])
                if suffix:
                    self._accumulate(f"weight_ih_l{layer}{suffix}", x[valid])
            x = output

    def _rerun_layer(self, module, layer: int, x, hx, lengths, packed: bool) -> torch.Tensor:
        """The output (batch, steps, directions · hidden) of layer ``layer`` alone."""
        class_name, nonlinearity = _RECURRENT_CLASSES[module.mode]
        options = {} if nonlinearity is None else {"nonlinearity": nonlinearity}
        directions = 2 if module.bidirectional else 1
        single = getattr(torch.nn, class_name)(
            x.shape[-1], module.hidden_size, num_layers=1, bias=module.bias, batch_first=True,
            bidirectional=module.bidirectional, **options)
        with torch.no_grad():
            for suffix in DIRECTION_SUFFIXES[:directions]:
                for which in ("weight_ih", "weight_hh") + (("bias_ih", "bias_hh")
                                                           if module.bias else ()):
                    getattr(single, f"{which}_l0{suffix}").copy_(
                        getattr(module, f"{which}_l{layer}{suffix}").to(torch.float32))
        state = None
        if hx is not None:
            part = slice(layer * directions, (layer + 1) * directions)
            state = (tuple(h[part].detach().to(torch.float32) for h in hx)
                     if isinstance(hx, tuple) else hx[part].detach().to(torch.float32))
        source = (torch.nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True,
                                                          enforce_sorted=False)
                  if packed else x)
        with torch.no_grad():
            output, _ = single(source, state)
        if packed:
            output, _ = torch.nn.utils.rnn.pad_packed_sequence(output, batch_first=True,
                                                               total_length=x.shape[1])
        return output

    def _accumulate(self, attribute: str, rows: torch.Tensor) -> None:
        gram = (rows.T @ rows).to(torch.float64)[None]  # one group
        total = self.totals.get(attribute)
        self.totals[attribute] = gram if total is None else total + gram
        self.samples[attribute] = self.samples.get(attribute, 0) + rows.shape[0]

    def hessian(self, smoothing: float = 1.0, attribute: str = "weight_ih_l0"):
        """(Hessian ``2/N Σ x xᵀ`` of the weight ``attribute``, None)."""
        if not self.samples.get(attribute):
            raise EncoderError("a recurrent layer saw no calibration inputs: the calibration "
                               "batches do not reach it (check that the model's forward uses "
                               "it)")
        return (2.0 / self.samples[attribute] * self.totals[attribute]).numpy(), None


def _padded_2d(module, kind: str, x):
    """A convolution's input as ``(batch, channels, height, width)`` float32 with its padding
    applied (a 1-D convolution is one of height 1), and the kernel, dilation and stride."""
    padding = _explicit_padding(module)
    if kind == "conv1d":
        x = x.unsqueeze(-2)
        kernel, dilation, stride = ((1, module.kernel_size[0]), (1, module.dilation[0]),
                                    (1, module.stride[0]))
        padding = (0, padding[0])
    else:
        kernel, dilation, stride = module.kernel_size, module.dilation, module.stride
    x = x.to(torch.float32)
    if any(padding):
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        x = functional.pad(x, (padding[1], padding[1], padding[0], padding[0]), mode=mode)
    return x, tuple(kernel), tuple(dilation), tuple(stride)


def convolution_gram_by_unfold(x, kernel, dilation, stride, groups: int):
    """(Σ p pᵀ per group ``(groups, columns, columns)``, number of patches) over the im2col
    patches ``p`` of the padded input ``x`` ``(batch, channels, height, width)``: every patch
    materialised, any stride. The reference :func:`convolution_gram_by_shifts` is checked
    against."""
    patches = functional.unfold(x, kernel, dilation=dilation, stride=stride)  # (batch, C·k, L)
    batch, features, locations = patches.shape
    # Channel-major features: group g owns a contiguous slice of them.
    patches = patches.reshape(batch, groups, features // groups, locations)
    patches = patches.permute(1, 0, 3, 2).reshape(groups, batch * locations, -1)
    return patches.transpose(1, 2) @ patches, batch * locations


def convolution_gram_by_shifts(x, kernel, dilation, groups: int):
    """:func:`convolution_gram_by_unfold` for stride 1, without materialising the patches.

    Block ``(a, b)`` of the Gram (kernel offsets ``a``, ``b``: a ``channels × channels`` block)
    is ``Σ_q x[q] x[q + b − a]ᵀ`` over the positions ``q`` that offset ``a`` of some patch
    reads. All blocks of one shift ``s = b − a`` share the sum over the whole input; each
    differs from it by the few rows and columns at the input's edges its patches never read.
    So every shift costs one product over the input (13 for a 3 × 3 kernel, its transposes
    give the other 12) plus thin edge corrections, where the patches cost 81: on large maps
    about 5 times fewer operations, and no copy of the input nine times over; on small maps
    the edges and the blocks' own bookkeeping eat the gain (:func:`gram_costs`).

    The input is laid out flat, each row followed by a margin of zeros as wide as the kernel's
    reach and each image by as many zero rows, so that a shift is one offset into the flat
    array and never pairs a value with one of another row or image.
    """
    batch, channels, height, width = x.shape
    (kernel_h, kernel_w), (dilation_h, dilation_w) = kernel, dilation
    reach_h, reach_w = (kernel_h - 1) * dilation_h, (kernel_w - 1) * dilation_w
    out_h, out_w = height - reach_h, width - reach_w  # patch positions per image
    per_group = channels // groups
    padded_h, padded_w = height + reach_h, width + reach_w
    flat_size = batch * padded_h * padded_w
    largest_offset = reach_h * padded_w + reach_w
    flat = x.new_zeros(groups, per_group, flat_size + largest_offset)
    flat[..., :flat_size].view(groups, per_group, batch, padded_h, padded_w)[
        ..., :height, :width] = x.reshape(batch, groups, per_group, height,
                                          width).permute(1, 2, 0, 3, 4)
    offsets = [(i, j) for i in range(kernel_h) for j in range(kernel_w)]
    kernel_size = len(offsets)
    gram = x.new_zeros(groups, per_group, kernel_size, per_group, kernel_size)
    first = flat[..., :flat_size]
    grid = first.view(groups, per_group, batch, padded_h, padded_w)
    edge_rows = _edge_indices(kernel_h, dilation_h, out_h, height)
    edge_columns = _edge_indices(kernel_w, dilation_w, out_w, width)
    for shift_h in range(kernel_h):
        for shift_w in range(-(kernel_w - 1), kernel_w):
            if shift_h == 0 and shift_w < 0:
                continue  # the transpose of the block of shift (0, -shift_w)
            offset = shift_h * dilation_h * padded_w + shift_w * dilation_w
            second = flat[..., offset:offset + flat_size]
            shifted = second.view(groups, per_group, batch, padded_h, padded_w)
            whole = first @ second.transpose(1, 2)  # Σ_q x[q] x[q + s]ᵀ, over every q
            # What the input's edges add, by row, by column and by corner block: each a sum
            # over a slab of the grid, kept for the other offsets of this shift.
            by_row = torch.einsum("gcbyx,gdbyx->ygcd", grid[..., edge_rows, :width],
                                  shifted[..., edge_rows, :width])
            by_column = torch.einsum("gcbyx,gdbyx->xgcd", grid[..., :height, edge_columns],
                                     shifted[..., :height, edge_columns])
            corners = {}

            def corner(rows: range, columns: range):
                if (rows, columns) not in corners:
                    corners[rows, columns] = torch.einsum(
                        "gcbyx,gdbyx->gcd", grid[..., rows.start:rows.stop,
                                                 columns.start:columns.stop],
                        shifted[..., rows.start:rows.stop, columns.start:columns.stop])
                return corners[rows, columns]

            for a, (i, j) in enumerate(offsets):
                i2, j2 = i + shift_h, j + shift_w
                if not (0 <= i2 < kernel_h and 0 <= j2 < kernel_w):
                    continue
                b = i2 * kernel_w + j2
                # Offset a reads rows [i·dh, i·dh + out_h) and columns [j·dw, j·dw + out_w);
                # the input's other rows and columns are taken away, their crossings put back.
                rows = _outside(i * dilation_h, out_h, height)
                columns = _outside(j * dilation_w, out_w, width)
                block = whole.clone()
                for part in rows:
                    block -= by_row[[edge_rows.index(y) for y in part]].sum(0)
                for part in columns:
                    block -= by_column[[edge_columns.index(x) for x in part]].sum(0)
                for row_part in rows:
                    for column_part in columns:
                        block += corner(row_part, column_part)
                gram[:, :, a, :, b] = block
                if a != b:
                    gram[:, :, b, :, a] = block.transpose(1, 2)
    columns = per_group * kernel_size
    return gram.reshape(groups, columns, columns), batch * out_h * out_w


MIN_SHIFT_CHANNELS = 8
"""Channels per group below which a Gram is summed over the patches: with few channels both
ways are bound by memory, not by multiply–adds, and the patches' way makes fewer calls."""

MIN_SHIFT_SAVING = 1e9
"""Multiply–adds a batch the shifts must save before their many small steps are worth taking:
edge corrections of a 3 x 3 kernel are several hundred tensor operations, tens of milliseconds
(the grouped layer of the digits CNN, 8 x 8 maps, took 4 times longer by shifts)."""

BLOCK_COST = 1000
"""What building one block of a shift's Gram costs (cloning, subtracting edges, adding corners:
memory-bound passes over ``channels²`` values), in multiply–adds a channel pair: 512 channels on
7 x 7 maps in batches of 4 took twice as long by shifts before this term."""


def _shifts_are_cheaper(x, kernel, dilation, groups: int) -> bool:
    per_group = x.shape[1] // groups
    if per_group < MIN_SHIFT_CHANNELS:
        return False
    costs = gram_costs(x.shape[-2], x.shape[-1], kernel, dilation)
    saving = groups * per_group ** 2 * (x.shape[0] * (costs["unfold"] - costs["shifts"])
                                        - BLOCK_COST * costs["blocks"])
    return saving > MIN_SHIFT_SAVING


def _outside(start: int, length: int, size: int) -> list[range]:
    """The non-empty ranges of ``[0, size)`` outside ``[start, start + length)``."""
    return [part for part in (range(0, start), range(start + length, size)) if len(part)]


def _edge_indices(kernel: int, dilation: int, out: int, size: int) -> list[int]:
    """Every row (column) of an input of ``size`` that some kernel offset does not read."""
    return sorted({index for offset in range(kernel)
                   for part in _outside(offset * dilation, out, size) for index in part})


def gram_costs(height: int, width: int, kernel, dilation) -> dict:
    """Multiply–adds per channel pair and image of the two ways to sum a stride-1
    convolution's Gram over an input of ``height × width`` (padding included):
    ``{"unfold": …, "shifts": …}`` (:func:`convolution_gram_by_shifts`), and ``"blocks"``, the
    blocks the shifts build once a batch whatever its size."""
    (kernel_h, kernel_w), (dilation_h, dilation_w) = kernel, dilation
    reach_h, reach_w = (kernel_h - 1) * dilation_h, (kernel_w - 1) * dilation_w
    out_h, out_w = height - reach_h, width - reach_w
    size = kernel_h * kernel_w
    shifts = kernel_h * (2 * kernel_w - 1) - (kernel_w - 1)
    rows = len(_edge_indices(kernel_h, dilation_h, out_h, height))
    columns = len(_edge_indices(kernel_w, dilation_w, out_w, width))
    # every pair of offsets (a block) takes a corner block of reach_h × reach_w at most
    blocks = size * (size + 1) // 2
    return {"unfold": size * size * out_h * out_w,
            "shifts": shifts * ((height + reach_h) * (width + reach_w) + rows * width
                                + columns * height) + blocks * reach_h * reach_w,
            "blocks": blocks}


def _explicit_padding(module) -> tuple:
    if module.padding == "valid":
        return tuple(0 for _ in module.kernel_size)
    if module.padding == "same":
        return tuple(d * (k - 1) // 2 for k, d in zip(module.kernel_size, module.dilation))
    return tuple(module.padding)


@dataclass
class CollectedHessians:
    """The Hessians of every supported layer of a model, by module name."""

    kinds: dict = field(default_factory=dict)
    accumulators: dict = field(default_factory=dict)
    batches: int = 0


def find_layers(model, include=None, recurrent: bool = True) -> dict:
    """Module name -> kind for every supported layer with floating-point weights
    (``include``: an optional predicate on the name; ``recurrent``: whether LSTM, GRU and RNN
    modules are layers too)."""
    layers = {}
    for name, module in model.named_modules():
        kind = layer_kind(module)
        if kind is None or (kind == RECURRENT and not recurrent):
            continue
        # A parameter or buffer of the module's own (a state-dict entry): a weight computed by
        # weight_norm or a parametrization is no tensor the file could hold under that name.
        weights = [module._parameters.get(attribute, module._buffers.get(attribute))
                   for attribute in weight_attributes(module, kind)]
        if not all(isinstance(weight, torch.Tensor) and weight.dtype.is_floating_point
                   and weight.numel() > 0 for weight in weights):
            continue
        if include is not None and not include(name):
            continue
        layers[name] = kind
    return layers


def run_batch(model, batch):
    """Run one calibration batch: a mapping as keyword arguments (a tokenizer's output), a tuple
    or list as positional arguments, anything else as the single argument. Returns the output."""
    if isinstance(batch, dict) or hasattr(batch, "keys"):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def first_tensor(output) -> torch.Tensor:
    """The first tensor of a model's output: the tensor itself, the first value of a mapping
    (a ``transformers`` ModelOutput: ``last_hidden_state`` or ``logits``) or of a tuple."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict) or hasattr(output, "values"):
        values = list(output.values())
    elif isinstance(output, (tuple, list)):
        values = list(output)
    else:
        values = []
    for value in values:
        if isinstance(value, torch.Tensor) and value.dtype.is_floating_point:
            return value
    raise EncoderError(f"the model's output ({type(output).__name__}) holds no floating-point "
                       f"tensor to measure layer sensitivities on")


def output_at_tokens(model, batch) -> torch.Tensor:
    """The first tensor of ``model``'s output on ``batch`` (:func:`first_tensor`), with an
    output of shape ``(batch, sequence, ...)`` kept only at the batch's token positions
    (:func:`token_positions`): what layer sensitivities and output fidelity are measured on,
    so that padding weighs nothing."""
    output = first_tensor(run_batch(model, batch))
    return at_token_positions(output, token_positions(batch)) if output.dim() > 2 else output


def collect_hessians(model, batches, layers: dict, progress=None,
                     convolution_gram: str = CONVOLUTION_GRAMS[0]) -> CollectedHessians:
    """Run ``batches`` through ``model`` (eval mode, no grad) and accumulate each layer's Hessian
    (Linear layers and embeddings only at a batch's token positions, :func:`token_positions`).

    Parameters
    ----------
    model:
        A ``torch.nn.Module``.
    batches:
        An iterable of calibration batches (see :func:`run_batch`).
    layers:
        Module name -> kind, from :func:`find_layers`.
    progress:
        Optional callable, given ``(batches done, total or None)``.
    convolution_gram:
        How convolutions' Grams are summed (:data:`CONVOLUTION_GRAMS`).
    """
    if convolution_gram not in CONVOLUTION_GRAMS:
        raise EncoderError(f"unknown convolution_gram {convolution_gram!r}; choose one of "
                           f"{', '.join(CONVOLUTION_GRAMS)}")
    modules = dict(model.named_modules())
    collected = CollectedHessians(kinds=dict(layers))
    handles = []
    batch_positions = [None]  # the token positions of the batch running (token_positions)
    for name, kind in layers.items():
        module = modules[name]
        if kind == RECURRENT:
            accumulator = RecurrentHessianAccumulator(module)
        else:
            groups = getattr(module, "groups", 1) if kind in ("conv1d", "conv2d") else 1
            columns = weight_matrix(module.weight, kind).shape[1] if kind != "embedding" else 0
            accumulator = HessianAccumulator(kind, groups, columns,
                                             vocabulary=module.num_embeddings
                                             if kind == "embedding" else 0,
                                             method=convolution_gram)
        collected.accumulators[name] = accumulator
        if kind == RECURRENT:  # hx may come as a keyword
            handles.append(module.register_forward_pre_hook(
                lambda module, inputs, keywords, accumulator=accumulator:
                accumulator.add(module, inputs, keywords), with_kwargs=True))
            continue
        handles.append(module.register_forward_pre_hook(
            lambda module, inputs, accumulator=accumulator:
            accumulator.add(module, inputs, batch_positions[0])))
    was_training = model.training
    model.eval()
    total = len(batches) if hasattr(batches, "__len__") else None
    try:
        with torch.no_grad():
            for batch in batches:
                batch_positions[0] = token_positions(batch)
                run_batch(model, batch)
                collected.batches += 1
                if progress is not None:
                    progress(collected.batches, total)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if collected.batches == 0:
        raise EncoderError("no calibration batches were given")
    return collected
