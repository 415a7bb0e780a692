"""compress(method="transform") -> file -> both decoders -> load_into, bit for bit."""

from __future__ import annotations

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from nncodec_rd.conformance.spec_literal_decoder import decode_file  # noqa: E402
from nncodec_rd.api import load_file, safe_open  # noqa: E402
from nncodec_rd.encoder.transform import TransformLayerResult  # noqa: E402
from nncodec_rd.torch.compress_model import compress  # noqa: E402
from nncodec_rd.torch.layers import TRANSFORM_PREFIX  # noqa: E402
from nncodec_rd.torch.load import load_into  # noqa: E402
from nncodec_rd.torch.model_encoder import ModelEncoder  # noqa: E402


class SharedInputNet(torch.nn.Module):
    """Two Linear layers fed the same input (they share one matrix), a conv (no transform)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.left = torch.nn.Linear(64, 24)
        self.right = torch.nn.Linear(64, 24)
        self.out = torch.nn.Linear(24, 3)

    def forward(self, x):
        x = torch.relu(self.conv(x)).flatten(1)
        return self.out(torch.relu(self.left(x)) * torch.tanh(self.right(x)))


@pytest.fixture(scope="module")
def model_and_batches():
    torch.manual_seed(0)
    model = SharedInputNet()
    # Correlated inputs, so that the Hessian's eigenbasis matters.
    mixing = torch.randn(16, 16)
    batches = [(torch.randn(64, 16) @ mixing).reshape(64, 1, 4, 4) for _ in range(3)]
    return model, batches


@pytest.mark.parametrize("method", ["transform", "transform+cerwu"])
def test_transform_file_decodes_identically_in_both_decoders(tmp_path, model_and_batches,
                                                             method):
    model, batches = model_and_batches
    path = tmp_path / "model.nrd"
    result = compress(model, batches, method=method, path=path, progress=False)
    assert result.size_bytes == os.path.getsize(path)
    production = load_file(path)
    with open(path, "rb") as handle:
        literal = decode_file(handle.read())
    assert list(production) == list(literal)
    for name, value in production.items():
        _, shape, element_bytes = literal[name]
        assert tuple(shape) == value.shape, name
        assert np.ascontiguousarray(value).tobytes() == element_bytes, name
    matrices = sorted(name for name in production if name.startswith(TRANSFORM_PREFIX))
    if method == "transform":
        # left and right see the same input: one matrix for both, stored (and counted) once.
        assert matrices == [TRANSFORM_PREFIX + "left.weight", TRANSFORM_PREFIX + "out.weight"]
        assert result.transform_layers == 3
    with safe_open(path) as handle:  # the reported matrix bytes are the file's matrix payloads
        assert result.transform_bytes == sum(handle.info(name).payload_bytes for name in matrices)
    assert result.transform_bytes > 0 or not matrices
    restored = load_into(SharedInputNet(), path)  # the matrices are skipped, strict passes
    assert set(restored.state_dict()) == set(model.state_dict())


def test_load_into_restores_the_encoders_reconstruction(tmp_path, model_and_batches):
    model, batches = model_and_batches
    encoder = ModelEncoder(model, batches, progress=False)
    from nncodec_rd.encoder.settings import QuantizerSettings

    settings = QuantizerSettings(method="transform", lam=encoder.default_lam() * 4)
    path = tmp_path / "model.nrd"
    outcome = encoder.encode(settings, str(path))
    assert isinstance(outcome.results["left.weight"][0], TransformLayerResult)
    expected = encoder.reconstruction(outcome.results)
    restored = load_into(SharedInputNet(), path)
    state = restored.state_dict()
    for key, value in expected.items():
        np.testing.assert_array_equal(state[key].numpy().view(np.uint32),
                                      np.asarray(value, np.float32).view(np.uint32), err_msg=key)
