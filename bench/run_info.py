"""The commit and date a benchmark measured at, for its JSON (docs/numbers.py states them).

Every benchmark that writes a JSON to ``bench/results/`` puts ``**run_info()`` into it::

    report = {"command": ..., **run_info(), "rows": rows}
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_info() -> dict:
    """``{"commit": abbreviated hash of HEAD (+ "-dirty" with uncommitted changes to tracked
    files other than the results in ``bench/results/``, which a benchmark rewrites as it
    records this), "date": UTC time "YYYY-MM-DD HH:MM"}``; the commit is "unknown" outside a
    git checkout (an exported tree)."""

    def git(*arguments: str) -> str:
        return subprocess.run(["git", "-C", ROOT, *arguments], capture_output=True, text=True,
                              check=True).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        if git("status", "--porcelain", "--untracked-files=no", "--", ".",
               ":(exclude)bench/results"):
            commit += "-dirty"
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
    return {"commit": commit, "date": date}


def write_results(report: dict, path: str) -> None:
    """Write a benchmark's ``report`` as the JSON ``path`` (its folder made if missing) and say
    where it went."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as stream:
        json.dump(report, stream, indent=1)
    print(f"wrote {path}")
