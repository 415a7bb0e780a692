"""Hugging Face model folders in: :func:`compress_pretrained` and its calibration text.

A folder with ``config.json`` and its weights (``model.safetensors``, shards with their index, or
``pytorch_model.bin``) is encoded without ever loading the whole model: the model is built from
its config with empty parameters, and the block-sequential encoder
(:mod:`nncodec_rd.torch.sequential`) reads one block's weights at a time from the checkpoint.
The file holds every tensor of the checkpoint, under the checkpoint's names and in its dtypes.

Calibration batches come from text: one text per line of a file, or the bundled English
sentences (prose of the Python documentation, :mod:`nncodec_rd.torch.sentences`) when none
is given, tokenized with the folder's own tokenizer. A causal language model gets the text packed
into sequences of ``sequence_length`` tokens; other models get batches of padded sentences.
"""

from __future__ import annotations

import math
import os
import sys

import torch

from ..encoder.executor import opened_executor
from ..encoder.methods import DEFAULT_GRID_CHOICE, method_named
from ..encoder.entropy import EntropySettings
from ..encoder.settings import QuantizerSettings
from ..format.errors import EncoderError
from ..io.hf_folder import MAX_FILE_BYTES, folder_metadata
from .checkpoint import CheckpointWeights, empty_model
from .layers import CompressionResult
from .sequential import SequentialEncoder


JOURNAL_SUFFIX = ".journal"
"""The journal of an encode to ``FILE`` is the folder ``FILE.journal`` beside it."""

HELD_OUT_FRACTION = 0.25
"""The part of the calibration texts a fidelity target is measured on (never calibrated on)."""

HELD_OUT_SEQUENCES = 8
"""At most this many held-out sequences (or texts) measure the fidelity."""

SEARCH_FACTOR = 4.0
"""λ moves by this factor until the target is bracketed; bisection (in log λ) follows."""

SEARCH_RATIO = 1.25
"""The search stops when the bracket of λ is narrower than this ratio."""

MAX_TRIALS = 12
"""A fidelity search stops after this many encodes."""


def read_text_lines(path) -> list[str]:
    """The non-empty lines of a UTF-8 text file."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as stream:
            lines = [line.strip() for line in stream]
    except (OSError, UnicodeDecodeError) as error:
        raise EncoderError(f"{path}: cannot read calibration text ({error})") from None
    lines = [line for line in lines if line]
    if not lines:
        raise EncoderError(f"{path}: the calibration text file has no non-empty line")
    return lines


def bundled_texts() -> list[str]:
    """The bundled English calibration sentences (see the module docstring)."""
    from .sentences import calibration_pool

    return calibration_pool()


def is_causal_lm(config) -> bool:
    """True when the folder's config names a causal language model (``...ForCausalLM``)."""
    return any(name.endswith("ForCausalLM") for name in getattr(config, "architectures", None)
               or [])


def load_tokenizer(folder):
    """The folder's own tokenizer (``AutoTokenizer``, offline)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(os.fspath(folder))
    except Exception as error:  # transformers raises many types when files are missing
        raise EncoderError(f"{os.fspath(folder)}: no tokenizer that transformers can load "
                           f"({str(error).splitlines()[0][:160]}); calibration text needs the "
                           f"model's tokenizer files in its folder") from None


def text_batches(tokenizer, texts: list[str], *, causal: bool, sequences: int = 32,
                 sequence_length: int = 256, batch_size: int = 8) -> list[dict]:
    """Calibration batches (dicts of keyword inputs) from ``texts``.

    Causal: the texts joined and tokenized once, cut into ``sequences`` sequences of
    ``sequence_length`` tokens (the text repeats if it is too short; the model sees each
    sequence whole). Otherwise: ``sequences`` texts, ``batch_size`` per padded batch.
    """
    if causal:
        # verbose=False: the text is cut into sequences below, so transformers' warning that
        # the whole text is longer than the model's context does not apply.
        ids = tokenizer("\n".join(texts), add_special_tokens=False, verbose=False)["input_ids"]
        if not ids:
            raise EncoderError("the calibration text tokenizes to nothing")
        needed = sequences * sequence_length
        repeats = -(-needed // len(ids))
        stream = torch.tensor((ids * repeats)[:needed], dtype=torch.long)
        stream = stream.reshape(sequences, sequence_length)
        return [{"input_ids": stream[start:start + batch_size]}
                for start in range(0, sequences, batch_size)]
    chosen = [texts[i % len(texts)] for i in range(sequences)]
    batches = []
    for start in range(0, len(chosen), batch_size):
        encoded = tokenizer(chosen[start:start + batch_size], padding=True, truncation=True,
                            max_length=sequence_length, return_tensors="pt")
        batches.append(dict(encoded))
    return batches


def compress_pretrained(model_dir, path, *, method: str = "cerwu", lam: float | None = None,
                        calibration_text=None, sequences: int = 32, sequence_length: int = 256,
                        batch_size: int = 8, stack: str | None = None,
                        per_channel: bool = False, grid_choice: str = DEFAULT_GRID_CHOICE,
                        act_order: bool = True, trellis: bool = False, sensitivity: bool = True,
                        embedding_smoothing: float | None = None,
                        metadata: dict | None = None, progress=True,
                        resume: bool = False, target_bpw: float | None = None,
                        target_fidelity: float | None = None,
                        held_out_fraction: float = HELD_OUT_FRACTION,
                        entropy: EntropySettings | None = None,
                        executor=None) -> CompressionResult:
    """Encode the Hugging Face model folder ``model_dir`` into the .nrd file ``path``, one block
    at a time (memory: one block, not the model).

    ``calibration_text``: a text file (one text per line) or a list of strings; None uses the
    bundled English sentences (domain text of your own calibrates better). The other options
    are those of :func:`nncodec_rd.torch.compress_model.compress` (``embedding_smoothing``:
    None for its default).

    The run keeps a journal in ``path + ".journal"`` (removed when the file is written):
    ``resume=True`` continues a run that was stopped (killed, out of memory, a power cut) after
    its last finished block, and writes the same bytes an uninterrupted run would.

    ``target_bpw`` (instead of ``lam``): file bits per coded weight, met in the one pass (λ
    chosen block by block from predicted rates, :mod:`nncodec_rd.encoder.rate_control`).

    ``target_fidelity`` (instead of ``lam``): the smallest file whose decoded model keeps this
    mean cosine of its output (:func:`output_fidelity`) on the last ``held_out_fraction`` of the
    texts, which the encoder does not calibrate on. λ is searched by whole encodes (about 6 to 9
    of them); the result's ``fidelity`` is the value measured on the file returned.

    ``entropy``: the entropy coder's settings (:class:`~nncodec_rd.encoder.entropy.EntropySettings`
    by default).

    ``executor``: where each block's layers are quantized, as in
    :func:`~nncodec_rd.torch.compress_model.compress` (a Ray address such as ``"local"`` or
    ``"auto"``, or a :class:`~nncodec_rd.encoder.executor.RayExecutor`); the same file.
    """
    if not method_named(method).block_sequential:  # a folder is encoded block by block
        raise EncoderError(f"method {method!r} cannot encode a model folder (block by block); "
                           f"use it on a model in memory with compress()")
    model_dir = os.fspath(model_dir)
    weights = CheckpointWeights(model_dir)
    model, config = empty_model(model_dir)
    if isinstance(calibration_text, (str, os.PathLike)):
        texts = read_text_lines(calibration_text)
    elif calibration_text is None:
        texts = bundled_texts()
    else:
        texts = [str(text) for text in calibration_text if str(text).strip()]
        if not texts:
            raise EncoderError("calibration_text holds no non-empty text")
    held_out = None
    if sum(option is not None for option in (lam, target_bpw, target_fidelity)) > 1:
        raise EncoderError("give at most one of lam, target_bpw and target_fidelity")
    if target_fidelity is not None:
        if not (math.isfinite(target_fidelity) and 0 < target_fidelity < 1):
            raise EncoderError(f"target_fidelity is a mean cosine in (0, 1), not "
                               f"{target_fidelity}")
        if resume:
            raise EncoderError("resume does not apply to a target_fidelity search (each trial "
                               "is a whole encode); give the λ it found to resume")
        texts, held_out = split_held_out(texts, held_out_fraction)
    tokenizer = load_tokenizer(model_dir)
    causal = is_causal_lm(config)
    batches = text_batches(tokenizer, texts, causal=causal, sequences=sequences,
                           sequence_length=sequence_length, batch_size=batch_size)
    # The folder's small files (config, tokenizer, model card) and shard layout travel in the
    # file: one .nrd is the whole archive (nncodec-rd decode FILE -o FOLDER/ restores it).
    archived, too_large = folder_metadata(model_dir)
    if too_large:
        raise EncoderError(f"{model_dir}: {', '.join(too_large[:3])} exceed the "
                           f"{MAX_FILE_BYTES >> 20} MiB a file of the folder may have in the "
                           f"archive; move them out of the folder to encode it")
    metadata = {**archived, **(metadata or {})}
    settings = QuantizerSettings(method=method, lam=1.0 if lam is None else lam,
                                 per_channel=per_channel, act_order=act_order,
                                 grid_choice=grid_choice, trellis=trellis,
                                 entropy=EntropySettings() if entropy is None else entropy)

    def encoder_of(model):
        return SequentialEncoder(model, batches, weights=weights, stack=stack,
                                 per_channel=per_channel, sensitivity=sensitivity,
                                 progress=progress, executor=executor,
                                 **({} if embedding_smoothing is None
                                    else {"embedding_smoothing": embedding_smoothing}))

    with opened_executor(executor) as executor:
        if target_fidelity is None:
            return encoder_of(model).encode(settings, path, metadata, lam=lam,
                                            journal=os.fspath(path) + JOURNAL_SUFFIX,
                                            resume=resume, target_bpw=target_bpw)
        held_batches = text_batches(tokenizer, held_out, causal=causal,
                                    sequences=max(1, min(HELD_OUT_SEQUENCES, sequences)),
                                    sequence_length=sequence_length, batch_size=batch_size)
        return _encode_to_fidelity(model_dir, path, encoder_of, model, settings, metadata,
                                   held_batches, target_fidelity, progress)


def split_held_out(texts: list[str], fraction: float = HELD_OUT_FRACTION
                   ) -> tuple[list[str], list[str]]:
    """(calibration texts, held-out texts): the last ``fraction`` of the texts, at least one,
    held out.

    >>> split_held_out(["a", "b", "c", "d", "e", "f", "g", "h"])
    (['a', 'b', 'c', 'd', 'e', 'f'], ['g', 'h'])
    """
    if not 0 < fraction < 1:
        raise EncoderError(f"held_out_fraction must be in (0, 1), not {fraction}")
    if len(texts) < 2:
        raise EncoderError("a fidelity target needs at least 2 calibration texts (lines): one "
                           "part to calibrate on, one held out to measure the fidelity on")
    held = min(len(texts) - 1, max(1, round(len(texts) * fraction)))
    return texts[:-held], texts[-held:]


def output_fidelity(model, reference: list, batches: list) -> float:
    """Mean cosine similarity between ``model``'s outputs on ``batches`` and ``reference`` (the
    original model's first output tensors, whole or at the token positions as
    :func:`~nncodec_rd.torch.hessians.output_at_tokens` gives them): per token of the first
    output tensor (the last hidden state, or a causal language model's logits), padding
    excluded.

    >>> model = torch.nn.Linear(3, 3)
    >>> batch = torch.ones(2, 3)
    >>> with torch.no_grad():
    ...     reference = [model(batch)]
    >>> round(output_fidelity(model, reference, [batch]), 6)
    1.0
    """
    from .hessians import at_token_positions, first_tensor, run_batch, token_positions

    total = count = 0.0
    with torch.no_grad():
        for batch, expected in zip(batches, reference):
            output = first_tensor(run_batch(model, batch)).float()
            if output.dim() > 2:
                positions = token_positions(batch)
                if expected.shape == output.shape:  # a whole output: cut like ours
                    expected = at_token_positions(expected, positions)
                output = at_token_positions(output, positions)
            cosine = torch.nn.functional.cosine_similarity(
                output.reshape(-1, output.shape[-1]), expected.reshape(-1, output.shape[-1]),
                dim=-1)
            total += float(cosine.double().sum())
            count += cosine.numel()
    return total / max(count, 1)


def _float_model(path_or_folder, decoded: bool):
    """The model of a folder (or of an .nrd archive, decoded), float32, eval mode; quietly
    (transformers' loading bars would interleave with the search's own lines)."""
    from transformers import AutoConfig
    from transformers.utils import logging as transformers_logging

    from .checkpoint import model_class_for

    bars = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        if decoded:
            model = from_pretrained(path_or_folder)
        else:
            model = model_class_for(AutoConfig.from_pretrained(path_or_folder)).from_pretrained(
                path_or_folder)
    finally:
        if bars:
            transformers_logging.enable_progress_bar()
    return model.float().eval()


def _encode_to_fidelity(model_dir, path, encoder_of, model, settings, metadata, held_batches,
                        target: float, progress) -> CompressionResult:
    """Search λ for the smallest file at ``target`` fidelity; trials are written beside
    ``path`` and only the chosen one is kept (as ``path``)."""
    from ..io.atomic import removed_on_termination
    from .checkpoint import empty_model
    from .hessians import output_at_tokens

    path = os.fspath(path)
    say = progress if callable(progress) else (
        (lambda line: print(line, file=sys.stderr, flush=True)) if progress else (lambda _: None))
    original = _float_model(model_dir, decoded=False)
    with torch.no_grad():
        reference = [output_at_tokens(original, batch).float() for batch in held_batches]
    del original
    folder, name = os.path.split(os.path.abspath(path))
    trials: list[dict] = []
    best = None  # (size, trial path, outcome)
    made: list[str] = []

    def trial(lam: float):
        nonlocal best
        trial_path = os.path.join(folder, f".{name}.trial-{len(trials) + 1}")
        made.append(trial_path)
        fresh = model if not trials else empty_model(model_dir)[0]
        outcome = encoder_of(fresh).encode(settings, trial_path, metadata, lam=lam)
        decoded = _float_model(trial_path, decoded=True)
        fidelity = output_fidelity(decoded, reference, held_batches)
        del decoded
        passes = fidelity >= target
        trials.append({"lam": lam, "size_bytes": outcome.size_bytes, "fidelity": fidelity,
                       "bits_per_weight": outcome.bits_per_weight, "passes": passes})
        say(f"trial {len(trials)}: lambda {lam:.4g}, {outcome.bits_per_weight:.3f} bits per "
            f"coded weight, fidelity {fidelity:.4f} ({'meets' if passes else 'misses'} "
            f"{target})")
        if passes and (best is None or outcome.size_bytes < best[0]):
            if best is not None:
                os.unlink(best[1])
            outcome.fidelity = fidelity
            best = (outcome.size_bytes, trial_path, outcome)
        else:
            os.unlink(trial_path)
        return passes

    with removed_on_termination(lambda: [p for p in made if os.path.exists(p)]):
        try:
            lam = encoder_of(model).initial_lam()
            low = high = None  # low passes, high fails
            if trial(lam):
                low = lam
                while high is None and len(trials) < MAX_TRIALS:
                    lam *= SEARCH_FACTOR
                    if trial(lam):
                        low = lam
                    else:
                        high = lam
            else:
                high = lam
                while low is None and len(trials) < MAX_TRIALS:
                    lam /= SEARCH_FACTOR
                    if trial(lam):
                        low = lam
                    else:
                        high = lam
            while (low is not None and high is not None and high / low > SEARCH_RATIO
                   and len(trials) < MAX_TRIALS):
                lam = math.sqrt(low * high)
                if trial(lam):
                    low = lam
                else:
                    high = lam
            if best is None:
                raise EncoderError(f"no λ tried keeps fidelity {target} (best "
                                   f"{max(t['fidelity'] for t in trials):.4f} at λ "
                                   f"{min(t['lam'] for t in trials):.3g}); the target may be out "
                                   f"of reach of this method")
            os.replace(best[1], path)
        finally:
            for leftover in made:
                if os.path.exists(leftover):
                    os.unlink(leftover)
    outcome = best[2]
    outcome.path = path
    outcome.lam_trials = trials
    return outcome




def from_pretrained(path, *, mode: str = "eager", model_class=None, threads: int | None = None,
                    cache_bytes: int = 0, **options):
    """The transformers model archived in the .nrd file ``path`` (written by
    :func:`compress_pretrained` or ``nncodec-rd encode MODEL_DIR``), decoded; or, when ``path``
    is a folder that ``nncodec-rd decode FILE -o FOLDER/`` restored, the model in it.

    ``mode="eager"``: the archived folder is restored into a temporary folder
    (:func:`nncodec_rd.io.hf_folder.write_folder`) and loaded by transformers' own
    ``from_pretrained`` of ``model_class`` (by default the class its config names), with
    ``options`` passed on; so the model is exactly what transformers would load from the original
    folder with the decoded weights.

    ``mode="lazy"``: the model is built from the archived config (in the checkpoint's dtype) and
    its coded weights stay compressed in memory, decoded when a layer runs
    (:func:`nncodec_rd.torch.load_compressed`, ``cache_bytes`` as there); ``options`` go to
    the model's construction (``from_config``).
    """
    import tempfile

    from ..api import safe_open
    from ..io.hf_folder import FILE_PREFIX, write_folder
    from .checkpoint import model_class_for

    if mode not in ("eager", "lazy"):
        raise ValueError(f"mode must be 'eager' or 'lazy', not {mode!r}")
    if os.path.isdir(path):  # a folder restored already (nncodec-rd decode FILE -o FOLDER/)
        if mode == "lazy":
            raise EncoderError(f"{os.fspath(path)} is a decoded folder: nothing is compressed "
                               f"in it; give the .nrd file for mode='lazy'")
        from transformers import AutoConfig

        if model_class is None:
            model_class = model_class_for(AutoConfig.from_pretrained(path))
        if "dtype" not in options and "torch_dtype" not in options:
            options[_dtype_option()] = "auto"
        return model_class.from_pretrained(path, **options)
    with tempfile.TemporaryDirectory(prefix="nncodec-rd-") as folder:
        target = os.path.join(folder, "model")
        with safe_open(path, threads=threads) as handle:
            archived = handle.metadata()
            if FILE_PREFIX + "config.json" not in archived:
                raise EncoderError(f"{os.fspath(path)} archives no config.json: it was not "
                                   f"encoded from a model folder (load it with load_into)")
            if mode == "eager":
                write_folder(handle, target)
            else:
                os.makedirs(target)
                with open(os.path.join(target, "config.json"), "wb") as config_file:
                    config_file.write(archived[FILE_PREFIX + "config.json"])
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(target)
        if model_class is None:
            model_class = model_class_for(config)
        if mode == "eager":
            if "dtype" not in options and "torch_dtype" not in options:
                options[_dtype_option()] = "auto"  # the checkpoint's dtype, as transformers 5
            return model_class.from_pretrained(target, **options)
    return _lazy_model(path, model_class, config, threads, cache_bytes, options)


def _dtype_option() -> str:
    """The name of ``from_pretrained``'s dtype option: ``dtype`` from transformers 4.56 on,
    ``torch_dtype`` before."""
    import transformers

    version = tuple(int(part) for part in transformers.__version__.split(".")[:2]
                    if part.isdigit())
    return "dtype" if version >= (4, 56) else "torch_dtype"


def _lazy_model(path, model_class, config, threads, cache_bytes, options):
    """``model_class`` built from ``config`` with the file's weights, coded ones kept
    compressed (:func:`nncodec_rd.torch.load_compressed`)."""
    from ..api import safe_open
    from .lazy import load_compressed

    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    previous = torch.get_default_dtype()
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        torch.set_default_dtype(dtype)  # parameters made in the archived dtype, not float32
    try:
        model = model_class._from_config(config, **options) \
            if hasattr(model_class, "_from_config") else model_class(config, **options)
    finally:
        torch.set_default_dtype(previous)
    with safe_open(path) as handle:
        names = set(handle.keys())
    missing = [key for key, _ in model.named_parameters() if key not in names]
    if missing:
        raise EncoderError(f"{os.fspath(path)}: the archive lacks {len(missing)} parameters of "
                           f"{type(model).__name__} ({', '.join(missing[:3])}); give the "
                           f"model_class the checkpoint was saved from")
    # strict=False: the archive holds the checkpoint's tensors, which may include buffers the
    # model now computes (position ids) and lack those it does not persist.
    load_compressed(model, path, mode="lazy", cache_bytes=cache_bytes, threads=threads,
                    strict=False)
    return model.eval()


__all__ = ["bundled_texts", "compress_pretrained", "from_pretrained", "is_causal_lm",
           "output_fidelity", "read_text_lines", "split_held_out", "text_batches"]
