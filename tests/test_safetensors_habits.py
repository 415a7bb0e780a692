"""What safetensors users type works: safe_open(framework=, device=), get_slice, load_file(device=),
and torch tensors sent to the NumPy save_file get a message pointing to the torch one."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import nncodec_rd


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    path = tmp_path_factory.mktemp("habits") / "w.nrd"
    generator = np.random.default_rng(0)
    tensors = {"w": generator.standard_normal((37, 6)).astype(np.float32),
               "v": np.arange(5, dtype=np.int64)}
    nncodec_rd.save_file(tensors, path, metadata={"note": "x"}, quantize="all")
    return path, nncodec_rd.load_file(path)


@settings(max_examples=60, deadline=None)
@given(start=st.integers(-45, 45) | st.none(), stop=st.integers(-45, 45) | st.none(),
       step=st.integers(1, 5) | st.none(), column=st.integers(-6, 5) | st.none())
def test_get_slice_equals_numpy_slicing_of_the_full_tensor(stored, start, stop, step, column):
    path, full = stored
    index = (slice(start, stop, step),) + (() if column is None else (column,))
    with nncodec_rd.safe_open(path, framework="np", device="cpu") as handle:
        view = handle.get_slice("w")
        assert view.get_shape() == [37, 6] and view.get_dtype() == "float32"
        assert np.array_equal(view[index], full["w"][index])
        assert np.array_equal(view[3], full["w"][3])
        assert np.array_equal(handle.get_slice("v")[1:4], full["v"][1:4])


def test_get_slice_decodes_only_the_rows_it_needs(stored, monkeypatch):
    path, _ = stored
    asked = []
    with nncodec_rd.safe_open(path) as handle:
        original = handle.get_rows
        monkeypatch.setattr(handle, "get_rows",
                            lambda name, a, b: asked.append((a, b)) or original(name, a, b))
        handle.get_slice("w")[10:12]
    assert asked == [(10, 12)]


def test_the_usual_calls_of_safetensors_users(stored):
    path, full = stored
    assert set(nncodec_rd.load_file(path, device="cpu")) == {"w", "v"}
    with nncodec_rd.safe_open(path, framework="numpy") as handle:
        assert handle.keys() == ["w", "v"] and handle.metadata()["note"] == "x"
    with pytest.raises(ValueError, match="framework"):
        nncodec_rd.safe_open(path, framework="flax")
    with pytest.raises(ValueError, match="cpu"):
        nncodec_rd.load_file(path, device="cuda")


def test_framework_pt_gives_torch_tensors(stored):
    torch = pytest.importorskip("torch")
    path, full = stored
    with nncodec_rd.safe_open(path, framework="pt", device="cpu") as handle:
        tensor = handle.get_tensor("w")
        assert isinstance(tensor, torch.Tensor)
        assert np.array_equal(tensor.numpy(), full["w"])
        assert np.array_equal(handle.get_slice("w")[2:4].numpy(), full["w"][2:4])


def test_torch_tensors_in_the_numpy_save_file_point_to_the_torch_one(tmp_path):
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="nncodec_rd.torch.save_file"):
        nncodec_rd.save_file({"w": torch.ones(3, dtype=torch.bfloat16)}, tmp_path / "x.nrd")
    from nncodec_rd.torch import save_file

    save_file({"w": torch.ones(64, 64, dtype=torch.bfloat16)}, tmp_path / "x.nrd")
    assert nncodec_rd.load_file(tmp_path / "x.nrd")["w"].dtype.name == "bfloat16"
