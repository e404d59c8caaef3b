"""The speed and memory benchmark: `python bench/bench.py` (about 10 minutes on 2 cores).

Workload: the reference recipe (MNIST, 100 clients, batch 32, FedSGD, server Adam, the
278,410-parameter MLP), evaluation excluded from round times. Modes run one after another,
alternating, `--reps` times; each figure is a median over rounds, then over repetitions, and
each ratio is taken within one repetition before its median, so machine noise hits both
sides of a ratio alike.

  naive          the reference's computation: one eager gradient per client (bench/naive.py)
  simulate-K     `fedstream simulate --units K`: one process, K work units per round
  simulate-2-eval  simulate-2 with a test-set evaluation after every round (it runs off the
                 round's critical path: compare cycle times, round start to round start)
  distributed-K  `fedstream run --workers K`: data pool, coordinator, K workers over gRPC
  wire           PullWeights/PushUpdate against a bytes-only gRPC echo (bench/wire.py)
  memory         one worker's peak RSS simulating 100 vs 10,000 clients (distributed-1)

Writes bench/results/<tag>.json and prints a Markdown summary.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WARMUP_ROUNDS = 3
SPLIT_KEYS = ("pull_s", "fetch_s", "compute_s", "push_s", "aggregate_s", "apply_s")
BYTE_KEYS = ("pull_bytes", "fetch_bytes", "push_bytes")


def fedstream(*args: str) -> list[str]:
    return [sys.executable, "-m", "fedstream.cli", "--log-level", "WARNING", *args]


class PeakRss:
    """Polls the peak RSS (VmHWM) of a process and all its descendants, by role."""

    def __init__(self, root_pid: int, period_s: float = 0.2):
        self.root = root_pid
        self.peaks: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, args=(period_s,), daemon=True)
        self._thread.start()

    def _poll(self, period_s: float) -> None:
        while not self._stop.is_set():
            for pid, role in self._tree().items():
                try:
                    status = Path(f"/proc/{pid}/status").read_text()
                except OSError:
                    continue
                for line in status.splitlines():
                    if line.startswith("VmHWM:"):
                        mb = int(line.split()[1]) / 1024
                        self.peaks[role] = max(self.peaks.get(role, 0.0), mb)
            self._stop.wait(period_s)

    def _tree(self) -> dict[int, str]:
        parents = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    stat = Path(f"/proc/{entry}/stat").read_text()
                    parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
                except (OSError, ValueError, IndexError):
                    continue
        tree, frontier = {self.root}, [self.root]
        while frontier:
            children = [p for p, parent in parents.items() if parent in frontier]
            frontier = [c for c in children if c not in tree]
            tree.update(frontier)
        return {pid: _role(pid) for pid in tree}

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        return dict(sorted(self.peaks.items()))


def _role(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "gone"
    words = [a.decode() for a in argv if a]
    for role in ("datapool", "coordinator", "worker", "simulate", "run"):
        if role in words:
            name = words[words.index("--name") + 1] if "--name" in words else role
            return name if role == "worker" else role
    return Path(words[1]).stem if len(words) > 1 else "process"


def loopback_bytes() -> int:
    for line in Path("/proc/net/dev").read_text().splitlines():
        if line.strip().startswith("lo:"):
            fields = line.split(":", 1)[1].split()
            return int(fields[0])  # bytes received on lo == bytes sent on lo
    return 0


def run_mode(argv: list[str]) -> tuple[dict[str, float], float]:
    lo_before = loopback_bytes()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rss = PeakRss(proc.pid)
    out, err = proc.communicate()
    peaks = rss.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{out[-2000:]}\n{err[-2000:]}")
    return peaks, loopback_bytes() - lo_before


def summarise_rounds(rows: list[dict]) -> dict:
    rows = rows[WARMUP_ROUNDS:]
    med = lambda key: statistics.median(r[key] for r in rows) if key in rows[0] else None  # noqa: E731
    round_s = med("round_s")
    result = {"rounds_timed": len(rows), "median_round_s": round_s, "rounds_per_s": 1 / round_s,
              "client_grads_per_s": 100 / round_s}
    if "elapsed_s" in rows[0] and len(rows) > 1:  # round start to round start, evaluation in
        elapsed = [r["elapsed_s"] for r in rows]
        result["median_cycle_s"] = statistics.median(b - a for a, b in zip(elapsed, elapsed[1:]))
    split = {k: med(k) for k in SPLIT_KEYS if med(k) is not None}
    if split:
        result["split_s"] = split
        result["payload_bytes_per_round"] = {k: med(k) for k in BYTE_KEYS}
    return result


def naive(tmp: Path, rounds: int) -> dict:
    path = tmp / "naive.json"
    peaks, _ = run_mode([sys.executable, str(HERE / "naive.py"), "--rounds", str(rounds),
                         "--json", str(path)])
    return {**summarise_rounds(json.loads(path.read_text())), "peak_rss_mb": peaks}


def simulate(tmp: Path, rounds: int, units: int, device: str | None,
             eval_every: int = 10 ** 6) -> dict:
    metrics = tmp / f"simulate-{units}.jsonl"
    metrics.unlink(missing_ok=True)
    argv = fedstream("simulate", "--units", str(units), "--rounds", str(rounds),
                     "--eval-every", str(eval_every), "--metrics", str(metrics))
    if device:
        argv += ["--device", device]
    peaks, _ = run_mode(argv)
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    return {**summarise_rounds(rows), "peak_rss_mb": peaks}


def distributed(tmp: Path, rounds: int, workers: int, device: str | None,
                clients: int = 100) -> dict:
    out = Path(tempfile.mkdtemp(prefix=f"distributed-{workers}-{clients}-", dir=tmp))
    argv = fedstream("run", "--workers", str(workers), "--rounds", str(rounds),
                     "--eval-every", str(10 ** 6), "--clients", str(clients),
                     "--out", str(out), "--quiet")
    if device:
        argv += ["--device", device]
    peaks, lo = run_mode(argv)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {**summarise_rounds(rows), "peak_rss_mb": peaks,
            "loopback_bytes_per_round_incl_startup": lo / rounds}


def wire(repeats: int, tmp: Path) -> dict:
    path = tmp / "wire.json"
    run_mode([sys.executable, str(HERE / "wire.py"), "--repeats", str(repeats),
              "--json", str(path)])
    return json.loads(path.read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--rounds", type=int, default=40, help="rounds per fedstream mode")
    p.add_argument("--naive-rounds", type=int, default=10)
    p.add_argument("--memory-rounds", type=int, default=4)
    p.add_argument("--device", default=None, help="workers' device, e.g. /GPU:0")
    p.add_argument("--tag", default="cpu", help="result file name: bench/results/<tag>.json")
    args = p.parse_args()

    modes = {
        "naive": lambda tmp: naive(tmp, args.naive_rounds),
        "simulate-1": lambda tmp: simulate(tmp, args.rounds, 1, args.device),
        "simulate-2": lambda tmp: simulate(tmp, args.rounds, 2, args.device),
        "simulate-2-eval": lambda tmp: simulate(tmp, args.rounds, 2, args.device, eval_every=1),
        "distributed-1": lambda tmp: distributed(tmp, args.rounds, 1, args.device),
        "distributed-2": lambda tmp: distributed(tmp, args.rounds, 2, args.device),
    }
    tmp = Path(tempfile.mkdtemp(prefix="fedstream-bench-"))  # kept if a mode fails: its logs
    reps = []
    for rep in range(args.reps):
        results = {}
        for name, run in modes.items():
            t0 = time.monotonic()
            results[name] = run(tmp)
            print(f"rep {rep + 1}/{args.reps} {name:14s} "
                  f"{results[name]['rounds_per_s']:7.2f} rounds/s "
                  f"({time.monotonic() - t0:.0f} s)", flush=True)
        results["wire"] = wire(100, tmp)
        reps.append(results)
    memory = {clients: distributed(tmp, args.memory_rounds, 1, args.device, clients)
              for clients in (100, 10_000)}
    shutil.rmtree(tmp)

    def across(fn):
        return statistics.median(fn(r) for r in reps)

    rps = lambda r, m: r[m]["rounds_per_s"]  # noqa: E731
    worker_rss = {c: m["peak_rss_mb"].get("worker-0") for c, m in memory.items()}
    summary = {
        "rounds_per_s": {m: across(lambda r, m=m: rps(r, m)) for m in modes},
        "ratios": {
            "simulate-1 / naive": across(lambda r: rps(r, "simulate-1") / rps(r, "naive")),
            "simulate-2 / naive": across(lambda r: rps(r, "simulate-2") / rps(r, "naive")),
            "distributed-1 / simulate-1": across(
                lambda r: rps(r, "distributed-1") / rps(r, "simulate-1")),
            "distributed-2 / simulate-1": across(
                lambda r: rps(r, "distributed-2") / rps(r, "simulate-1")),
            "distributed-2 / simulate-2": across(
                lambda r: rps(r, "distributed-2") / rps(r, "simulate-2")),
            "simulate-2 evaluating every round / simulate-2, cycle time": across(
                lambda r: r["simulate-2"]["median_cycle_s"] / r["simulate-2-eval"]["median_cycle_s"]),
            "pull / wire": across(lambda r: r["wire"]["pull_vs_wire"]),
            "push / wire": across(lambda r: r["wire"]["push_vs_wire"]),
            "worker rss 10000 / 100 clients": worker_rss[10_000] / worker_rss[100],
        },
        "memory": {str(c): m for c, m in memory.items()},
    }
    report = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "device": args.device or "default"},
        "args": vars(args), "summary": summary, "reps": reps,
    }
    out = HERE / "results" / f"{args.tag}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(markdown(summary, reps[-1]))
    print(f"\nwritten to {out}")


def markdown(summary: dict, last: dict) -> str:
    lines = ["| mode | rounds/s | client gradients/s |", "|---|---|---|"]
    for mode, value in summary["rounds_per_s"].items():
        lines.append(f"| {mode} | {value:.2f} | {value * 100:.0f} |")
    lines += ["", "| ratio (median of per-repetition ratios) | value |", "|---|---|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in summary["ratios"].items()]
    lines += ["", "| time split, ms per round (last repetition) | " +
              " | ".join(k[:-2] for k in SPLIT_KEYS) + " |", "|---|" + "---|" * len(SPLIT_KEYS)]
    for mode in ("simulate-1", "simulate-2", "distributed-1", "distributed-2"):
        split = last[mode].get("split_s", {})
        lines.append(f"| {mode} | " + " | ".join(f"{split.get(k, 0) * 1e3:.1f}"
                                                 for k in SPLIT_KEYS) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
