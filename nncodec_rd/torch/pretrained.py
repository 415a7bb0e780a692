"""Hugging Face model folders in: :func:`compress_pretrained` and its calibration text.

A folder with ``config.json`` and its weights (``model.safetensors``, shards with their index, or
``pytorch_model.bin``) is encoded without ever loading the whole model: the model is built from
its config with empty parameters, and the block-sequential encoder
(:mod:`nncodec_rd.torch.sequential`) reads one block's weights at a time from the checkpoint.
The file holds every tensor of the checkpoint, under the checkpoint's names and in its dtypes.

Calibration batches come from text: one text per line of a file, or the bundled English
sentences (prose of the Python documentation, :mod:`nncodec_rd.benchmarks.sentences`) when none
is given, tokenized with the folder's own tokenizer. A causal language model gets the text packed
into sequences of ``sequence_length`` tokens; other models get batches of padded sentences.
"""

from __future__ import annotations

import os

import torch

from ..encoder.methods import DEFAULT_GRID_CHOICE, model_entropy_settings
from ..encoder.obs import QuantizerSettings
from ..format.errors import EncoderError
from ..io.hf_folder import MAX_FILE_BYTES, folder_metadata
from .checkpoint import CheckpointWeights, empty_model
from .compress import CompressionResult
from .sequential import SequentialEncoder


JOURNAL_SUFFIX = ".journal"
"""The journal of an encode to ``FILE`` is the folder ``FILE.journal`` beside it."""


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
    from ..benchmarks.sentences import _pools

    return list(_pools()[0])  # the calibration pool, whole (evaluation text stays apart)


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
        ids = tokenizer("\n".join(texts), add_special_tokens=False)["input_ids"]
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
                        act_order: bool = True, sensitivity: bool = True,
                        metadata: dict | None = None, progress=True,
                        resume: bool = False) -> CompressionResult:
    """Encode the Hugging Face model folder ``model_dir`` into the .nrd file ``path``, one block
    at a time (memory: one block, not the model).

    ``calibration_text``: a text file (one text per line) or a list of strings; None uses the
    bundled English sentences (domain text of your own calibrates better). The other options
    are those of :func:`nncodec_rd.torch.compress.compress`.

    The run keeps a journal in ``path + ".journal"`` (removed when the file is written):
    ``resume=True`` continues a run that was stopped (killed, out of memory, a power cut) after
    its last finished block, and writes the same bytes an uninterrupted run would.
    """
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
    tokenizer = load_tokenizer(model_dir)
    batches = text_batches(tokenizer, texts, causal=is_causal_lm(config), sequences=sequences,
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
                                 grid_choice=grid_choice, entropy=model_entropy_settings())
    encoder = SequentialEncoder(model, batches, weights=weights, stack=stack,
                                per_channel=per_channel, sensitivity=sensitivity,
                                progress=progress)
    return encoder.encode(settings, path, metadata, lam=lam,
                          journal=os.fspath(path) + JOURNAL_SUFFIX, resume=resume)




def from_pretrained(path, *, model_class=None, threads: int | None = None, **options):
    """The transformers model archived in the .nrd file ``path`` (written by
    :func:`compress_pretrained` or ``nncodec-rd encode MODEL_DIR``), decoded.

    The archived folder is restored into a temporary folder (:func:`nncodec_rd.io.hf_folder.
    write_folder`) and loaded by transformers' own ``from_pretrained`` of ``model_class`` (by
    default the class its config names), with ``options`` passed on; so the model is exactly
    what transformers would load from the original folder with the decoded weights.
    """
    import tempfile

    from ..api import safe_open
    from ..io.hf_folder import FILE_PREFIX, write_folder
    from .checkpoint import model_class_for

    with tempfile.TemporaryDirectory(prefix="nncodec-rd-") as folder:
        target = os.path.join(folder, "model")
        with safe_open(path, threads=threads) as handle:
            if FILE_PREFIX + "config.json" not in handle.metadata():
                raise EncoderError(f"{os.fspath(path)} archives no config.json: it was not "
                                   f"encoded from a model folder (load it with load_into)")
            write_folder(handle, target)
        if model_class is None:
            from transformers import AutoConfig

            model_class = model_class_for(AutoConfig.from_pretrained(target))
        return model_class.from_pretrained(target, **options)


__all__ = ["bundled_texts", "compress_pretrained", "from_pretrained", "is_causal_lm",
           "read_text_lines", "text_batches"]
