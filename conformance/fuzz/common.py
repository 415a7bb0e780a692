"""What every fuzz target shares: the contract, the bounds, and the per-input measurements.

The contract (docs/fuzzing.md): for any input bytes a target either succeeds or raises the
library's typed error (``NrdError`` for the parser and the production decoder, ``SpecError`` for
the spec-literal decoder). Anything else is a crash, reported by raising :class:`ContractViolation`
(or by letting the unexpected exception through): another exception, an input that takes longer
than :data:`SECONDS_PER_INPUT`, or one whose traced allocations exceed :data:`MEMORY_CEILING_BYTES`.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import tracemalloc

# The bound the decoders are opened with (spec §9 note: "a decoder serving untrusted files SHOULD
# let its caller bound the output size it accepts"). The spec-literal decoder is pure Python (about
# 5 µs a symbol), so it gets a smaller one, and so does the agreement target that runs it.
MAX_OUTPUT_BYTES = 64 << 20
SPEC_LITERAL_MAX_OUTPUT_BYTES = 64 << 10

# A crash when one input takes longer (libFuzzer's -timeout kills the process at TIMEOUT_SECONDS).
SECONDS_PER_INPUT = 10.0
TIMEOUT_SECONDS = 30

# A crash when one input's allocations seen by tracemalloc (Python and NumPy) peak above this: a few
# arrays of MAX_OUTPUT_BYTES (output, chunk buffer, transform matrix) and the parsed header.
MEMORY_CEILING_BYTES = 4 * MAX_OUTPUT_BYTES + (64 << 20)

# libFuzzer's -max_len: inputs larger than any seed would mostly spend time in CRCs.
MAX_INPUT_BYTES = 1 << 16


class ContractViolation(AssertionError):
    """A target broke its contract: a crash, to be minimised and kept in regressions/."""


class Stats:
    """Per-target figures: executions, outcomes, slowest input, largest peak of traced memory.

    When ``NRD_FUZZ_STATS`` names a file, the figures are written there as JSON at most once a
    second and by :meth:`flush` (libFuzzer ends the process without running ``atexit``).
    """

    def __init__(self, target: str):
        self.target = target
        self.path = os.environ.get("NRD_FUZZ_STATS")
        self.trace = self.path is not None or os.environ.get("NRD_FUZZ_TRACE") == "1"
        self.started = time.time()
        self.executions = 0
        self.outcomes: dict[str, int] = {}
        self.max_seconds = 0.0
        self.max_seconds_input_bytes = 0
        self.max_peak_bytes = 0
        self.max_input_bytes = 0
        self.findings: dict[str, int] = {}
        self._last_flush = 0.0
        if self.trace and not tracemalloc.is_tracing():
            tracemalloc.start()

    def measure(self, data: bytes, run) -> None:
        """Run ``run(data)`` (which returns an outcome label) and check time and memory."""
        if self.trace:
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
        start = time.perf_counter()
        outcome = run(data)
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1] - base if self.trace else 0
        self.executions += 1
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        self.max_input_bytes = max(self.max_input_bytes, len(data))
        if seconds > self.max_seconds:
            self.max_seconds, self.max_seconds_input_bytes = seconds, len(data)
        self.max_peak_bytes = max(self.max_peak_bytes, peak)
        if self.path and time.time() - self._last_flush > 1.0:
            self.flush()
        if seconds > SECONDS_PER_INPUT:
            raise ContractViolation(f"{self.target}: one input took {seconds:.1f} s "
                                    f"(> {SECONDS_PER_INPUT} s): a hang")
        if peak > MEMORY_CEILING_BYTES:
            raise ContractViolation(f"{self.target}: one input's allocations peaked at {peak} "
                                    f"bytes (> {MEMORY_CEILING_BYTES})")

    def finding(self, kind: str, data: bytes) -> None:
        """Count a non-crash finding (a cross-decoder disagreement) and keep its input."""
        self.findings[kind] = self.findings.get(kind, 0) + 1
        folder = os.environ.get("NRD_FUZZ_FINDINGS")
        if folder and self.findings[kind] <= 20:
            os.makedirs(folder, exist_ok=True)
            import hashlib

            name = f"{kind}-{hashlib.sha1(data).hexdigest()[:12]}.nrd"
            with open(os.path.join(folder, name), "wb") as stream:
                stream.write(data)

    def as_dict(self) -> dict:
        elapsed = time.time() - self.started
        return dict(target=self.target, seconds=round(elapsed, 1), executions=self.executions,
                    executions_per_second=round(self.executions / elapsed, 1) if elapsed else 0.0,
                    outcomes=dict(sorted(self.outcomes.items())),
                    max_seconds_one_input=round(self.max_seconds, 4),
                    max_seconds_input_bytes=self.max_seconds_input_bytes,
                    max_peak_traced_bytes=self.max_peak_bytes,
                    max_input_bytes=self.max_input_bytes, findings=self.findings)

    def flush(self) -> None:
        if not self.path:
            return
        self._last_flush = time.time()
        temporary = self.path + ".tmp"
        with open(temporary, "w") as stream:
            json.dump(self.as_dict(), stream, indent=1)
        os.replace(temporary, self.path)


class ScratchFile:
    """A fresh file name per input for :class:`NrdFile` (which memory-maps its file): an array
    still viewing an earlier input's map must never see that file rewritten."""

    def __init__(self):
        self.folder = tempfile.mkdtemp(prefix="nrd-fuzz-")
        self.count = 0
        self.current: str | None = None

    def write(self, data: bytes) -> str:
        self.discard()
        self.count += 1
        self.current = os.path.join(self.folder, f"{self.count}.nrd")
        with open(self.current, "wb") as stream:
            stream.write(data)
        return self.current

    def discard(self) -> None:
        if self.current is not None:
            os.unlink(self.current)
            self.current = None



_WARM = False


def warm_up() -> None:
    """Load (or compile) the decoder's Numba kernels for every output kind before inputs are
    timed: the first call of each takes seconds from the cache, minutes without one."""
    global _WARM
    if _WARM:
        return
    _WARM = True
    from nncodec_rd.decoder.reader import NrdFile

    from .seeds import feature_files

    scratch = ScratchFile()
    try:
        for data in feature_files().values():
            with NrdFile(scratch.write(data), threads=1) as handle:
                for name in handle.keys():
                    handle.get_tensor(name)
                    if handle.header.tensors[handle._index[name]].coding == 1:
                        handle.get_indices(name)
            scratch.discard()
    finally:
        scratch.discard()
        os.rmdir(scratch.folder)
