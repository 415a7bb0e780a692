"""``nncodec-rd encode`` with a PyTorch model: the user's entry points (``--calibration``,
``--model``), their calibration batches and weights, and the model encoder (needs torch)."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import math
import os
import sys
import time

from .. import __version__
from ..format.errors import EncoderError, InputMismatchError, first_line
from .common import (entropy_metadata_of, entropy_settings_of, json_number, parse_metadata,
                     quantizer_metadata_of, quantizer_settings_of)

BATCH_FILE_SUFFIXES = (".pt", ".pth", ".npz")


def executor_of(arguments):
    """The encode's executor (``--ray``), joined or started first, so that an unreachable cluster
    is reported before the slow work; a Ray instance started here stops at the end."""
    from ..encoder.executor import opened_executor

    return opened_executor(arguments.ray)


def calibration_kind(value: str) -> str | None:
    """``"file"`` for a file of batches, ``"entry point"`` for MODULE:FUNCTION, else None."""
    if value.lower().endswith(BATCH_FILE_SUFFIXES):
        return "file"
    if ":" in value:
        return "entry point"
    return None


@contextlib.contextmanager
def _on_sys_path(folder: str):
    """``folder`` first on ``sys.path`` for the duration (where a user's module is found)."""
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        yield
    finally:
        if added and folder in sys.path:
            sys.path.remove(folder)



def _entry_point(spec: str, option: str):
    """The function named by ``module:function`` or ``path/to/file.py:function`` and the folder
    to put on ``sys.path`` while it runs. Every failure is an :class:`EncoderError`."""
    module_name, _, attribute = spec.rpartition(":")
    usage = f"{option} {spec!r}: expected MODULE:FUNCTION or path/to/file.py:FUNCTION"
    if not module_name or not attribute or not all(part.isidentifier()
                                                   for part in attribute.split(".")):
        raise EncoderError(usage)
    if module_name.endswith(".py") or "/" in module_name or os.sep in module_name:
        path = os.path.abspath(module_name)
        if not os.path.isfile(path):
            raise EncoderError(f"{option} {spec!r}: {module_name}: no such file")
        folder = os.path.dirname(path)
        name = "_nncodec_rd_entry_point_" + os.path.splitext(os.path.basename(path))[0]
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or module_spec.loader is None:
            raise EncoderError(f"{option} {spec!r}: {module_name} is not a Python file")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module  # as an import would (dataclasses, pickling look it up)
        try:
            with _on_sys_path(folder):
                module_spec.loader.exec_module(module)
        except (Exception, SystemExit) as error:  # anything the user's module raises
            sys.modules.pop(name, None)
            raise EncoderError(f"{option} {spec!r}: running {module_name} raised "
                               f"{type(error).__name__}: {first_line(error)}") from None
    else:
        if not all(part.isidentifier() for part in module_name.split(".")):
            raise EncoderError(usage)
        folder = os.getcwd()
        try:
            with _on_sys_path(folder):
                module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name and (module_name == error.name
                               or module_name.startswith(error.name + ".")):
                raise EncoderError(f"{option} {spec!r}: no module named {error.name!r} (a module "
                                   f"name is imported with the current directory on the path; "
                                   f"or give a file: path/to/file.py:FUNCTION)") from None
            raise EncoderError(f"{option} {spec!r}: importing {module_name} raised "
                               f"ModuleNotFoundError: {first_line(error)}") from None
        except (Exception, SystemExit) as error:  # anything the user's module raises
            raise EncoderError(f"{option} {spec!r}: importing {module_name} raised "
                               f"{type(error).__name__}: {first_line(error)}") from None
    value = module
    for part in attribute.split("."):
        if not hasattr(value, part):
            raise EncoderError(f"{option} {spec!r}: {module_name} has no attribute "
                               f"{attribute!r}")
        value = getattr(value, part)
    if not callable(value):
        raise EncoderError(f"{option} {spec!r}: {attribute} is a {type(value).__name__}, not a "
                           f"function")
    return value, folder


def _call_entry_point(spec: str, option: str):
    function, folder = _entry_point(spec, option)
    try:
        with _on_sys_path(folder):
            return function()
    except (Exception, SystemExit) as error:  # anything the user's function raises
        raise EncoderError(f"{option} {spec!r} raised {type(error).__name__}: "
                           f"{first_line(error)}") from None


def _torch_encoder():
    """The PyTorch side of the encoder, or an :class:`EncoderError` saying how to install it."""
    try:
        from ..torch import calibration
        from ..torch.compress_model import compress
        from ..torch.load import load_weights
    except ModuleNotFoundError as error:
        if (error.name or "").split(".")[0] == "torch":
            raise EncoderError("--calibration and --model need PyTorch: pip install "
                               "'nncodec-rd[torch]'") from None
        raise
    return compress, load_weights, calibration


def _load_weights_file(model, path, load_weights) -> dict:
    """Load the tensors of a weights file into ``model`` (every parameter and buffer, nothing
    else: like ``load_state_dict(strict=True)``); returns the file's metadata."""
    from ..io.tensorio import read_tensors

    tensors, metadata = read_tensors(path)
    state_keys = list(model.state_dict().keys())
    missing = [key for key in state_keys if key not in tensors]
    unexpected = [key for key in tensors if key not in set(state_keys)]
    if missing or unexpected:
        def listing(keys):
            return ", ".join(keys[:4]) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")

        problems = ([f"missing {listing(missing)}"] if missing else []) + \
                   ([f"unexpected {listing(unexpected)}"] if unexpected else [])
        hint = ("the model must be the one the file was saved from; for a Hugging Face "
                "checkpoint, encode its folder instead (nncodec-rd encode MODEL_DIR), which "
                "builds the model from config.json and keeps every tensor of the checkpoint")
        raise InputMismatchError(f"{path}: its tensors do not match the model's state dict: "
                                 f"{'; '.join(problems)}; {hint}")
    load_weights(model, tensors)
    return metadata


def encode_model(arguments) -> int:
    with executor_of(arguments) as executor:
        return _encode_model_with(arguments, executor)


def _encode_model_with(arguments, executor) -> int:
    start = time.perf_counter()
    compress, load_weights, calibration_tools = _torch_encoder()
    calibration = arguments.calibration
    kind = calibration_kind(calibration) if calibration is not None else None
    if arguments.lam is not None and not (math.isfinite(arguments.lam) and arguments.lam > 0):
        raise EncoderError(f"--lam must be finite and > 0, not {arguments.lam}")
    quantizer = quantizer_settings_of(arguments)
    if arguments.grid_scale is not None and not (math.isfinite(arguments.grid_scale)
                                                 and arguments.grid_scale > 0):
        # before the slow Hessians
        raise EncoderError(f"--grid-scale must be finite and > 0, not {arguments.grid_scale}")
    if calibration is not None and kind is None:
        raise EncoderError(f"--calibration {calibration!r}: expected a .pt, .pth or .npz file of "
                           f"batches, or MODULE:FUNCTION returning (model, batches)")
    if kind == "entry point":
        returned = _call_entry_point(calibration, "--calibration")
        if not (isinstance(returned, (tuple, list)) and len(returned) == 2):
            raise EncoderError(f"--calibration {calibration!r} returned {_describe(returned)}; "
                               f"it must return (model, batches)")
        if not calibration_tools.is_module(returned[0]):
            raise EncoderError(f"--calibration {calibration!r} returned (model, batches) with "
                               f"{_describe(returned[0])} as the model, not a torch.nn.Module")
        model = returned[0]
        batches = calibration_tools.check_batches(returned[1], calibration)
    else:
        model = _call_entry_point(arguments.model, "--model")
        if not calibration_tools.is_module(model):
            raise EncoderError(f"--model {arguments.model!r} returned {_describe(model)}, not a "
                               f"torch.nn.Module")
        batches = None
        if kind == "file":
            batch_size = 32 if arguments.batch_size is None else arguments.batch_size
            batches = calibration_tools.load_batches(calibration, batch_size,
                                                     dtype=calibration_tools.floating_dtype(model))
    source_metadata = {}
    if arguments.input is not None:
        source_metadata = _load_weights_file(model, arguments.input, load_weights)
    if batches is not None:
        calibration_tools.check_runs(model, batches, calibration)
    method = arguments.method or ("cerwu" if batches is not None else "rtn")
    settings = entropy_settings_of(arguments)
    metadata = {k: str(v) for k, v in source_metadata.items()}
    metadata.update({"encoder": f"nncodec-rd {__version__}", "encoder_settings": json.dumps({
        "method": method, "lam": arguments.lam, "target_bpw": arguments.target_bpw,
        "per_channel": arguments.per_row, **quantizer_metadata_of(quantizer),
        "sensitivity": not arguments.no_sensitivity,
        "embedding_smoothing": json_number(arguments.embedding_smoothing),
        **entropy_metadata_of(arguments),
        "calibration": (os.path.basename(calibration) if kind == "file" else calibration),
        "model": arguments.model, "batch_size": arguments.batch_size})})
    if arguments.input is not None:
        metadata["source"] = os.path.basename(arguments.input)
    metadata.update(parse_metadata(arguments.metadata))
    # progress=True: compress shows per-layer progress and prints its summary table on stderr.
    result = compress(model, batches, method=method, lam=arguments.lam,
                      target_bpw=arguments.target_bpw, path=arguments.output,
                      per_channel=arguments.per_row, entropy=settings, **quantizer,
                      sensitivity=not arguments.no_sensitivity, metadata=metadata, progress=True,
                      executor=executor,
                      **({} if arguments.embedding_smoothing is None  # compress()'s default
                         else {"embedding_smoothing": arguments.embedding_smoothing}))
    print(f"wrote {arguments.output}: {result.size_bytes} bytes, {result.bits_per_weight:.3f} bits "
          f"per coded weight ({result.coded_weights} weights), method {result.method}, lambda "
          f"{result.lam:.4g}, in {time.perf_counter() - start:.2f} s", file=sys.stderr)
    return 0


def _describe(value) -> str:
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)} items"
    if value is None:
        return "None"
    name = type(value).__name__
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"
