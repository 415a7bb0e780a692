"""compress(trellis=True): a model's file with trellis layers decodes, in both decoders, to
exactly the weights the encoder measured; a 1.0 reading refuses it."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from nncodec_rd.conformance import spec_literal_decoder as literal  # noqa: E402
from nncodec_rd.encoder.entropy import EntropySettings  # noqa: E402
from nncodec_rd.encoder.settings import QuantizerSettings  # noqa: E402
from nncodec_rd.format.container import read_container  # noqa: E402
from nncodec_rd.format.errors import ErrorCode, UnsupportedFeatureError  # noqa: E402
from nncodec_rd.torch.load import load_into  # noqa: E402
from nncodec_rd.torch.model_encoder import ModelEncoder  # noqa: E402


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(50, 24)
        self.conv = torch.nn.Conv1d(24, 40, 3, padding=1)
        self.depthwise = torch.nn.Conv1d(40, 40, 3, padding=1, groups=40)
        self.lstm = torch.nn.LSTM(40, 16, batch_first=True)
        self.out = torch.nn.Linear(16, 300)

    def forward(self, tokens):
        x = self.embed(tokens).transpose(1, 2)
        x = torch.relu(self.depthwise(torch.relu(self.conv(x)))).transpose(1, 2)
        return self.out(self.lstm(x)[0])


def test_trellis_layers_decode_to_the_encoders_reconstruction_in_both_decoders(tmp_path):
    torch.manual_seed(0)
    model = Net()
    batches = [torch.randint(0, 50, (8, 12)) for _ in range(3)]
    encoder = ModelEncoder(model, batches, progress=False)
    # Small chunks, so that the trellis restarts inside layers; a fine λ, where it wins.
    settings = QuantizerSettings(method="cerwu", lam=encoder.default_lam() / 16, trellis=True,
                                 entropy=EntropySettings(symbols_per_chunk=96))
    path = tmp_path / "t.nrd"
    outcome = encoder.encode(settings, str(path))
    trellis_layers = {layer.name for layer in outcome.layers if layer.grid == "trellis"}
    # won D/λ + R there: a Linear layer and an LSTM's matrices
    assert "out.weight" in trellis_layers
    assert any(name.startswith("lstm.weight_") for name in trellis_layers)
    assert "depthwise.weight" not in trellis_layers  # one Hessian per group: no trellis
    expected = encoder.reconstruction(outcome.results)
    restored = load_into(Net(), path)
    for key, value in expected.items():
        np.testing.assert_array_equal(restored.state_dict()[key].numpy(), value)
    data = path.read_bytes()
    for name, (_, shape, raw) in literal.decode_file(data).items():
        assert raw == restored.state_dict()[name].numpy().tobytes(), name
    with pytest.raises(UnsupportedFeatureError) as error:
        read_container(data, known_features=0)
    assert error.value.code == ErrorCode.UNSUPPORTED_FEATURE
    with pytest.raises(literal.SpecError) as spec_error:
        literal.decode_file(data, spec_version="1.0")
    assert spec_error.value.name == "unsupported_feature"


def test_lazy_loading_decodes_trellis_layers_whole(tmp_path):
    """A trellis layer's values need its chunks' states (spec §6.6): lazy loading decodes it at
    load, and the model equals the eagerly loaded one."""
    from nncodec_rd.torch import load_compressed
    from nncodec_rd.torch.compress_model import compress

    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(32, 200), torch.nn.ReLU(),
                                torch.nn.Linear(200, 200))
    batches = [torch.randn(16, 32) for _ in range(2)]
    path = tmp_path / "m.nrd"
    result = compress(model, batches, lam=1e-7, trellis=True, path=path, progress=False)
    assert any(layer.grid == "trellis" for layer in result.layers)
    eager = load_into(torch.nn.Sequential(torch.nn.Linear(32, 200), torch.nn.ReLU(),
                                          torch.nn.Linear(200, 200)), path)
    lazy = load_compressed(torch.nn.Sequential(torch.nn.Linear(32, 200), torch.nn.ReLU(),
                                               torch.nn.Linear(200, 200)), path, mode="lazy")
    with torch.no_grad():
        assert torch.equal(lazy(batches[0]), eager(batches[0]))
