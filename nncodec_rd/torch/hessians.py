"""Layer-wise Hessians ``H = (2/N) Σ x xᵀ`` from calibration batches, with forward hooks
(docs/algorithms.md §1, "Hessian details").

Supported layers and how their weights are seen as a ``(rows, columns)`` matrix:

- ``nn.Linear``: ``(out, in)``; the inputs are the rows of the layer's input.
- ``Conv1D`` of GPT-style ``transformers`` models: its weight is stored ``(in, out)``; the matrix
  is its transpose, and the file keeps the stored layout.
- ``nn.Conv1d`` / ``nn.Conv2d``: ``(out, in/groups · kernel)``; the inputs are the unfolded
  (im2col) patches. A grouped or depthwise convolution gets one Hessian per group.
- ``nn.Embedding``: an identity Hessian with each row (token) weighted by its smoothed frequency
  in the calibration data, since an embedding's output error for a token is that token's row error.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as functional

from ..format.errors import EncoderError


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
    return None


def weight_matrix(module, kind: str) -> np.ndarray:
    """The layer's weight as a float64 ``(rows, columns)`` matrix (module docstring)."""
    weight = module.weight.detach().to(torch.float64).cpu()
    if kind == "transposed_linear":
        return weight.T.contiguous().numpy()
    return weight.reshape(weight.shape[0], -1).numpy()


def matrix_to_stored_layout(matrix: np.ndarray, module, kind: str) -> np.ndarray:
    """Undo :func:`weight_matrix`: an array of the shape of ``module.weight``."""
    if kind == "transposed_linear":
        return np.ascontiguousarray(matrix.T)
    return matrix.reshape(tuple(module.weight.shape))


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

    def add(self, module, inputs) -> None:
        """Add one batch of the layer's inputs."""
        x = inputs[0] if isinstance(inputs, tuple) else inputs
        if self.kind == "embedding":
            ids = x.detach().reshape(-1).cpu().numpy().astype(np.int64)
            ids = ids[(ids >= 0) & (ids < self.vocabulary)]
            counts = np.bincount(ids, minlength=self.vocabulary)
            self.token_counts = counts if self.token_counts is None else self.token_counts + counts
            self.samples += int(ids.size)
            return
        x = x.detach()
        if self.kind in ("linear", "transposed_linear"):
            patches = x.reshape(-1, x.shape[-1]).to(torch.float32)[None]  # (1, N, in)
        else:
            patches = self._unfold(module, x)  # (groups, N, columns)
        # One batch's sum in float32 (fast, exact enough for thousands of rows), the running
        # total in float64 (many batches).
        gram = (patches.transpose(1, 2) @ patches).to(torch.float64)
        self.total = gram if self.total is None else self.total + gram
        self.samples += patches.shape[1]

    def _unfold(self, module, x) -> torch.Tensor:
        padding = _explicit_padding(module)
        if self.kind == "conv1d":
            x = x.unsqueeze(-2)
            kernel, dilation, stride = ((1, module.kernel_size[0]), (1, module.dilation[0]),
                                        (1, module.stride[0]))
            padding = (0, padding[0])
        else:
            kernel, dilation, stride = module.kernel_size, module.dilation, module.stride
        if module.padding_mode != "zeros" and any(padding):
            x = functional.pad(x, (padding[1], padding[1], padding[0], padding[0]),
                               mode=module.padding_mode)
            padding = (0, 0)
        patches = functional.unfold(x.to(torch.float32), kernel, dilation=dilation,
                                    padding=padding, stride=stride)  # (batch, C·k, L)
        batch, features, locations = patches.shape
        # Channel-major features: group g owns a contiguous slice of them.
        patches = patches.reshape(batch, self.groups, features // self.groups, locations)
        return patches.permute(1, 0, 3, 2).reshape(self.groups, batch * locations, -1)

    def hessian(self, smoothing: float = 1.0) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(Hessian, row scale): ``2/N Σ x xᵀ`` per group, or for an embedding (None, the
        token frequencies ``2 (n_t + smoothing) / (N + smoothing · V)``)."""
        if self.kind == "embedding":
            counts = np.zeros(self.vocabulary) if self.token_counts is None else self.token_counts
            total = counts.sum() + smoothing * self.vocabulary
            return None, 2.0 * (counts + smoothing) / total
        if self.total is None or self.samples == 0:
            raise EncoderError("a layer saw no calibration inputs: the calibration batches do "
                               "not reach it (check that the model's forward uses it)")
        return (2.0 / self.samples * self.total).numpy(), None


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


def find_layers(model, include=None) -> dict:
    """Module name -> kind for every supported layer with a floating-point weight
    (``include``: an optional predicate on the name)."""
    layers = {}
    for name, module in model.named_modules():
        kind = layer_kind(module)
        if kind is None or not isinstance(getattr(module, "weight", None), torch.Tensor):
            continue
        if not module.weight.dtype.is_floating_point or module.weight.numel() == 0:
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


def collect_hessians(model, batches, layers: dict, progress=None) -> CollectedHessians:
    """Run ``batches`` through ``model`` (eval mode, no grad) and accumulate each layer's Hessian.

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
    """
    modules = dict(model.named_modules())
    collected = CollectedHessians(kinds=dict(layers))
    handles = []
    for name, kind in layers.items():
        module = modules[name]
        groups = getattr(module, "groups", 1) if kind in ("conv1d", "conv2d") else 1
        columns = weight_matrix(module, kind).shape[1] if kind != "embedding" else 0
        accumulator = HessianAccumulator(kind, groups, columns,
                                         vocabulary=module.num_embeddings if kind == "embedding"
                                         else 0)
        collected.accumulators[name] = accumulator
        handles.append(module.register_forward_pre_hook(
            lambda module, inputs, accumulator=accumulator: accumulator.add(module, inputs)))
    was_training = model.training
    model.eval()
    total = len(batches) if hasattr(batches, "__len__") else None
    try:
        with torch.no_grad():
            for batch in batches:
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
