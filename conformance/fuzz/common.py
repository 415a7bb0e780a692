"""What every fuzz target shares: the contract, the bounds, and the per-input measurements.

The contract (docs/fuzzing.md): for any input bytes a target either succeeds or raises the
library's typed error (``NrdError`` for the parser and the production decoder, ``SpecError`` for
the spec-literal decoder). Anything else is a crash, reported by raising :class:`ContractViolation`
(or by letting the unexpected exception through): another exception, an input that takes longer
than :data:`SECONDS_PER_INPUT`, or one whose memory (:func:`memory_measure`) grows by more than
:data:`MEMORY_CEILING_BYTES`.
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
# Under atheris every line of the parser, the spec-literal decoder and construct is instrumented
# for coverage, which makes them 20 to 40 times slower: an input the built-in engine decodes in
# 0.3 s (a damaged 318 KB header of 16,384 metadata entries) took 11 s there. The atheris runner
# therefore allows ATHERIS_SLOWDOWN times more.
SECONDS_PER_INPUT = 10.0
TIMEOUT_SECONDS = 30
ATHERIS_SLOWDOWN = 6

# A crash when one input's memory peaks above this: a few arrays of MAX_OUTPUT_BYTES (output,
# chunk buffer, transform matrix) and the parsed header.
MEMORY_CEILING_BYTES = 4 * MAX_OUTPUT_BYTES + (64 << 20)


def _resident_bytes() -> int:
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGESIZE")


def _resident_peak_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmHWM in /proc/self/status")


def _reset_resident_peak() -> None:
    # Linux: writing 5 to clear_refs resets the process's peak resident set size (VmHWM).
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")


def memory_measure() -> str:
    """How :class:`Stats` measures one input's memory: ``"rss"``, the growth of the process's
    peak resident set over the input (Linux, about 50 µs an input, everything the process touches:
    Python, NumPy, Numba and C), or ``"tracemalloc"`` elsewhere or with ``NRD_FUZZ_TRACE=1``
    (allocations Python and NumPy report, 4 to 5 times slower per input)."""
    if os.environ.get("NRD_FUZZ_TRACE") == "1":
        return "tracemalloc"
    try:
        _reset_resident_peak()
        _resident_peak_bytes()
    except OSError:
        return "tracemalloc"
    return "rss"

# The bound on a transform's product the production decoder is opened with (its default, 2^38
# multiply-adds, is minutes of work: a caller's choice, not a fault; a fuzzed input must finish in
# SECONDS_PER_INPUT). 2^28 takes about a second on one core. The spec-literal decoder's product is
# bounded by its output bound: at most (64 KiB / 4)^1.5 = 2^21 multiply-adds.
MAX_TRANSFORM_WORK = 1 << 28

# libFuzzer's -max_len: room for the large-header seeds (seeds.large_headers, up to about 350 KB);
# inputs larger than that would mostly spend their time in CRCs.
MAX_INPUT_BYTES = 1 << 20


class ContractViolation(AssertionError):
    """A target broke its contract: a crash, to be minimised and kept in regressions/."""


class Stats:
    """Per-target figures: executions, outcomes, slowest input, largest memory peak of one input.

    When ``NRD_FUZZ_STATS`` names a file, the figures are written there as JSON at most once a
    second and by :meth:`flush` (libFuzzer ends the process without running ``atexit``).
    """

    def __init__(self, target: str):
        self.target = target
        self.path = os.environ.get("NRD_FUZZ_STATS")
        self.measuring = self.path is not None or os.environ.get("NRD_FUZZ_TRACE") == "1"
        self.memory = memory_measure() if self.measuring else None
        self.trace = self.memory == "tracemalloc"
        self.seconds_limit = SECONDS_PER_INPUT * float(os.environ.get("NRD_FUZZ_SLOWDOWN", "1"))
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
        elif self.memory == "rss":
            _reset_resident_peak()
            base = _resident_bytes()
        start = time.perf_counter()
        outcome = run(data)
        seconds = time.perf_counter() - start
        if self.trace:
            peak = tracemalloc.get_traced_memory()[1] - base
        elif self.memory == "rss":
            peak = max(0, _resident_peak_bytes() - base)
        else:
            peak = 0
        self.executions += 1
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        self.max_input_bytes = max(self.max_input_bytes, len(data))
        if seconds > self.max_seconds:
            self.max_seconds, self.max_seconds_input_bytes = seconds, len(data)
        self.max_peak_bytes = max(self.max_peak_bytes, peak)
        if self.path and time.time() - self._last_flush > 1.0:
            self.flush()
        if seconds > self.seconds_limit:
            raise ContractViolation(f"{self.target}: one input took {seconds:.1f} s "
                                    f"(> {self.seconds_limit} s): a hang")
        if peak > MEMORY_CEILING_BYTES:
            raise ContractViolation(f"{self.target}: one input's memory ({self.memory}) peaked at "
                                    f"{peak} bytes (> {MEMORY_CEILING_BYTES})")

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
                    memory_measure=self.memory, max_peak_bytes=self.max_peak_bytes,
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
    from nncodec_rd.decoder import dispatch
    from nncodec_rd.decoder.reader import NrdFile

    dispatch.warmup()  # every kernel, not only those the feature files below reach

    from .seeds import feature_files

    scratch = ScratchFile()
    try:
        for data in feature_files().values():
            with NrdFile(scratch.write(data), threads=1) as handle:
                for name in handle.keys():
                    handle.get_tensor(name)
                    if handle.record(name).coding == 1:
                        handle.get_indices(name)
            scratch.discard()
    finally:
        scratch.discard()
        os.rmdir(scratch.folder)
