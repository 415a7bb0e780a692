"""``nncodec-rd encode``: its options and their usage errors, the data-free encoder of a weights
file and the encoder of a Hugging Face model folder (the encoder of a model: encode_model)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from .. import __version__
from ..format.errors import NrdError
from .common import (entropy_metadata_of, entropy_settings_of, json_number, parse_metadata,
                     quantizer_settings_of)
from .encode_model import calibration_kind, encode_model, executor_of


def command_encode(arguments) -> int:
    if arguments.input is not None and os.path.isdir(arguments.input):
        return _encode_folder(arguments)
    if arguments.calibration is None and arguments.model is None:
        return _encode_data_free(arguments)
    return encode_model(arguments)


def _encode_folder(arguments) -> int:
    """A Hugging Face model folder, block by block (nncodec_rd.torch.pretrained)."""
    with executor_of(arguments) as executor:
        return _encode_folder_with(arguments, executor)


def _encode_folder_with(arguments, executor) -> int:
    try:
        from ..torch.pretrained import compress_pretrained
    except ImportError as error:
        raise NrdError(f"encoding a model folder needs torch and transformers: pip install "
                       f"'nncodec-rd[hf]' ({error})") from None
    start = time.perf_counter()
    metadata = {"encoder_settings": json.dumps({
        "method": arguments.method or "cerwu", "lam": arguments.lam, "sequential": True,
        "target_fidelity": arguments.target_fidelity, "target_bpw": arguments.target_bpw,
        "per_row": arguments.per_row, "grid_choice": arguments.grid_choice,
        "act_order": not arguments.no_act_order, "sensitivity": not arguments.no_sensitivity,
        "trellis": bool(arguments.trellis),
        "embedding_smoothing": json_number(arguments.embedding_smoothing),
        **entropy_metadata_of(arguments)}),
        "source": os.path.basename(os.path.normpath(arguments.input))}
    metadata.update(parse_metadata(arguments.metadata))
    if arguments.calibration_text is None:
        print("calibrating on the bundled English sentences (text of your model's domain, "
              "--calibration-text FILE, calibrates better)", file=sys.stderr)
    outcome = compress_pretrained(
        arguments.input, arguments.output, method=arguments.method or "cerwu", lam=arguments.lam,
        calibration_text=arguments.calibration_text, stack=arguments.stack,
        per_channel=arguments.per_row, sensitivity=not arguments.no_sensitivity, metadata=metadata,
        embedding_smoothing=arguments.embedding_smoothing,
        sequences=arguments.calibration_sequences, resume=arguments.resume,
        target_fidelity=arguments.target_fidelity, target_bpw=arguments.target_bpw,
        entropy=entropy_settings_of(arguments), executor=executor,
        **quantizer_settings_of(arguments))
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
    if outcome.raw_weights:  # the summary's line: weight matrices no coded layer type holds
        print(outcome.summary().splitlines()[-1], file=sys.stderr)
    return 0


def _encode_data_free(arguments) -> int:
    from ..api import save_file
    from ..encoder.fidelity import SqnrReport
    from ..io.tensorio import read_tensors

    start = time.perf_counter()
    tensors, source_metadata = read_tensors(arguments.input)
    metadata = {k: str(v) for k, v in source_metadata.items()}
    metadata.update({"encoder": f"nncodec-rd {__version__}", "encoder_settings": json.dumps({
        "method": "rtn", "step": arguments.step, "relative_step": arguments.relative_step,
        "bins": arguments.bins, "per_row": arguments.per_row, **entropy_metadata_of(arguments)}),
        "source": os.path.basename(arguments.input)})
    metadata.update(parse_metadata(arguments.metadata))
    settings = entropy_settings_of(arguments)
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


DATA_FREE_OPTIONS = (("step", "--step"), ("relative_step", "--relative-step"), ("bins", "--bins"),
                     ("quantize", "--quantize"))
MODEL_OPTIONS = (("lam", "--lam"), ("target_bpw", "--target-bpw"), ("grid_scale", "--grid-scale"),
                 ("grid_choice", "--grid-choice"), ("trellis", "--trellis"),
                 ("no_act_order", "--no-act-order"), ("no_sensitivity", "--no-sensitivity"),
                 ("embedding_smoothing", "--embedding-smoothing"),
                 ("batch_size", "--batch-size"))
"""Options that need a model (argument name, flag); the quantizer's settings among them are
those of ``command_line_flags`` (a test keeps both lists alike)."""


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
        if needs_calibration(arguments.method):
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
    kind = calibration_kind(arguments.calibration) if arguments.calibration is not None else None
    if kind == "entry point" and arguments.model is not None:
        parser.error("--model is for a file of batches; --calibration MODULE:FUNCTION returns the "
                     "model itself")
    if kind == "file" and arguments.model is None:
        parser.error("a file of calibration batches needs --model MODULE:FUNCTION returning the "
                     "model")
    if kind != "file" and arguments.batch_size is not None:
        parser.error("--batch-size applies only to a file of calibration batches")
    if arguments.calibration is None and needs_calibration(arguments.method):
        from ..encoder.methods import data_free_methods

        parser.error(f"--method {arguments.method} needs calibration data: give --calibration "
                     f"(only {', '.join(data_free_methods())} is data-free)")


def needs_calibration(method: str | None) -> bool:
    """Whether ``--method`` (None: the default, which follows the data given) needs calibration
    data; the registry says (:class:`~nncodec_rd.encoder.methods.QuantizationMethod`)."""
    from ..encoder.methods import METHODS

    return method is not None and METHODS[method].needs_calibration


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
  --no-act-order, --no-sensitivity, --embedding-smoothing tune the quantizer. Progress and a
  per-layer table go to stderr.

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


def add_command(commands) -> None:
    """Add the ``encode`` command to the subparsers ``commands``."""
    from ..encoder.methods import METHODS
    from ..encoder.settings import command_line_flags

    encode = commands.add_parser(
        "encode", help="compress a .safetensors, .npz or PyTorch state dict, or a PyTorch model",
        description="Without a model (INPUT alone): quantize the floating-point tensors of a "
                    "weights file by rounding to a uniform grid (data-free rtn) and entropy-code "
                    "them; other tensors are stored raw. With a model (--calibration or "
                    "--model): quantize the layers of a torch.nn.Module with one global "
                    "rate-distortion trade-off lambda, using calibration inputs (see --method), "
                    "and store the rest of its state dict raw.",
        epilog=ENCODE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    encode.add_argument("input", nargs="?",
                        help="weights file: .safetensors, .npz or weights-only PyTorch state dict "
                             "(.pt, .pth, .bin); optional with a model, whose weights it replaces; "
                             "or a Hugging Face model folder (config.json and its weights), "
                             "encoded block by block")
    encode.add_argument("-o", "--output", required=True, help="output .nrd file")
    encode.add_argument("--method", choices=METHODS,
                        help="quantizer (default: cerwu with calibration data, else rtn): "
                             + "; ".join(f"{name}: {method.summary}"
                                         for name, method in METHODS.items()))
    encode.add_argument("--per-row", "--per-channel", action="store_true",
                        help="one step per row (output channel; for cerwu rounded to classes a "
                             "factor sqrt(2) apart)")
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
    for _, flag, kind in command_line_flags():  # declared with the settings (encoder/settings.py)
        if flag.negated:
            with_model.add_argument(flag.flag, action="store_true", help=flag.help)
        elif kind is bool:  # given: True; not given: None, so the declared default holds
            with_model.add_argument(flag.flag, action="store_true", default=None, help=flag.help)
        else:
            with_model.add_argument(flag.flag, type=kind, choices=flag.choices, help=flag.help)
    with_model.add_argument("--embedding-smoothing", type=float, default=None, metavar="COUNT",
                            help="counts added to every token's before embedding rows are "
                                 "weighted by frequency (default 1; inf: every row alike, "
                                 "for text of another domain than the calibration's)")
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
