"""compress -> .nrd file -> decode -> load_into on a small model."""

from __future__ import annotations

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from nncodec_rd.api import safe_open  # noqa: E402
from nncodec_rd.format.errors import EncoderError  # noqa: E402
from nncodec_rd.torch.compress_model import compress  # noqa: E402
from nncodec_rd.torch.load import load_into  # noqa: E402


class SmallNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.depthwise = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.hidden = torch.nn.Linear(8 * 16, 64)
        self.out = torch.nn.Linear(64, 4)

    def forward(self, x):
        x = torch.relu(self.depthwise(torch.relu(self.conv(x))))
        return self.out(torch.relu(self.hidden(x.flatten(1))))


@pytest.fixture
def model_and_batches():
    torch.manual_seed(0)
    return SmallNet(), [torch.randn(32, 1, 4, 4) for _ in range(3)]


def relative_output_error(model, other, batch):
    with torch.no_grad():
        reference = model(batch)
        return float((other(batch) - reference).pow(2).mean() / reference.pow(2).mean())


@pytest.mark.parametrize("method", ["rtn", "optq", "optq-rd", "cerwu"])
def test_compress_file_decode_load_into(tmp_path, model_and_batches, method):
    model, batches = model_and_batches
    path = tmp_path / f"{method}.nrd"
    result = compress(model, batches, method=method, path=path, progress=False)
    assert result.size_bytes == os.path.getsize(path)
    assert len(result.layers) == 4
    restored = load_into(SmallNet(), path)
    for key, value in model.state_dict().items():
        assert restored.state_dict()[key].shape == value.shape
    bias, restored_bias = (model.hidden.bias.detach().double().numpy(),
                           restored.hidden.bias.detach().double().numpy())
    bits = result.coded_nonweights.get("hidden.bias")
    if bits is None:
        np.testing.assert_array_equal(restored_bias, bias)  # raw, lossless
    else:  # within half a step RMS · 2^-bits (tests/torch/test_nonweights.py)
        assert np.abs(restored_bias - bias).max() <= np.sqrt(np.mean(bias ** 2)) * 2.0 ** -bits / 2 * 1.000001
    assert relative_output_error(model, restored, batches[0]) < 0.01
    with safe_open(path) as handle:
        assert handle.metadata()["method"] == method
        assert handle.info("hidden.weight").coding == "rans"


def test_decoded_weights_equal_the_encoders_reconstruction(tmp_path, model_and_batches):
    from nncodec_rd.torch.model_encoder import ModelEncoder
    from nncodec_rd.encoder.settings import QuantizerSettings

    model, batches = model_and_batches
    encoder = ModelEncoder(model, batches, progress=False)
    outcome = encoder.encode(QuantizerSettings(method="cerwu", lam=encoder.default_lam()),
                             str(tmp_path / "a.nrd"))
    expected = encoder.reconstruction(outcome.results)
    restored = load_into(SmallNet(), tmp_path / "a.nrd")
    for key, value in expected.items():
        np.testing.assert_array_equal(restored.state_dict()[key].numpy(), value)


def test_target_bpw_is_met_from_below(tmp_path, model_and_batches):
    model, batches = model_and_batches
    result = compress(model, batches, method="cerwu", target_bpw=6.0, progress=False)
    assert result.bits_per_weight <= 6.0
    assert result.bits_per_weight > 6.0 * 0.9
    assert len(result.lam_trials) >= 2


def test_target_metric_keeps_the_smallest_passing_file(model_and_batches):
    model, batches = model_and_batches
    before = {k: v.clone() for k, v in model.state_dict().items()}
    reference = model(batches[0]).detach()

    @torch.no_grad()
    def good_enough(candidate):
        return float((candidate(batches[0]) - reference).pow(2).mean()
                     / reference.pow(2).mean()) < 1e-3

    result = compress(model, batches, method="optq", target_metric=good_enough, progress=False)
    passing = [t for t in result.lam_trials if not t["holds"]]
    failing = [t for t in result.lam_trials if t["holds"]]
    assert passing and failing
    assert result.lam == max(t["lam"] for t in passing)
    for key, value in model.state_dict().items():  # the model is left as it was
        assert torch.equal(value, before[key])


def test_errors_users_can_cause(model_and_batches, tmp_path):
    model, batches = model_and_batches
    with pytest.raises(EncoderError, match="needs calibration"):
        compress(model, None, method="cerwu", progress=False)
    with pytest.raises(EncoderError, match="at most one"):
        compress(model, batches, lam=1e-3, target_bpw=3, progress=False)
    with pytest.raises(EncoderError, match="out of reach"):
        compress(model, batches, method="rtn", target_bpw=0.01, progress=False)
    path = tmp_path / "x.nrd"
    compress(model, batches, method="rtn", path=path, progress=False)
    with pytest.raises(EncoderError, match="does not match"):
        load_into(torch.nn.Linear(3, 3), path)


def test_per_layer_grids_reach_the_file_and_decode_to_the_reconstruction(tmp_path,
                                                                         model_and_batches):
    from nncodec_rd.encoder.settings import QuantizerSettings
    from nncodec_rd.torch.model_encoder import ModelEncoder

    model, batches = model_and_batches
    # Without sensitivities (a random draw) the grids depend on the seeded model alone:
    # searched in every layer, two layers of it take bounded grids (7 and 5 bins).
    encoder = ModelEncoder(model, batches, sensitivity=False, progress=False)
    outcome = encoder.encode(QuantizerSettings(method="cerwu", lam=encoder.default_lam(),
                                               grid_choice="rd",
                                               grid_search_below_bits=float("inf")),
                             str(tmp_path / "g.nrd"))
    grids = {layer.name: layer.grid for layer in outcome.layers}
    assert all(grid != "λ rule" for grid in grids.values())  # every layer searched
    bounded = {name: result for name, (result, _) in outcome.results.items()
               if result.bins is not None}
    assert bounded, grids
    restored = load_into(SmallNet(), tmp_path / "g.nrd")
    for key, value in encoder.reconstruction(outcome.results).items():
        np.testing.assert_array_equal(restored.state_dict()[key].numpy(), value)
    with safe_open(tmp_path / "g.nrd") as handle:
        bodies = {tensor.name: tensor.body for tensor in handle.header.tensors}
        for name, result in bounded.items():
            grid = bodies[name].grid
            assert grid.has_zero_point == 1 and list(grid.zero_points) == list(result.zero_points)
            stored = handle.get_indices(name)
            assert stored.min() >= 0 and stored.max() < result.bins


def test_the_package_names_the_functions_not_the_modules():
    # `from nncodec_rd.torch import compress` once gave a module (the submodule had that name).
    import nncodec_rd.torch as package
    import nncodec_rd.torch.files  # noqa: F401  (imports the encoder's module, as users' code does)
    from nncodec_rd.torch import compress as exported, load_into as exported_load

    assert exported is compress and callable(exported)
    assert exported_load is load_into
    assert package.compress is compress


def test_the_encoders_keywords_default_to_the_settings_declared_once():
    """compress() and compress_pretrained() take the quantizer's settings as keywords; their
    defaults are QuantizerSettings' own, so that a default is changed in one place."""
    import dataclasses
    import inspect

    from nncodec_rd.encoder.settings import QuantizerSettings
    from nncodec_rd.torch.pretrained import compress_pretrained

    declared = {field.name: field.default for field in dataclasses.fields(QuantizerSettings)
                if field.init and field.default is not dataclasses.MISSING
                and field.name != "lam"}  # lam=None: a λ chosen from the weights
    for function in (compress, compress_pretrained):
        shared = {name: parameter.default
                  for name, parameter in inspect.signature(function).parameters.items()
                  if name in declared}
        assert {"method", "per_channel", "act_order", "grid_choice"} <= set(shared), function
        assert shared == {name: declared[name] for name in shared}, function.__name__


def test_weights_of_layers_no_method_codes_are_named_not_silently_stored_raw(tmp_path):
    """A custom module's weight matrix has no coded layer type: it is stored raw (the file
    decodes it exactly) and the result and its summary name it; the Linear is coded."""

    class Mixer(torch.nn.Module):  # a weight used as x @ W: no layer type the encoder knows
        def __init__(self):
            super().__init__()
            self.mixing = torch.nn.Parameter(torch.randn(16, 64))
            self.scale = torch.nn.Parameter(torch.ones(64))

        def forward(self, x):
            return (x @ self.mixing) * self.scale

    class Tagger(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mixer = Mixer()
            self.head = torch.nn.Linear(64, 40)

        def forward(self, x):
            return self.head(self.mixer(x))

    torch.manual_seed(0)
    model = Tagger()
    batches = [torch.randn(4, 6, 16) for _ in range(2)]
    result = compress(model, batches, method="optq", path=tmp_path / "t.nrd", progress=False)
    assert result.raw_weights == {"mixer.mixing": 16 * 64}
    assert [layer.name for layer in result.layers] == ["head.weight"]
    summary = result.summary()
    assert "stored raw, not coded: 1 weight tensors, 1,024 weights" in summary
    assert "mixer.mixing" in summary and "mixer.scale" not in summary
    with safe_open(tmp_path / "t.nrd") as handle:
        assert handle.info("mixer.mixing").coding == "raw"
        np.testing.assert_array_equal(handle.get_tensor("mixer.mixing"),
                                      model.mixer.mixing.detach().numpy())


@pytest.mark.parametrize("module_class", ["LSTM", "GRU"])
def test_recurrent_weights_are_coded_as_layers_and_decode_close(tmp_path, module_class):
    """Every weight matrix of a two-layer bidirectional LSTM (GRU) is coded with a Hessian,
    nothing is left raw, and the decoded model's output stays close to the original's."""

    class Tagger(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = getattr(torch.nn, module_class)(16, 32, num_layers=2, batch_first=True,
                                                       bidirectional=True)
            self.head = torch.nn.Linear(64, 40)

        def forward(self, x):
            return self.head(self.rnn(x)[0])

    torch.manual_seed(0)
    model = Tagger().eval()
    batches = [torch.randn(8, 12, 16) for _ in range(3)]
    result = compress(model, batches, method="cerwu", path=tmp_path / "r.nrd", progress=False)
    assert result.raw_weights == {}
    coded = {layer.name for layer in result.layers}
    expected = {f"rnn.weight_{which}_l{layer}{suffix}" for which in ("ih", "hh")
                for layer in (0, 1) for suffix in ("", "_reverse")}
    assert expected | {"head.weight"} == coded
    with safe_open(tmp_path / "r.nrd") as handle:
        assert handle.info("rnn.weight_hh_l1_reverse").coding != "raw"
    with torch.no_grad():
        reference = model(batches[0])
        load_into(model, tmp_path / "r.nrd")
        decoded = model(batches[0])
    cosine = torch.nn.functional.cosine_similarity(reference.flatten(), decoded.flatten(), dim=0)
    assert float(cosine) > 0.99
