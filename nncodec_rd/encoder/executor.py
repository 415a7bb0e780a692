"""Where the per-layer quantization runs: in this process, or as tasks on a Ray cluster.

Quantizing one layer is a pure function of its problem (weights, Hessian, row weights) and its
settings (λ, grid, method): :func:`~nncodec_rd.encoder.methods.quantize_layer`. The encoders hand
an executor the layers that do not depend on each other (a block's layers in the block-sequential
pipeline, every layer of a model in memory) and take the results back **in the order given**, so
that the file is written in one fixed order whoever computed what and when: a file encoded on a
cluster is byte for byte the file encoded here (docs/ray.md).

* :class:`LocalExecutor` (the default) quantizes each layer when its result is asked for, in
  this process: memory and behaviour of a plain run.
* :class:`RayExecutor` puts every problem into Ray's object store at once and submits one task
  per layer (one CPU each by default), the longest first; results come back in the order given
  while later tasks still run.
  A task whose worker dies is run again (Ray's ``max_retries``); a task that raises (a layer that
  cannot be quantized) stops the encode with that layer's own error.

Ray is an optional extra (``pip install 'nncodec-rd[ray]'``), imported only by
:class:`RayExecutor`.

Example (in this process; a ``RayExecutor`` gives the same results):

>>> import numpy as np
>>> from nncodec_rd.encoder.problem import LayerProblem
>>> from nncodec_rd.encoder.settings import QuantizerSettings
>>> problem = LayerProblem(np.linspace(-1, 1, 32).reshape(4, 8))
>>> settings = QuantizerSettings(method="rtn", lam=1e-3)
>>> [result.indices.shape for result, seconds in LocalExecutor().map([(problem, settings)])]
[(4, 8)]
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable, Iterator

from ..format.errors import EncoderError
from .methods import quantize_layer
from .problem import LayerProblem
from .settings import QuantizerSettings

#: A worker that dies while quantizing a layer (killed, out of memory, its machine gone) is
#: replaced and the layer run again, up to this many times, before the encode stops.
DEFAULT_MAX_RETRIES = 3

#: After a failure, how long the tasks already submitted may still run before the encode stops.
LEFT_OVER_WAIT_SECONDS = 30.0


def quantize_timed(problem: LayerProblem, settings: QuantizerSettings):
    """``(quantize_layer(problem, settings), seconds)``: the unit of work of every executor."""
    started = time.perf_counter()
    result = quantize_layer(problem, settings)
    return result, time.perf_counter() - started


def estimated_cost(problem: LayerProblem) -> float:
    """A layer's relative quantization time: rows x columns^2 (the OBS sweep's updates) plus
    columns^3 (factoring the Hessian). Only the order of layers depends on it, never a result."""
    rows, columns = problem.weights.shape
    return float(rows) * columns * columns + float(columns) ** 3


class LocalExecutor:
    """Quantize each layer in this process, when its result is asked for."""

    def map(self, jobs: Iterable[tuple[LayerProblem, QuantizerSettings]]
            ) -> Iterator[tuple[object, float]]:
        """``(result, seconds)`` of each ``(problem, settings)``, in the order given."""
        for problem, settings in jobs:
            yield quantize_timed(problem, settings)

    def close(self) -> None:
        """Nothing to release."""


class RayExecutor:
    """Quantize layers as Ray tasks.

    Parameters
    ----------
    address:
        ``"local"``: start a Ray instance on this machine for this process (``num_cpus``
        workers' worth of CPUs, stopped by :meth:`close`); ``"auto"``: join the cluster started on
        this machine with ``ray start --head``; ``"HOST:PORT"`` (or ``ray://HOST:PORT``): join that
        cluster. If Ray is already initialised in this process, that instance is used as it is.
    num_cpus:
        With ``"local"``: the CPUs Ray may use (default: all of this machine's).
    cpus_per_task:
        CPUs each layer task asks for (Ray sets the task's thread count to it).
    memory_per_task_bytes:
        Memory each layer task declares to Ray's scheduler (``None``: none declared; see
        docs/ray.md for sizing).
    max_retries:
        Runs of a task whose worker died before the encode stops.
    """

    def __init__(self, address: str = "local", *, num_cpus: int | None = None,
                 cpus_per_task: float = 1, memory_per_task_bytes: int | None = None,
                 max_retries: int = DEFAULT_MAX_RETRIES):
        try:
            import ray
        except ImportError as error:
            raise EncoderError(f"encoding on Ray needs the ray extra: pip install "
                               f"'nncodec-rd[ray]' ({error})") from None
        if num_cpus is not None and address != "local":
            raise EncoderError("num_cpus applies to a local Ray instance only (the cluster's own "
                               "CPUs are used)")
        self._ray = ray
        self._owns = False
        if not ray.is_initialized():
            options = dict(include_dashboard=False, log_to_driver=False,
                           configure_logging=False)
            if address != "local":
                options["address"] = address
            try:
                ray.init(num_cpus=num_cpus, **options)
            except Exception as error:  # Ray raises ConnectionError, ValueError, RuntimeError
                reason = str(error).strip().strip("'\"").splitlines()
                raise EncoderError(f"could not start or join Ray at {address!r}: "
                                   f"{reason[0] if reason else type(error).__name__}") from None
            self._owns = True
        resources = {"num_cpus": cpus_per_task}
        if memory_per_task_bytes is not None:
            resources["memory"] = int(memory_per_task_bytes)
        self._task = ray.remote(max_retries=max_retries, retry_exceptions=False,
                                **resources)(quantize_timed)

    def map(self, jobs: Iterable[tuple[LayerProblem, QuantizerSettings]]
            ) -> Iterator[tuple[object, float]]:
        """``(result, seconds)`` of each ``(problem, settings)``, in the order given.

        Every problem goes into the object store and every task is submitted before the first
        result is awaited; a task's error (its worker died more than ``max_retries`` times, or
        the layer raised) is raised here, for the first failing layer in the order given. The
        tasks not yet finished are left to finish and their results dropped (an instance this
        executor started stops them when it closes)."""
        ray = self._ray
        jobs = list(jobs)
        # Submitted longest first (Ray starts tasks in the order they come): the longest layer
        # of a block (a Llama's down_proj: most columns) would otherwise start last and finish
        # alone while the other workers wait. Results are still taken in the order given.
        pending = [None] * len(jobs)
        for number in sorted(range(len(jobs)), key=lambda n: -estimated_cost(jobs[n][0])):
            problem, settings = jobs[number]
            pending[number] = self._task.remote(ray.put(problem), settings)
        try:
            for number, reference in enumerate(pending):
                yield self._get(reference, number)
                pending[number] = None  # its result is the caller's now
        finally:
            # Not cancelled: ray.cancel of a task that completes at that moment aborts the
            # driver in Ray 2.60 (task_manager.cc "Check failed: it != submissible_tasks_.end()",
            # seen in this test suite), and force=True kills workers Ray must then replace.
            # Each task is left to finish: those done within LEFT_OVER_WAIT_SECONDS are taken
            # (so that Ray does not print each failed one as unhandled), the rest dropped.
            left = [reference for reference in pending if reference is not None]
            if left:
                done, _ = ray.wait(left, num_returns=len(left), timeout=LEFT_OVER_WAIT_SECONDS)
                for reference in done:
                    try:
                        ray.get(reference)
                    except Exception:  # noqa: BLE001 (a later layer's error: the first one counts)
                        pass
            pending.clear()

    def _get(self, reference, number: int):
        ray = self._ray
        try:
            return ray.get(reference)
        except ray.exceptions.RayTaskError as error:
            cause = getattr(error, "cause", None)
            if isinstance(cause, Exception):
                raise cause from None  # the layer's own error: EncoderError and its kin
            raise EncoderError(f"layer task {number + 1} failed on Ray: "
                               f"{str(error).splitlines()[0]}") from None
        except ray.exceptions.RayError as error:
            raise EncoderError(f"layer task {number + 1} could not be completed on Ray "
                               f"({type(error).__name__}: {str(error).splitlines()[0]})"
                               ) from None

    def close(self) -> None:
        """Stop the Ray instance this executor started (not a cluster it joined)."""
        if self._owns and self._ray.is_initialized():
            self._ray.shutdown()
        self._owns = False

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def executor_from(value) -> LocalExecutor | RayExecutor:
    """The executor an encoder uses for ``value``: ``None`` (this process), an executor object,
    or a Ray address string (``"local"``, ``"auto"``, ``"HOST:PORT"``; see :class:`RayExecutor`).
    """
    if value is None:
        return LocalExecutor()
    if isinstance(value, (str, os.PathLike)):
        return RayExecutor(os.fspath(value))
    if not callable(getattr(value, "map", None)):
        raise EncoderError(f"executor must be None, a Ray address or an object with map(jobs), "
                           f"not {type(value).__name__}")
    return value


@contextlib.contextmanager
def opened_executor(value):
    """``executor_from(value)`` for a ``with`` block: an executor made here from an address is
    closed at its end (a Ray instance it started stops); one given as an object is left open."""
    executor = executor_from(value)
    try:
        yield executor
    finally:
        if executor is not value and value is not None:
            executor.close()
