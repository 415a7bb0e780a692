"""The encoder's quantization methods: one :class:`QuantizationMethod` object per method, in the
registry :data:`METHODS` (docs/architecture.md, "Adding a quantization method").

A method states what it needs and can do (calibration data, rate-aware decisions, the fold of
the quadratic rate, per-channel steps, the grids it writes, whether layers sharing a Hessian are
coded together) and its entry point, ``quantize(problem, settings)``. Everything else asks the
method object instead of comparing names: :class:`~nncodec_rd.encoder.settings.QuantizerSettings`
resolves its ``method`` name here on construction, the sweep reads the capabilities from it, the
model encoders, ``compress()`` and the command line ask it whether calibration data is needed.

This module imports no torch (the command line lists the methods in its help on installs that
only decode): the entry points import it when they first factor a Hessian.

>>> sorted(METHODS)
['cerwu', 'optq', 'optq-rd', 'rtn', 'transform', 'transform+cerwu']
>>> METHODS["rtn"].needs_calibration, METHODS["cerwu"].folds_quadratic_rate
(False, True)
>>> method_named("gptq")
Traceback (most recent call last):
    ...
nncodec_rd.format.errors.EncoderError: encoder_settings: unknown method 'gptq'; choose one of rtn, optq, optq-rd, cerwu, transform, transform+cerwu
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType

from ..format.errors import EncoderError
from .grid_choice import quantize_on_chosen_grid
from .transform import quantize_layer_transform, quantize_transform_group

GRID_CHOICES = ("auto", "fixed", "rd")
"""How layers get their grid: ``fixed`` (the λ rule), ``rd`` (a per-layer search,
:mod:`nncodec_rd.encoder.grid_choice`), or ``auto``: what the method states
(:attr:`QuantizationMethod.auto_grid_choice`): ``rd`` for the methods it helped on the
benchmarks, ``fixed`` for ``rtn`` (docs/grid-choice.md)."""

DEFAULT_GRID_CHOICE = "auto"

_NAME = re.compile(r"[a-z][a-z0-9+-]*")


@dataclass(frozen=True)
class QuantizationMethod:
    """A quantization method of the encoder: what it needs, what it can do, its entry point.

    Parameters
    ----------
    name:
        What users write (``compress(method=...)``, ``nncodec-rd encode --method``): lower case
        letters, digits, ``-`` and ``+``.
    summary:
        One line for the command line's help.
    quantize:
        The entry point: ``quantize(problem, settings)`` returns the layer's
        :class:`~nncodec_rd.encoder.problem.LayerResult` (a pure function of its arguments, so
        that layers may be quantized in any order, or as Ray tasks: it must be importable by
        name). ``settings.quantization_method`` is this object.
    needs_calibration:
        The method needs calibration data (a Hessian per layer); ``compress`` and the command
        line refuse it without.
    error_feedback:
        After each column, the OBS update moves the weights not yet quantized to compensate the
        error (``False``: every weight is rounded on its own, and the λ rule's curvature is the
        damped Hessian's diagonal).
    rate_aware:
        Each decision minimises distortion + λ · (its code length), not distortion alone.
    folds_quadratic_rate:
        CERWU's fold of the rate's quadratic part into the Hessian (``H + μI``, shared by all
        rows): the layers with a Hessian then need one step and no row weights.
    auto_grid_choice:
        What ``grid_choice="auto"`` means for this method: ``"rd"`` or ``"fixed"``.
    grid_kinds:
        The grids (spec §6) its tensors are written with, for documentation and help.
    quantize_group:
        For methods that code the layers sharing one Hessian together (a transform matrix for
        all of them): ``quantize_group(weights, hessian, lams, settings, cache=...)``.
        ``None``: every layer alone.
    fallback:
        With ``quantize_group``: the method of the layers it cannot take (no Hessian, grouped
        convolutions, row weights, per-channel layers).
    group_must_beat_fallback:
        With ``quantize_group``: keep a group's joint coding only where its ``D/λ + R`` (matrix
        bits included) is below the fallback method's on the same layers.
    block_sequential:
        The block-sequential encoder (:mod:`nncodec_rd.torch.sequential`) can use it.
    """

    name: str
    summary: str
    quantize: Callable
    needs_calibration: bool = True
    error_feedback: bool = True
    rate_aware: bool = False
    folds_quadratic_rate: bool = False
    auto_grid_choice: str = "rd"
    grid_kinds: tuple = ("uniform",)
    quantize_group: Callable | None = None
    fallback: str | None = None
    group_must_beat_fallback: bool = False
    block_sequential: bool = True

    def __post_init__(self):
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise EncoderError(f"a method's name is lower-case letters, digits, '-' and '+', "
                               f"not {self.name!r}")
        if not callable(self.quantize):
            raise EncoderError(f"method {self.name!r}: quantize must be callable")
        if self.auto_grid_choice not in ("rd", "fixed"):
            raise EncoderError(f"method {self.name!r}: auto_grid_choice is 'rd' or 'fixed', not "
                               f"{self.auto_grid_choice!r}")
        if (self.quantize_group is None) != (self.fallback is None):
            raise EncoderError(f"method {self.name!r}: quantize_group and fallback go together")
        # Capabilities the sweep would silently ignore are refused here.
        for given, needed, words in (
                (self.rate_aware, self.error_feedback, "rate_aware needs error_feedback (the "
                                                       "sweep's rate-aware decisions)"),
                (self.folds_quadratic_rate, self.rate_aware, "folds_quadratic_rate needs "
                                                             "rate_aware"),
                (self.group_must_beat_fallback, self.quantize_group is not None,
                 "group_must_beat_fallback needs quantize_group"),
                (self.quantize_group is not None, not self.block_sequential,
                 "quantize_group needs block_sequential=False (the block-sequential encoder "
                 "quantizes layer by layer)")):
            if given and not needed:
                raise EncoderError(f"method {self.name!r}: {words}")

    def resolved_grid_choice(self, grid_choice: str) -> str:
        """``"fixed"`` or ``"rd"``: what ``grid_choice`` (one of :data:`GRID_CHOICES`) means
        for this method.

        >>> METHODS["rtn"].resolved_grid_choice("auto"), METHODS["optq"].resolved_grid_choice("auto")
        ('fixed', 'rd')
        """
        return self.auto_grid_choice if grid_choice == "auto" else grid_choice


_REGISTRY: dict[str, QuantizationMethod] = {}

METHODS = MappingProxyType(_REGISTRY)
"""Method name -> :class:`QuantizationMethod`, read-only and in registration order (the
built-ins first); :func:`register_method` adds one."""

_BUILT_IN: set[str] = set()


def register_method(method: QuantizationMethod) -> QuantizationMethod:
    """Add ``method`` to :data:`METHODS`; returns it. A name already registered is refused
    (:class:`EncoderError`), as is a fallback that names no registered method.

    A method used with Ray tasks must be registered by a module that the workers import too:
    the settings travel to them by value, the entry points by name.
    """
    if not isinstance(method, QuantizationMethod):
        raise EncoderError(f"register a QuantizationMethod, not {type(method).__name__}")
    if method.name in _REGISTRY:
        raise EncoderError(f"a method named {method.name!r} is registered already")
    if method.fallback is not None and (method.fallback not in _REGISTRY or
                                        _REGISTRY[method.fallback].quantize_group is not None):
        raise EncoderError(f"method {method.name!r} falls back to {method.fallback!r}, which is "
                           f"not a registered method of single layers")
    _REGISTRY[method.name] = method
    return method


def unregister_method(name: str) -> None:
    """Remove a method added by :func:`register_method` (the built-in ones stay)."""
    if name in _BUILT_IN:
        raise EncoderError(f"{name!r} is a built-in method; it cannot be removed")
    users = [other.name for other in _REGISTRY.values() if other.fallback == name]
    if users:
        raise EncoderError(f"{name!r} is the fallback of {', '.join(users)}; remove those first")
    if _REGISTRY.pop(name, None) is None:
        raise EncoderError(f"no method named {name!r} is registered")


def method_named(name: str) -> QuantizationMethod:
    """The registered method called ``name``; :class:`EncoderError` naming the choices if none."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise EncoderError(f"unknown method {name!r}; choose one of "
                           f"{', '.join(_REGISTRY)}") from None


def data_free_methods() -> list[str]:
    """The names of the registered methods that need no calibration data.

    >>> data_free_methods()
    ['rtn']
    """
    return [name for name, method in _REGISTRY.items() if not method.needs_calibration]


def quantize_layer(problem, settings):
    """Quantize one layer with ``settings.method``: that method's entry point, a pure function
    (the transform methods return a
    :class:`~nncodec_rd.encoder.transform.TransformLayerResult`)."""
    return settings.quantization_method.quantize(problem, settings)


BUILT_IN_METHODS = (
    QuantizationMethod(
        "rtn", "round each weight to the nearest grid point (data-free)",
        quantize_on_chosen_grid, needs_calibration=False, error_feedback=False,
        auto_grid_choice="fixed"),
    QuantizationMethod(
        "optq", "GPTQ: column by column, the OBS update compensates each error",
        quantize_on_chosen_grid),
    QuantizationMethod(
        "optq-rd", "optq whose decisions weigh distortion + λ × the coder's bits",
        quantize_on_chosen_grid, rate_aware=True),
    QuantizationMethod(
        "cerwu", "optq-rd with the rate's quadratic part folded into the Hessian",
        quantize_on_chosen_grid, rate_aware=True, folds_quadratic_rate=True),
    QuantizationMethod(
        "transform", "Linear layers as coefficients x a stored matrix (spec §6.4), others "
        "with optq", quantize_layer_transform, grid_kinds=("uniform", "right_matrix"),
        quantize_group=quantize_transform_group, fallback="optq", block_sequential=False),
    QuantizationMethod(
        "transform+cerwu", "transform with rate-aware coefficients where it beats cerwu, "
        "others with cerwu", quantize_layer_transform, rate_aware=True,
        grid_kinds=("uniform", "right_matrix"), quantize_group=quantize_transform_group,
        fallback="cerwu", group_must_beat_fallback=True, block_sequential=False),
)
"""The methods of the encoder, registered when this module is imported (a method is added to the
package by one entry here; docs/architecture.md)."""

for _method in BUILT_IN_METHODS:
    register_method(_method)
    _BUILT_IN.add(_method.name)
del _method
