"""Keras backends side by side: `python bench/backends.py` (about 10 minutes on 2 cores;
writes bench/results/backends-cpu.json and prints a Markdown table).

For each backend (`--backends`) and workload (`--workloads`), one after another in one run:
`fedstream simulate --units 2` and `fedstream run --workers 2` (a data pool, a coordinator and
two workers as processes on loopback, all on that backend), each timed per round from its
metrics: the round and its parts (pull, fetch, compute, push, aggregate, apply), medians over
the rounds after the warm-up ones (which compile). On a GPU host, `--device /GPU:0` puts the
workers there (bench/gpu/run.sh prepares such a host that has no TensorFlow).

  reference   the reference recipe: FedSGD, reference MLP, 100 clients, server Adam
  fedavg-2nn  FedAvg, 2NN, 100 IID clients, 10 per round, E=1, B=10 (bench/fedavg.py's W2)
  fedavg-cnn  FedAvg, CNN, the same clients, E=5, B=10 (W3)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from fedavg import WORKLOADS, fedstream_flags  # noqa: E402

PARTS = ("round_s", "pull_s", "fetch_s", "compute_s", "push_s", "aggregate_s", "apply_s")
RECIPES = {  # name: (flags, rounds, warm-up rounds)
    "reference": ([], 40, 5),
    "fedavg-2nn": (fedstream_flags(WORKLOADS["W2"])[:-4], 15, 3),
    "fedavg-cnn": (fedstream_flags(WORKLOADS["W3"])[:-4], 4, 1),
}
# XLA's CPU convolutions vectorised over clients: about 170 ms per client step on this 2-core
# CPU (8 clients x 6 steps of 10 in 8.3 s, measured), some 500 s per fedavg-cnn round
SKIP_ON_CPU = {("jax", "fedavg-cnn"): "skipped on the CPU: XLA's client-vmapped convolutions "
                                      "take about 500 s a round here"}


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "fedstream.cli", "--log-level", "WARNING", *args]


def per_round(rows: list[dict], warmup: int) -> dict[str, float]:
    kept = rows[warmup:]
    return {p: statistics.median(r[p] for r in kept) for p in PARTS if p in kept[0]}


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def measure(backend: str, recipe: str, args, tmp: Path) -> dict:
    flags, rounds, warmup = RECIPES[recipe]
    common = [*flags, "--backend", backend, "--rounds", str(rounds), "--eval-every", "1000000",
              *(["--device", args.device] if args.device else []),
              *(["--data", args.data] if args.data else [])]
    out: dict = {}
    sim = tmp / f"{backend}-{recipe}-sim.jsonl"
    t0 = time.perf_counter()
    subprocess.run(cli("simulate", "--units", "2", "--metrics", str(sim), *common), check=True,
                   stdout=subprocess.DEVNULL)
    out["simulate"] = {**per_round(rows_of(sim), warmup), "wall_s": time.perf_counter() - t0}
    run = tmp / f"{backend}-{recipe}-run"
    t0 = time.perf_counter()
    subprocess.run(cli("run", "--workers", "2", "--worker-threads", str(args.worker_threads),
                       "--out", str(run), "--quiet", *common), check=True,
                   stdout=subprocess.DEVNULL)
    out["run"] = {**per_round(rows_of(run / "metrics.jsonl"), warmup),
                  "wall_s": time.perf_counter() - t0}
    out["final_train_loss"] = {"simulate": rows_of(sim)[-1]["train_loss"],
                               "run": rows_of(run / "metrics.jsonl")[-1]["train_loss"]}
    out["rounds"], out["warmup_rounds"] = rounds, warmup
    return out


def versions(backend: str) -> dict:
    from importlib import metadata
    return {name: metadata.version(name) for name in ("keras", backend)}


def table(results: dict) -> str:
    lines = ["| backend | workload | simulate s/round | run s/round | run / simulate speed | "
             "run: pull / fetch / compute / push ms |", "|---|---|---|---|---|---|"]
    for backend, by_recipe in results["backends"].items():
        for recipe, r in by_recipe.items():
            if isinstance(r, str):
                lines.append(f"| {backend} | {recipe} | {r} | | | |")
                continue
            s, d = r["simulate"], r["run"]
            split = " / ".join(f"{1000 * d.get(p, 0):.1f}"
                               for p in ("pull_s", "fetch_s", "compute_s", "push_s"))
            lines.append(f"| {backend} | {recipe} | {s['round_s']:.4f} | {d['round_s']:.4f} | "
                         f"{s['round_s'] / d['round_s']:.2f} | {split} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backends", default="tensorflow,jax,torch")
    p.add_argument("--workloads", default=",".join(RECIPES))
    p.add_argument("--device", default=None, help="the workers' device (default: the backend's)")
    p.add_argument("--data", default=None, help="MNIST as mnist.npz (default: the cache)")
    p.add_argument("--worker-threads", type=int, default=1)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "backends-cpu.json"))
    args = p.parse_args()
    on_gpu = bool(args.device and "GPU" in args.device.upper())
    results = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                           "device": args.device or "the backend's default"},
               "backends": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for backend in args.backends.split(","):
            by_recipe: dict = {}
            results["backends"][backend] = by_recipe
            results.setdefault("versions", {})[backend] = versions(backend)
            for recipe in args.workloads.split(","):
                skip = None if on_gpu else SKIP_ON_CPU.get((backend, recipe))
                by_recipe[recipe] = skip or measure(backend, recipe, args, Path(tmp))
                print(f"{backend} {recipe}: done", file=sys.stderr, flush=True)
                Path(args.out).write_text(json.dumps(results, indent=1))
    print(table(results))


if __name__ == "__main__":
    main()
