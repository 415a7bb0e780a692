"""Hugging Face folders: folder -> .nrd -> folder through the command line, loaded by transformers
(nncodec_rd.torch.pretrained, nncodec_rd.io.hf_folder, `nncodec-rd encode/decode`)."""

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from packaging.version import Version

import nncodec_rd
from nncodec_rd.cli import main
from nncodec_rd.io.hf_folder import FILE_PREFIX, WEIGHT_MAP, shard_plan

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

# transformers 4.56 renamed from_pretrained's torch_dtype to dtype; before 5.0 the default is
# float32 rather than the checkpoint's own dtype, so ask for the checkpoint's dtype by name.
AUTO_DTYPE = ({"dtype": "auto"} if Version(transformers.__version__) >= Version("4.56")
              else {"torch_dtype": "auto"})

WORDS = ["[UNK]", "[PAD]", "the", "model", "weights", "are", "small", "a", "codec", "of",
         "text", "is", "not", "data", "file", "and"]


def model_folder(folder, shard_size=None, with_readme=True):
    """A tiny random Llama (bf16) with a word-level tokenizer of its own, as a model folder."""
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, max_position_embeddings=64,
                                      tie_word_embeddings=False)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).to(torch.bfloat16)
    options = {} if shard_size is None else {"max_shard_size": shard_size}
    model.save_pretrained(folder, **options)
    vocabulary = {word: index for index, word in enumerate(WORDS)}
    core = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocabulary, unk_token="[UNK]"))
    core.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]",
                                                     pad_token="[PAD]")
    tokenizer.save_pretrained(folder)
    if with_readme:
        (folder / "README.md").write_text("# a tiny model\n", encoding="utf-8")
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text('{"pooling": "mean"}\n')
    return model


def texts_file(path):
    path.write_text("\n".join(["the model weights are small", "a codec of text and data",
                               "the file is not small"] * 4) + "\n", encoding="utf-8")
    return path


def small_files(folder):
    return sorted(os.path.relpath(os.path.join(root, name), folder)
                  for root, _, names in os.walk(folder) for name in names
                  if not name.endswith(".safetensors") and not name.endswith(".index.json"))


def test_runs_under_the_transformers_version_asked_for():
    """`make test` runs this module again over the oldest transformers that pyproject.toml
    declares (the Makefile's test-transformers-min); it names that version in
    NNCODEC_RD_EXPECT_TRANSFORMERS, so the run cannot fall back to the venv's newer one unseen."""
    expected = os.environ.get("NNCODEC_RD_EXPECT_TRANSFORMERS")
    if expected is not None:
        assert transformers.__version__ == expected, transformers.__file__


def test_the_makefile_tests_the_oldest_transformers_that_pyproject_declares():
    root = Path(__file__).resolve().parents[2]
    declared = re.findall(r'"transformers>=([^"]+)"', (root / "pyproject.toml").read_text())
    tested = re.search(r"^TRANSFORMERS_MIN := (\S+)$", (root / "Makefile").read_text(),
                       re.MULTILINE)
    assert len(declared) == 2 and tested is not None  # extras hf and test
    assert {Version(version) for version in declared} == {Version(tested.group(1))}


@pytest.mark.parametrize("shard_size", [None, "20KB"])
def test_folder_round_trip_through_the_command_line_loads_in_transformers(tmp_path, shard_size,
                                                                          capsys):
    source = tmp_path / "source"
    original = model_folder(source, shard_size)
    assert main(["encode", str(source), "-o", str(tmp_path / "m.nrd"), "--calibration-text",
                 str(texts_file(tmp_path / "texts.txt")), "--calibration-sequences", "2"]) == 0
    assert main(["decode", str(tmp_path / "m.nrd"), "-o", str(tmp_path / "restored") + "/"]) == 0
    restored = tmp_path / "restored"
    # Every small file byte for byte: config, generation config, tokenizer, card, subfolders.
    assert small_files(restored) == small_files(source)
    for relative in small_files(source):
        assert (restored / relative).read_bytes() == (source / relative).read_bytes(), relative
    # Sharded like the original.
    assert sorted(n for n in os.listdir(restored) if n.endswith(".safetensors")) == \
        sorted(n for n in os.listdir(source) if n.endswith(".safetensors"))
    model = transformers.AutoModelForCausalLM.from_pretrained(restored, **AUTO_DTYPE)
    tokenizer = transformers.AutoTokenizer.from_pretrained(restored)
    assert model.dtype == torch.bfloat16  # the original dtype
    ids = tokenizer(["the model weights are small"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        a = original(ids).logits.float().flatten()
        b = model(ids).logits.float().flatten()
    assert torch.nn.functional.cosine_similarity(a, b, dim=0) > 0.9
    decoded = nncodec_rd.load_file(tmp_path / "m.nrd")
    for name, value in model.state_dict().items():
        assert np.array_equal(value.float().numpy(), decoded[name].astype(np.float32)), name


def test_from_pretrained_gives_the_decoded_model(tmp_path):
    source = tmp_path / "source"
    model_folder(source)
    from nncodec_rd.torch import compress_pretrained, from_pretrained

    compress_pretrained(source, tmp_path / "m.nrd", calibration_text=["the model is small"] * 3,
                        sequences=2, sequence_length=8, progress=False)
    model = from_pretrained(tmp_path / "m.nrd")
    assert type(model).__name__ == "LlamaForCausalLM"
    decoded = nncodec_rd.load_file(tmp_path / "m.nrd")
    weight = model.model.layers[0].mlp.down_proj.weight
    assert np.array_equal(weight.detach().float().numpy(),
                          decoded["model.layers.0.mlp.down_proj.weight"].astype(np.float32))


def test_the_archive_keeps_files_and_the_shard_layout_as_metadata(tmp_path):
    source = tmp_path / "source"
    model_folder(source, "20KB")
    from nncodec_rd.torch import compress_pretrained

    compress_pretrained(source, tmp_path / "m.nrd", calibration_text=["a codec of text"] * 2,
                        sequences=2, sequence_length=8, progress=False)
    with nncodec_rd.safe_open(tmp_path / "m.nrd") as handle:
        metadata = handle.metadata()
    assert metadata[FILE_PREFIX + "config.json"] == (source / "config.json").read_bytes()
    weight_map = json.loads(metadata[WEIGHT_MAP])
    index = json.loads((source / "model.safetensors.index.json").read_text())
    assert weight_map == index["weight_map"]


def test_single_file_decode_writes_the_format_transformers_asks_for(tmp_path):
    nncodec_rd.save_file({"w": np.ones((4, 4), np.float32)}, tmp_path / "w.nrd")
    assert main(["decode", str(tmp_path / "w.nrd"), "-o", str(tmp_path / "w.safetensors")]) == 0
    from safetensors import safe_open

    with safe_open(tmp_path / "w.safetensors", framework="np") as handle:
        assert handle.metadata()["format"] == "pt"


def test_shard_plan_puts_unknown_tensors_in_the_last_shard():
    metadata = {WEIGHT_MAP: json.dumps({"a": "pytorch_model-00001-of-00002.bin",
                                        "b": "pytorch_model-00002-of-00002.bin"})}
    assert shard_plan(["a", "b", "c"], metadata) == {
        "model-00001-of-00002.safetensors": ["a"], "model-00002-of-00002.safetensors": ["b", "c"]}
    assert shard_plan(["a"], {}) == {"model.safetensors": ["a"]}


def test_target_fidelity_lands_at_or_above_its_value_on_held_out_text(tmp_path, capsys):
    source = tmp_path / "source"
    original = model_folder(source)
    lines = ["the model weights are small", "a codec of text and data", "the file is not small",
             "the weights of a model are data", "a file of text is not a codec",
             "the data are small and the file is small", "text and weights and data",
             "a small model of the codec"]
    (tmp_path / "texts.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    output = tmp_path / "m.nrd"
    assert main(["encode", str(source), "-o", str(output), "--calibration-text",
                 str(tmp_path / "texts.txt"), "--calibration-sequences", "2",
                 "--target-fidelity", "0.995"]) == 0
    printed = capsys.readouterr().err
    reported = float(printed.split("output fidelity ")[1].split()[0])
    assert reported >= 0.995
    assert sorted(os.listdir(tmp_path)) == ["m.nrd", "source", "texts.txt"]  # no trial left
    # Measured here: the held-out last quarter of the lines packed as calibration text is, the
    # decoded model as transformers loads it, the cosine of every token's logits.
    from nncodec_rd.torch import from_pretrained
    from nncodec_rd.torch.pretrained import text_batches

    decoded = from_pretrained(output).float()
    tokenizer = transformers.AutoTokenizer.from_pretrained(source)
    (batch,) = text_batches(tokenizer, lines[-2:], causal=True, sequences=2)
    with torch.no_grad():
        a = original.float()(**batch).logits
        b = decoded(**batch).logits
    measured = float(torch.nn.functional.cosine_similarity(a, b, dim=-1).mean())
    assert measured == pytest.approx(reported, abs=1e-4)
    # the smallest passing trial was kept: a bigger λ (smaller file) that passed would be chosen
    trials = [line for line in printed.splitlines() if line.startswith("trial ")]
    assert len(trials) >= 3 and any("misses" in line for line in trials)


def test_target_fidelity_refuses_what_cannot_work(tmp_path):
    source = tmp_path / "source"
    model_folder(source)
    from nncodec_rd.format.errors import EncoderError
    from nncodec_rd.torch import compress_pretrained

    with pytest.raises(EncoderError, match="at least 2 calibration texts"):
        compress_pretrained(source, tmp_path / "m.nrd", calibration_text=["the model"],
                            target_fidelity=0.99, progress=False)
    with pytest.raises(SystemExit):
        main(["encode", str(source), "-o", str(tmp_path / "m.nrd"), "--lam", "1e-6",
              "--target-fidelity", "0.99"])


def test_from_pretrained_lazy_keeps_weights_compressed_and_computes_the_same(tmp_path):
    source = tmp_path / "source"
    model_folder(source)
    from nncodec_rd.torch import compress_pretrained, from_pretrained
    from nncodec_rd.torch.lazy import CompressedWeight

    compress_pretrained(source, tmp_path / "m.nrd", calibration_text=["the model is small"] * 3,
                        sequences=2, sequence_length=8, progress=False)
    eager = from_pretrained(tmp_path / "m.nrd")
    lazy = from_pretrained(tmp_path / "m.nrd", mode="lazy")
    assert type(lazy).__name__ == "LlamaForCausalLM"
    assert any(isinstance(module, CompressedWeight) for module in lazy.modules())
    assert next(lazy.model.norm.parameters()).dtype == torch.bfloat16  # the archived dtype
    ids = torch.tensor([[2, 3, 4, 5, 6]])
    with torch.no_grad():
        assert torch.equal(eager(ids).logits, lazy(ids).logits)
    with pytest.raises(ValueError, match="mode"):
        from_pretrained(tmp_path / "m.nrd", mode="fast")


def test_from_pretrained_keeps_the_checkpoint_dtype_on_every_transformers(tmp_path):
    source = tmp_path / "source"
    model_folder(source)
    from nncodec_rd.torch import compress_pretrained, from_pretrained

    compress_pretrained(source, tmp_path / "m.nrd", calibration_text=["the model is small"] * 3,
                        sequences=2, sequence_length=8, progress=False)
    assert from_pretrained(tmp_path / "m.nrd").dtype == torch.bfloat16
    assert main(["decode", str(tmp_path / "m.nrd"), "-o", str(tmp_path / "restored") + "/"]) == 0
    restored = from_pretrained(tmp_path / "restored")  # a decoded folder works too
    assert restored.dtype == torch.bfloat16 and type(restored).__name__ == "LlamaForCausalLM"
    assert from_pretrained(tmp_path / "m.nrd", **{
        "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype":
        torch.float32}).dtype == torch.float32


def test_the_entropy_flags_reach_a_folder_encode(tmp_path, capsys):
    """--precision-bits, --fixed-precision, --lanes and --context apply to a model folder as to
    any other input (they were once dropped there without a word)."""
    source = tmp_path / "source"
    model_folder(source)
    texts = tmp_path / "texts.txt"
    texts.write_text("the model is small\n" * 3, encoding="utf-8")
    assert main(["encode", str(source), "-o", str(tmp_path / "m.nrd"), "--calibration-text",
                 str(texts), "--fixed-precision", "--precision-bits", "12", "--lanes", "2",
                 "--context", "iid"]) == 0
    with nncodec_rd.safe_open(tmp_path / "m.nrd") as handle:
        coded = [name for name in handle.keys() if handle.info(name).coding == "rans"]
        assert coded
        for name in coded:
            info = handle.info(name)
            assert (info.precision_bits, info.context_model) == (12, "iid"), name
            assert handle.record(name).body.lane_count == 2, name
        settings = json.loads(handle.metadata()["encoder_settings"])
    assert (settings["precision_bits"], settings["lane_count"], settings["context_model"],
            settings["choose_precision"]) == (12, 2, "iid", False)


def test_a_method_the_block_encoder_cannot_run_is_refused_before_any_work(tmp_path):
    from nncodec_rd.format.errors import EncoderError
    from nncodec_rd.torch import compress_pretrained

    # the folder does not even exist: the method is checked first
    with pytest.raises(EncoderError, match="'transform' cannot encode a model folder"):
        compress_pretrained(tmp_path / "absent", tmp_path / "m.nrd", method="transform")
    assert not (tmp_path / "m.nrd").exists()


def test_embedding_smoothing_reaches_the_folder_encoder(tmp_path):
    """inf weighs every token's row alike: another file than the default's; 0 is refused."""
    source = tmp_path / "source"
    model_folder(source)
    from nncodec_rd.format.errors import EncoderError
    from nncodec_rd.torch import compress_pretrained

    files = {}
    for smoothing in (None, float("inf")):
        path = tmp_path / f"{smoothing}.nrd"
        compress_pretrained(source, path, calibration_text=["the model is small"] * 3,
                            sequences=2, sequence_length=8, progress=False,
                            embedding_smoothing=smoothing)
        files[smoothing] = nncodec_rd.load_file(path)["model.embed_tokens.weight"]
    assert not np.array_equal(files[None], files[float("inf")])
    with pytest.raises(EncoderError, match="embedding_smoothing must be positive"):
        compress_pretrained(source, tmp_path / "bad.nrd", calibration_text=["the model"],
                            progress=False, embedding_smoothing=0.0)
    assert not (tmp_path / "bad.nrd").exists()
