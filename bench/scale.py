"""How the coordinator's cost grows with the registered population: `python bench/scale.py`
(writes bench/results/scale.json and prints Markdown tables).

Clients of one example each (10 features, 10 classes, seeded normal data), FedSGD on a
logistic regression, so a round's compute is tiny and the coordinator's own work shows:

  coordinator alone  in one process, no worker compute: the coordinator opens each round,
                     samples, leases the units and takes a pushed all-zero update per unit,
                     steps the model. Seconds per round (median after warm-up) and the bytes
                     it holds per registered client (tracemalloc, a separate pass)
  simulate           `fedstream simulate --units 2`: the same federation in one process
  run                `fedstream run --workers 2`: data pool, coordinator and two workers as
                     processes on loopback
                     both: seconds per round (median after warm-up) and how much of it is
                     not the units' compute (moving weights, batches and updates, and the
                     coordinator's own work); for run, each process's peak RSS and the
                     bytes per round

for 10^3 ... 10^6 registered clients and 100 or 1,000 sampled a round. The goals: the
coordinator's per-round cost independent of the population (sampling, leasing and
bookkeeping O(sampled)), at most 200 bytes per registered client, and 10^6 registered
clients at 1,000 a round within 2x the round time of 10^3.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from bench import fedstream, run_mode

HERE = Path(__file__).resolve().parent
FEATURES, CLASSES = 10, 10
POPULATIONS = (10**3, 10**4, 10**5, 10**6)
SAMPLED = (100, 1000)
WARMUP = 3


def recipe(population: int, sampled: int, rounds: int) -> dict:
    return dict(model="logistic", update="gradient", batch_size=1, client_fraction=min(
        1.0, sampled / population), server_optimizer="sgd", server_lr=0.1, rounds=rounds,
        eval_every=10**6, units=2)


def coordinator_alone(population: int, sampled: int, rounds: int) -> dict:
    """Seconds per round of the coordinator driven in process, and the bytes it holds per
    registered client: what a federation of `population` clients holds after its rounds
    beyond one of only the `sampled` clients, per client more."""
    def federation(clients: int):
        from fedstream.coordinator.config import FederationConfig
        from fedstream.coordinator.federation import Federation
        from fedstream.coordinator.models import build_model
        model = build_model("logistic", 0, CLASSES, (FEATURES,))
        return Federation(FederationConfig(**recipe(clients, sampled, rounds)), model,
                          [1] * clients)

    def held(clients: int) -> int:
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        fed = federation(clients)
        drive(fed, 3)
        held = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        del fed
        return held

    def drive(fed, count: int) -> list[float]:
        from fedstream.common.protocol import Action, UpdateMeta
        worker, task, _ = fed.join("bench", "/CPU:0")
        zeros = [np.zeros(s.shape, np.float32) for s in task.update_specs]
        times = []
        for _ in range(count):
            started = time.perf_counter()
            for _ in range(2):
                a = fed.assignment(worker, 0)
                assert a.action is Action.TRAIN, a
                fed.push(UpdateMeta(worker, a.round, a.version, a.unit, a.client_ids,
                                    len(a.client_ids), len(a.client_ids)), zeros)
            times.append(time.perf_counter() - started)
        return times

    times = drive(federation(population), rounds)
    extra = population - sampled
    return {"round_s_median": statistics.median(times[WARMUP:]),
            "bytes_per_registered_client": (held(population) - held(sampled)) / extra
            if extra else None}


def data_file(folder: Path, population: int) -> Path:
    """One example per client: `population` training examples, 1,000 held out."""
    path = folder / f"scale-{population}.npz"
    if not path.exists():
        rng = np.random.default_rng(population)
        np.savez(path, x_train=rng.standard_normal((population, FEATURES), np.float32),
                 y_train=rng.integers(0, CLASSES, population),
                 x_test=rng.standard_normal((1000, FEATURES), np.float32),
                 y_test=rng.integers(0, CLASSES, 1000))
    return path


def measured(folder: Path, population: int, sampled: int, rounds: int, mode: str) -> dict:
    """`fedstream run --workers 2` or `fedstream simulate --units 2` on the population."""
    out = folder / f"{mode}-{population}-{sampled}"
    out.mkdir(parents=True, exist_ok=True)
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in recipe(population, sampled,
                                                                 rounds).items()]
    data = ["--data-format", "arrays", "--data", str(data_file(folder, population)),
            "--num-classes", str(CLASSES), "--partitioner", "iid", "--clients", str(population)]
    argv = (fedstream("run", "--out", str(out), "--quiet", "--workers", "2",
                      "--worker-threads", "1", *data, *flags) if mode == "run" else
            fedstream("simulate", "--threads", "1", "--metrics", str(out / "metrics.jsonl"),
                      *data, *flags))
    started = time.monotonic()
    rss, _ = run_mode(argv)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steady = rows[WARMUP:]

    def median(key):
        return statistics.median(r.get(key, 0.0) for r in steady)
    units = 1 if mode == "run" else 2  # simulate computes its units one after another
    compute = units * median("compute_s")
    return {"round_s_median": median("round_s"), "compute_s_median": compute,
            "overhead_s_median": median("round_s") - compute,
            "peak_rss_mb": rss, "wall_s": time.monotonic() - started,
            "bytes_per_round": {k: median(k) for k in ("pull_bytes", "fetch_bytes",
                                                       "push_bytes")}}


def tables(results: dict) -> str:
    lines = ["| registered | sampled | coordinator alone: ms/round | bytes per registered "
             "client | simulate: ms/round (not compute) | run: ms/round (not compute) | "
             "run: coordinator / data pool / worker peak RSS MB |", "|---|---|---|---|---|---|---|"]
    for key, r in results["cells"].items():
        population, sampled = key.split("x")
        alone, sim, run = r["coordinator_alone"], r.get("simulate"), r.get("run")
        per_client = alone["bytes_per_registered_client"]

        def ms(m):
            return (f"{1000 * m['round_s_median']:.1f} ({1000 * m['overhead_s_median']:.1f})"
                    if m else "-")
        rss = (" / ".join(f"{run['peak_rss_mb'].get(k, 0):.0f}"
                          for k in ("coordinator", "datapool", "worker-0")) if run else "-")
        lines.append(f"| {int(population):,} | {int(sampled):,} | "
                     f"{1000 * alone['round_s_median']:.1f} | "
                     f"{'-' if per_client is None else f'{per_client:.0f}'} | {ms(sim)} | "
                     f"{ms(run)} | {rss} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--populations", type=int, nargs="*", default=list(POPULATIONS))
    p.add_argument("--no-run", action="store_true", help="the coordinator alone only")
    p.add_argument("--out", type=Path, default=HERE / "results" / "scale.json")
    args = p.parse_args()
    results = {"machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
               "rounds": args.rounds, "cells": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for population in args.populations:
            for sampled in SAMPLED:
                if sampled > population:
                    continue
                cell = {"coordinator_alone": coordinator_alone(population, sampled,
                                                               args.rounds)}
                if not args.no_run:
                    for mode in ("simulate", "run"):
                        cell[mode] = measured(Path(tmp), population, sampled, args.rounds,
                                              mode)
                results["cells"][f"{population}x{sampled}"] = cell
                print(json.dumps({f"{population}x{sampled}": cell}), flush=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(tables(results))


if __name__ == "__main__":
    main()
