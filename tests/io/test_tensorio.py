"""safetensors / npz / PyTorch readers and writers, checked against the reference libraries."""

import ml_dtypes
import numpy as np
import pytest

from nncodec_rd.io.tensorio import InputFileError, read_tensors, write_safetensors, write_tensors


def test_safetensors_interoperates_with_the_reference_library(tmp_path, rng):
    from safetensors.numpy import load_file, save_file

    tensors = {"a": rng.standard_normal((3, 4)).astype(np.float32), "b": np.arange(5, dtype=np.int64),
               "c": np.array(True), "d": np.zeros((0, 2), np.float16)}
    ours = tmp_path / "ours.safetensors"
    write_safetensors(ours, tensors, {"k": "v"})
    loaded = load_file(str(ours))
    for name, array in tensors.items():
        assert np.array_equal(loaded[name], array) and loaded[name].dtype == array.dtype
    theirs = tmp_path / "theirs.safetensors"
    save_file(tensors, str(theirs))
    read, _ = read_tensors(theirs)
    for name, array in tensors.items():
        assert np.array_equal(read[name], array)


def test_bfloat16_survives_safetensors_and_npz(tmp_path):
    values = np.array([1.0, -2.5, 3.140625], dtype=ml_dtypes.bfloat16)
    write_tensors(tmp_path / "b.safetensors", {"x": values})
    read, _ = read_tensors(tmp_path / "b.safetensors")
    assert read["x"].dtype == values.dtype and read["x"].tobytes() == values.tobytes()
    write_tensors(tmp_path / "b.npz", {"x": values})
    read, _ = read_tensors(tmp_path / "b.npz")
    assert read["x"].tobytes() == values.tobytes()


def test_pytorch_state_dict_is_loaded_weights_only(tmp_path):
    torch = pytest.importorskip("torch")
    state = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3),
             "h": torch.ones(2, dtype=torch.bfloat16)}
    torch.save(state, tmp_path / "s.pt")
    read, metadata = read_tensors(tmp_path / "s.pt")
    assert read["w"].tolist() == [[0, 1, 2], [3, 4, 5]] and read["h"].dtype.name == "bfloat16"
    assert metadata["framework"] == "pytorch"

    import fractions

    torch.save({"x": fractions.Fraction(1, 3)}, tmp_path / "evil.pt")  # refused by weights_only
    with pytest.raises(Exception, match="weights-only"):
        read_tensors(tmp_path / "evil.pt")


def test_unreadable_inputs_raise_the_library_error(tmp_path):
    (tmp_path / "bad.safetensors").write_bytes(b"\xff" * 20)
    with pytest.raises(InputFileError):
        read_tensors(tmp_path / "bad.safetensors")
    with pytest.raises(InputFileError):
        read_tensors(tmp_path / "x.unknown")
