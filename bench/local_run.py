"""One `fedstream run` for a benchmark: its per-round metrics and wall time."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path


def local_run(flags: list[str], out: Path) -> tuple[list[dict], float]:
    """(the coordinator's metrics rows, seconds) of `fedstream run --out OUT FLAGS`; exits
    with the end of its output when it fails."""
    argv = [sys.executable, "-m", "fedstream.cli", "--log-level", "WARNING", "run", "--out",
            str(out), *flags]
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(flags)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return rows, time.monotonic() - started
