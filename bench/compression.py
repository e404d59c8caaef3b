"""Bytes on the wire per encoding: `python bench/compression.py` (about 4 minutes on 2 cores;
writes bench/results/compression.json and prints Markdown tables).

Every encoding side by side in one run, each a `fedstream run` with 2 worker processes on
loopback (real gRPC, real bytes), on two workloads:

  reference  FedSGD, the reference MLP, 100 clients, batch 32, server Adam (30 rounds)
  W2         FedAvg, 2NN, 100 IID clients, 10 per round, E=1, B=10, client SGD 0.1
             (30 rounds, pixels normalised)

Per round (medians after 3 warm-up rounds): bytes pushed (updates, workers to coordinator)
and pulled (weights), rounds per second, and the test accuracy after the last round. The
last rows send weights as bfloat16, or as bfloat16 changes from the version held. Then, per
encoding, what decoding the reference model's update allocates, as a multiple of the decoded
float32 bytes (tracemalloc).
"""

from __future__ import annotations

import json
import platform
import statistics
import tempfile
import tracemalloc
from pathlib import Path

import numpy as np
from local_run import local_run

HERE = Path(__file__).resolve().parent
WARMUP = 3
WORKLOADS = {
    "reference": ["--rounds", "30", "--eval-every", "30"],
    "W2": ["--rounds", "30", "--eval-every", "30", "--model", "2nn", "--update", "delta",
           "--client-fraction", "0.1", "--local-epochs", "1", "--local-batch-size", "10",
           "--client-lr", "0.1", "--normalize", "--server-optimizer", "sgd", "--server-lr", "1",
           "--weighting", "examples", "--partitioner", "iid"],
}
ENCODINGS = {
    "raw": [],
    "float16": ["--update-encoding", "float16"],
    "bfloat16": ["--update-encoding", "bfloat16"],
    "int8": ["--update-encoding", "int8"],
    "int8-block": ["--update-encoding", "int8-block"],
    "topk 1%": ["--update-encoding", "topk", "--topk-fraction", "0.01"],
    "topk 10%": ["--update-encoding", "topk", "--topk-fraction", "0.1"],
    "int8 + bfloat16 weights": ["--update-encoding", "int8", "--weights-encoding", "bfloat16"],
    "int8 + bfloat16 weight deltas": ["--update-encoding", "int8", "--weights-encoding",
                                      "bfloat16", "--weights-delta"],
}


def measure(flags: list[str], out: Path) -> dict:
    rows, wall_s = local_run(["--workers", "2", "--worker-threads", "1", "--quiet", *flags], out)
    steady = rows[WARMUP:]
    return {"wall_s": wall_s,
            "push_bytes": statistics.median(r["push_bytes"] for r in steady),
            "pull_bytes": statistics.median(r["pull_bytes"] for r in steady),
            "rounds_per_s": statistics.median(r["rounds_per_s"] for r in steady),
            "test_acc": rows[-1]["test_acc"]}


def decode_allocation() -> dict[str, float]:
    """Peak bytes allocated while decoding the reference MLP's update, over its float32 size."""
    from fedstream.common.codecs import Encoding, decode, encode
    from fedstream.common.tensors import TensorSpec
    shapes = [(784, 128), (128,), (128, 1280), (1280,), (1280, 10), (10,)]
    rng = np.random.default_rng(0)
    arrays = [rng.normal(size=s).astype("<f4") for s in shapes]
    specs = [TensorSpec(str(i), np.dtype("<f4"), s) for i, s in enumerate(shapes)]
    out = {}
    for encoding in Encoding:
        payload = bytearray(encode(encoding, arrays, rng=rng, topk_fraction=0.01))
        tracemalloc.start()
        decode(encoding, specs, payload)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        out[encoding.value] = peak / sum(a.nbytes for a in arrays)
    return out


def main() -> None:
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for workload, recipe in WORKLOADS.items():
            for name, flags in ENCODINGS.items():
                r = measure([*recipe, *flags], Path(tmp) / f"{workload}-{name}".replace(" ", "_"))
                results.setdefault(workload, {})[name] = r
                print(workload, name, json.dumps(r), flush=True)
    allocation = decode_allocation()
    out = HERE / "results" / "compression.json"
    out.write_text(json.dumps({"machine": platform.platform(), "workloads": WORKLOADS,
                               "encodings": ENCODINGS, "results": results,
                               "decode_allocation_x_float32": allocation}, indent=1))
    for workload, rows in results.items():
        raw = rows["raw"]
        print(f"\n{workload}\n\n| encoding | pushed per round | pulled per round | rounds/s | "
              "test acc |\n|---|---|---|---|---|")
        for name, r in rows.items():
            print(f"| {name} | {r['push_bytes'] / 1e6:.3f} MB ({r['push_bytes'] / raw['push_bytes']:.2f}x) "
                  f"| {r['pull_bytes'] / 1e6:.2f} MB | {r['rounds_per_s']:.1f} "
                  f"({r['rounds_per_s'] / raw['rounds_per_s']:.2f}x) | {r['test_acc']:.4f} |")
    print("\ndecoding allocates (x the float32 bytes): " +
          ", ".join(f"{k} {v:.2f}" for k, v in allocation.items()))
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
