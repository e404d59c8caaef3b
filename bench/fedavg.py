"""FedAvg workloads beside the reference recipe: `python bench/fedavg.py` (about 7 minutes on
2 cores; writes bench/results/fedavg.json and prints a Markdown summary).

  W2  FedAvg, 2NN, 100 IID clients, 10 per round, E=1, B=10, client SGD 0.1
  W3  FedAvg, CNN, the same clients, E=5, B=10, client SGD 0.05

For each workload, side by side in one run: `fedstream simulate`, `fedstream run --workers 2`,
a plain TensorFlow loop as a TensorFlow user writes it by hand (one `tf.function` train step,
clients one after another: `--plain`), a JAX loop that vectorises the clients
(bench/jax_fedavg.py, run by `--jax-python`, an interpreter with JAX: a venv of its own, or
this one after `pip install -e ".[bench]"`; skipped with the reason when JAX does not
import), and the compute floor: the workload's FLOPs per round divided by the fp32 matmul
rate measured on this machine. Rounds per second are medians over the rounds after warm-up.

W3 also gets a profile (`--profile`): one unit's local training (5 clients, as in
`simulate --units 2`) under TensorFlow's profiler, its CPU time summed by kind of operation,
which shows where the time above the compute floor goes.
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

HERE = Path(__file__).resolve().parent
CLIENTS, PER_ROUND, BATCH = 100, 10, 10
WORKLOADS = {
    "W2": {"model": "2nn", "epochs": 1, "lr": 0.1, "rounds": 15, "warmup": 2},
    "W3": {"model": "cnn", "epochs": 5, "lr": 0.05, "rounds": 4, "warmup": 1},
}
# XLA on this CPU runs the client-vmapped CNN at about 270 s per round (measured): only with
# --jax-cnn, for machines where that is worth waiting for (an accelerator)
JAX_CNN_SKIPPED = "skipped: about 270 s per round on a 2-core CPU; --jax-cnn runs it"


def fedstream_flags(w: dict) -> list[str]:
    return ["--model", w["model"], "--normalize", "--update", "delta", "--local-epochs",
            str(w["epochs"]), "--local-batch-size", str(BATCH), "--client-lr", str(w["lr"]),
            "--client-fraction", str(PER_ROUND / CLIENTS), "--weighting", "examples",
            "--server-optimizer", "sgd", "--server-lr", "1", "--partitioner", "iid",
            "--clients", str(CLIENTS), "--rounds", str(w["rounds"]), "--eval-every", "1000000"]


def median_round_s(rows: list[dict], warmup: int) -> float:
    return statistics.median(r["round_s"] for r in rows[warmup:])


def run_json(argv: list[str], path: Path) -> list[dict]:
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    text = path.read_text()
    return json.loads(text) if text.startswith("[") else [json.loads(line)
                                                          for line in text.splitlines()]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "fedstream.cli", "--log-level", "WARNING", *args]


def simulate(w: dict, tmp: Path) -> float:
    metrics = tmp / "simulate.jsonl"
    metrics.unlink(missing_ok=True)
    rows = run_json(cli("simulate", "--units", "2", "--metrics", str(metrics),
                        *fedstream_flags(w)), metrics)
    return median_round_s(rows, w["warmup"])


def distributed(w: dict, tmp: Path) -> float:
    out = Path(tempfile.mkdtemp(prefix="run-", dir=tmp))
    rows = run_json(cli("run", "--workers", "2", "--out", str(out), "--quiet",
                        *fedstream_flags(w)), out / "metrics.jsonl")
    return median_round_s(rows, w["warmup"])


def plain(w: dict, tmp: Path) -> float:
    path = tmp / "plain.json"
    rows = run_json([sys.executable, __file__, "--plain", json.dumps(w), "--json", str(path)],
                    path)
    return median_round_s(rows, w["warmup"])


def jax_loop(w: dict, tmp: Path, python: str) -> float | str:
    path = tmp / "jax.json"
    proc = subprocess.run([python, str(HERE / "jax_fedavg.py"), "--model", w["model"],
                           "--epochs", str(w["epochs"]), "--lr", str(w["lr"]),
                           "--rounds", str(w["rounds"]), "--json", str(path)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return f"skipped: {(proc.stderr.strip().splitlines() or ['failed'])[-1]}"
    return median_round_s(json.loads(path.read_text()), w["warmup"])


def plain_loop(w: dict, json_path: str) -> None:
    """The loop a TensorFlow user writes: one compiled train step, called once per minibatch,
    clients one after another, the server averaging the client models (FedAvg, lr 1)."""
    import keras
    import numpy as np
    import tensorflow as tf

    from fedstream.coordinator.models import build_model
    from fedstream.datapool.server import DataConfig, build_store

    store = build_store(DataConfig(clients=CLIENTS, partitioner="iid"))
    model = build_model(w["model"], seed=0)
    optimizer = keras.optimizers.SGD(learning_rate=w["lr"])

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            out = model(tf.cast(x, tf.float32) / 255.0, training=True)
            loss = tf.reduce_mean(keras.losses.categorical_crossentropy(tf.one_hot(y, 10), out))
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_weights),
                                      model.trainable_weights))

    rng = np.random.default_rng(0)
    rows = []
    for round_number in range(w["rounds"]):
        t0 = time.perf_counter()
        start = [v.numpy() for v in model.trainable_weights]
        total, n_total = [np.zeros_like(s) for s in start], 0
        for client in rng.choice(CLIENTS, PER_ROUND, replace=False):
            x, y = store.client(int(client))
            for variable, value in zip(model.trainable_weights, start):
                variable.assign(value)
            for _ in range(w["epochs"]):
                order = rng.permutation(len(y))
                for begin in range(0, len(y), BATCH):
                    chosen = order[begin:begin + BATCH]
                    step(x[chosen], y[chosen].astype(np.int32))
            for t, v in zip(total, model.trainable_weights):
                t += len(y) * v.numpy()
            n_total += len(y)
        for variable, t in zip(model.trainable_weights, total):
            variable.assign(t / n_total)
        rows.append({"round": round_number + 1, "round_s": time.perf_counter() - t0})
    Path(json_path).write_text(json.dumps(rows))


# TensorFlow op types by what they do in a training step
OP_KINDS = {
    "convolution, forward": ("Conv2D", "FusedConv2D"),
    "convolution, input gradient": ("Conv2DBackpropInput",),
    "convolution, filter gradient": ("Conv2DBackpropFilter", "Conv2DBackpropFilterWithBias"),
    "dense matmuls": ("MatMul", "FusedMatMul", "BatchMatMulV2"),
    "optimizer update": ("AssignSubVariableOp", "AssignAddVariableOp", "AssignVariableOp", "Mul",
                         "Sub", "AddV2"),
    "pooling": ("MaxPool", "MaxPoolGrad"),
    "activations and loss": ("Relu", "ReluGrad", "BiasAddGrad", "Softmax",
                             "SoftmaxCrossEntropyWithLogits"),
    "idle": ("IDLE",),  # the profiler's threads waiting: left out of the shares
}


def op_kind(op_type: str) -> str:
    bare = op_type.removeprefix("_Mkl").removeprefix("Native")
    return next((kind for kind, types in OP_KINDS.items() if bare in types), "other")


def profile_unit(w: dict, json_path: str) -> None:
    """One W3 unit (5 clients) trained under TensorFlow's profiler after a warm-up unit;
    writes its wall time and the CPU time of each kind of operation."""
    import glob

    import tensorflow as tf
    from tensorflow.python.profiler.internal import _pywrap_profiler_plugin as plugin

    from fedstream.cli.main import parse
    from fedstream.cli.simulate import config_from_args
    from fedstream.common.protocol import Batch
    from fedstream.coordinator.build import build_federation
    from fedstream.datapool.server import build_store
    from fedstream.worker.computers import make_computer

    config = config_from_args(parse(["simulate", *fedstream_flags(w)]))
    store = build_store(config.data)
    federation = build_federation(config.federation, store.summary,
                                  (store.x_test[:10], store.y_test[:10]), lambda row: None)
    computer = make_computer(federation.task, "/CPU:0")
    computer.set_weights([v.numpy() for v in federation.server.model.weights])
    unit = [Batch(c, 0, *store.client(c)) for c in range(PER_ROUND // 2)]
    computer.compute(unit, round_number=1)
    logdir = tempfile.mkdtemp(prefix="fedstream-profile-")
    tf.profiler.experimental.start(logdir)
    t0 = time.perf_counter()
    computer.compute(unit, round_number=2)
    wall = time.perf_counter() - t0
    tf.profiler.experimental.stop()
    space = sorted(glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True))[-1]
    data, _ = plugin.xspace_to_tools_data([space], "framework_op_stats", {})
    table = json.loads(data)[0]
    columns = [c["id"] for c in table["cols"]]
    cpu_s: dict[str, float] = {}
    for row in table["rows"]:
        op = dict(zip(columns, (c.get("v") for c in row["c"])))
        kind = op_kind(op["type"])
        cpu_s[kind] = cpu_s.get(kind, 0.0) + op["total_self_time"] / 1e6
    steps = len(unit) * w["epochs"] * (len(unit[0].y) // BATCH)
    Path(json_path).write_text(json.dumps({
        "unit_wall_s": wall, "client_steps": steps,
        "unit_flops": 3 * forward_flops(w["model"]) * BATCH * steps,
        "cpu_s_by_kind": dict(sorted(cpu_s.items(), key=lambda kv: -kv[1]))}))


def profile(w: dict, tmp: Path) -> dict | str:
    path = tmp / "profile.json"
    proc = subprocess.run([sys.executable, __file__, "--profile", json.dumps(w), "--json",
                           str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        return f"skipped: {(proc.stderr.strip().splitlines() or ['failed'])[-1]}"
    return json.loads(path.read_text())


def forward_flops(model_name: str) -> float:
    """Multiply-adds x 2 of one example's forward pass, from the model's layers."""
    from fedstream.coordinator.models import build_model
    flops = 0.0
    for layer in build_model(model_name, seed=0).layers:
        kind = type(layer).__name__
        if kind == "Dense":
            flops += 2.0 * layer.kernel.shape[0] * layer.kernel.shape[1]
        elif kind == "Conv2D":
            kh, kw, cin, cout = layer.kernel.shape
            _, h, wd, _ = layer.output.shape
            flops += 2.0 * kh * kw * cin * cout * h * wd
    return flops


def round_flops(w: dict, examples_per_client: int) -> float:
    """Training costs about three forward passes (forward, and two matmuls backward)."""
    return 3 * forward_flops(w["model"]) * PER_ROUND * examples_per_client * w["epochs"]


def matmul_rate() -> float:
    """fp32 GFLOP/s of TensorFlow's matmul on this machine (2048^3, best of 10)."""
    import tensorflow as tf
    n = 2048
    a, b = tf.random.normal([n, n]), tf.random.normal([n, n])
    matmul = tf.function(lambda a, b: tf.matmul(a, b))
    matmul(a, b).numpy()
    best = min(_timed(lambda: matmul(a, b).numpy()) for _ in range(10))
    return 2 * n ** 3 / best / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure_machine(json_path: str) -> None:
    Path(json_path).write_text(json.dumps({
        "matmul_gflops": matmul_rate(),
        "forward_flops": {w["model"]: forward_flops(w["model"]) for w in WORKLOADS.values()}}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jax-python", default=sys.executable,
                   help="interpreter that has JAX (default: this one)")
    p.add_argument("--jax-cnn", action="store_true", help="run the JAX loop for W3 too")
    p.add_argument("--tag", default="fedavg", help="result file: bench/results/<tag>.json")
    p.add_argument("--plain", default=None, help=argparse.SUPPRESS)
    p.add_argument("--profile", default=None, help=argparse.SUPPRESS)
    p.add_argument("--machine", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--json", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.plain:
        plain_loop(json.loads(args.plain), args.json)
        return
    if args.machine:
        measure_machine(args.json)
        return
    if args.profile:
        profile_unit(json.loads(args.profile), args.json)
        return
    tmp = Path(tempfile.mkdtemp(prefix="fedstream-fedavg-"))
    subprocess.run([sys.executable, __file__, "--machine", "--json", str(tmp / "machine.json")],
                   check=True, stderr=subprocess.DEVNULL)
    machine = json.loads((tmp / "machine.json").read_text())
    examples_per_client = 60_000 // CLIENTS
    results = {}
    for name, w in WORKLOADS.items():
        run_jax = w["model"] != "cnn" or args.jax_cnn
        r = {"simulate_s": simulate(w, tmp), "distributed_s": distributed(w, tmp),
             "plain_tf_s": plain(w, tmp),
             "jax_vmap_s": jax_loop(w, tmp, args.jax_python) if run_jax else JAX_CNN_SKIPPED}
        flops = round_flops(w, examples_per_client)
        r["floor_s"] = flops / (machine["matmul_gflops"] * 1e9)
        r["gflop_per_round"] = flops / 1e9
        if w["model"] == "cnn":
            r["profile"] = profile(w, tmp)
        results[name] = r
        print(name, json.dumps(r), flush=True)
    report = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), **machine},
              "workloads": WORKLOADS, "results": results}
    out = HERE / "results" / f"{args.tag}.json"
    out.write_text(json.dumps(report, indent=1))
    print(markdown(results))
    print(f"\nwritten to {out}")


def markdown(results: dict) -> str:
    lines = ["| workload | simulate | run --workers 2 | plain TF loop | JAX vmap loop | compute "
             "floor | simulate / floor | run / simulate | simulate vs JAX |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        jax = r["jax_vmap_s"]
        jax_text = f"{jax:.3f} s" if isinstance(jax, float) else jax
        vs_jax = f"{jax / r['simulate_s']:.2f}x" if isinstance(jax, float) else "-"
        lines.append(f"| {name} | {r['simulate_s']:.3f} s | {r['distributed_s']:.3f} s | "
                     f"{r['plain_tf_s']:.3f} s | {jax_text} | {r['floor_s']:.3f} s | "
                     f"{r['simulate_s'] / r['floor_s']:.2f} | "
                     f"{r['simulate_s'] / r['distributed_s']:.2f} | {vs_jax} |")
    for name, r in results.items():
        p = r.get("profile")
        if isinstance(p, dict):
            busy = {k: s for k, s in p["cpu_s_by_kind"].items() if k != "idle"}
            total = sum(busy.values())
            shares = ", ".join(f"{kind} {100 * s / total:.0f}%" for kind, s in busy.items())
            lines.append(f"\n{name}, one unit profiled: {p['unit_wall_s']:.2f} s for "
                         f"{p['client_steps']} client steps "
                         f"({p['unit_flops'] / p['unit_wall_s'] / 1e9:.0f} GFLOP/s), "
                         f"{total:.2f} s of operations' CPU time: {shares}")
        elif p:
            lines.append(f"\n{name} profile: {p}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
