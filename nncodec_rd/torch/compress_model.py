"""Compress a PyTorch model with calibration data: :func:`compress`.

It collects the layer Hessians once, quantizes every supported layer with one global λ
(:mod:`nncodec_rd.encoder.methods`), and writes the whole state dict: quantized layer weights
entropy-coded, everything else (biases, norms, buffers) stored raw. ``target_bpw`` and
``target_metric`` search λ by bisection on the real file, reusing the Hessians. With
``sequential=True`` the block-sequential encoder (:mod:`nncodec_rd.torch.sequential`) does the
work instead of :class:`~nncodec_rd.torch.model_encoder.ModelEncoder`.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import replace

from ..encoder.executor import opened_executor
from ..encoder.methods import DEFAULT_GRID_CHOICE, data_free_methods, method_named
from ..encoder.entropy import EntropySettings
from ..encoder.settings import QuantizerSettings
from ..format.errors import EncoderError
from .layers import (
    CompressionResult,
)
from .load import load_weights
from .model_encoder import ModelEncoder
from .sequential import SequentialEncoder


def compress(model, calibration_batches=None, *, method: str = "cerwu", lam: float | None = None,
             target_bpw: float | None = None, target_metric=None, path=None,
             per_channel: bool | str = False, grid_scale: float = 1.0, act_order: bool = True,
             grid_choice: str = DEFAULT_GRID_CHOICE, trellis: bool = False,
             entropy: EntropySettings | None = None, include=None,
             embedding_smoothing: float = 1.0, sensitivity: bool = True,
             nonweights: bool = True, metadata: dict | None = None,
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
        A registered method (:data:`nncodec_rd.encoder.methods.METHODS`): ``"rtn"``, ``"optq"``,
        ``"optq-rd"`` or ``"cerwu"`` (see :mod:`nncodec_rd.encoder.obs`),
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
        See :class:`nncodec_rd.encoder.settings.QuantizerSettings`. With ``grid_choice="rd"`` each
        layer that the λ rule codes below 2 bits per weight picks its grid (a step, or a
        bounded number of bins with a zero point) by rate–distortion
        (:mod:`nncodec_rd.encoder.grid_choice`), at the cost of several quantizations of that
        layer; ``"auto"`` (the default) does so for every method but ``rtn``.
    trellis:
        Also try trellis-coded quantization (format 1.1, spec §6.6) on each layer with one
        step and one Hessian, keeping it where it lowers ``D/λ + R``; a 1.0 decoder refuses a
        file with a trellis layer (``unsupported_feature``).
    entropy:
        Entropy-coding settings (:class:`nncodec_rd.EntropySettings`); by default each tensor
        gets the probability precision up to 14 bits that codes it smallest, tables included
        (``choose_precision=True``), which also keeps small layers' decoding tables small.
    include:
        Optional predicate on module names: only those layers are quantized.
    embedding_smoothing:
        Added to every token's count before embedding rows are weighted by frequency; larger
        values spread the bits over the rows more evenly, ``math.inf`` weighs every token
        alike. Rows of tokens the calibration text never shows take coarse steps by default,
        which costs fidelity on text of another domain (docs/rate-fidelity.md, "Text of
        another domain than the calibration's", measures both).
    sensitivity:
        Weigh each layer's λ by how much its output error moves the model's output
        (:meth:`ModelEncoder.measure_sensitivities`); needs calibration data.
    nonweights:
        Code biases, norms and BatchNorm statistics on a fine grid each role of them keeps
        within a measured output error (:mod:`nncodec_rd.torch.nonweights`); needs calibration
        data. ``False`` (and always with ``sequential``) stores them raw, losslessly.
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
    if calibration_batches is None and method_named(method).needs_calibration:
        data_free = ", ".join(repr(name) for name in data_free_methods())
        raise EncoderError(f"method {method!r} needs calibration_batches (only {data_free} is "
                           f"data-free)")
    if target_bpw is not None and not (math.isfinite(target_bpw) and target_bpw > 0):
        raise EncoderError(f"target_bpw must be > 0, not {target_bpw}")
    # Check the settings before the slow part (Hessians, sensitivities).
    checked = QuantizerSettings(method=method, lam=1.0 if lam is None else lam,
                                per_channel=per_channel, grid_scale=grid_scale,
                                act_order=act_order, grid_choice=grid_choice, trellis=trellis)
    if sequential and not checked.quantization_method.block_sequential:
        raise EncoderError(f"method {method!r} needs sequential=False")
    with opened_executor(executor) as executor:
        if sequential:
            return _compress_sequential(
                model, calibration_batches, method=method, lam=lam, target_bpw=target_bpw,
                target_metric=target_metric, path=path, per_channel=per_channel,
                grid_scale=grid_scale, act_order=act_order, grid_choice=grid_choice,
                trellis=trellis,
                entropy=entropy, include=include, embedding_smoothing=embedding_smoothing,
                sensitivity=sensitivity, metadata=metadata, progress=progress, stack=stack,
                executor=executor)
        encoder = ModelEncoder(model, calibration_batches, include=include,
                               per_channel=per_channel, embedding_smoothing=embedding_smoothing,
                               sensitivity=sensitivity, nonweights=nonweights,
                               progress=progress, executor=executor)
        base = QuantizerSettings(method=method,
                                 lam=encoder.default_lam() if lam is None else lam,
                                 per_channel=per_channel, grid_scale=grid_scale,
                                 act_order=act_order, grid_choice=grid_choice, trellis=trellis,
                                 entropy=entropy or EntropySettings())
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
                         path, per_channel, grid_scale, act_order, grid_choice, trellis, entropy,
                         include,
                         embedding_smoothing, sensitivity, metadata, progress, stack, executor):
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
                                 act_order=act_order, grid_choice=grid_choice, trellis=trellis,
                                 entropy=entropy or EntropySettings())
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
