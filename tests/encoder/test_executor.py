"""Layers quantized on a real local Ray cluster (nncodec_rd.encoder.executor): the file is byte for
byte the one encoded in this process, a worker killed in the middle of a task changes nothing, and
a layer that cannot be quantized stops the encode with its own error and no output.

The cluster is started by the module's fixture (``ray.init(num_cpus=2)``) and torn down after.
"""

import os
import signal
import threading
import time
from dataclasses import replace

import numpy as np
import pytest

from nncodec_rd.encoder.executor import LocalExecutor, executor_from, opened_executor
from nncodec_rd.encoder.methods import quantize_layer
from nncodec_rd.encoder.problem import LayerProblem
from nncodec_rd.encoder.settings import QuantizerSettings
from nncodec_rd.format.errors import EncoderError


def test_executor_from_none_is_this_process():
    with opened_executor(None) as executor:
        assert isinstance(executor, LocalExecutor)

    class Given(LocalExecutor):
        closed = False

        def close(self):
            self.closed = True

    given = Given()
    with opened_executor(given) as executor:
        assert executor is given
    assert not given.closed  # the caller's executor stays open
    with pytest.raises(EncoderError, match="executor must be"):
        executor_from(42)


def test_local_executor_is_lazy_and_in_order():
    problems = [LayerProblem(np.full((2, 4), float(k))) for k in range(3)]
    settings = QuantizerSettings(method="rtn", step=0.5)
    results = LocalExecutor().map((problem, settings) for problem in problems)
    assert [int(result.indices[0, 0]) for result, _ in results] == [0, 2, 4]


ray = pytest.importorskip("ray")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from nncodec_rd.encoder.executor import RayExecutor  # noqa: E402
from nncodec_rd.torch.compress_model import compress  # noqa: E402
from tests.torch.test_sequential import encode_folder, llama_folder, token_batches  # noqa: E402


def test_an_unreachable_cluster_is_one_typed_line(monkeypatch, tmp_path, capsys):
    from nncodec_rd.cli import main

    def refuse(**options):
        raise ConnectionError("'Could not find any running Ray instance.'")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", refuse)
    with pytest.raises(EncoderError, match="could not start or join Ray at 'auto': Could not"):
        RayExecutor("auto")
    # The command line joins Ray before anything slow, prints one line and writes nothing.
    (tmp_path / "model").mkdir()
    assert main(["encode", str(tmp_path / "model"), "-o", str(tmp_path / "out.nrd"),
                 "--ray", "auto"]) == 1
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "could not start or join Ray" in error
    assert sorted(os.listdir(tmp_path)) == ["model"]


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster of 2 CPUs for this module's tests."""
    executor = RayExecutor("local", num_cpus=2)
    assert executor._owns  # started here, so torn down here
    yield executor
    executor.close()
    assert not ray.is_initialized()


def test_cluster_file_equals_local_file(tmp_path, cluster):
    model = llama_folder(tmp_path / "m", blocks=2, hidden=32)
    encode_folder(tmp_path / "m", tmp_path / "local.nrd", token_batches())
    encode_folder(tmp_path / "m", tmp_path / "ray.nrd", token_batches(), executor=cluster)
    assert (tmp_path / "ray.nrd").read_bytes() == (tmp_path / "local.nrd").read_bytes()
    # The whole-model encoder (every layer of the model a task at once).
    local = compress(model, token_batches(), path=tmp_path / "w_local.nrd", progress=False)
    on_ray = compress(model, token_batches(), path=tmp_path / "w_ray.nrd", progress=False,
                      executor=cluster)
    assert on_ray.lam == local.lam and on_ray.size_bytes == local.size_bytes
    assert (tmp_path / "w_ray.nrd").read_bytes() == (tmp_path / "w_local.nrd").read_bytes()


def _task_processes() -> list[int]:
    """Worker processes running a layer task now (Ray titles them ``ray::quantize_timed``)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as stream:
                    if stream.read().startswith(b"ray::quantize_timed"):
                        found.append(int(entry))
            except OSError:
                continue
    return found


def test_worker_killed_in_a_task_still_gives_the_same_file(tmp_path, cluster):
    llama_folder(tmp_path / "m", blocks=2, hidden=128)
    encode_folder(tmp_path / "m", tmp_path / "local.nrd", token_batches())
    killed = []
    done = threading.Event()

    def kill_one():
        while not done.is_set() and not killed:
            for pid in _task_processes():
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                break
            time.sleep(0.002)

    killer = threading.Thread(target=kill_one)
    killer.start()
    try:
        encode_folder(tmp_path / "m", tmp_path / "ray.nrd", token_batches(), executor=cluster)
    finally:
        done.set()
        killer.join()
    assert killed, "no layer task was caught running"
    assert (tmp_path / "ray.nrd").read_bytes() == (tmp_path / "local.nrd").read_bytes()


def _quantize_refusing_wide_layers(problem, settings):
    """A method's entry point that refuses layers of more than 40 columns (importable by the
    workers: they unpickle it by its qualified name)."""
    if problem.weights.shape[1] > 40:
        raise EncoderError(f"refuses a layer of {problem.weights.shape[1]} columns")
    return quantize_layer(problem, replace(settings, method="optq"))


@pytest.fixture
def refusing_method():
    from nncodec_rd.encoder.methods import QuantizationMethod, register_method, unregister_method

    register_method(QuantizationMethod("refuses-wide", "fails on wide layers (a test's)",
                                       _quantize_refusing_wide_layers))
    yield "refuses-wide"
    unregister_method("refuses-wide")


def test_a_failing_layer_stops_the_run_with_its_error_and_no_output(tmp_path, cluster,
                                                                    refusing_method):
    model = llama_folder(tmp_path / "m", blocks=2, hidden=32)
    path = tmp_path / "out" / "model.nrd"
    path.parent.mkdir()
    # The MLP's down projection (64 columns) raises in the worker, and the driver raises the
    # same typed error.
    with pytest.raises(EncoderError, match="refuses a layer of 64 columns") as raised:
        compress(model, token_batches(), method=refusing_method, path=path, progress=False,
                 executor=cluster)
    assert raised.value.code.slug == "encoder_settings"
    assert "encoder_settings: encoder_settings" not in str(raised.value)
    assert os.listdir(path.parent) == []
    from nncodec_rd.torch.checkpoint import CheckpointWeights
    from nncodec_rd.torch.sequential import SequentialEncoder
    from tests.torch.test_sequential import empty_model

    encoder = SequentialEncoder(empty_model(tmp_path / "m")[0], token_batches(),
                                weights=CheckpointWeights(tmp_path / "m"), progress=False,
                                executor=cluster)
    with pytest.raises(EncoderError, match="refuses a layer of 64 columns"):
        encoder.encode(QuantizerSettings(method=refusing_method), path)
    assert os.listdir(path.parent) == []


def test_cli_encode_with_ray_writes_the_local_file(tmp_path, cluster, capsys):
    from nncodec_rd.cli import main
    from tests.torch.test_pretrained import model_folder, texts_file

    model_folder(tmp_path / "m")
    texts = texts_file(tmp_path / "texts.txt")
    common = ["--calibration-text", str(texts), "--calibration-sequences", "2"]
    assert main(["encode", str(tmp_path / "m"), "-o", str(tmp_path / "local.nrd"), *common]) == 0
    # "local" finds this process's Ray instance (the fixture's) and leaves it running.
    assert main(["encode", str(tmp_path / "m"), "-o", str(tmp_path / "ray.nrd"), *common,
                 "--ray", "local"]) == 0
    assert ray.is_initialized()
    assert (tmp_path / "ray.nrd").read_bytes() == (tmp_path / "local.nrd").read_bytes()


def test_longest_layers_are_submitted_first_and_results_come_in_order(cluster, monkeypatch):
    from nncodec_rd.encoder import executor as executor_module

    sizes = [(4, 8), (2, 64), (16, 16), (8, 4)]
    problems = [LayerProblem(np.full(size, 0.25 * (k + 1))) for k, size in enumerate(sizes)]
    settings = QuantizerSettings(method="rtn", step=0.25)
    submitted = []
    original = cluster._task

    class Recording:
        def remote(self, reference, layer_settings):
            submitted.append(ray.get(reference).weights.shape)
            return original.remote(reference, layer_settings)

    monkeypatch.setattr(cluster, "_task", Recording())
    results = [result for result, _ in cluster.map([(p, settings) for p in problems])]
    assert submitted == sorted(sizes, key=lambda s: -(s[0] * s[1] ** 2 + s[1] ** 3))
    assert [r.indices.shape for r in results] == sizes
    assert [int(r.indices[0, 0]) for r in results] == [1, 2, 3, 4]
    assert executor_module.estimated_cost(problems[1]) > executor_module.estimated_cost(problems[2])
