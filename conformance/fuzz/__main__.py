"""Run the fuzz targets: ``python -m nncodec_rd.conformance.fuzz --minutes 12`` (docs/fuzzing.md).

Each target runs in its own process, niced, one Numba thread, for an equal share of the time:
under atheris (libFuzzer) when it is installed (``pip install -e '.[fuzz]'``), else under the
built-in engine (the same structure-aware mutator, no coverage feedback). Everything goes under
``--out`` (default ``out/fuzz``): ``seeds/``, ``corpus/TARGET/`` (kept between runs),
``crashes/``, ``findings/TARGET/``, ``logs/``, ``stats/`` and ``report.json``, whose figures
docs/fuzzing.md quotes. Exit status 1 if any target crashed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import subprocess
import sys
import time
from pathlib import Path

from . import TARGETS
from .common import (
    ATHERIS_SLOWDOWN,
    MAX_INPUT_BYTES,
    MEMORY_CEILING_BYTES,
    SECONDS_PER_INPUT,
    TIMEOUT_SECONDS,
)


def _have_atheris() -> bool:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


# The built-in engine's share of draws from inputs over LARGE_INPUT_BYTES.
LARGE_INPUT_BYTES = 1 << 16
LARGE_INPUT_SHARE = 0.01


def builtin_engine(target: str, corpus: list[Path], seconds: float, crashes: Path,
                   seed: int = 0) -> int:
    """Mutate corpus files for ``seconds``; keep inputs with a new outcome. Returns crashes."""
    import hashlib
    import importlib
    import traceback

    from .mutate import mutate

    module = importlib.import_module(f"nncodec_rd.conformance.fuzz.{target}")
    inputs = [path.read_bytes() for folder in corpus for path in sorted(folder.glob("*"))
              if path.is_file()]
    # Large inputs (the large-header seeds and what grew from them) cost 50 to 300 times a small
    # one to mutate and decode: drawn as often as the others they would take most of the run, so
    # they get a fixed share of the draws instead (libFuzzer's scheduler also favours fast inputs).
    pools = ([d for d in inputs if len(d) <= LARGE_INPUT_BYTES],
             [d for d in inputs if len(d) > LARGE_INPUT_BYTES])
    outcomes: set = set()
    rng = random.Random(seed)
    deadline = time.time() + seconds
    found = 0
    while time.time() < deadline:
        pool = pools[1] if pools[1] and (not pools[0] or rng.random() < LARGE_INPUT_SHARE) \
            else pools[0]
        data = mutate(rng.choice(pool), MAX_INPUT_BYTES, rng.getrandbits(32)) if pool else b""
        before = dict(module.STATS.outcomes)
        try:
            module.test_one_input(data)
        except Exception:
            found += 1
            crashes.mkdir(parents=True, exist_ok=True)
            name = crashes / f"{target}-crash-{hashlib.sha1(data).hexdigest()}"
            name.write_bytes(data)
            print(f"CRASH {name}\n{traceback.format_exc()}", file=sys.stderr, flush=True)
            continue
        new = set(module.STATS.outcomes) - set(before)
        if new - outcomes:
            outcomes |= new
            pools[len(data) > LARGE_INPUT_BYTES].append(data)
            (corpus[0] / hashlib.sha1(data).hexdigest()).write_bytes(data)
    module.STATS.flush()
    return found


def _libfuzzer_figures(log: str) -> dict:
    figures = {}
    for key in ("number_of_executed_units", "average_exec_per_sec", "peak_rss_mb", "new_units_added"):
        match = re.findall(rf"stat::{key}:\s*(\d+)", log)
        if match:
            figures[key] = int(match[-1])
    corpus = re.findall(r"corp: (\d+)/(\d+\w*)", log)
    if corpus:
        figures["corpus_files"], figures["corpus_size"] = int(corpus[-1][0]), corpus[-1][1]
    return figures


def _start_target(target: str, seconds: float, out: Path, engine: str, replica: int | None):
    """Start one fuzzing process of ``target`` (replica ``replica`` of several, or the only one)."""
    corpus = out / "corpus" / target
    corpus.mkdir(parents=True, exist_ok=True)
    for folder in ("logs", "stats", "crashes"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    name = target if replica is None else f"{target}.{replica}"
    stats = out / "stats" / f"{name}.json"
    env = dict(os.environ, NRD_FUZZ_STATS=str(stats), NRD_FUZZ_FINDINGS=str(out / "findings" / target),
               NUMBA_NUM_THREADS="1")
    if engine == "atheris":
        env["NRD_FUZZ_SLOWDOWN"] = str(ATHERIS_SLOWDOWN)
        regressions = Path(__file__).resolve().parent / "regressions"
        command = [sys.executable, "-m", "nncodec_rd.conformance.fuzz.atheris_run", target,
                   str(corpus), str(out / "seeds"), str(regressions), f"-max_total_time={int(seconds)}",
                   f"-timeout={TIMEOUT_SECONDS * ATHERIS_SLOWDOWN}", "-rss_limit_mb=4096",
                   f"-max_len={MAX_INPUT_BYTES}", f"-artifact_prefix={out / 'crashes'}/{target}-",
                   "-print_final_stats=1", *([f"-seed={replica + 1}"] if replica is not None else [])]
    else:
        command = [sys.executable, "-m", "nncodec_rd.conformance.fuzz", "--builtin-child", target,
                   "--seconds", str(seconds), "--out", str(out), "--replica", str(replica or 0)]
    log_path = out / "logs" / f"{name}.log"
    log = open(log_path, "w")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                               preexec_fn=lambda: os.nice(10))
    return dict(target=target, process=process, log=log, log_path=log_path, stats=stats,
                corpus=corpus, started=time.time())


def _finish_target(run: dict, out: Path, engine: str) -> dict:
    returncode = run["process"].wait()
    run["log"].close()
    text = run["log_path"].read_text(errors="replace")
    report = json.loads(run["stats"].read_text()) if run["stats"].exists() else {}
    corpus, target = run["corpus"], run["target"]
    report.update(engine=engine, wall_seconds=round(time.time() - run["started"], 1),
                  exit_status=returncode, libfuzzer=_libfuzzer_figures(text),
                  corpus_files=len(list(corpus.iterdir())),
                  corpus_bytes=sum(p.stat().st_size for p in corpus.iterdir()),
                  crashes=sorted(p.name for p in (out / "crashes").glob(f"{target}-*")))
    return report


def run_target(target: str, seconds: int, out: Path, engine: str) -> dict:
    return _finish_target(_start_target(target, seconds, out, engine, None), out, engine)


def _merge(reports: list[dict]) -> dict:
    """One target's figures over its replicas: sums of counts, maxima of the worst cases."""
    merged = dict(reports[0])
    merged["replicas"] = len(reports)
    for key in ("executions", "seconds"):
        merged[key] = sum(r.get(key, 0) for r in reports) if key == "executions" else \
            max(r.get(key, 0) for r in reports)
    merged["executions_per_second"] = round(sum(r.get("executions_per_second", 0)
                                                for r in reports), 1)
    for key in ("max_seconds_one_input", "max_peak_bytes", "max_input_bytes"):
        merged[key] = max(r.get(key, 0) for r in reports)
    for key in ("outcomes", "findings"):
        total: dict = {}
        for report in reports:
            for name, count in report.get(key, {}).items():
                total[name] = total.get(name, 0) + count
        merged[key] = dict(sorted(total.items()))
    merged["exit_status"] = max(r["exit_status"] for r in reports)
    return merged


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nncodec_rd.conformance.fuzz",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=1.0, help="total time, shared equally")
    parser.add_argument("--targets", default=",".join(TARGETS), help="comma-separated targets")
    parser.add_argument("--engine", choices=["auto", "atheris", "builtin"], default="auto")
    parser.add_argument("--out", default="out/fuzz")
    parser.add_argument("--jobs", type=int, default=0,
                        help="processes per target, every target at once, each process for the "
                             "whole --minutes (0, the default: one target after another, "
                             "sharing --minutes)")
    parser.add_argument("--builtin-child", help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--replica", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.builtin_child:
        target = args.builtin_child
        found = builtin_engine(target, [out / "corpus" / target, out / "seeds",
                                        Path(__file__).resolve().parent / "regressions"],
                               args.seconds, out / "crashes", args.replica)
        return 1 if found else 0
    targets = [t for t in args.targets.split(",") if t]
    unknown = set(targets) - set(TARGETS)
    if unknown:
        parser.error(f"unknown targets {sorted(unknown)}; choose from {', '.join(TARGETS)}")
    engine = args.engine if args.engine != "auto" else ("atheris" if _have_atheris() else "builtin")
    from .seeds import write_seeds

    seed_count = write_seeds(out / "seeds")
    if args.jobs >= 1:
        seconds = max(10, int(args.minutes * 60))
        print(f"{len(targets)} targets x {args.jobs} processes x {seconds} s at once with "
              f"{engine}; {seed_count} seeds in {out / 'seeds'}", flush=True)
        runs = [_start_target(target, seconds, out, engine, replica)
                for target in targets for replica in range(args.jobs)]
        finished = [_finish_target(run, out, engine) for run in runs]
        grouped = [_merge([r for run, r in zip(runs, finished) if run["target"] == target])
                   for target in targets]
    else:
        seconds = max(10, int(args.minutes * 60 / len(targets)))
        print(f"{len(targets)} targets x {seconds} s with {engine}; {seed_count} seeds in "
              f"{out / 'seeds'}", flush=True)
        grouped = None
    reports = []
    for number, target in enumerate(targets):
        report = grouped[number] if grouped else run_target(target, seconds, out, engine)
        reports.append(report)
        print(f"{target}: {report.get('executions', 0)} inputs, "
              f"{report.get('executions_per_second', 0)}/s, slowest {report.get('max_seconds_one_input')} s, "
              f"peak {report.get('max_peak_bytes', 0) / 2**20:.1f} MiB, "
              f"corpus {report['corpus_files']} files, crashes {len(report['crashes'])}, "
              f"findings {report.get('findings', {})}", flush=True)
    summary = dict(machine=f"{platform.machine()} {os.cpu_count()} CPUs, {platform.platform()}",
                   python=platform.python_version(), engine=engine, minutes=args.minutes,
                   jobs=args.jobs, command="python -m nncodec_rd.conformance.fuzz " + " ".join(
                       sys.argv[1:] if argv is None else argv),
                   executions=sum(r.get("executions", 0) for r in reports),
                   seconds_per_input_limit=SECONDS_PER_INPUT, memory_ceiling_bytes=MEMORY_CEILING_BYTES,
                   seeds=seed_count, targets=reports)
    (out / "report.json").write_text(json.dumps(summary, indent=1))
    crashed = any(r["crashes"] or r["exit_status"] not in (0,) for r in reports)
    print(f"report: {out / 'report.json'}; " + ("CRASHES FOUND" if crashed else "no crash"))
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
