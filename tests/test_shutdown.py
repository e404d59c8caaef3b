"""Graceful shutdown: health turns NOT_SERVING, the coordinator checkpoints on SIGTERM, a
worker on SIGTERM hands its unit back so nobody waits for its lease."""

from __future__ import annotations

import json
import signal
import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fedstream.coordinator import checkpoint
from fedstream.datapool.server import SERVICE_NAME
from fedstream.datapool.servicer import DataPoolServicer
from fedstream.v1 import datapool_pb2_grpc

from conftest import launch_service, rows, start_service, start_worker, stop, wait_for_round


def test_health_watchers_see_not_serving_when_a_server_stops(serve, store):
    server = serve(lambda s: datapool_pb2_grpc.add_DataPoolServicer_to_server(
        DataPoolServicer(store), s), [SERVICE_NAME])
    seen, first = [], threading.Event()
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    watch = health_pb2_grpc.HealthStub(channel).Watch(
        health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=10)

    def read():
        try:
            for reply in watch:
                seen.append(reply.status)
                first.set()
        except grpc.RpcError:
            pass

    reader = threading.Thread(target=read)
    reader.start()
    assert first.wait(timeout=10)
    server.stop(1.0)
    reader.join(timeout=10)
    channel.close()
    assert seen[0] == health_pb2.HealthCheckResponse.SERVING
    assert health_pb2.HealthCheckResponse.NOT_SERVING in seen


@pytest.mark.e2e
def test_sigterm_stops_workers_and_coordinator_cleanly(tmp_path):
    datapool, pool = start_service(tmp_path, "datapool")
    metrics, ckpt = tmp_path / "metrics.jsonl", tmp_path / "ckpt"
    coordinator, address = launch_service(
        tmp_path, "coordinator", "--datapool", pool, "--min-workers", "2", "--rounds", "100000",
        "--eval-every", "100000", "--lease-s", "600", "--metrics", str(metrics),
        "--checkpoint-dir", str(ckpt))
    leaver, stayer = (start_worker(tmp_path, address, pool, n) for n in ("leaver", "stayer"))
    try:
        wait_for_round(metrics, 3, [datapool, coordinator, leaver, stayer])
        leaver.send_signal(signal.SIGTERM)
        assert leaver.wait(timeout=60) == 0
        seen = len(rows(metrics))
        # with a 600 s lease, progress now proves the leaver handed its unit back
        wait_for_round(metrics, seen + 3, [datapool, coordinator, stayer], timeout_s=60)
        coordinator.send_signal(signal.SIGTERM)
        assert coordinator.wait(timeout=60) == 0
    finally:
        stop(stayer, leaver, coordinator, datapool)
    assert "left the federation" in (tmp_path / "leaver.log").read_text()
    saved = checkpoint.load(ckpt)
    last = rows(metrics)[-1]
    assert saved.round == last["round"] and saved.version == last["version"]
    assert sum(r["leases_expired"] for r in rows(metrics)) == 0
    assert json.loads(json.dumps(saved.config))["units"] == 2
