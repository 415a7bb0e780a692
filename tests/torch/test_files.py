"""safetensors-style save_file/load_file/save_model/load_model for PyTorch."""

import pytest
import torch

from nncodec_rd.torch import files
from nncodec_rd.torch.examples import tiny_mlp


def test_state_dict_round_trip_keeps_dtypes_shapes_and_raw_values(tmp_path):
    tensors = {"w": torch.randn(64, 32), "half": torch.randn(40, 40).half(),
               "brain": torch.randn(33, 33).bfloat16(), "steps": torch.arange(5),
               "flag": torch.tensor(True), "scalar": torch.tensor(1.5)}
    files.save_file(tensors, tmp_path / "s.nrd", metadata={"framework": "pytorch"})
    loaded = files.load_file(tmp_path / "s.nrd")
    assert list(loaded) == list(tensors)
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype and loaded[name].shape == tensor.shape, name
    for name in ("steps", "flag", "scalar"):  # raw: exact
        assert torch.equal(loaded[name], tensors[name])
    assert (loaded["w"] - tensors["w"]).abs().max() < 0.2  # quantized to RMS/16 steps


def test_sparse_tensors_are_refused_with_a_fix():
    with pytest.raises(TypeError, match="to_dense"):
        files.save_file({"s": torch.eye(3).to_sparse()}, "unused.nrd")


def test_model_round_trip(tmp_path):
    model, batches = tiny_mlp()
    result = files.save_model(model, tmp_path / "m.nrd", batches, target_bpw=6.0)
    restored, _ = tiny_mlp()
    with torch.no_grad():
        for parameter in restored.parameters():
            parameter.zero_()
    files.load_model(restored, tmp_path / "m.nrd")
    reference = files.load_file(tmp_path / "m.nrd")
    for name, value in restored.state_dict().items():
        assert torch.equal(value, reference[name].to(value.dtype)), name
    assert result.method == "cerwu" and result.size_bytes == (tmp_path / "m.nrd").stat().st_size


def test_zero_dimensional_buffers_load_back(tmp_path):
    """BatchNorm's num_batches_tracked is 0-d: it must come back 0-d (regression)."""
    model = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.BatchNorm1d(8))
    model.train()(torch.randn(4, 16))
    files.save_model(model, tmp_path / "bn.nrd")
    restored = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.BatchNorm1d(8))
    files.load_model(restored, tmp_path / "bn.nrd")
    assert restored[1].num_batches_tracked.shape == () and restored[1].num_batches_tracked == 1
