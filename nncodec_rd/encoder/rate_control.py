"""Meeting a size target in one pass: predicted rates per layer and a controller of λ.

An encoder that quantizes a model one unit (a block of layers) at a time cannot bisect λ over
whole files: each trial would repeat the pass. Instead, before each unit is quantized, the
controller picks the λ that makes the *predicted* file meet the target, and after the unit is
written it learns from the real payload (docs/algorithms.md, "A size target in one pass"):

* **Predicted rate of a layer at any λ** (:func:`rate_table`). The λ rule sets the layer's step
  ``Δ ∝ √λ`` (:func:`nncodec_rd.encoder.obs.lambda_rule_steps`); rounding the weights to that grid
  and pricing the indices with the coder's own static table (:class:`~nncodec_rd.encoder.rate.
  RateModel`) gives the bits of plain rounding. A table of these bits over λ on a grid of
  factors of √2 costs a few roundings of the layer, no quantization.
* **Correction by what was written.** The rate-aware quantizers code fewer bits than rounding
  at the same step; the controller keeps the ratio of real payload bits to predicted bits over
  the units done so far, and applies it to the rest.
* **The rest of the model.** Units not seen yet are predicted per weight from the stack blocks
  seen (for the first unit: from block 0 on the float model's inputs). One λ is solved for the
  current unit and everything after it, so the remaining layers keep one slope: the early
  units' errors are absorbed by all later ones, not by the last.

>>> table = RateTable(np.array([1.0, 4.0]), np.array([800.0, 400.0]), weights=100)
>>> round(table.bits(2.0), 6)   # log-log interpolation: halfway in log λ
565.685425
>>> controller = RateController(target_bits=600.0)
>>> lam = controller.choose(table, RateTable.empty())
>>> round(table.bits(lam))      # this unit is all that is left: it gets the whole budget
600
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .entropy import EntropySettings
from .rans import build_frequency_table, frequency_table_bytes
from .rate import COUNT_CHUNK

LAM_FACTORS = 2.0 ** np.arange(-10, 11, dtype=np.float64)
"""The λ grid of a rate table: the reference λ times 2^k, k = -10 … 10 (1024× either way; the
step moves by √2 from one to the next)."""

SAMPLE_WEIGHTS = 1 << 18
"""A layer's rates are predicted from about this many of its weights (whole rows, evenly
spaced): the prediction is corrected by the real rate anyway, and rounding every weight of a
1.1 B model at every λ of the grid would cost minutes."""


def rounding_bits(weights: np.ndarray, steps: np.ndarray,
                  settings: EntropySettings | None = None) -> float:
    """Bits of ``weights`` rounded to the grid of ``steps`` (one, or one per row) and coded with
    the coder's static table (frequency table included); rows a block at a time."""
    return sum(_rounding_bits(weights, steps, settings))


def _rounding_bits(weights: np.ndarray, steps: np.ndarray,
                   settings: EntropySettings | None = None) -> tuple[float, float]:
    """(bits of the indices, bits of the frequency table) of :func:`rounding_bits`."""
    settings = settings or EntropySettings()
    rows = weights.shape[0]
    columns = int(np.prod(weights.shape[1:])) if weights.ndim > 1 else 1
    matrix = weights.reshape(rows, columns)
    steps = np.asarray(steps, dtype=np.float64).reshape(-1)
    row_steps = np.broadcast_to(steps, (rows,)) if len(steps) == 1 else steps
    block = max(1, COUNT_CHUNK // max(columns, 1))
    found_values, found_counts = [], []
    for start in range(0, rows, block):
        part = slice(start, min(rows, start + block))
        indices = np.rint(matrix[part] / row_steps[part, None]).astype(np.int64).reshape(-1)
        if indices.size == 0:
            continue
        low, high = int(indices.min()), int(indices.max())
        if high - low < (1 << 20):
            counted = np.bincount(indices - low)
            present = np.flatnonzero(counted)
            found_values.append(present + low)
            found_counts.append(counted[present])
        else:  # a very fine grid: too wide a range for a dense count
            values, numbers = np.unique(indices, return_counts=True)
            found_values.append(values)
            found_counts.append(numbers)
    if not found_values:
        return 0.0, 0.0
    values, inverse = np.unique(np.concatenate(found_values), return_inverse=True)
    numbers = np.bincount(inverse, weights=np.concatenate(found_counts)).astype(np.int64)
    if len(values) > settings.max_alphabet_size:  # escapes: price the rarest at their value
        order = np.argsort(-numbers)
        kept, escaped = order[:settings.max_alphabet_size - 1], order[settings.max_alphabet_size - 1:]
        extra = float(np.sum(numbers[escaped])) * (settings.precision_bits + 33.0)
        values, numbers = values[kept], numbers[kept]
    else:
        extra = 0.0
    dense = np.zeros(int(values.max() - values.min()) + 1, dtype=np.int64)
    dense[values - values.min()] = numbers
    frequencies = build_frequency_table(dense, settings.precision_bits).astype(np.float64)
    used = dense > 0
    bits = float(np.sum(dense[used] * (settings.precision_bits - np.log2(frequencies[used]))))
    return bits + extra, 8.0 * frequency_table_bytes(frequencies)


@dataclass
class RateTable:
    """Predicted bits of some layers over λ: ``bits_at[k]`` at ``lams[k]`` (increasing λ)."""

    lams: np.ndarray
    bits_at: np.ndarray
    weights: int = 0

    @classmethod
    def empty(cls, lams: np.ndarray | None = None) -> "RateTable":
        """No layers: zero bits at every λ."""
        lams = np.array([1.0]) if lams is None else np.asarray(lams, dtype=np.float64)
        return cls(lams, np.zeros(len(lams)), 0)

    def bits(self, lam: float) -> float:
        """Bits at ``lam``: linear in log bits over log λ between grid points, the end values
        beyond them."""
        if self.weights == 0 or not np.any(self.bits_at > 0):
            return 0.0
        logs = np.log2(np.maximum(self.bits_at, 1e-300))
        return float(2.0 ** np.interp(math.log2(lam), np.log2(self.lams), logs))

    def __add__(self, other: "RateTable") -> "RateTable":
        if other.weights == 0:
            return self
        if self.weights == 0:
            return other
        if not np.array_equal(self.lams, other.lams):
            raise ValueError("rate tables on different λ grids")
        return RateTable(self.lams, self.bits_at + other.bits_at, self.weights + other.weights)

    def scaled_to(self, weights: int) -> "RateTable":
        """These bits per weight, for ``weights`` weights."""
        if self.weights == 0:
            return RateTable(self.lams, np.zeros(len(self.lams)), weights)
        return RateTable(self.lams, self.bits_at * (weights / self.weights), weights)

    def to_json(self) -> dict:
        return {"lams": self.lams.tolist(), "bits": self.bits_at.tolist(),
                "weights": self.weights}

    @classmethod
    def from_json(cls, data: dict) -> "RateTable":
        return cls(np.array(data["lams"]), np.array(data["bits"]), int(data["weights"]))


def rate_table(weights: np.ndarray, unit_steps: np.ndarray, lams: np.ndarray,
               settings: EntropySettings | None = None,
               sample_weights: int = SAMPLE_WEIGHTS) -> RateTable:
    """The rounding bits of one layer at each λ of ``lams``, given ``unit_steps``, its λ-rule
    step(s) at λ = 1 (the step grows as √λ); from evenly spaced rows of about
    ``sample_weights`` weights, scaled to the layer (the frequency table's bits unscaled)."""
    rows = weights.shape[0]
    matrix = weights.reshape(rows, -1)
    steps = np.asarray(unit_steps, np.float64).reshape(-1)
    scale = 1.0
    if matrix.size > sample_weights and rows > 1:
        kept = np.unique(np.linspace(0, rows - 1, max(1, sample_weights // matrix.shape[1]))
                         .astype(np.int64))
        matrix = matrix[kept]
        steps = steps[kept] if len(steps) > 1 else steps
        scale = rows / len(kept)
    bits = []
    for lam in lams:
        grid = steps * math.sqrt(lam)
        index_bits, table_bits = _rounding_bits(matrix, grid, settings)
        bits.append(index_bits * scale + table_bits)
    return RateTable(np.asarray(lams, dtype=np.float64), np.array(bits), int(weights.size))


@dataclass
class RateController:
    """Chooses λ unit by unit so that the coded bits of the whole model meet ``target_bits``.

    Call :meth:`choose` before quantizing a unit and :meth:`record` after writing it.
    """

    target_bits: float
    spent_bits: float = 0.0
    """Real payload bits of the coded units written so far."""
    predicted_spent_bits: float = 0.0
    """What the units' own tables predicted for them at the λ each was given."""
    surveyed_spent_bits: float = 0.0
    """Real payload bits of the units written so far that the survey predicted too."""
    survey_predicted_bits: float = 0.0
    """What the survey's tables predicted for those units at the λ each was given."""
    history: list = field(default_factory=list)

    @property
    def correction(self) -> float:
        """Real bits per bit the units' own tables predicted so far (1 before the first)."""
        if self.predicted_spent_bits <= 0:
            return 1.0
        return self.spent_bits / self.predicted_spent_bits

    @property
    def survey_correction(self) -> float:
        """Real bits per bit a survey's tables predicted, over the units it covered so far (the
        survey sees the float model on fewer data, so its level may be off; its shape over
        the units, depth and head, is what it is for). Before any: :attr:`correction`."""
        if self.survey_predicted_bits <= 0:
            return self.correction
        return self.surveyed_spent_bits / self.survey_predicted_bits

    def choose(self, unit: RateTable, rest: RateTable, committed_bits: float | None = None
               ) -> float:
        """The λ at which ``committed_bits`` (the file so far and what will be stored raw; by
        default the coded bits written) plus the corrected prediction of ``unit`` and of
        ``rest`` (every coded layer after it) meet the target: bisection in log λ over the
        tables' grid; its ends when the target lies beyond them."""
        left = self.target_bits - (self.spent_bits if committed_bits is None else committed_bits)
        unit_scale, rest_scale = self.correction, self.survey_correction
        lams = unit.lams if unit.weights else rest.lams

        def predicted(lam: float) -> float:
            return unit_scale * unit.bits(lam) + rest_scale * rest.bits(lam)

        low, high = math.log2(lams[0]), math.log2(lams[-1])
        if predicted(2.0 ** low) <= left:
            return float(2.0 ** low)
        if predicted(2.0 ** high) >= left:
            return float(2.0 ** high)
        for _ in range(60):
            middle = 0.5 * (low + high)
            if predicted(2.0 ** middle) > left:
                low = middle
            else:
                high = middle
        return float(2.0 ** high)

    def record(self, label: str, lam: float, real_bits: float, predicted_bits: float,
               survey_bits: float | None = None) -> None:
        """A unit written at ``lam``: its real payload bits, what its own table predicted, and
        what the survey's table predicted (None: the survey did not cover it)."""
        self.spent_bits += real_bits
        self.predicted_spent_bits += predicted_bits
        if survey_bits is not None and survey_bits > 0:
            self.surveyed_spent_bits += real_bits
            self.survey_predicted_bits += survey_bits
        self.history.append({"unit": label, "lam": lam, "bits": real_bits,
                             "predicted_bits": predicted_bits, "survey_bits": survey_bits})

    def to_json(self) -> dict:
        return {"target_bits": self.target_bits, "spent_bits": self.spent_bits,
                "predicted_spent_bits": self.predicted_spent_bits,
                "surveyed_spent_bits": self.surveyed_spent_bits,
                "survey_predicted_bits": self.survey_predicted_bits, "history": self.history}

    @classmethod
    def from_json(cls, data: dict) -> "RateController":
        return cls(data["target_bits"], data["spent_bits"], data["predicted_spent_bits"],
                   data["surveyed_spent_bits"], data["survey_predicted_bits"],
                   list(data["history"]))


__all__ = ["LAM_FACTORS", "RateController", "RateTable", "rate_table", "rounding_bits"]
