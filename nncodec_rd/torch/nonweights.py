"""Non-weight tensors on a fine uniform grid: biases, norms' scales and shifts, BatchNorm's running
statistics, an LSTM's biases (docs/guides/compressing-pytorch.md, "Which tensors are coded how").

A state dict holds more than the layers' weights. Stored raw they cost 32 bits a value: on a CNN
with BatchNorm that is a tenth of a file whose weights are coded at 4 bits. Each such tensor
gets one step relative to its own RMS, ``RMS · 2^-bits``, so that its indices span a small
alphabet. How fine a grid a kind of tensor needs is measured, not assumed: tensors are grouped by
their **role** (the attribute's name: ``bias``, ``weight`` of a norm, ``running_var``, ...) and
each role takes the coarsest of :data:`RELATIVE_BITS` at which the model's output, on a
calibration batch, with every tensor of that role quantized and all else exact, moves by at most
:data:`OUTPUT_ERROR_BUDGET` of its mean square. A role that no candidate keeps within the budget
stays raw, and so does every tensor whose coded form (chunks, frequency tables and the grid's
record) would not be smaller than its raw bytes: small tensors, whose tables cost more than
their values.

A decoded float32 value is within half a step of the original: ``|x̂ - x| <= RMS · 2^-bits / 2``
(its grid's step is in the file); float16 and bfloat16 tensors take at most
:data:`MAX_BITS_OF_DTYPE` bits and add their dtype's rounding of ``index × step``. A variance
stays positive: one below half a step decodes to one step, not to 0 (:data:`POSITIVE_ROLES`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import torch

from ..encoder.entropy import EntropySettings
from ..encoder.rans import frequency_table_bytes
from ..encoder.writer import NrdWriter, encode_rans_tensor
from ..format.grids import UniformGrid
from .hessians import output_at_tokens
from .layers import FORMAT_OF_TORCH_DTYPE
from .state_dict import tensor_to_numpy

RELATIVE_BITS = (3, 4, 5, 6, 7, 8, 10, 12)
"""Candidate steps ``RMS · 2^-bits``, tried coarsest first."""

OUTPUT_ERROR_BUDGET = 5e-5
"""What quantizing one role may cost: the mean square change of the model's output over its
mean square. At mean cosine 0.99 the weights' own error is about 2e-2 of it."""

MIN_ELEMENTS = 16
"""Tensors smaller than this stay raw: their record alone outweighs their values."""

RECORD_EXTRA_BYTES = 40
"""Bytes a coded tensor's record takes beyond a raw one's (grid, context and chunk fields),
counted against it when choosing between the two."""

SMALL_TENSOR_ENTROPY = EntropySettings(lane_count=1, context_model="iid")
"""One rANS lane and one table: small tensors decode in microseconds either way, and every
lane's final state costs 4 bytes."""



def role_of(key: str) -> str:
    """The role of the state-dict entry ``key``: its attribute name without layer numbers and
    directions.

    >>> role_of("encoder.layer.3.output.LayerNorm.bias"), role_of("rnn.bias_hh_l1_reverse")
    ('bias', 'bias_hh')
    >>> role_of("features.1.running_var")
    'running_var'
    """
    attribute = key.rpartition(".")[2]
    return re.sub(r"_l\d+(_reverse)?$", "", attribute)


@dataclass
class NonWeightPlan:
    """For each non-weight tensor that may be coded, its role's relative bits (None: raw), and
    what was measured."""

    bits_of_role: dict = field(default_factory=dict)
    roles: dict = field(default_factory=dict)  # state-dict key -> role
    measured: dict = field(default_factory=dict)  # role -> [(bits, relative output error)]

    def bits_of(self, key: str):
        """The relative bits of ``key``, or None where it stays raw."""
        role = self.roles.get(key)
        return None if role is None else self.bits_of_role.get(role)


STATISTICS = ("running_mean", "running_var")
"""The buffers that may be coded: batch and instance norms' statistics. Other buffers (a rotary
embedding's frequencies, masks) may matter outside the calibration's range: raw."""


def candidate_keys(model, coded: set, include=None) -> dict:
    """State-dict key -> role of every vector (one dimension, at least :data:`MIN_ELEMENTS`
    floating-point values) among the model's parameters and its norms' statistics, outside the
    coded layers' weights; ``include``: the encoder's predicate on module names (the tensors
    of modules it rejects stay raw)."""
    keys = {}
    for module_name, module in model.named_modules():
        if include is not None and not include(module_name):
            continue
        statistics = isinstance(module, (torch.nn.modules.batchnorm._BatchNorm,
                                         torch.nn.modules.instancenorm._InstanceNorm))
        tensors = list(module._parameters.items()) + [
            (name, buffer) for name, buffer in module._buffers.items()
            if statistics and name in STATISTICS]
        for attribute, value in tensors:
            key = f"{module_name}.{attribute}" if module_name else attribute
            if (value is None or key in coded or value.dtype not in FORMAT_OF_TORCH_DTYPE
                    or value.dim() != 1 or value.numel() < MIN_ELEMENTS):
                continue
            keys[key] = role_of(key)
    return keys


MAX_BITS_OF_DTYPE = {"float16": 10, "bfloat16": 7}
"""A 16-bit tensor's grid is no finer than its dtype holds near its RMS (its mantissa bits)."""


POSITIVE_ROLES = ("running_var",)
"""Roles whose positive values must stay positive: a variance of 0 is no variance (tools that
fold BatchNorm divide by it)."""


def quantized(array: np.ndarray, bits: int, keep_positive: bool = False):
    """(indices, step) of ``array`` on the grid ``RMS · 2^-bits`` (``bits`` at most
    :data:`MAX_BITS_OF_DTYPE` of a 16-bit array); None if it is all zero or not finite.
    With ``keep_positive``, a positive value below half a step takes index 1, not 0.

    >>> indices, step = quantized(np.array([0.5, -1.0, 0.25], np.float32), 3)
    >>> round(float(step), 6), indices.tolist()
    (0.08268, [6, -12, 3])
    """
    values = array.astype(np.float64)
    if not np.all(np.isfinite(values)):
        return None
    rms = float(np.sqrt(np.mean(values ** 2)))
    if rms == 0.0:
        return None
    bits = min(bits, MAX_BITS_OF_DTYPE.get(array.dtype.name, bits))
    step = np.float32(rms * 2.0 ** -bits)
    indices = np.rint(values / np.float64(step)).astype(np.int64)
    if keep_positive:
        indices = np.where((values > 0) & (indices == 0), 1, indices)
    return indices, step


def plan_nonweights(model, batches, coded: set, progress=None, include=None) -> NonWeightPlan:
    """Measure each role's coarsest grid within :data:`OUTPUT_ERROR_BUDGET` (module docstring)
    on ``batches`` (one or two calibration batches are enough: the budget is far from the
    weights' error). A role whose coarsest grid leaves the output exactly unchanged was not
    measured (its tensors do not reach the output the encoder sees): raw."""
    plan = NonWeightPlan(roles=candidate_keys(model, coded, include))
    if not plan.roles:
        return plan
    state = model.state_dict()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            reference = [output_at_tokens(model, batch).double() for batch in batches]
            power = float(np.mean([torch.mean(out ** 2) for out in reference])) or 1.0
            for role in sorted(set(plan.roles.values())):
                keys = [key for key, other in plan.roles.items() if other == role]
                originals = {key: state[key].detach().clone() for key in keys}
                plan.measured[role] = []
                plan.bits_of_role[role] = None
                try:
                    for bits in RELATIVE_BITS:
                        for key in keys:
                            array = tensor_to_numpy(originals[key]).astype(np.float32)
                            coded_values = quantized(array, bits, role in POSITIVE_ROLES)
                            if coded_values is not None:
                                indices, step = coded_values
                                state[key].copy_(torch.from_numpy(
                                    (indices * np.float64(step)).astype(np.float32)))
                        change = float(np.mean([
                            torch.mean((output_at_tokens(model, batch).double()
                                        - expected) ** 2)
                            for batch, expected in zip(batches, reference)])) / power
                        plan.measured[role].append((bits, change))
                        if change == 0.0 and bits == RELATIVE_BITS[0]:
                            break  # not measured: raw
                        if np.isfinite(change) and change <= OUTPUT_ERROR_BUDGET:
                            plan.bits_of_role[role] = bits
                            break
                finally:
                    for key, original in originals.items():
                        state[key].copy_(original)
                if progress is not None:
                    progress(role, plan.bits_of_role[role], len(keys))
    finally:
        model.train(was_training)
    return plan


def coded_nonweight(key: str, array: np.ndarray, bits: int | None):
    """``(tensor record to add, decoded values)`` of ``array`` coded at ``bits``, or None where
    it stays raw: no bits, or a coded form (chunks, tables, record) not smaller than raw."""
    coded_values = None if bits is None else quantized(array, bits,
                                                       role_of(key) in POSITIVE_ROLES)
    if coded_values is None or array.dtype.name not in FORMAT_OF_TORCH_DTYPE.values():
        return None
    indices, step = coded_values
    pending = encode_rans_tensor(key, indices, UniformGrid(np.array([step], np.float32)),
                                 array.dtype.name, settings=SMALL_TENSOR_ENTROPY)
    tables = [row["frequencies"] for row in pending.record["body"]["tables"]]
    coded_bytes = (sum(len(payload) for payload in pending.payloads)
                   + frequency_table_bytes(np.array(tables)) + RECORD_EXTRA_BYTES)
    if coded_bytes >= array.nbytes:
        return None
    # what a decoder makes of it: index × step in float32, then the stored dtype (spec §6)
    decoded = (indices.astype(np.float32) * step).astype(array.dtype)
    return pending, decoded


def write_nonweight(writer: NrdWriter, key: str, array: np.ndarray, bits: int | None) -> bool:
    """Add ``array`` to ``writer``: coded at ``bits`` where :func:`coded_nonweight` says so,
    else raw. Returns whether it was coded."""
    coded = coded_nonweight(key, array, bits)
    if coded is None:
        writer.add_raw(key, array)
        return False
    writer.add_pending(coded[0])
    return True
