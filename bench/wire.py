"""Weight and update streams against the transport's ceiling, side by side.

A server process serves two things on one port: a bytes-only echo service (no protobuf, no
numpy: raw 1 MiB chunks, the most a Python gRPC stream can do here) and a real Coordinator
holding the reference model. The client alternates an echo pull with a real PullWeights and
an echo push with a real PushUpdate of the same byte count, and reports medians.

    python bench/wire.py --repeats 100 --json wire.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import grpc

from fedstream.common.clients import CHANNEL_OPTIONS
from fedstream.common.grpc_server import create_server, publish_address
from fedstream.common.memory import keep_chunk_buffers_in_heap
from fedstream.common.tensors import CHUNK_BYTES

ECHO_SERVICE = "fedstream.bench.Echo"


def _echo_handler() -> grpc.GenericRpcHandler:
    def pull(request: bytes, context):
        remaining = int.from_bytes(request, "little")
        chunk = bytes(CHUNK_BYTES)
        while remaining > 0:
            yield chunk[:remaining]
            remaining -= CHUNK_BYTES

    def push(chunks, context):
        return sum(len(c) for c in chunks).to_bytes(8, "little")

    return grpc.method_handlers_generic_handler(ECHO_SERVICE, {
        "Pull": grpc.unary_stream_rpc_method_handler(pull),
        "Push": grpc.stream_unary_rpc_method_handler(push),
    })


def serve(port_file: str) -> None:
    from fedstream.common.backend import use_backend
    use_backend("tensorflow", 1)
    from fedstream.coordinator.config import FederationConfig
    from fedstream.coordinator.federation import Federation
    from fedstream.coordinator.models import build_model
    from fedstream.coordinator.servicer import CoordinatorServicer
    from fedstream.v1 import coordinator_pb2_grpc

    federation = Federation(FederationConfig(rounds=10**6, units=2), build_model("reference", 0),
                            [600] * 100)

    def register(server):
        server.add_generic_rpc_handlers((_echo_handler(),))
        coordinator_pb2_grpc.add_CoordinatorServicer_to_server(
            CoordinatorServicer(federation), server)

    server = create_server("127.0.0.1:0", register, ["fedstream.v1.Coordinator"])
    server.set_serving()
    publish_address(port_file, f"127.0.0.1:{server.port}")
    server.wait()


def measure(address: str, repeats: int) -> dict:
    import numpy as np

    from fedstream.common.clients import CoordinatorClient
    from fedstream.common.protocol import UpdateMeta

    client = CoordinatorClient(address)
    worker_id, task, _ = client.join("bench", "cpu")
    assignment = client.assignment(worker_id, 5.0)
    arrays = client.pull_weights(worker_id, 0).arrays
    update = [np.full(s.shape, 1e-3, np.float32) for s in task.update_specs]
    nbytes = sum(a.nbytes for a in arrays)
    channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
    echo_pull = channel.unary_stream(f"/{ECHO_SERVICE}/Pull")
    echo_push = channel.stream_unary(f"/{ECHO_SERVICE}/Push")
    payload = bytes(nbytes)
    chunks = [payload[i:i + CHUNK_BYTES] for i in range(0, nbytes, CHUNK_BYTES)]
    meta = UpdateMeta(worker_id, assignment.round, assignment.version, assignment.unit,
                      assignment.client_ids, 50.0, 1600)
    times = {k: [] for k in ("echo_pull", "pull_weights", "echo_push", "push_update")}
    for i in range(repeats + 5):
        t0 = time.perf_counter()
        received = sum(len(c) for c in echo_pull(nbytes.to_bytes(8, "little")))
        t1 = time.perf_counter()
        client.pull_weights(worker_id, 0)
        t2 = time.perf_counter()
        echo_push(iter(chunks))
        t3 = time.perf_counter()
        client.push(meta, update)
        t4 = time.perf_counter()
        assert received == nbytes
        if i >= 5:  # warm-up excluded
            for key, dt in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                times[key].append(dt)
    client.close()
    channel.close()
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "bytes": nbytes, "repeats": repeats,
        **{f"{k}_ms": v * 1e3 for k, v in med.items()},
        **{f"{k}_MBps": nbytes / v / 1e6 for k, v in med.items()},
        "pull_vs_wire": med["echo_pull"] / med["pull_weights"],
        "push_vs_wire": med["echo_push"] / med["push_update"],
    }


def run(repeats: int) -> dict:
    """Start the server process, measure, stop it."""
    with tempfile.TemporaryDirectory() as tmp:
        port_file = os.path.join(tmp, "addr")
        proc = subprocess.Popen([sys.executable, __file__, "--serve", port_file],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 120
            while not os.path.exists(port_file):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("wire benchmark server did not start")
                time.sleep(0.05)
            with open(port_file) as f:
                return measure(f.read().strip(), repeats)
        finally:
            proc.terminate()
            proc.wait(10)


def main() -> None:
    keep_chunk_buffers_in_heap()  # as every fedstream process does, on both sides
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repeats", type=int, default=100)
    p.add_argument("--json", default=None)
    p.add_argument("--serve", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        serve(args.serve)
        return
    result = run(args.repeats)
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
