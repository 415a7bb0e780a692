"""The ``nncodec-rd`` command: a thin layer over the API.

Every error a user can cause is printed as one line and the command exits non-zero; outputs are
written atomically, so a failure leaves no partial file.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import math
import os
import re
import sys
import time

from . import DEFAULT_MAX_OUTPUT_BYTES, FORMAT_VERSION, __version__
from .decoder.reader import DEFAULT_MAX_HEADER_BYTES, DEFAULT_MAX_TRANSFORM_WORK
from .format.errors import EncoderError, InputMismatchError, NrdError

EXIT_ERROR = 1


def _human_bytes(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.2f} {unit}"
        size /= 1024
    return f"{size:.2f} GiB"


def _printable(value) -> str:
    """``value`` as text safe to print on a terminal: every character Python does not count as
    printable (ESC, BEL, CR, C1 controls, bidirectional overrides, line separators) is shown as
    its Python escape (``\\x1b``), so a name or metadata value in a file cannot move the cursor,
    retitle the window or hide text (issue 17). Other text, accents included, prints as is."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def _original_bytes(info) -> int:
    sizes = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8, "int8": 1, "uint8": 1,
             "int16": 2, "int32": 4, "int64": 8, "bool": 1, "uint16": 2, "uint32": 4, "uint64": 8}
    return info.element_count * sizes[info.dtype]


def command_info(arguments) -> int:
    from .api import safe_open

    with safe_open(arguments.file, max_header_bytes=arguments.max_header_bytes) as handle:
        infos = [handle.info(name) for name in handle.keys()]
        if arguments.json:
            print(json.dumps({
                "file": arguments.file, "format_version": handle.format_version,
                "size_bytes": handle.size_bytes, "metadata": _jsonable(handle.metadata()),
                "tensors": [{"name": i.name, "shape": list(i.shape), "dtype": i.dtype,
                             "coding": i.coding, "grid": i.grid, "payload_bytes": i.payload_bytes,
                             "bits_per_weight": i.bits_per_weight, "chunk_count": i.chunk_count,
                             "context_model": i.context_model,
                             "precision_bits": i.precision_bits,
                             "metadata": _jsonable(i.metadata)} for i in infos],
            }, indent=2))
            return 0
        print(f"{_printable(arguments.file)}: .nrd {handle.format_version}, "
              f"{_human_bytes(handle.size_bytes)}, {len(infos)} tensor"
              f"{'' if len(infos) == 1 else 's'}")
        for key, value in handle.metadata().items():
            print(f"  {_printable(key)}: {_printable(value)}")
        names = {info.name: _printable(info.name) for info in infos}
        name_width = min(60, max([len(name) for name in names.values()] + [4]))
        print(f"{'name':<{name_width}}  {'shape':<16} {'dtype':<8} {'grid':<24} {'bytes':>10} "
              f"{'bits/w':>7} {'ratio':>6}")
        total_payload = total_original = total_weights = 0
        for info in infos:
            original = _original_bytes(info)
            ratio = original / info.payload_bytes if info.payload_bytes else float("inf")
            print(f"{names[info.name][:name_width]:<{name_width}}  {str(list(info.shape)):<16} "
                  f"{info.dtype:<8} {_printable(info.grid)[:24]:<24} {info.payload_bytes:>10} "
                  f"{info.bits_per_weight:>7.3f} {ratio:>6.1f}")
            total_payload += info.payload_bytes
            total_original += original
            total_weights += info.element_count
        if total_weights:
            ratio = total_original / max(handle.size_bytes, 1)
            comparison = (f"{ratio:.1f}x smaller than" if ratio >= 1 else
                          f"{1 / ratio:.1f}x larger than") if ratio else "larger than"
            print(f"total: {total_weights} elements, {_human_bytes(handle.size_bytes)} file, "
                  f"{8 * handle.size_bytes / total_weights:.3f} bits per element, "
                  f"{comparison} the uncompressed tensors")
    return 0


def _jsonable(metadata: dict) -> dict:
    return {k: (v.hex() if isinstance(v, bytes) else v) for k, v in metadata.items()}


def _byte_count(text: str) -> int | None:
    """``--max-output-bytes``: an integer with an optional K/M/G/T suffix (powers of 1024), or
    ``none`` for no bound."""
    value = text.strip().lower().removesuffix("b").removesuffix("i")
    if value == "none":
        return None
    scale = 1
    if value[-1:] in _BYTE_SUFFIXES:
        value, scale = value[:-1], _BYTE_SUFFIXES[value[-1]]
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"expected bytes such as 1000, 512M, 64G or none, "
                                         f"not {text!r}")
    return int(value) * scale


_BYTE_SUFFIXES = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def _add_max_header_bytes(parser) -> None:
    parser.add_argument("--max-header-bytes", type=_byte_count, default=DEFAULT_MAX_HEADER_BYTES,
                        metavar="BYTES",
                        help="refuse (output_too_large) a file whose header is larger: bytes with "
                             "an optional K, M, G or T suffix, or 'none' for the spec's limit of "
                             "256M (default: 100M)")


def command_decode(arguments) -> int:
    from .api import safe_open
    from .io.tensorio import write_tensors_streaming

    start = time.perf_counter()
    if _is_folder_output(arguments.output):
        return _decode_folder(arguments, start)
    with safe_open(arguments.file, threads=arguments.threads,
                   max_output_bytes=arguments.max_output_bytes,
                   max_transform_work=arguments.max_transform_work,
                   max_header_bytes=arguments.max_header_bytes) as handle:
        infos = [handle.info(name) for name in handle.keys()]
        metadata = {k: v for k, v in handle.metadata().items() if not isinstance(v, bytes)}
        if arguments.output.lower().endswith(".safetensors"):
            metadata.setdefault("format", "pt")  # transformers refuses a file without it
        dropped = [k for k, v in handle.metadata().items() if isinstance(v, bytes)]
        if arguments.output.lower().endswith(".npz"):
            dropped = list(handle.metadata())
        dropped += [f"{i.name}: {k}" for i in infos for k in i.metadata]
        # One tensor at a time: decoded, written, freed.
        write_tensors_streaming(arguments.output, [(i.name, i.dtype, i.shape) for i in infos],
                                handle.get_tensor, metadata)
    count = sum(i.element_count for i in infos)
    print(f"decoded {len(infos)} tensor{'' if len(infos) == 1 else 's'} ({count} elements) to "
          f"{arguments.output} in {time.perf_counter() - start:.2f} s", file=sys.stderr)
    if dropped:
        # The output formats carry no such metadata (.npz none, safetensors only file-level
        # text): say so rather than lose it silently.
        print(f"note: metadata not carried over to {arguments.output}: "
              f"{', '.join(repr(d) for d in dropped[:8])}{' ...' if len(dropped) > 8 else ''}"
              f" (see it with nncodec-rd info --json)", file=sys.stderr)
    return 0


def command_warmup(arguments) -> int:
    """Compile (or load from the cache) every decoder kernel, so that no later decode waits."""
    from .decoder import dispatch

    start = time.perf_counter()
    timings = dispatch.warmup(progress=lambda name, seconds: print(
        f"  {name}: {seconds:.2f} s", file=sys.stderr))
    folder = dispatch.cache_folder()
    where = (f"cached in {folder}" if folder is not None else
             "NOT cached: no cache folder is writable, so every process compiles again; set "
             "NUMBA_CACHE_DIR to a writable folder and run nncodec-rd warmup again")
    print(f"{len(timings)} decoder kernels ready in {time.perf_counter() - start:.1f} s, {where}",
          file=sys.stderr)
    return 0


def _is_folder_output(output: str) -> bool:
    """``-o`` names a folder: it ends with a slash, is an existing folder, or has no suffix."""
    return (output.endswith(("/", os.sep)) or os.path.isdir(output)
            or not os.path.splitext(output)[1])


def _decode_folder(arguments, start: float) -> int:
    """A model folder: the archived files of a Hugging Face folder, and the tensors as
    safetensors (sharded like the original when it was)."""
    from .api import safe_open
    from .io.hf_folder import FILE_PREFIX, write_folder

    with safe_open(arguments.file, threads=arguments.threads,
                   max_output_bytes=arguments.max_output_bytes,
                   max_transform_work=arguments.max_transform_work,
                   max_header_bytes=arguments.max_header_bytes) as handle:
        archived = [k for k in handle.metadata() if k.startswith(FILE_PREFIX)]
        written = write_folder(handle, arguments.output)
        count = sum(handle.info(name).element_count for name in handle.keys())
    print(f"decoded {len(handle.keys())} tensors ({count} elements) into {arguments.output}: "
          f"{', '.join(written[:6])}{' ...' if len(written) > 6 else ''} "
          f"in {time.perf_counter() - start:.2f} s", file=sys.stderr)
    if not archived:
        print("note: the file archives no model folder files (config.json, tokenizer); only the "
              "tensors were written", file=sys.stderr)
    return 0


def _parse_metadata(pairs) -> dict:
    metadata = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise NrdError(f"--metadata expects KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        metadata[key] = value
    return metadata


def command_encode(arguments) -> int:
    if arguments.input is not None and os.path.isdir(arguments.input):
        return _encode_folder(arguments)
    if arguments.calibration is None and arguments.model is None:
        return _encode_data_free(arguments)
    return _encode_model(arguments)


def _executor_of(arguments):
    """The encode's executor (``--ray``), joined or started first, so that an unreachable cluster
    is reported before the slow work; a Ray instance started here stops at the end."""
    from .encoder.executor import opened_executor

    return opened_executor(arguments.ray)


def _encode_folder(arguments) -> int:
    """A Hugging Face model folder, block by block (nncodec_rd.torch.pretrained)."""
    with _executor_of(arguments) as executor:
        return _encode_folder_with(arguments, executor)


def _encode_folder_with(arguments, executor) -> int:
    try:
        from .torch.pretrained import compress_pretrained
    except ImportError as error:
        raise NrdError(f"encoding a model folder needs torch and transformers: pip install "
                       f"'nncodec-rd[hf]' ({error})") from None
    start = time.perf_counter()
    metadata = {"encoder_settings": json.dumps({
        "method": arguments.method or "cerwu", "lam": arguments.lam, "sequential": True,
        "target_fidelity": arguments.target_fidelity, "target_bpw": arguments.target_bpw,
        "per_row": arguments.per_row, "grid_choice": arguments.grid_choice,
        "act_order": not arguments.no_act_order, "sensitivity": not arguments.no_sensitivity}),
        "source": os.path.basename(os.path.normpath(arguments.input))}
    metadata.update(_parse_metadata(arguments.metadata))
    options = {}
    if arguments.grid_choice is not None:
        options["grid_choice"] = arguments.grid_choice
    if arguments.calibration_text is None:
        print("calibrating on the bundled English sentences (text of your model's domain, "
              "--calibration-text FILE, calibrates better)", file=sys.stderr)
    outcome = compress_pretrained(
        arguments.input, arguments.output, method=arguments.method or "cerwu", lam=arguments.lam,
        calibration_text=arguments.calibration_text, stack=arguments.stack,
        per_channel=arguments.per_row, act_order=not arguments.no_act_order,
        sensitivity=not arguments.no_sensitivity, metadata=metadata,
        sequences=arguments.calibration_sequences, resume=arguments.resume,
        target_fidelity=arguments.target_fidelity, target_bpw=arguments.target_bpw,
        executor=executor, **options)
    fidelity = ""
    if outcome.fidelity is not None:
        fidelity = (f"; output fidelity {outcome.fidelity:.4f} (mean cosine on held-out "
                    f"calibration text, target {arguments.target_fidelity:g}, "
                    f"{len(outcome.lam_trials)} trials)")
    print(f"wrote {arguments.output}: {outcome.size_bytes:,} bytes, "
          f"{outcome.bits_per_weight:.3f} bits per coded weight ({outcome.coded_weights:,} "
          f"weights), lambda {outcome.lam:.4g}, in {time.perf_counter() - start:.1f} s; "
          f"{outcome.sqnr.summary()}{fidelity}", file=sys.stderr)
    if outcome.sqnr.warning() and outcome.fidelity is None:  # a measured fidelity says more
        print(outcome.sqnr.warning(), file=sys.stderr)
    return 0


def _encode_data_free(arguments) -> int:
    from .api import save_file
    from .encoder.fidelity import SqnrReport
    from .format.grids import EntropySettings
    from .io.tensorio import read_tensors

    start = time.perf_counter()
    tensors, source_metadata = read_tensors(arguments.input)
    metadata = {k: str(v) for k, v in source_metadata.items()}
    metadata.update({"encoder": f"nncodec-rd {__version__}", "encoder_settings": json.dumps({
        "method": "rtn", "step": arguments.step, "relative_step": arguments.relative_step,
        "bins": arguments.bins, "per_row": arguments.per_row,
        "precision_bits": arguments.precision_bits,
        "choose_precision": not arguments.fixed_precision, "lane_count": arguments.lanes,
        "context_model": arguments.context}),
        "source": os.path.basename(arguments.input)})
    metadata.update(_parse_metadata(arguments.metadata))
    settings = EntropySettings(precision_bits=arguments.precision_bits, lane_count=arguments.lanes,
                               context_model=arguments.context,
                               choose_precision=not arguments.fixed_precision)
    report = SqnrReport()
    size = save_file(tensors, arguments.output, metadata=metadata,
                     quantize=arguments.quantize or "auto",
                     step=arguments.step, relative_step=arguments.relative_step,
                     bins=arguments.bins, per_row=arguments.per_row, settings=settings,
                     report=report)
    original = sum(t.nbytes for t in tensors.values())
    count = sum(t.size for t in tensors.values())
    print(f"wrote {arguments.output}: {size} bytes ({8 * size / max(count, 1):.3f} bits per element, "
          f"{original / max(size, 1):.1f}x smaller than {original} bytes) in "
          f"{time.perf_counter() - start:.2f} s; {report.summary()}", file=sys.stderr)
    if report.warning():
        print(report.warning(), file=sys.stderr)
    return 0


BATCH_FILE_SUFFIXES = (".pt", ".pth", ".npz")
DATA_FREE_OPTIONS = (("step", "--step"), ("relative_step", "--relative-step"), ("bins", "--bins"),
                     ("quantize", "--quantize"))
MODEL_OPTIONS = (("lam", "--lam"), ("target_bpw", "--target-bpw"), ("grid_scale", "--grid-scale"),
                 ("grid_choice", "--grid-choice"),
                 ("no_act_order", "--no-act-order"), ("no_sensitivity", "--no-sensitivity"),
                 ("batch_size", "--batch-size"))


def _calibration_kind(value: str) -> str | None:
    """``"file"`` for a file of batches, ``"entry point"`` for MODULE:FUNCTION, else None."""
    if value.lower().endswith(BATCH_FILE_SUFFIXES):
        return "file"
    if ":" in value:
        return "entry point"
    return None


def _check_encode_arguments(parser, arguments) -> None:
    """Usage errors of ``encode``: options that do not fit together (argparse-style, exit 2)."""
    if arguments.input is not None and os.path.isdir(arguments.input):
        for name, option in DATA_FREE_OPTIONS + (("calibration", "--calibration"),
                                                 ("model", "--model"),
                                                 ("batch_size", "--batch-size"),
                                                 ("grid_scale", "--grid-scale")):
            if getattr(arguments, name) is not None:
                parser.error(f"{option} does not apply to a model folder (it is encoded block by "
                             f"block with its own tokenizer; see --calibration-text)")
        if arguments.target_bpw is not None and arguments.lam is not None:
            parser.error("give --lam or --target-bpw, not both")
        if arguments.target_fidelity is not None:
            if arguments.lam is not None or arguments.target_bpw is not None:
                parser.error(f"give {'--lam' if arguments.lam is not None else '--target-bpw'} "
                             f"or --target-fidelity, not both")
            if arguments.resume:
                parser.error("--resume does not apply to a --target-fidelity search (each trial "
                             "is a whole encode); give the --lam it found to resume")
            if not 0 < arguments.target_fidelity < 1:
                parser.error(f"--target-fidelity is a mean cosine in (0, 1), not "
                             f"{arguments.target_fidelity}")
        return
    if arguments.resume:
        parser.error("--resume applies only to a Hugging Face model folder as INPUT")
    for name, option in (("calibration_text", "--calibration-text"), ("stack", "--stack"),
                         ("target_fidelity", "--target-fidelity")):
        if getattr(arguments, name) is not None:
            parser.error(f"{option} applies only to a Hugging Face model folder as INPUT")
    if arguments.calibration is None and arguments.model is None:
        given = [option for name, option in MODEL_OPTIONS
                 if getattr(arguments, name) is not None and getattr(arguments, name) is not False]
        if arguments.input is None:
            parser.error("the following arguments are required: input (or give --calibration "
                         "MODULE:FUNCTION)")
        if arguments.method not in (None, "rtn"):
            parser.error(f"--method {arguments.method} needs calibration data: give --calibration")
        if arguments.ray is not None:
            given.append("--ray")
        if given:
            parser.error(f"{given[0]} needs a model: give --calibration or --model (the data-free "
                         f"encoder of a weights file sets its grid with --step, --relative-step "
                         f"or --bins)")
        return
    for name, option in DATA_FREE_OPTIONS:
        if getattr(arguments, name) is not None:
            parser.error(f"{option} applies only to the data-free encoder of a weights file; "
                         f"with a model, use --lam or --target-bpw")
    kind = _calibration_kind(arguments.calibration) if arguments.calibration is not None else None
    if kind == "entry point" and arguments.model is not None:
        parser.error("--model is for a file of batches; --calibration MODULE:FUNCTION returns the "
                     "model itself")
    if kind == "file" and arguments.model is None:
        parser.error("a file of calibration batches needs --model MODULE:FUNCTION returning the "
                     "model")
    if kind != "file" and arguments.batch_size is not None:
        parser.error("--batch-size applies only to a file of calibration batches")
    if arguments.calibration is None and arguments.method not in (None, "rtn"):
        parser.error(f"--method {arguments.method} needs calibration data: give --calibration "
                     f"(only rtn is data-free)")


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


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return (text.splitlines()[0] if text else "")[:200]


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
                               f"{type(error).__name__}: {_first_line(error)}") from None
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
                               f"ModuleNotFoundError: {_first_line(error)}") from None
        except (Exception, SystemExit) as error:  # anything the user's module raises
            raise EncoderError(f"{option} {spec!r}: importing {module_name} raised "
                               f"{type(error).__name__}: {_first_line(error)}") from None
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
                           f"{_first_line(error)}") from None


def _torch_encoder():
    """The PyTorch side of the encoder, or an :class:`EncoderError` saying how to install it."""
    try:
        from .torch import calibration
        from .torch.compress_model import compress
        from .torch.load import load_weights
    except ModuleNotFoundError as error:
        if (error.name or "").split(".")[0] == "torch":
            raise EncoderError("--calibration and --model need PyTorch: pip install "
                               "'nncodec-rd[torch]'") from None
        raise
    return compress, load_weights, calibration


def _load_weights_file(model, path, load_weights) -> dict:
    """Load the tensors of a weights file into ``model`` (every parameter and buffer, nothing
    else: like ``load_state_dict(strict=True)``); returns the file's metadata."""
    from .io.tensorio import read_tensors

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


def _encode_model(arguments) -> int:
    with _executor_of(arguments) as executor:
        return _encode_model_with(arguments, executor)


def _encode_model_with(arguments, executor) -> int:
    from .format.grids import EntropySettings

    start = time.perf_counter()
    compress, load_weights, calibration_tools = _torch_encoder()
    calibration = arguments.calibration
    kind = _calibration_kind(calibration) if calibration is not None else None
    if arguments.lam is not None and not (math.isfinite(arguments.lam) and arguments.lam > 0):
        raise EncoderError(f"--lam must be finite and > 0, not {arguments.lam}")
    grid_scale = 1.0 if arguments.grid_scale is None else arguments.grid_scale
    if not (math.isfinite(grid_scale) and grid_scale > 0):  # before the slow Hessians
        raise EncoderError(f"--grid-scale must be finite and > 0, not {grid_scale}")
    from .encoder.methods import DEFAULT_GRID_CHOICE

    grid_choice = arguments.grid_choice or DEFAULT_GRID_CHOICE
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
    settings = EntropySettings(precision_bits=arguments.precision_bits, lane_count=arguments.lanes,
                               context_model=arguments.context,
                               choose_precision=not arguments.fixed_precision)
    metadata = {k: str(v) for k, v in source_metadata.items()}
    metadata.update({"encoder": f"nncodec-rd {__version__}", "encoder_settings": json.dumps({
        "method": method, "lam": arguments.lam, "target_bpw": arguments.target_bpw,
        "per_channel": arguments.per_row, "grid_scale": grid_scale, "grid_choice": grid_choice,
        "act_order": not arguments.no_act_order, "sensitivity": not arguments.no_sensitivity,
        "precision_bits": arguments.precision_bits,
        "choose_precision": not arguments.fixed_precision, "lane_count": arguments.lanes,
        "context_model": arguments.context,
        "calibration": (os.path.basename(calibration) if kind == "file" else calibration),
        "model": arguments.model, "batch_size": arguments.batch_size})})
    if arguments.input is not None:
        metadata["source"] = os.path.basename(arguments.input)
    metadata.update(_parse_metadata(arguments.metadata))
    # progress=True: compress shows per-layer progress and prints its summary table on stderr.
    result = compress(model, batches, method=method, lam=arguments.lam,
                      target_bpw=arguments.target_bpw, path=arguments.output,
                      per_channel=arguments.per_row, grid_scale=grid_scale,
                      grid_choice=grid_choice,
                      act_order=not arguments.no_act_order, entropy=settings,
                      sensitivity=not arguments.no_sensitivity, metadata=metadata, progress=True,
                      executor=executor)
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


def command_validate(arguments) -> int:
    from .decoder.validation import validate_file

    failures = 0
    reports = []
    for path in arguments.files:
        errors = validate_file(path, max_output_bytes=arguments.max_output_bytes,
                               max_transform_work=arguments.max_transform_work,
                               max_header_bytes=arguments.max_header_bytes)
        failures += bool(errors)
        reports.append({"file": path, "conforms": not errors, "errors": [
            {"code": int(e.code), "name": e.code.slug, "field": e.field, "offset": e.offset,
             "message": e.message} for e in errors]})
        if not arguments.json:
            print(f"{path}: {'conforms to .nrd ' + FORMAT_VERSION if not errors else 'does NOT conform'}"
                  + (f" ({len(errors)} faults)" if len(errors) > 1 else ""))
            for error in errors:
                print(f"  {error}")
    if arguments.json:
        print(json.dumps(reports, indent=2))
    return EXIT_ERROR if failures else 0


def command_conformance_run(arguments) -> int:
    # The runner and the frozen files ship in the `conformance` package of this distribution;
    # only this command uses them, so the library itself never imports it.
    from conformance.runner import run_conformance

    def progress(result):
        if not arguments.json and not arguments.quiet:
            print(f"{'PASS' if result.passed else 'FAIL'} {result.kind:7} {result.name}",
                  file=sys.stderr)

    try:
        report = run_conformance(arguments.decoder, output_format=arguments.output_format,
                                 timeout_s=arguments.timeout, jobs=arguments.jobs,
                                 error_pattern=arguments.error_pattern, select=arguments.select,
                                 progress=progress)
    except (ValueError, re.error) as error:
        print(f"nncodec-rd: error: {error}", file=sys.stderr)
        return EXIT_ERROR
    if arguments.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(report.render(verbose=arguments.verbose))
    return 0 if report.passed else EXIT_ERROR


CONFORMANCE_EPILOG = """\
For each valid vector the decoder must exit 0 and write every tensor to {output} (.npz with one
.npy member per tensor, bfloat16 as uint16 bits, or .safetensors) with exactly the bytes of the
manifest; for each invalid file it must exit non-zero and write nothing.

Examples:
  nncodec-rd conformance run --decoder 'nncodec-rd decode {input} -o {output}'
  nncodec-rd conformance run --decoder 'python -m conformance.spec_literal_decoder {input} {output}' \\
      --error-pattern 'error (\\d+)'
  nncodec-rd conformance run --decoder './mydecoder {input} {output}' --output-format safetensors \\
      --select 'escape|transform' --json
"""


def command_demo(arguments) -> int:
    from .demo import run_demo

    return run_demo(arguments.output)


def command_bench(arguments) -> int:
    from .benchmarks import decode_speed

    return decode_speed.main(arguments=arguments)


ENCODE_EPILOG = """\
Inputs:
  INPUT alone            data-free: every floating tensor of the weights file is rounded to a
                         uniform grid (rtn; --step, --relative-step or --bins, --quantize).
  --calibration MODULE:FUNCTION [INPUT]
                         FUNCTION() returns (model, batches): a torch.nn.Module and a list of
                         its inputs (a tensor, a tuple of positional inputs or a dict of keyword
                         inputs each). --method defaults to cerwu.
  --calibration FILE --model MODULE:FUNCTION [INPUT]
                         FUNCTION() returns the model; FILE holds its inputs: .pt/.pth (loaded
                         weights-only): a tensor, split into batches of --batch-size rows, or a
                         list of batches (tensors, dicts or lists of tensors); .npz: one array,
                         split the same way, or one array per batch in key order. Floating
                         inputs are cast to the model's dtype. --method defaults to cerwu.
  --model MODULE:FUNCTION [INPUT]
                         no calibration data: rtn only, on the model's layers.
  MODEL_DIR [--calibration-text FILE] [--target-fidelity COSINE]
                         a Hugging Face model folder (config.json; model.safetensors, shards
                         with their index, or pytorch_model.bin), encoded block by block with
                         memory for one block, not the model. Calibration: the lines of FILE,
                         or the bundled English sentences, tokenized with the folder's own
                         tokenizer. The file holds every tensor of the checkpoint, under its
                         names and in its dtypes. --method defaults to cerwu. --target-bpw is
                         met in the one pass (a float survey pass first); --target-fidelity
                         searches λ by whole encodes.
  With a model, INPUT (if given) must hold every parameter and buffer of the model's state
  dict, loaded before compressing. MODULE is a module name, imported with the current
  directory on the path, or a file: path/to/file.py:FUNCTION. --lam or --target-bpw set the
  size (default: steps of about RMS/16); --per-channel, --grid-scale, --grid-choice,
  --no-act-order, --no-sensitivity tune the quantizer. Progress and a per-layer table go to stderr.

Examples:
  nncodec-rd encode model.safetensors -o model.nrd
  nncodec-rd encode path/to/llama-folder -o llama.nrd --calibration-text my_texts.txt
  nncodec-rd encode path/to/bert-folder -o bert.nrd --target-fidelity 0.99
  nncodec-rd encode weights.pt -o weights.nrd --bins 63 --per-row
  nncodec-rd encode --calibration nncodec_rd.torch.examples:tiny_mlp --method cerwu \\
      --target-bpw 4 -o tiny.nrd
  nncodec-rd encode weights.safetensors --calibration my_models.py:model_and_batches \\
      --lam 1e-6 -o weights.nrd
  nncodec-rd encode weights.pt --model my_models:build --calibration batches.pt \\
      --method optq --per-channel -o weights.nrd
  nncodec-rd encode weights.pt --model my_models:build --target-bpw 3 -o weights.nrd
"""


def build_parser() -> argparse.ArgumentParser:
    from .encoder.methods import DEFAULT_GRID_CHOICE, GRID_CHOICES, METHODS

    parser = argparse.ArgumentParser(
        prog="nncodec-rd",
        description="Compress neural-network weights into .nrd files, inspect and decode them.",
        epilog="Examples:\n  nncodec-rd encode model.safetensors -o model.nrd\n"
               "  nncodec-rd info model.nrd\n  nncodec-rd decode model.nrd -o decoded.safetensors",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version",
                        version=f"nncodec-rd {__version__} (reads and writes .nrd format "
                                f"{FORMAT_VERSION}; reads 1.x)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    info = commands.add_parser("info", help="list the tensors of an .nrd file",
                               description="Show the tensors of an .nrd file: shape, dtype, grid, "
                                           "payload bytes, bits per weight, compression ratio.",
                               epilog="Example: nncodec-rd info model.nrd --json")
    info.add_argument("file")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    _add_max_header_bytes(info)
    info.set_defaults(run=command_info)

    decode = commands.add_parser("decode", help="decode an .nrd file to .safetensors or .npz",
                                 description="Decode every tensor of an .nrd file.",
                                 epilog="Example: nncodec-rd decode model.nrd -o model.safetensors")
    decode.add_argument("file")
    decode.add_argument("-o", "--output", required=True,
                        help="output .safetensors or .npz, or a folder (a path ending in /, or "
                             "with no suffix): the archived model folder (config, tokenizer) "
                             "with the tensors as safetensors, sharded like the original")
    decode.add_argument("--threads", type=int, default=None, help="decoding threads (default: all)")
    decode.add_argument("--max-output-bytes", type=_byte_count, default=DEFAULT_MAX_OUTPUT_BYTES,
                        metavar="BYTES",
                        help="refuse (output_too_large) any tensor that would decode to more "
                             "bytes: an integer with an optional K, M, G or T suffix (powers of "
                             "1024), or 'none' for no bound (default: 64G or this machine's "
                             "memory if less, above any single tensor of a published model); "
                             "lower it for untrusted files")
    decode.add_argument("--max-transform-work", type=_byte_count,
                        default=DEFAULT_MAX_TRANSFORM_WORK, metavar="COUNT",
                        help="refuse (output_too_large) a transform whose product takes more "
                             "multiply-adds: an integer with an optional K, M, G or T suffix, or "
                             "'none' (default: 256G)")
    _add_max_header_bytes(decode)
    decode.set_defaults(run=command_decode)

    encode = commands.add_parser(
        "encode", help="compress a .safetensors, .npz or PyTorch state dict, or a PyTorch model",
        description="Without a model (INPUT alone): quantize the floating-point tensors of a "
                    "weights file by rounding to a uniform grid (data-free rtn) and entropy-code "
                    "them; other tensors are stored raw. With a model (--calibration or "
                    "--model): quantize the layers of a torch.nn.Module with one global "
                    "rate-distortion trade-off lambda, using calibration inputs (rtn, optq, "
                    "optq-rd, cerwu), and store the rest of its state dict raw.",
        epilog=ENCODE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    encode.add_argument("input", nargs="?",
                        help="weights file: .safetensors, .npz or weights-only PyTorch state dict "
                             "(.pt, .pth, .bin); optional with a model, whose weights it replaces; "
                             "or a Hugging Face model folder (config.json and its weights), "
                             "encoded block by block")
    encode.add_argument("-o", "--output", required=True, help="output .nrd file")
    encode.add_argument("--method", choices=METHODS,
                        help="quantizer (default: cerwu with calibration data, else rtn)")
    encode.add_argument("--per-row", "--per-channel", action="store_true",
                        help="one step per row (output channel; with cerwu, for layers "
                             "without a Hessian only)")
    encode.add_argument("--precision-bits", type=int, default=14,
                        help="highest rANS probability precision: each tensor gets the one up to "
                             "it that codes it smallest, tables included (default 14)")
    encode.add_argument("--fixed-precision", action="store_true",
                        help="code every tensor at exactly --precision-bits")
    encode.add_argument("--lanes", type=int, default=4, help="interleaved rANS lanes per chunk")
    encode.add_argument("--context", choices=("auto", "iid", "previous"), default="auto",
                        help="context model of the entropy coder")
    encode.add_argument("--metadata", action="append", metavar="KEY=VALUE",
                        help="file metadata entry (repeatable)")
    encode.add_argument("--ray", metavar="ADDRESS",
                        help="quantize the layers as Ray tasks (pip install 'nncodec-rd[ray]'): "
                             "local (a Ray instance on this machine for this run), auto (the "
                             "cluster started here with ray start --head) or HOST:PORT; the "
                             "file is the same as without (with a model or a model folder)")
    data_free = encode.add_argument_group("data-free encoder of a weights file (no model)")
    grid = data_free.add_mutually_exclusive_group()
    grid.add_argument("--step", type=float, help="absolute grid step")
    grid.add_argument("--relative-step", type=float,
                      help="grid step as a fraction of each tensor's RMS (default 1/16)")
    grid.add_argument("--bins", type=int, help="odd number of grid points spanning the largest weight")
    data_free.add_argument("--quantize", choices=("auto", "all", "none"), default=None,
                           help="which floating tensors to quantize (default auto: >= 1024 "
                                "elements)")
    with_model = encode.add_argument_group("encoder of a PyTorch model (needs torch)")
    with_model.add_argument("--calibration", metavar="SOURCE",
                            help="MODULE:FUNCTION (or path/to/file.py:FUNCTION) returning "
                                 "(model, batches), or a .pt/.pth/.npz file of input batches "
                                 "(then with --model)")
    with_model.add_argument("--model", metavar="MODULE:FUNCTION",
                            help="function returning the torch.nn.Module, for a file of batches "
                                 "or with no calibration data (rtn only)")
    rate = with_model.add_mutually_exclusive_group()
    rate.add_argument("--lam", type=float,
                      help="rate-distortion trade-off lambda (default: steps of about RMS/16)")
    rate.add_argument("--target-bpw", type=float,
                      help="file bits per coded weight to reach (lambda found by bisection)")
    with_model.add_argument("--batch-size", type=int,
                            help="rows per batch when a file holds a single tensor (default 32)")
    with_model.add_argument("--grid-scale", type=float,
                            help="multiplies the grid step lambda gives (default 1; below 1: a "
                                 "finer grid)")
    with_model.add_argument("--grid-choice", choices=GRID_CHOICES,
                            help="fixed: every layer's step from lambda; rd: each layer below "
                                 "2 bits per weight picks its grid (step, or 3 to 31 bins with a "
                                 "zero point) by rate-distortion, several quantizations per "
                                 "layer; auto (default): rd except for rtn")
    with_model.add_argument("--no-act-order", action="store_true",
                            help="quantize columns in their order, not by decreasing Hessian "
                                 "diagonal")
    with_model.add_argument("--no-sensitivity", action="store_true",
                            help="one lambda for every layer, not weighted by how much each "
                                 "moves the model's output")
    folder = encode.add_argument_group("encoder of a Hugging Face model folder (needs torch and "
                                       "transformers)")
    folder.add_argument("--calibration-text", metavar="FILE",
                        help="calibration texts, one per line, tokenized with the folder's "
                             "tokenizer (default: the bundled English sentences)")
    folder.add_argument("--calibration-sequences", type=int, default=32, metavar="N",
                        help="calibration sequences (a causal LM: of 256 tokens; default 32)")
    folder.add_argument("--resume", action="store_true",
                        help="continue a stopped run from its journal (OUTPUT.journal, kept "
                             "beside the output until the file is written) after its last "
                             "finished block; the file is the same as an uninterrupted run's")
    folder.add_argument("--target-fidelity", type=float, metavar="COSINE",
                        help="the smallest file whose decoded model keeps this mean cosine of "
                             "its output (last hidden state; a causal LM's logits) on the last "
                             "quarter of the calibration texts, held out from calibration; "
                             "searches λ by whole encodes (about 6 to 9)")
    folder.add_argument("--stack", metavar="MODULE",
                        help="module name of the model's stack of blocks, if the encoder's "
                             "guess is wrong (such as model.layers)")
    encode.set_defaults(run=command_encode,
                        check=lambda arguments: _check_encode_arguments(encode, arguments))

    validate = commands.add_parser(
        "validate", help="check files against every rule of the spec",
        description="Check .nrd files against the specification and decode them fully; exits "
                    "non-zero if any file does not conform.",
        epilog="Example: nncodec-rd validate model.nrd other.nrd --json")
    validate.add_argument("files", nargs="+")
    validate.add_argument("--json", action="store_true", help="machine-readable report")
    validate.add_argument("--max-output-bytes", type=_byte_count,
                          default=DEFAULT_MAX_OUTPUT_BYTES, metavar="BYTES",
                          help="largest array decoded while checking, as for decode (default: "
                               "64G or this machine's memory; 'none' for no bound); a tensor beyond it is reported as "
                               "output_too_large")
    validate.add_argument("--max-transform-work", type=_byte_count,
                          default=DEFAULT_MAX_TRANSFORM_WORK, metavar="COUNT",
                          help="largest transform product computed while checking, in "
                               "multiply-adds, as for decode")
    _add_max_header_bytes(validate)
    validate.set_defaults(run=command_validate)

    conformance = commands.add_parser(
        "conformance", help="judge a decoder against the frozen test vectors",
        description="Conformance tools for decoders of the .nrd format (files: nncodec-rd "
                    "validate).",
        epilog="Example: nncodec-rd conformance run --decoder './mydecoder {input} {output}'")
    conformance_commands = conformance.add_subparsers(dest="conformance_command", required=True,
                                                      metavar="ACTION")
    run = conformance_commands.add_parser(
        "run", help="run a decoder over every vector and invalid file and report per spec section",
        description="Run a decoder command over the frozen valid vectors and invalid files of "
                    "conformance/ and judge its outputs against the manifests; exits non-zero "
                    "if it does not conform.",
        epilog=CONFORMANCE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("--decoder", required=True, metavar="COMMAND",
                     help="shell command with {input} and {output} placeholders")
    run.add_argument("--output-format", choices=("npz", "safetensors"), default="npz",
                     help="suffix of {output} (default npz)")
    run.add_argument("--error-pattern", metavar="REGEX",
                     help="regular expression whose first group captures the error code or name "
                          "on the decoder's stderr; invalid files must then report the right one")
    run.add_argument("--select", metavar="REGEX", help="only files whose name matches")
    run.add_argument("--timeout", type=float, default=60.0, help="seconds per run (default 60)")
    run.add_argument("--jobs", type=int, default=None, help="runs at once (default: CPU count)")
    run.add_argument("--json", action="store_true", help="machine-readable report")
    run.add_argument("--verbose", action="store_true", help="list passing files too")
    run.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    run.set_defaults(run=command_conformance_run)

    bench = commands.add_parser("bench", help="run a benchmark",
                                description="Benchmarks that print their numbers (and JSON / PNG).")
    benchmarks = bench.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    decode_bench = benchmarks.add_parser(
        "decode", help="decode speed against constriction, zstd and NNCodec",
        description="Time decoding of a realistic 50 M-weight index tensor with nncodec-rd "
                    "(1 thread and all cores) and reference coders on the same symbols.",
        epilog="Example: nncodec-rd bench decode --weights 10000000 --json decode.json")
    from .benchmarks.decode_speed import build_parser as build_bench_parser

    build_bench_parser(decode_bench)
    decode_bench.set_defaults(run=command_bench)

    warmup = commands.add_parser(
        "warmup", help="compile the decoder's kernels now, so that no decode waits for them",
        description="Compile every decoder kernel for this machine and store it in Numba's "
                    "cache (the package's __pycache__, or NUMBA_CACHE_DIR), so that the first "
                    "decode of later processes compiles nothing: for a Dockerfile step or an "
                    "installer. Without it each kernel compiles the first time a decode needs it.",
        epilog="Example (Dockerfile): RUN nncodec-rd warmup")
    warmup.set_defaults(run=command_warmup)

    demo = commands.add_parser("demo", help="compress the bundled MiniLM model end to end",
                               description="Compress a real model available offline, decode it and "
                                           "report size and fidelity.",
                               epilog="Example: nncodec-rd demo --output out/demo")
    demo.add_argument("--output", default="out/demo", help="folder for the .nrd file")
    demo.set_defaults(run=command_demo)
    return parser


def _log_to_stderr() -> None:
    """The library's messages (a kernel about to compile) as ``nncodec-rd: ...`` lines on
    stderr, unless the logger already has a handler."""
    import logging

    class StderrHandler(logging.Handler):
        def emit(self, record):  # the stderr of the moment (tests replace it)
            print(self.format(record), file=sys.stderr)

    logger = logging.getLogger("nncodec_rd")
    if not logger.handlers:
        handler = StderrHandler()
        handler.setFormatter(logging.Formatter("nncodec-rd: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def main(argv=None) -> int:
    """Entry point of the ``nncodec-rd`` console script."""
    parser = build_parser()
    arguments = parser.parse_args(argv)
    _log_to_stderr()
    check = getattr(arguments, "check", None)
    if check is not None:
        check(arguments)  # usage errors: argparse's message and exit status 2
    try:
        return arguments.run(arguments)
    except BrokenPipeError:
        # `nncodec-rd info big.nrd | head`: the reader left; not an error of ours. Point stdout
        # at /dev/null so that the interpreter's final flush does not complain either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except NrdError as error:
        print(f"nncodec-rd: error: {error}", file=sys.stderr)
    except KeyError as error:
        print(f"nncodec-rd: error: {error.args[0]}", file=sys.stderr)
    except OSError as error:
        # Name the file when the error has one; a bare OSError (a write on a full disk) has
        # none, and printing ": No space left on device" would look like a lost path.
        reason = error.strerror or str(error) or type(error).__name__
        where = f"{error.filename}: " if error.filename else ""
        print(f"nncodec-rd: error: {where}{reason}", file=sys.stderr)
    except MemoryError:
        # Inputs are checked before anything is allocated for them; what is left is a model or
        # file genuinely larger than this machine's memory: still one line, not a traceback.
        print("nncodec-rd: error: out of memory", file=sys.stderr)
    except KeyboardInterrupt:
        print("nncodec-rd: interrupted", file=sys.stderr)
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
