"""Block-sequential encoding: models of any size, one block of the stack at a time.

Most large models are a stack of identical blocks (transformers' decoder and encoder layers).
:class:`SequentialEncoder` never holds more than one block's weights, Hessians and calibration
activations:

1. **Before the stack.** The calibration batches run through the model until they reach block 0
   (the rest of the forward is skipped). Layers that ran on the way (embeddings) collect their
   Hessians, are quantized and written; the batches then run again with those layers quantized,
   and block 0's inputs are kept.
2. **Each block.** Its weights are loaded (from the checkpoint when the model was built empty),
   its Hessians collected on its inputs (layers fed the same tensor, such as attention's query,
   key and value, share one), its sensitivities measured on its own output, its layers quantized
   and streamed to the writer. The *quantized* block then turns its inputs into the next block's
   inputs, so every block is calibrated on what the decoded model will really feed it. Then the
   block's weights and Hessians are freed.
3. **After the stack.** The model runs once more with every block replaced by a replay of the
   stack's final output; the layers after the stack (a language model's head) collect their
   Hessians there, are quantized and written, with every remaining tensor of the state dict.

Layer sensitivities (how much a layer's error moves what follows) are measured per *unit* (the
part before the stack, one block, the part after it) as the relative change of the unit's
output when the layer gets noise of known layer loss, so they cost one block forward per layer,
not one model forward. One λ serves the whole model; without ``lam`` it comes from the layers of
the first unit (:meth:`ModelEncoder.default_lam`'s rule).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from ..encoder.fidelity import CALIBRATED_WARN_BELOW_DB, SqnrReport
from ..encoder.executor import executor_from
from ..encoder.obs import lambda_rule_steps
from ..encoder.problem import layer_distortion
from ..encoder.settings import QuantizerSettings
from ..encoder.rate_control import LAM_FACTORS, RateController, RateTable, rate_table
from ..encoder.writer import NrdWriter
from ..format.errors import EncoderError, InputMismatchError
from ..io.atomic import removed_on_termination
from .checkpoint import CheckpointWeights, KeyMap, materialize, release, tied_parameters
from .layers import (SEQUENTIAL_CODED_LAYER_TYPES, CompressionResult, LayerSummary, default_lam,
                     is_uncoded_weight, make_layer, reconstruction_of, write_layer)
from .progress import Progress
from .hessians import (HessianAccumulator, at_token_positions, check_embedding_smoothing,
                       find_layers, matrix_to_stored_layout, output_at_tokens, parameter_name,
                       run_batch, token_positions, weight_matrix)
from .state_dict import tensor_to_numpy


RECORD_BYTES = 256
"""A size target's estimate of one header record still to be written (spec §5: name, shape,
fields, chunk entries), frequency tables apart."""


def _itemsize(dtype) -> int:
    """Bytes per element of a torch or NumPy dtype (bfloat16 included)."""
    if isinstance(dtype, torch.dtype):
        return torch.empty((), dtype=dtype).element_size()
    return np.dtype(dtype).itemsize


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    tensor = tensor.detach().cpu().contiguous()
    return repr((tuple(tensor.shape), str(tensor.dtype))).encode() + \
        tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b""


class _Journal:
    """A folder beside the output recording a sequential run (``state.json``, the writer's
    ``spool``, ``hidden-K.safetensors``: the inputs of block K, ``outside.safetensors``: the
    quantized weights of the layers before the stack). Each entry is complete before
    ``state.json`` (replaced atomically) names it, so a kill at any moment leaves the last
    complete entry."""

    def __init__(self, folder, fingerprint: str):
        self.folder = os.fspath(folder)
        self.fingerprint = fingerprint
        self.spool_path = os.path.join(self.folder, "spool")

    def start(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        os.makedirs(self.folder)

    def load(self) -> dict | None:
        path = os.path.join(self.folder, "state.json")
        if not os.path.isfile(path):
            return None
        try:
            with open(path, encoding="utf-8") as stream:
                state = json.load(stream)
        except (OSError, ValueError) as error:
            raise EncoderError(f"{path}: unreadable journal ({error}); delete {self.folder} "
                               f"to start over") from None
        if state.get("fingerprint") != self.fingerprint:
            raise EncoderError(f"the journal {self.folder} records a run with other settings, "
                               f"inputs or calibration data; delete it to start over, or resume "
                               f"with the same command")
        return state

    def _write_tensors(self, name: str, tensors: dict) -> None:
        from safetensors.torch import save_file

        temporary = os.path.join(self.folder, name + ".tmp")
        save_file({k: v.detach().contiguous() for k, v in tensors.items()}, temporary)
        with open(temporary, "rb") as stream:
            os.fsync(stream.fileno())
        os.replace(temporary, os.path.join(self.folder, name))

    def save(self, state: dict, hidden, outside_weights) -> None:
        if outside_weights:
            self._write_tensors("outside.safetensors", outside_weights)
        if hidden is not None:
            self._write_tensors(f"hidden-{state['blocks_done']}.safetensors",
                                {str(i): h for i, h in enumerate(hidden)})
        state = dict(state, fingerprint=self.fingerprint)
        temporary = os.path.join(self.folder, "state.json.tmp")
        with open(temporary, "w", encoding="utf-8") as stream:
            json.dump(state, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, os.path.join(self.folder, "state.json"))
        for name in os.listdir(self.folder):  # older entries' inputs
            if name.startswith("hidden-") and name != f"hidden-{state['blocks_done']}.safetensors":
                os.unlink(os.path.join(self.folder, name))

    def outside_weights(self) -> dict:
        from safetensors.torch import load_file

        path = os.path.join(self.folder, "outside.safetensors")
        return load_file(path) if os.path.isfile(path) else {}

    def hidden(self, blocks_done: int) -> list:
        from safetensors.torch import load_file

        tensors = load_file(os.path.join(self.folder, f"hidden-{blocks_done}.safetensors"))
        return [tensors[str(i)] for i in range(len(tensors))]

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _return_freed_memory() -> None:
    """Ask glibc to give freed heap pages back to the system after each block, so that the
    resident size is what the next block needs, not the high-water mark of every block before
    (measured: about 60 MB per block of a 60 M-parameter Llama without it)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def _mean_square(tensor: torch.Tensor) -> float:
    return float(torch.sum(tensor.double() ** 2 if tensor.numel() < (1 << 22)
                           else torch.square(tensor).sum(dtype=torch.float64)) / tensor.numel())


class _StopForward(Exception):
    """Raised by the hook on block 0 to end a forward pass once the block's inputs are known."""


def find_stack(model, override: str | None = None) -> tuple[str, torch.nn.Module] | None:
    """The model's stack of repeated blocks: ``(name, module)`` of the ``ModuleList`` or
    ``Sequential`` of two or more children of one class holding the most parameters, or None.
    ``override`` names the stack (a module name) for models where the guess is wrong."""
    if override is not None:
        try:
            stack = model.get_submodule(override)
        except AttributeError:
            raise EncoderError(f"the model has no module {override!r} to use as its stack of "
                               f"blocks") from None
        if not isinstance(stack, (torch.nn.ModuleList, torch.nn.Sequential)) or len(stack) < 1:
            raise EncoderError(f"{override!r} is a {type(stack).__name__}, not a list of blocks")
        return override, stack
    best, best_count = None, 0
    for name, module in model.named_modules():
        if not isinstance(module, (torch.nn.ModuleList, torch.nn.Sequential)) or len(module) < 2:
            continue
        if len({type(child) for child in module}) != 1:
            continue
        count = sum(parameter.numel() for parameter in module.parameters())
        if count > best_count:
            best, best_count = (name, module), count
    return best


CALIBRATION_RULES = 2
"""What the calibration counts, in the journal's fingerprint: a run journaled under other rules
(1: padded positions counted as calibration data) does not resume under these."""


@dataclass
class _BlockInput:
    """One calibration batch as block 0 receives it; ``hidden`` changes from block to block,
    the other arguments (masks, position embeddings) are the same for every block."""

    hidden: torch.Tensor
    args: tuple
    kwargs: dict
    positions: torch.Tensor | None = None  # the batch's token positions (token_positions)

    def at_tokens(self, hidden: torch.Tensor) -> torch.Tensor:
        """A hidden state of this batch (``(batch, sequence, features)``) at its token
        positions only: padding weighs nothing in a block's sensitivities."""
        return at_token_positions(hidden, self.positions) if hidden.dim() > 2 else hidden


def _detach(value):
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, tuple):
        return tuple(_detach(item) for item in value)
    if isinstance(value, list):
        return [_detach(item) for item in value]
    if isinstance(value, dict):
        return {key: _detach(item) for key, item in value.items()}
    return value


def _hidden_of(output) -> torch.Tensor:
    """A block's output hidden state: the output, or the first item of a tuple."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise EncoderError(f"a block returned a {type(output).__name__}; the sequential encoder "
                       f"needs a tensor or a tuple whose first item is the hidden state "
                       f"(use sequential=False)")


@dataclass
class _Unit:
    """A part of the model encoded together: its layers (module name -> kind)."""

    label: str
    layers: dict
    accumulators: dict = field(default_factory=dict)


class _SharedHessians:
    """Forward pre-hooks collecting the Hessians of some layers; layers that read the very same
    input tensor object in the first batch share one accumulator."""

    def __init__(self, modules: dict, layers: dict):
        self.layers = layers
        self.accumulators: dict[str, HessianAccumulator] = {}
        self.owner: dict[str, str] = {}  # layer -> layer whose accumulator it shares
        self._seen: list = []  # (layer, its input) in the first batch
        self._first_batch = True
        self.positions = None  # the token positions of the batch running (token_positions)
        self._handles = []
        for name, kind in layers.items():
            module = modules[name]
            groups = getattr(module, "groups", 1) if kind in ("conv1d", "conv2d") else 1
            columns = weight_matrix(module.weight, kind).shape[1] if kind != "embedding" else 0
            self.accumulators[name] = HessianAccumulator(
                kind, groups, columns,
                vocabulary=module.num_embeddings if kind == "embedding" else 0)
            self._handles.append(module.register_forward_pre_hook(
                lambda module, inputs, name=name: self._add(name, module, inputs)))

    def _add(self, name, module, inputs) -> None:
        kind = self.layers[name]
        x = inputs[0] if isinstance(inputs, tuple) else inputs
        if self._first_batch and kind in ("linear", "transposed_linear"):
            # The same tensor object, not the same address: a freed tensor's memory is reused.
            # The references kept in _seen until the batch ends keep the objects distinct.
            other = next((owner for owner, seen in self._seen if seen is x), None)
            if other is not None:
                self.owner[name] = other
                self.accumulators[name] = self.accumulators[other]
            else:
                self._seen.append((name, x))
        if name in self.owner:
            return  # its owner adds this input
        self.accumulators[name].add(module, inputs, self.positions)

    def batch_done(self) -> None:
        if self._seen:
            self._first_batch = False
            self._seen = []

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def hessians(self, smoothing: float, names=None) -> dict:
        """Layer -> (Hessian, row scale) for ``names`` (default: all); shared layers get the
        same array."""
        out = {}
        for name in self.layers if names is None else names:
            owner = self.owner.get(name)
            out[name] = out[owner] if owner in out else self.accumulators[name].hessian(smoothing)
        return out


class SequentialEncoder:
    """Encode ``model`` unit by unit (module docstring) into one file.

    Parameters
    ----------
    model:
        A ``torch.nn.Module``. Its parameters may be on the ``meta`` device
        (:func:`~nncodec_rd.torch.checkpoint.empty_model`); then ``weights`` gives them.
    calibration_batches:
        Model inputs (see :func:`~nncodec_rd.torch.hessians.run_batch`).
    weights, key_map:
        The checkpoint and its names, for a model built empty. The file then holds the
        checkpoint's tensors under the checkpoint's names and dtypes, every one of them.
    stack:
        The module name of the stack of blocks, if :func:`find_stack` guesses wrong.
    executor:
        Where a unit's layers are quantized (:mod:`nncodec_rd.encoder.executor`): ``None`` for
        this process, or a :class:`~nncodec_rd.encoder.executor.RayExecutor`. The file is the
        same either way.
    """

    def __init__(self, model, calibration_batches, *, weights: CheckpointWeights | None = None,
                 stack: str | None = None, include=None, per_channel: bool = False,
                 embedding_smoothing: float = 1.0, sensitivity: bool = True,
                 sensitivity_batches: int = 1, sensitivity_exponent: float = 0.7,
                 progress=True, executor=None):
        check_embedding_smoothing(embedding_smoothing)  # before any calibration work
        if calibration_batches is None:
            raise EncoderError("the sequential encoder needs calibration batches")
        self.model = model
        self.batches = list(calibration_batches)
        if not self.batches:
            raise EncoderError("calibration_batches is empty")
        found = find_stack(model, stack)
        if found is None:
            raise EncoderError("the model has no stack of repeated blocks (a ModuleList of "
                               "layers of one class); use sequential=False, or name the stack")
        self.stack_name, self.stack = found
        self.weights = weights
        self.key_map = KeyMap(model, weights, model.state_dict().keys()) if weights else None
        self.ties = tied_parameters(model)
        self.include = include
        self.per_channel = per_channel
        self.embedding_smoothing = embedding_smoothing
        self.sensitivity = sensitivity
        self.sensitivity_batches = max(1, sensitivity_batches)
        self.sensitivity_exponent = sensitivity_exponent
        self.progress = Progress(progress)
        self.executor = executor_from(executor)
        self.hessian_seconds = 0.0
        self._check_checkpoint()

    # -- weights ---------------------------------------------------------------------------------

    def _check_checkpoint(self) -> None:
        if self.weights is None:
            if any(p.device.type == "meta" for p in self.model.parameters()):
                raise EncoderError("the model's parameters are on the meta device; give the "
                                   "checkpoint to read them from (weights=)")
            return
        missing = [name for name, _ in self.model.named_parameters(remove_duplicate=False)
                   if not any(self.key_map.get(n) for n in self.ties.get(name, [name]))]
        if missing:
            raise InputMismatchError(f"{self.weights.source}: the checkpoint lacks "
                               f"{len(missing)} of the model's parameters "
                               f"({', '.join(missing[:3])}{'...' if len(missing) > 3 else ''}); "
                               f"is it the checkpoint of this config?")

    def _materialize(self, prefix: str, module) -> None:
        if self.weights is None:
            return
        names = [f"{prefix}{name}" for name, parameter in
                 module.named_parameters(remove_duplicate=False) if parameter.device.type == "meta"]
        materialize(self.model, names, self.weights, self.key_map, self.ties)

    def _stored_dtype(self, parameter: str):
        if self.weights is None:
            return None
        return self.weights.dtype(self.key_map[parameter])

    def _file_name(self, key: str) -> str:
        return self.key_map.get(key, key) if self.key_map is not None else key

    # -- the pipeline ----------------------------------------------------------------------------

    def initial_lam(self) -> float:
        """The λ that :meth:`encode` uses when given none (from block 0's layers on the float
        model's inputs), without encoding anything."""
        model = self.model
        stack_prefix = self.stack_name + "."
        # recurrent modules stay raw here (named in the summary): the pipeline is built for
        # transformer stacks, whose blocks hold none
        all_layers = find_layers(model, self.include, recurrent=False)
        outside = [name for name, _ in model.named_parameters(remove_duplicate=False)
                   if not name.startswith(stack_prefix)]
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                if self.weights is not None:
                    materialize(model, outside, self.weights, self.key_map, self.ties)
                inputs = self._capture(self.stack[0], None)
                self._quantized = {}
                lam = self._lam_of_first_block(self.stack[0], stack_prefix + "0.", all_layers,
                                               inputs)
                if self.weights is not None:
                    release(self.stack[0])
        finally:
            model.train(was_training)
        return lam

    def encode(self, settings: QuantizerSettings, path, metadata: dict | None = None,
               lam: float | None = None, journal=None, resume: bool = False,
               target_bpw: float | None = None) -> CompressionResult:
        """Quantize every unit at ``settings`` (``lam`` None: λ from the first unit) and write
        ``path`` atomically. Returns the :class:`CompressionResult`.

        ``journal``: a folder where the run records itself after the part before the stack and
        after every block (the payloads so far, the next block's inputs); removed when the file
        is written, kept when the run stops early. ``resume``: continue from the journal's last
        entry instead of starting over; the file is byte-identical to an uninterrupted run. The
        journal refuses a resume with other settings, inputs or calibration data.

        ``target_bpw`` (instead of ``lam``): file bits per coded weight, met in this one pass by
        choosing λ unit by unit from predicted rates corrected by the payloads written
        (:mod:`nncodec_rd.encoder.rate_control`).
        """
        if target_bpw is not None and lam is not None:
            raise EncoderError("give lam or target_bpw, not both")
        if target_bpw is not None and not (math.isfinite(target_bpw) and target_bpw > 0):
            raise EncoderError(f"target_bpw must be > 0, not {target_bpw}")
        self.target_bpw = target_bpw
        self._controller = None
        if not settings.quantization_method.block_sequential:
            raise EncoderError(f"method {settings.method!r} needs sequential=False")
        start = time.perf_counter()
        self.settings = settings
        self.lam = lam
        self.summaries: list = []
        self.raw_weights: dict = {}
        self.coded_weights = 0
        self.layer_seconds = 0.0
        self.quantize_seconds = 0.0
        self.sqnr = SqnrReport(advice="give a smaller --lam, or --target-fidelity",
                               warn_below_db=CALIBRATED_WARN_BELOW_DB,
                               evidence="all-MiniLM-L6-v2 encoded so fell to cosine 0.93 at "
                                        "9.5 dB")
        self._written: set[str] = set()
        self._quantized: dict[str, str] = {}  # parameter -> parameter coded first (ties)
        self._outside_originals: dict = {}
        self._start = start
        file_metadata = {"encoder": "nncodec-rd", "method": settings.method,
                         "sequential": True, **(metadata or {})}
        if target_bpw is not None:
            file_metadata["target_bpw"] = float(target_bpw)
        model = self.model
        was_training = model.training
        use_cache = getattr(getattr(model, "config", None), "use_cache", None)
        model.eval()
        if use_cache:
            model.config.use_cache = False  # no key/value cache grows during calibration
        path = os.fspath(path)
        writer = NrdWriter(path, metadata=file_metadata)
        self._journal = None if journal is None else _Journal(
            journal, self._fingerprint(settings, (lam, target_bpw), file_metadata))
        self._resumed = None
        if self._journal is not None:
            self._resumed = self._journal.load() if resume else None
            if self._resumed is None:
                self._journal.start()
            writer.use_spool(self._journal.spool_path,
                             None if self._resumed is None else self._resumed["writer"])
        try:
            # A SIGTERM during hours of encoding removes the spool of payloads (io.atomic);
            # a journal's spool stays, for --resume.
            cleanup = removed_on_termination(lambda: writer.spool_path) \
                if self._journal is None else contextlib.nullcontext()
            with torch.no_grad(), cleanup:
                self._run(writer)
            writer.add_metadata(**{"lambda": float(self.lam)})
            size = writer.close()
        except BaseException:
            writer.abandon(keep_spool=self._journal is not None)
            if self._journal is not None:
                self.progress(f"stopped; the journal {self._journal.folder} is kept: run again "
                              f"with --resume to continue", final=True)
            raise
        finally:
            model.train(was_training)
            if use_cache:
                model.config.use_cache = use_cache
        if self._journal is not None:
            self._journal.remove()
        outcome = CompressionResult(path, size, self.coded_weights, settings.method,
                                    float(self.lam), self.summaries, self.hessian_seconds,
                                    time.perf_counter() - start)
        outcome.sqnr = self.sqnr
        outcome.quantize_seconds = self.quantize_seconds
        outcome.raw_weights = dict(self.raw_weights)
        outcome.coded_layer_types = SEQUENTIAL_CODED_LAYER_TYPES
        if self._controller is not None:
            outcome.lam_trials = list(self._controller.history)
        self.progress(f"{settings.method} lambda={self.lam:.4g}: {size:,} bytes, "
                      f"{outcome.bits_per_weight:.3f} bits/weight, "
                      f"{time.perf_counter() - start:.1f} s", final=True)
        return outcome

    def _run(self, writer: NrdWriter) -> None:
        model = self.model
        stack_prefix = self.stack_name + "."
        all_layers = find_layers(model, self.include, recurrent=False)  # see initial_lam
        outside = {name: kind for name, kind in all_layers.items()
                   if not name.startswith(stack_prefix)}
        # Everything outside the stack is loaded now (embeddings, norms, the head): small
        # against the stack, and the head may be tied to the embedding.
        outside_parameters = [name for name, parameter in
                              model.named_parameters(remove_duplicate=False)
                              if not name.startswith(stack_prefix)]
        if self.weights is not None:
            materialize(model, outside_parameters, self.weights, self.key_map, self.ties)
        modules = dict(model.named_modules())
        blocks = list(self.stack)
        self.block_count = len(blocks)
        # Layers to quantize: tied copies are coded once.
        firsts = {min(self.ties.get(parameter_name(name, "weight"), [name]))
                  for name in all_layers}
        self._layer_total, self._layers_started = len(firsts), 0

        # 1. Before the stack.
        collector = _SharedHessians(modules, outside)
        started = time.perf_counter()
        try:
            inputs = self._capture(blocks[0], collector)
        finally:
            collector.remove()
        self.hessian_seconds += time.perf_counter() - started
        before = {name: kind for name, kind in outside.items()
                  if collector.accumulators[name].samples > 0}
        # The layers after the stack (a language model's head) wait on the meta device until
        # the stack is done; for a large vocabulary they are the biggest tensors of all.
        after = {name: kind for name, kind in outside.items() if name not in before}
        waiting = self._park(modules, after, before)
        resumed = self._resumed
        if resumed is not None:
            inputs = self._restore_journal(resumed, modules, blocks[0], inputs)
            before = {}  # done in the run the journal records
        elif self.lam is None:
            _, first = self._block_layers(blocks[0], stack_prefix + "0.", all_layers, inputs)
            self.lam = self._default_lam(first)
            if self.target_bpw is not None:
                self._start_control(all_layers, writer)
                first_table = self._unit_table(first)
                del first  # block 0's problems: hundreds of MB the survey does not need
                self._survey(blocks, stack_prefix, all_layers, before, after, waiting,
                             first_table, inputs)
            else:
                del first
        if before:
            hessians = collector.hessians(self.embedding_smoothing, before)
            layers = self._layers(modules, before, hessians)
            self._sensitivities(layers, modules, lambda: [
                i.at_tokens(i.hidden) for i in self._capture(
                    blocks[0], None, self.batches[:self.sensitivity_batches])])
            self._outside_originals.update(
                self._quantize_unit("before the stack", layers, modules, writer))
            inputs = self._capture(blocks[0], None)  # block 0 sees the quantized layers
        del collector
        if resumed is None:
            self._record(writer, 0, None, {parameter_name(name, "weight"): modules[name].weight
                                           for name in before})

        # 2. The blocks.
        self._stack_started = time.perf_counter()
        self._blocks_done = self._blocks_timed = 0
        for index, block in enumerate(blocks):
            if resumed is not None and index < resumed["blocks_done"]:
                self._blocks_done += 1
                self._layers_started += sum(name.startswith(f"{stack_prefix}{index}.")
                                            for name in all_layers)
                continue
            prefix = f"{stack_prefix}{index}."
            block_modules, layers = self._block_layers(block, prefix, all_layers, inputs)
            label = f"block {index + 1}/{len(blocks)}"
            originals = self._quantize_unit(label, layers, block_modules, writer)
            del layers
            outputs = []
            for item in inputs:
                output = block(item.hidden, *item.args, **item.kwargs)
                self._output_is_tuple = not isinstance(output, torch.Tensor)
                outputs.append(_hidden_of(output).detach())
            for item, hidden in zip(inputs, outputs):
                item.hidden = hidden
            self._restore(block_modules, originals)
            for key, value in block.state_dict().items():
                self._write_raw(writer, prefix + key, value)
            if self.weights is not None:
                release(block)
            del outputs, originals
            _return_freed_memory()
            self._blocks_done += 1
            self._blocks_timed += 1
            self._record(writer, index + 1, [item.hidden for item in inputs], None)

        # 3. After the stack.
        if waiting:
            materialize(model, waiting, self.weights, self.key_map, self.ties)
        if after:
            layers = self._layers_after_stack(modules, after, blocks, inputs)
            self._outside_originals.update(
                self._quantize_unit("after the stack", layers, modules, writer))
        for key, value in model.state_dict().items():
            if not key.startswith(stack_prefix):
                self._write_raw(writer, key, value)
        self._write_checkpoint_extras(writer)
        self._restore(modules, self._outside_originals)

    # -- the journal -----------------------------------------------------------------------------

    def _fingerprint(self, settings, lam, metadata) -> str:
        """What must be equal for a resumed run to write the same file: settings, the model's
        inputs (checkpoint or weights), the calibration batches, the file's metadata."""
        digest = hashlib.sha256()
        digest.update(repr((replace(settings, lam=1.0), lam, self.stack_name, self.per_channel,
                            self.sensitivity, self.sensitivity_batches, self.sensitivity_exponent,
                            self.embedding_smoothing, CALIBRATION_RULES)).encode())
        digest.update(repr(sorted((str(k), hashlib.sha256(v if isinstance(v, bytes) else
                                                          repr(v).encode()).hexdigest())
                                  for k, v in metadata.items())).encode())
        if self.weights is not None:
            for name in self.weights.keys():
                # Size and modification time of its shard stand for the contents: hashing a
                # checkpoint of hundreds of GB on every start would cost minutes.
                shard = os.stat(self.weights.file_of(name))
                digest.update(repr((name, self.weights.shape(name), str(self.weights.dtype(name)),
                                    shard.st_size, shard.st_mtime_ns)).encode())
        else:
            for name, value in self.model.state_dict().items():
                digest.update(name.encode())
                digest.update(_tensor_bytes(value))
        for batch in self.batches:
            values = batch.values() if hasattr(batch, "values") else (
                batch if isinstance(batch, (tuple, list)) else [batch])
            for value in values:
                digest.update(_tensor_bytes(value) if isinstance(value, torch.Tensor)
                              else repr(value).encode())
        return digest.hexdigest()

    def _record(self, writer, blocks_done: int, hidden, outside_weights) -> None:
        if self._journal is None:
            return
        state = {"blocks_done": blocks_done, "lam": float(self.lam),
                 "coded_weights": self.coded_weights,
                 "summaries": [dataclasses.asdict(summary) for summary in self.summaries],
                 "written": sorted(self._written), "quantized": self._quantized,
                 "raw_weights": self.raw_weights,
                 "output_is_tuple": bool(getattr(self, "_output_is_tuple", False)),
                 "sqnr": {name: list(energies) for name, energies in self.sqnr.tensors.items()},
                 "control": None if self._controller is None else {
                     "controller": self._controller.to_json(),
                     "survey": {unit: table.to_json()
                                for unit, table in self._survey_tables.items()},
                     "lams": self._lams.tolist(), "raw_bytes": self._raw_bytes,
                     "tensor_total": self._tensor_total},
                 "writer": writer.journal_state()}
        self._journal.save(state, hidden, outside_weights)

    def _restore_journal(self, state, modules, block0, inputs):
        """Put the model and the encoder where the journal's run was: the quantized layers
        before the stack back in the model, block inputs as they were. Returns the inputs."""
        self.lam = state["lam"]
        self.coded_weights = state["coded_weights"]
        self.summaries = [LayerSummary(**{**summary, "shape": tuple(summary["shape"])})
                          for summary in state["summaries"]]
        self._written = set(state["written"])
        self.raw_weights = dict(state.get("raw_weights", {}))  # journals of older runs lack it
        self._quantized = dict(state["quantized"])
        self._output_is_tuple = state["output_is_tuple"]
        self.sqnr.tensors = {name: tuple(energies)
                             for name, energies in state.get("sqnr", {}).items()}
        control = state.get("control")
        if control is not None:
            self._controller = RateController.from_json(control["controller"])
            self._survey_tables = {unit: RateTable.from_json(table)
                                   for unit, table in control["survey"].items()}
            self._lams = np.array(control["lams"])
            self._raw_bytes, self._tensor_total = control["raw_bytes"], control["tensor_total"]
        for key, value in self._journal.outside_weights().items():
            module_name = key.rpartition(".")[0]
            weight = modules[module_name].weight
            if self.weights is None:
                self._outside_originals[module_name] = weight.detach().clone()
            weight.data.copy_(value.to(weight.dtype))
        inputs = self._capture(block0, None)
        if state["blocks_done"] > 0:
            for item, hidden in zip(inputs, self._journal.hidden(state["blocks_done"])):
                item.hidden = hidden
        self.progress(f"resuming after block {state['blocks_done']} of {self.block_count} "
                      f"(journal {self._journal.folder})", final=True)
        return inputs

    def _capture(self, block0, collector, batches=None) -> list[_BlockInput]:
        """Run every batch (or ``batches``) up to block 0; its inputs per batch."""
        captured = []

        def stop(module, args, kwargs):
            kwargs = dict(kwargs)
            if args:
                hidden, args = args[0], args[1:]
            elif "hidden_states" in kwargs:
                hidden = kwargs.pop("hidden_states")
            else:
                raise EncoderError("block 0 was called without a hidden-state input")
            captured.append(_BlockInput(hidden.detach(), _detach(args), _detach(kwargs),
                                        positions))
            raise _StopForward

        handle = block0.register_forward_pre_hook(stop, with_kwargs=True)
        try:
            for batch in self.batches if batches is None else batches:
                positions = token_positions(batch)
                if collector is not None:
                    collector.positions = positions
                try:
                    run_batch(self.model, batch)
                except _StopForward:
                    pass
                else:
                    raise EncoderError(f"the model's forward never ran {self.stack_name}.0, "
                                       f"the first block of its stack")
                if collector is not None:
                    collector.batch_done()
        finally:
            handle.remove()
        return captured

    def _replaying(self, blocks, inputs):
        encoder = self

        class Replay:
            def __enter__(self):
                self.counter = iter(range(len(inputs)))
                for block in blocks:
                    block.forward = self._forward_of(block is blocks[-1])
                return self

            def _forward_of(self, last):
                def forward(hidden_states=None, *args, **kwargs):
                    if hidden_states is None:
                        hidden_states = kwargs.get("hidden_states")
                    if last:
                        hidden_states = inputs[next(self.counter)].hidden
                    return (hidden_states,) if getattr(encoder, "_output_is_tuple", False) \
                        else hidden_states
                return forward

            def __exit__(self, *exc):
                for block in blocks:
                    block.__dict__.pop("forward", None)
                return False

        return Replay()

    def _layers_after_stack(self, modules, after: dict, blocks, inputs) -> list:
        """The layers after the stack with their Hessians and sensitivities, the blocks replayed
        from ``inputs`` (the last block's outputs per batch)."""
        model = self.model
        collector = _SharedHessians(modules, after)
        started = time.perf_counter()
        try:
            with self._replaying(blocks, inputs):
                for batch in self.batches:
                    collector.positions = token_positions(batch)
                    run_batch(model, batch)
                    collector.batch_done()
        finally:
            collector.remove()
        self.hessian_seconds += time.perf_counter() - started
        layers = self._layers(modules, after, collector.hessians(self.embedding_smoothing))
        del collector

        def outputs_after():
            with self._replaying(blocks, inputs):
                return [output_at_tokens(model, batch)
                        for batch in self.batches[:self.sensitivity_batches]]

        self._sensitivities(layers, modules, outputs_after)
        return layers

    def _layers(self, modules, layers: dict, hessians: dict) -> list:
        made = []
        for name, kind in layers.items():
            module = modules[name]
            parameter = parameter_name(name, "weight")
            source = next((other for other in self.ties.get(parameter, [])
                           if other in self._quantized), None)
            if source is not None:  # tied to a layer already coded
                self._quantized[parameter] = source
                continue
            hessian, row_scale = hessians[name]
            made.append(make_layer(name, parameter, module.weight, kind, hessian, row_scale,
                                   self.per_channel, self._stored_dtype(parameter)))
        return made

    def _sensitivities(self, layers, modules, outputs) -> None:
        """Each layer's relative change of the unit's output per unit of layer loss, raised to
        ``sensitivity_exponent`` (see :meth:`ModelEncoder.measure_sensitivities`)."""
        if not self.sensitivity or not layers:
            return
        generator = np.random.default_rng(0)
        # float32 throughout, sums in float64: a language model's logits of one batch are
        # hundreds of MB, and double copies of them were the encoder's peak memory.
        reference = [tensor.detach().float() for tensor in outputs()]
        power = float(np.mean([_mean_square(tensor) for tensor in reference])) or 1.0
        for layer in layers:
            problem = layer.problem
            rms = float(np.sqrt(np.mean(problem.weights ** 2))) or 1.0
            perturbed = generator.standard_normal(problem.weights.shape)
            perturbed *= 0.01 * rms
            perturbed += problem.weights  # in place: a head's weights are 500 MB a copy
            layer_loss = layer_distortion(problem, perturbed)
            weight = modules[layer.name].weight
            original = weight.detach().clone()
            perturbed = matrix_to_stored_layout(perturbed, layer.stored_shape, layer.kind)
            weight.copy_(torch.from_numpy(np.ascontiguousarray(perturbed)).to(weight.dtype))
            del perturbed
            try:
                change = [_mean_square(tensor.float() - expected)
                          for tensor, expected in zip(outputs(), reference)]
            finally:
                weight.copy_(original)
            if layer_loss > 0 and np.mean(change) > 0:
                layer.sensitivity = (float(np.mean(change)) / power / layer_loss) \
                    ** self.sensitivity_exponent

    def _park(self, modules, after: dict, before: dict) -> list:
        """Send the weights of the layers ``after`` back to meta (when they come from the
        checkpoint and are not tied to a layer ``before``); returns their parameter names."""
        if self.weights is None:
            return []
        needed = {n for name in before for n in self.ties.get(parameter_name(name, "weight"), [])}
        parked = []
        for name in after:
            names = [f"{name}.{attribute}" if name else attribute
                     for attribute, _ in modules[name].named_parameters(recurse=False)]
            if any(n in needed for n in names):
                continue
            release(modules[name])
            parked.extend(names)
        return parked

    def _lam_of_first_block(self, block, prefix, all_layers, inputs) -> float:
        """The default λ (:meth:`ModelEncoder.default_lam`'s rule) from block 0's layers, on
        the float model's inputs: typical layers of the stack, not the embeddings."""
        _, layers = self._block_layers(block, prefix, all_layers, inputs)
        return self._default_lam(layers)

    def _block_layers(self, block, prefix, all_layers, inputs) -> tuple[dict, list]:
        """Load ``block``, collect its layers' Hessians on ``inputs`` and measure their
        sensitivities on its output. Returns the model's modules and the block's layers."""
        self._materialize(prefix, block)
        layers_here = {name: kind for name, kind in all_layers.items() if name.startswith(prefix)}
        modules = dict(self.model.named_modules())
        collector = _SharedHessians(modules, layers_here)
        started = time.perf_counter()
        try:
            for item in inputs:
                collector.positions = item.positions
                block(item.hidden, *item.args, **item.kwargs)
                collector.batch_done()
        finally:
            collector.remove()
        self.hessian_seconds += time.perf_counter() - started
        hessians = collector.hessians(self.embedding_smoothing)
        del collector
        layers = self._layers(modules, layers_here, hessians)
        del hessians
        self._sensitivities(layers, modules, lambda: [
            i.at_tokens(_hidden_of(block(i.hidden, *i.args, **i.kwargs)))
            for i in inputs[:self.sensitivity_batches]])
        return modules, layers

    def _default_lam(self, layers) -> float:
        return default_lam(layers)

    def _quantize_unit(self, label, layers, modules, writer) -> dict:
        """Quantize ``layers``, write them, and put their dequantized weights into the model
        (to feed the next unit). Returns the original weights of a model the caller owns, to
        restore (empty when the weights came from the checkpoint)."""
        started = time.perf_counter()
        try:
            return self._quantize_layers(label, layers, modules, writer)
        finally:
            self.quantize_seconds += time.perf_counter() - started

    def _quantize_layers(self, label, layers, modules, writer) -> dict:
        if self.lam is None:
            self.lam = self._default_lam(layers)
        control = self._controller is not None and bool(layers)
        if control:
            table = self._unit_table(layers)
            self.lam = self._controller.choose(table, self._rest_table(label),
                                               self._committed_bits(writer))
            self.progress(f"{label}: lambda {self.lam:.4g} for {self.target_bpw:g} bits per "
                          f"coded weight (real/predicted bits so far "
                          f"{self._controller.correction:.3f})", final=True)
            unit_payload = 0
        originals = {}
        # The unit's layers are independent: the executor may quantize them all at once (Ray);
        # their results are taken, and written, in this order whoever computed them.
        jobs = [(layer.problem, replace(self.settings, per_channel=layer.per_channel,
                                        lam=self.lam / layer.sensitivity)) for layer in layers]
        results = self.executor.map(jobs)
        try:
            for number, (layer, (_, settings)) in enumerate(zip(layers, jobs), 1):
                self._layers_started += 1
                self.progress.step("quantize", self._layers_started, self._layer_total,
                                   f"{label}: layer {number}/{len(layers)} {layer.parameter} "
                                   f"{'x'.join(map(str, layer.problem.weights.shape))}",
                                   seconds_left=self._seconds_left(), milestone=number == 1)
                started = time.perf_counter()
                result, seconds = next(results)  # the layer's own time, wherever it ran
                # This process's wait (the quantization phase's wall time, with Ray less than the
                # sum of the layers' times).
                self.layer_seconds += time.perf_counter() - started
                payload = write_layer(writer, self._file_name(layer.parameter), layer, result,
                                      seconds, settings, self.summaries)
                if control:
                    unit_payload += payload
                self.coded_weights += layer.problem.weights.size
                self.sqnr.add_rows(self._file_name(layer.parameter), layer.problem.weights,
                                   result.dequantized)
                self._written.add(layer.parameter)
                self._quantized[layer.parameter] = layer.parameter
                for alias in self.ties.get(layer.parameter, []):
                    if alias != layer.parameter:
                        self._quantized[alias] = layer.parameter
                        # A tied copy is in the file when the checkpoint has it (or, for a model in
                        # memory, since its state dict has it), with the same indices.
                        name = self._file_name(alias)
                        if self.weights is None or name in self.weights:
                            write_layer(writer, name, layer, result, seconds, settings, None)
                            self._written.add(alias)
                weight = modules[layer.name].weight
                if self.weights is None:
                    originals[layer.name] = weight.detach().clone()
                weight.data.copy_(torch.from_numpy(reconstruction_of(layer, result))
                                  .to(weight.dtype))
                # Done with this layer: its float64 weights, Hessian factors and curvatures
                # (several times the layer's size) go now, not when the whole block is done.
                layer.problem.cache.clear()
                layer.problem = None
                jobs[number - 1] = None
                del result
        finally:
            results.close()  # a fault here: the tasks not taken yet are cancelled
        if control:
            surveyed = self._survey_tables.get(label)
            self._controller.record(label, self.lam, 8.0 * unit_payload, table.bits(self.lam),
                                    None if surveyed is None else surveyed.bits(self.lam))
        return originals

    # -- a size target in one pass (nncodec_rd.encoder.rate_control) ------------------------------

    def _unit_steps(self, layer) -> np.ndarray:
        """The layer's λ-rule step(s) at global λ = 1 (the step grows as √λ)."""
        return lambda_rule_steps(layer.problem, replace(
            self.settings, per_channel=layer.per_channel, lam=1.0 / layer.sensitivity))

    def _unit_table(self, layers) -> RateTable:
        table = RateTable.empty(self._lams)
        for layer in layers:
            table = table + rate_table(layer.problem.weights, self._unit_steps(layer),
                                       self._lams, self.settings.entropy)
        return table

    def _rest_table(self, label: str) -> RateTable:
        """The predicted bits of every unit after ``label`` (from the survey)."""
        later = list(self._survey_tables)
        later = later[later.index(label) + 1:] if label in later else later
        table = RateTable.empty(self._lams)
        for unit in later:
            table = table + self._survey_tables[unit]
        return table

    def _survey(self, blocks, stack_prefix, all_layers, before, after, parked,
                first_table: RateTable, inputs) -> None:
        """A float pass for a size target: each unit's predicted rates, in the order the units
        are quantized: the blocks on the float outputs of the blocks before them, the layers
        after the stack on the float final states. It costs the forward passes of the main
        pass and none of its quantization."""
        started = time.perf_counter()
        model = self.model
        items = [_BlockInput(i.hidden, i.args, i.kwargs, i.positions) for i in inputs]
        # Layers after the stack tied to one before it are not coded again.
        coded_before = {parameter_name(name, "weight") for name in before}
        after = {name: kind for name, kind in after.items()
                 if not coded_before & set(self.ties.get(parameter_name(name, "weight"), []))}
        units = len(blocks) + bool(after)
        tables = {}
        if before:
            tables["before the stack"] = RateTable.empty(self._lams)  # its own, when reached
        for index, block in enumerate(blocks):
            label = f"block {index + 1}/{len(blocks)}"
            self.progress.step("survey for the size target", index + 1, units, label,
                               milestone=index == 0)
            if index == 0:
                tables[label] = first_table  # block 0 was measured on every batch already
            else:
                _, layers = self._block_layers(block, f"{stack_prefix}{index}.", all_layers,
                                               items)
                tables[label] = self._unit_table(layers)
                del layers
            for item in items:
                output = block(item.hidden, *item.args, **item.kwargs)
                self._output_is_tuple = not isinstance(output, torch.Tensor)
                item.hidden = _hidden_of(output).detach()
            if self.weights is not None and index > 0:  # block 0 stays for the main pass
                release(block)
            del output
            _return_freed_memory()
        if after:
            self.progress.step("survey for the size target", units, units, "after the stack")
            modules = dict(model.named_modules())
            if parked:
                materialize(model, parked, self.weights, self.key_map, self.ties)
            layers = self._layers_after_stack(modules, after, blocks, items)
            tables["after the stack"] = self._unit_table(layers)
            del layers
            if parked:
                self._park(modules, after, before)
            _return_freed_memory()
        self._survey_tables = tables
        self.survey_seconds = time.perf_counter() - started
        self.progress(f"survey for the size target: {self.survey_seconds:.0f} s", final=True)

    def _committed_bits(self, writer: NrdWriter) -> float:
        """Bits of the file so far, plus those still to come that do not depend on λ: the raw
        tensors, and header records at the mean size of those so far."""
        size = writer.size_so_far()
        written = writer.tensor_count
        coded_payload = self._controller.spent_bits / 8.0
        raw_written = writer.payload_bytes - coded_payload
        # Header records still to come at RECORD_BYTES each: their frequency tables are in the
        # predicted rates already; names, shapes and chunk lists are a few hundred bytes.
        remaining = max(0, self._tensor_total - written)
        return 8.0 * (size + max(0.0, self._raw_bytes - raw_written) + RECORD_BYTES * remaining)

    def _start_control(self, all_layers, writer: NrdWriter) -> None:
        """The controller of a target_bpw run: the budget of coded bits and the λ grid around
        the default λ."""
        self._lams = self.lam * LAM_FACTORS
        coded, raw_bits, tensors = self._weights_and_raw_bits(all_layers)
        self._raw_bytes, self._tensor_total = raw_bits / 8.0, tensors
        self._controller = RateController(self.target_bpw * coded)

    def _weights_and_raw_bits(self, all_layers) -> tuple[int, float, int]:
        """Weights the encoder will code (tied copies once), bits of every tensor it stores
        raw (in the checkpoint's dtypes when there is one), and the tensors of the file."""
        parameters = dict(self.model.named_parameters(remove_duplicate=False))
        coded_names, firsts = set(), set()
        for name in all_layers:
            parameter = parameter_name(name, "weight")
            tied = self.ties.get(parameter, [parameter])
            coded_names.update(tied)
            firsts.add(min(tied))
        coded = sum(parameters[name].numel() for name in firsts if name in parameters)
        raw_bits, tensors = 0.0, 0
        for key, value in self.model.state_dict().items():
            tensors += 1
            if key in coded_names:
                continue
            dtype = value.dtype
            if self.weights is not None:
                if self.key_map.get(key) not in self.weights:
                    tensors -= 1
                    continue  # a buffer the model computes: not in the file
                dtype = self._stored_dtype(key)
            raw_bits += 8.0 * value.numel() * _itemsize(dtype)
        return coded, raw_bits, tensors

    def _seconds_left(self) -> float | None:
        """Time left in the stack, from the blocks finished so far (None before the first)."""
        timed = getattr(self, "_blocks_timed", 0)
        if not timed:
            return None
        per_block = (time.perf_counter() - self._stack_started) / timed
        return per_block * (self.block_count - self._blocks_done)

    def _restore(self, modules, originals: dict) -> None:
        for name, original in originals.items():
            modules[name].weight.data.copy_(original)

    def _write_raw(self, writer: NrdWriter, key: str, value) -> None:
        """A state-dict entry: skipped if coded, the coded tensor again under a tied name, raw
        otherwise (in the checkpoint's dtype, read from it when there is one)."""
        if key in self._written:
            return
        source = self._quantized.get(key)
        name = self._file_name(key)
        if source is not None and source != key:
            return  # a tied copy, written with the tensor it is tied to (or not in the checkpoint)
        if self.weights is not None:
            if name not in self.weights:
                return  # a buffer the model computes (not in the checkpoint)
            value = self.weights.get(name)
        self._add_raw(writer, name, tensor_to_numpy(value))
        self._written.add(key)

    def _write_checkpoint_extras(self, writer: NrdWriter) -> None:
        """Tensors of the checkpoint that the model has no parameter or buffer for: stored raw,
        so that the archive holds the whole checkpoint."""
        if self.weights is None:
            return
        mapped = set(self.key_map.to_checkpoint.values())
        for name in self.weights.keys():
            if name not in mapped:
                self._add_raw(writer, name, tensor_to_numpy(self.weights.get(name)))

    def _add_raw(self, writer: NrdWriter, name: str, array) -> None:
        """Store a tensor raw, noting a weight matrix no coded layer holds (the summary's)."""
        if is_uncoded_weight(array):
            self.raw_weights[name] = int(array.size)
        writer.add_raw(name, array)


__all__ = ["SequentialEncoder", "find_stack"]
