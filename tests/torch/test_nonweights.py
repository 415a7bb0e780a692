"""Non-weight tensors (biases, norms, BatchNorm statistics) on fine grids: within half a step of
the original, raw where their role cannot be coded within the budget or coding is not smaller."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from nncodec_rd.api import safe_open  # noqa: E402
from nncodec_rd.torch.compress_model import compress  # noqa: E402
from nncodec_rd.torch.load import load_into  # noqa: E402
from nncodec_rd.torch.nonweights import (  # noqa: E402
    MIN_ELEMENTS,
    OUTPUT_ERROR_BUDGET,
    role_of,
)


class ConvNet(torch.nn.Module):
    def __init__(self, channels=96):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, channels, 3, padding=1)
        self.norm1 = torch.nn.BatchNorm2d(channels)
        self.conv2 = torch.nn.Conv2d(channels, 2 * channels, 3, padding=1)
        self.norm2 = torch.nn.BatchNorm2d(2 * channels)
        self.head = torch.nn.Linear(2 * channels, 10)

    def forward(self, x):
        x = torch.relu(self.norm1(self.conv1(x)))
        x = torch.relu(self.norm2(self.conv2(x)))
        return self.head(x.mean((2, 3)))


def trained_looking(model):
    """Statistics and affine parameters far from their initial values, as after training."""
    generator = torch.Generator().manual_seed(1)
    for norm in (model.norm1, model.norm2):
        size = norm.num_features
        norm.running_mean.copy_(torch.rand(size, generator=generator) * 2 - 1)
        norm.running_var.copy_(torch.rand(size, generator=generator) * 3 + 0.1)
        norm.weight.data.copy_(torch.rand(size, generator=generator) + 0.5)
        norm.bias.data.copy_(torch.rand(size, generator=generator) - 0.5)
    return model.eval()


@pytest.fixture
def model_and_batches():
    torch.manual_seed(0)
    model = trained_looking(ConvNet())
    batches = [torch.randn(8, 3, 12, 12) for _ in range(3)]
    return model, batches


def test_coded_non_weights_decode_within_half_a_step_of_rms_over_2_to_the_bits(
        tmp_path, model_and_batches):
    model, batches = model_and_batches
    original = {key: value.detach().numpy().astype(np.float64)
                for key, value in model.state_dict().items()}
    result = compress(model, batches, path=tmp_path / "n.nrd", progress=False, method="rtn")
    assert result.coded_nonweights, "a BatchNorm CNN's biases and norms are worth coding"
    with safe_open(tmp_path / "n.nrd") as handle:
        for key, bits in result.coded_nonweights.items():
            assert handle.info(key).coding == "rans"
            rms = np.sqrt(np.mean(original[key] ** 2))
            step = rms * 2.0 ** -bits
            decoded = handle.get_tensor(key).astype(np.float64)
            small_variance = (role_of(key) == "running_var") & (original[key] < step / 2)
            error = np.abs(decoded - original[key])
            assert np.all(error[~small_variance] <= step / 2 * (1 + 1e-6)), key
            if role_of(key) == "running_var":  # variances stay positive
                assert np.all(decoded[original[key] > 0] > 0), key
        for key in set(original) - set(result.coded_nonweights) - {
                layer.name for layer in result.layers}:
            np.testing.assert_array_equal(handle.get_tensor(key), original[key])  # raw


def test_each_role_stays_within_the_output_budget(tmp_path, model_and_batches):
    """Quantizing all tensors of one role as the file does moves the output by at most the
    budget (measured independently here, on the batch the plan measured)."""
    model, batches = model_and_batches
    result = compress(model, batches, path=tmp_path / "n.nrd", progress=False, method="rtn")
    with torch.no_grad():
        reference = model(batches[0]).double()
        with safe_open(tmp_path / "n.nrd") as handle:
            decoded = {key: torch.from_numpy(handle.get_tensor(key))
                       for key in result.coded_nonweights}
    roles = {role_of(key) for key in decoded}
    for role in roles:
        copy = trained_looking(ConvNet())
        copy.load_state_dict(model.state_dict())
        with torch.no_grad():
            for key, value in decoded.items():
                if role_of(key) == role:
                    copy.state_dict()[key].copy_(value)
            change = float(torch.mean((copy(batches[0]).double() - reference) ** 2)
                           / torch.mean(reference ** 2))
        assert change <= OUTPUT_ERROR_BUDGET * (1 + 1e-3), role


def test_a_role_that_cannot_be_coded_within_the_budget_stays_raw(tmp_path, model_and_batches):
    """A variance of 1e-7 with a tiny eps: any grid fine for the others zeroes it, and that
    channel's output explodes; running_var stays raw, bit for bit."""
    model, batches = model_and_batches
    model.norm1.eps = 1e-12
    model.norm1.running_var[5] = 1e-7
    result = compress(model, batches, path=tmp_path / "n.nrd", progress=False, method="rtn")
    assert "norm1.running_var" not in result.coded_nonweights
    assert "norm1.bias" in result.coded_nonweights
    with safe_open(tmp_path / "n.nrd") as handle:
        assert handle.info("norm1.running_var").coding == "raw"


def test_off_stores_every_non_weight_raw_and_the_file_decodes_them_exactly(
        tmp_path, model_and_batches):
    model, batches = model_and_batches
    coded = compress(model, batches, path=tmp_path / "c.nrd", progress=False, method="rtn")
    raw = compress(model, batches, path=tmp_path / "r.nrd", progress=False, nonweights=False, method="rtn")
    assert raw.coded_nonweights == {}
    assert coded.size_bytes < raw.size_bytes
    restored = load_into(trained_looking(ConvNet()), tmp_path / "r.nrd")
    for key in ("norm2.running_var", "conv1.bias", "head.bias"):
        assert torch.equal(restored.state_dict()[key], model.state_dict()[key])


def test_small_tensors_stay_raw(tmp_path):
    """Below MIN_ELEMENTS, and where the tables outweigh the values (a 10-value head bias)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(),
                                torch.nn.Linear(64, MIN_ELEMENTS - 1)).eval()
    result = compress(model, [torch.randn(16, 32)], path=tmp_path / "s.nrd", progress=False, method="rtn")
    assert "2.bias" not in result.coded_nonweights
    with safe_open(tmp_path / "s.nrd") as handle:
        assert handle.info("2.bias").coding == "raw"


def test_a_role_the_measured_output_does_not_depend_on_stays_raw(tmp_path):
    """A vector used only for a second output: quantizing it leaves the measured (first)
    output exactly unchanged, so nothing was measured and it stays raw."""

    class TwoHeads(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Linear(8, 32)
            self.aux_scale = torch.nn.Parameter(torch.rand(32) + 0.5)

        def forward(self, x):
            hidden = self.body(x)
            return hidden, hidden * self.aux_scale

    torch.manual_seed(0)
    result = compress(TwoHeads().eval(), [torch.randn(16, 8)], path=tmp_path / "t.nrd",
                      progress=False, method="rtn")
    assert "aux_scale" not in result.coded_nonweights
    assert "body.bias" in result.coded_nonweights
