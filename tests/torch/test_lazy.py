"""load_compressed(mode="lazy"): weights stay compressed, outputs equal the eager model's bit for bit."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from nncodec_rd.format.errors import ChecksumMismatchError, EncoderError  # noqa: E402
from nncodec_rd.encoder.entropy import EntropySettings  # noqa: E402
from nncodec_rd.torch import CompressedWeight, lazy_weights, load_compressed  # noqa: E402
from nncodec_rd.torch.compress_model import compress  # noqa: E402
from nncodec_rd.torch.examples import tiny_mlp  # noqa: E402


class SmallConvNet(torch.nn.Module):
    """A regular, a depthwise and a grouped convolution, then two linear layers."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.depthwise = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.grouped = torch.nn.Conv2d(8, 8, 1, groups=2)
        self.hidden = torch.nn.Linear(8 * 16, 64)
        self.out = torch.nn.Linear(64, 4)

    def forward(self, x):
        x = torch.relu(self.grouped(torch.relu(self.depthwise(torch.relu(self.conv(x))))))
        return self.out(torch.relu(self.hidden(x.flatten(1))))


class TiedLanguageModel(torch.nn.Module):
    """An embedding whose weight the output layer shares (tied weights), many chunks."""

    def __init__(self, vocabulary=300, width=16):
        super().__init__()
        self.embed = torch.nn.Embedding(vocabulary, width)
        self.mix = torch.nn.Linear(width, width)
        self.head = torch.nn.Linear(width, vocabulary, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, tokens):
        return self.head(torch.tanh(self.mix(self.embed(tokens))))


def seeded(factory, seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory()


def write(tmp_path, model, batches, name="m.nrd", **options):
    path = tmp_path / name
    compress(model, batches, method="rtn", path=path, progress=False, **options)
    return path


def dense_bytes(model) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


@pytest.fixture
def mlp_file(tmp_path):
    model, batches = tiny_mlp()
    return write(tmp_path, model, batches), batches


@pytest.mark.parametrize("cache_bytes", [0, 4096, 1 << 20])
def test_tiny_mlp_lazy_equals_eager(mlp_file, cache_bytes):
    path, batches = mlp_file
    eager = load_compressed(tiny_mlp()[0], path, mode="eager").eval()
    lazy = load_compressed(tiny_mlp()[0], path, mode="lazy", cache_bytes=cache_bytes).eval()
    with torch.no_grad():
        for _ in range(2):  # the second pass reads the cache when there is one
            for batch in batches:
                assert torch.equal(lazy(batch), eager(batch))
    stats = lazy_weights(lazy).stats()
    assert stats["cached_bytes"] <= cache_bytes
    assert stats["scratch_busy"] == 0  # a forward never holds two decoded weights
    if cache_bytes >= 8192 + 4096:  # both weights fit: decoded once each (while loading)
        assert stats["decodes"] == 0 and stats["cache_hits"] == 2 * 2 * len(batches)
    elif cache_bytes == 0:
        assert stats["decodes"] == 2 * 2 * len(batches) and stats["cache_hits"] == 0


def test_dense_weights_are_gone(mlp_file):
    path, _ = mlp_file
    model = tiny_mlp()[0]
    original = weakref.ref(model[0].weight)
    before = dense_bytes(model)
    load_compressed(model, path, mode="lazy")
    gc.collect()
    assert original() is None  # nothing holds the dense parameter any more
    assert [name for name, _ in model.named_parameters()] == ["0.bias", "2.bias"]
    assert set(model.state_dict()) == {"0.bias", "2.bias"}
    compressed = lazy_weights(model)
    assert [weight.name for weight in compressed.weights] == ["0.weight", "2.weight"]
    held = dense_bytes(model) + compressed.compressed_bytes
    assert held < before / 3
    assert compressed.largest_decoded_bytes == 64 * 32 * 4
    assert isinstance(model[0], torch.nn.Linear) and isinstance(model[0].weight_compressed,
                                                                 CompressedWeight)


def test_weights_read_outside_forward_are_right_and_stay_right(mlp_file):
    path, batches = mlp_file
    eager = load_compressed(tiny_mlp()[0], path, mode="eager").eval()
    lazy = load_compressed(tiny_mlp()[0], path, mode="lazy").eval()
    first = lazy[0].weight  # held: the next decode must not overwrite it
    with torch.no_grad():
        lazy(batches[0])
    second = lazy[2].weight
    assert torch.equal(first, eager[0].weight)
    assert torch.equal(second, eager[2].weight)
    assert lazy_weights(lazy).stats()["scratch_busy"] >= 2  # decoded elsewhere while held
    assert first.data_ptr() % 64 == 0 and first.is_contiguous()


def test_no_grad_and_inference_mode_work_and_training_is_refused(mlp_file):
    path, batches = mlp_file
    eager = load_compressed(tiny_mlp()[0], path, mode="eager").eval()
    lazy = load_compressed(tiny_mlp()[0], path, mode="lazy")
    with torch.no_grad():  # training mode, but no gradients: fine
        assert torch.equal(lazy(batches[0]), eager(batches[0]))
    with torch.inference_mode():
        assert torch.equal(lazy(batches[0]), eager(batches[0]))
    with pytest.raises(RuntimeError, match="cannot be trained.*mode='eager'"):
        lazy(batches[0])
    lazy.eval()  # gradients with respect to the inputs still work in eval mode
    inputs = batches[0].clone().requires_grad_()
    reference = batches[0].clone().requires_grad_()
    lazy(inputs).sum().backward()
    eager(reference).sum().backward()
    assert torch.equal(inputs.grad, reference.grad)
    with pytest.raises(AttributeError, match="read-only"):
        lazy[0].weight = torch.zeros(64, 32)


def test_small_conv_net(tmp_path):
    model = seeded(SmallConvNet)
    batches = [torch.randn(16, 1, 4, 4, generator=torch.Generator().manual_seed(i))
               for i in range(3)]
    path = write(tmp_path, model, batches)
    eager = load_compressed(seeded(SmallConvNet, 1), path, mode="eager").eval()
    for cache_bytes in (0, 1 << 20):
        lazy = load_compressed(seeded(SmallConvNet, 1), path, cache_bytes=cache_bytes).eval()
        assert [name for name, _ in lazy.named_parameters() if name.endswith("weight")] == []
        with torch.no_grad():
            for batch in batches:
                assert torch.equal(lazy(batch), eager(batch))


def test_tied_embedding_decodes_only_the_rows_it_reads(tmp_path):
    model = seeded(TiedLanguageModel)
    tokens = [torch.randint(0, 300, (4, 7), generator=torch.Generator().manual_seed(i))
              for i in range(3)]
    # Small chunks (about 10 rows of 16): a lookup touches only some of them.
    path = write(tmp_path, model, tokens, entropy=EntropySettings(symbols_per_chunk=160))
    eager = load_compressed(seeded(TiedLanguageModel, 1), path, mode="eager").eval()
    lazy = load_compressed(seeded(TiedLanguageModel, 1), path, mode="lazy").eval()
    compressed = lazy_weights(lazy)
    assert len(compressed.weights) == 2  # embed/head share one CompressedWeight
    assert lazy.embed.weight_compressed is lazy.head.weight_compressed
    assert lazy.embed.weight_compressed.chunk_count > 10
    few = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        for batch in [few, *tokens]:
            assert torch.equal(lazy(batch), eager(batch))
            assert torch.equal(lazy.embed(batch), eager.embed(batch))
    stats = compressed.stats()
    assert stats["partial_decodes"] >= 2
    assert stats["decoded_bytes"] < stats["decodes"] * compressed.largest_decoded_bytes
    assert torch.equal(lazy.head.weight, eager.head.weight)  # a plain read decodes every row


def test_transformers_conv1d_transposed_layout(tmp_path):
    pytorch_utils = pytest.importorskip("transformers.pytorch_utils")

    def build():
        return torch.nn.Sequential(pytorch_utils.Conv1D(24, 12), torch.nn.GELU(),
                                   pytorch_utils.Conv1D(6, 24))

    model = seeded(build)
    batches = [torch.randn(5, 12, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    path = write(tmp_path, model, batches)
    eager = load_compressed(seeded(build, 1), path, mode="eager").eval()
    lazy = load_compressed(seeded(build, 1), path, mode="lazy").eval()
    assert lazy[0].weight.shape == (12, 24)  # Conv1D keeps (inputs, outputs)
    with torch.no_grad():
        for batch in batches:
            assert torch.equal(lazy(batch), eager(batch))


def test_bfloat16_model(tmp_path):
    model, batches = tiny_mlp()
    model = model.to(torch.bfloat16)
    batches = [batch.to(torch.bfloat16) for batch in batches]
    path = write(tmp_path, model, batches)
    eager = load_compressed(tiny_mlp()[0].to(torch.bfloat16), path, mode="eager").eval()
    lazy = load_compressed(tiny_mlp()[0].to(torch.bfloat16), path, mode="lazy").eval()
    assert lazy[0].weight.dtype == torch.bfloat16
    with torch.no_grad():
        assert torch.equal(lazy(batches[0]), eager(batches[0]))


def test_errors(mlp_file, tmp_path):
    path, _ = mlp_file
    with pytest.raises(ValueError, match="mode"):
        load_compressed(tiny_mlp()[0], path, mode="sometimes")
    with pytest.raises(ValueError, match="cache_bytes"):
        load_compressed(tiny_mlp()[0], path, cache_bytes=-1)
    with pytest.raises(EncoderError, match="does not match"):
        load_compressed(torch.nn.Linear(3, 3), path)
    with pytest.raises(ValueError, match="no lazily decoded weights"):
        lazy_weights(tiny_mlp()[0])
    from nncodec_rd.api import safe_open

    with safe_open(path) as handle:
        chunk = handle.header.tensors[handle.keys().index("2.weight")].body.chunks[0]
    data = bytearray(path.read_bytes())
    data[chunk.offset + chunk.size // 2] ^= 0xFF  # inside a coded payload
    broken = tmp_path / "broken.nrd"
    broken.write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatchError, match="corrupt"):
        load_compressed(tiny_mlp()[0], broken)


def test_a_failed_lookup_leaves_no_partial_weight_behind(tmp_path):
    model = seeded(TiedLanguageModel)
    tokens = [torch.randint(0, 300, (4, 7), generator=torch.Generator().manual_seed(0))]
    path = write(tmp_path, model, tokens, entropy=EntropySettings(symbols_per_chunk=160))
    eager = load_compressed(seeded(TiedLanguageModel, 1), path, mode="eager").eval()
    lazy = load_compressed(seeded(TiedLanguageModel, 1), path, mode="lazy").eval()
    with torch.no_grad(), pytest.raises(IndexError):
        lazy.embed(torch.tensor([1, 5000]))  # out of range: the lookup raises
    assert torch.equal(lazy.embed.weight, eager.embed.weight)


def test_eager_mode_is_load_into(mlp_file):
    path, batches = mlp_file
    from nncodec_rd.torch.load import load_into

    eager = load_compressed(tiny_mlp()[0], path, mode="eager")
    reference = load_into(tiny_mlp()[0], path)
    for key, value in reference.state_dict().items():
        assert torch.equal(eager.state_dict()[key], value)
    assert np.isfinite(eager(batches[0]).detach().numpy()).all()


def test_a_transform_coded_file_loads_with_its_transformed_layers_decoded_now(tmp_path):
    """Files of method "transform" hold matrices that are no parameters; the layers they
    multiply are decoded at load (lazy weights hold untransformed tensors only)."""
    model, batches = tiny_mlp()
    compress(model, batches, method="transform", lam=1e-4, path=tmp_path / "t.nrd",
             progress=False)
    eager, _ = tiny_mlp()
    load_compressed(eager, tmp_path / "t.nrd", mode="eager")
    lazy, _ = tiny_mlp()
    load_compressed(lazy, tmp_path / "t.nrd", mode="lazy")
    with torch.no_grad():
        assert torch.equal(eager(batches[0]), lazy(batches[0]))


def test_lazy_decoding_gives_back_numbas_thread_count(tmp_path):
    import numba

    path = tmp_path / "m.nrd"
    model, batches = tiny_mlp()
    compress(model, batches, method="rtn", path=path, progress=False)
    before = numba.get_num_threads()
    numba.set_num_threads(2 if numba.config.NUMBA_NUM_THREADS >= 2 else 1)
    try:
        expected = numba.get_num_threads()
        lazy = load_compressed(tiny_mlp()[0], path, threads=1)
        assert numba.get_num_threads() == expected  # after the verifying decode
        with torch.no_grad():
            lazy(batches[0])
        assert numba.get_num_threads() == expected
    finally:
        numba.set_num_threads(before)


def test_lstm_weights_are_decoded_now_and_the_lazy_model_equals_the_eager_one(tmp_path):
    """An LSTM runs on its _flat_weights list, which no lazy attribute reaches: its coded
    weights are decoded at load time (a model of other weights would run silently)."""

    class Tagger(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = torch.nn.LSTM(8, 16, batch_first=True, bidirectional=True)
            self.head = torch.nn.Linear(32, 5)

        def forward(self, x):
            return self.head(self.lstm(x)[0])

    model = seeded(Tagger)
    batches = [torch.randn(4, 7, 8, generator=torch.Generator().manual_seed(i))
               for i in range(2)]
    path = write(tmp_path, model, batches)
    eager = load_compressed(seeded(Tagger, 1), path, mode="eager").eval()
    lazy = load_compressed(seeded(Tagger, 1), path).eval()
    assert [name for name, _ in lazy.named_parameters() if name.endswith("weight")] == []
    assert "lstm.weight_ih_l0" in dict(lazy.named_parameters())
    with torch.no_grad():
        for batch in batches:
            assert torch.equal(lazy(batch), eager(batch))
