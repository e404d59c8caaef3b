"""Fifty concurrent protocol clients on loopback: every accepted update counted exactly once."""

from __future__ import annotations

import threading

import numpy as np

from fedstream.common.clients import CoordinatorClient
from fedstream.common.errors import FailedPrecondition
from fedstream.common.protocol import Action, UpdateMeta
from fedstream.coordinator.config import FederationConfig
from fedstream.coordinator.federation import Federation
from fedstream.coordinator.server import SERVICE_NAME
from fedstream.coordinator.servicer import CoordinatorServicer
from fedstream.v1 import coordinator_pb2_grpc

from conftest import tiny_model

CLIENTS, ROUNDS = 50, 4


def synthetic_worker(address: str, outcomes: list, errors: list) -> None:
    """Joins, and for each unit pushes `unit + 1` everywhere (weighted by its client count),
    twice: the second push must be a duplicate or find the round closed."""
    client = CoordinatorClient(address)
    try:
        worker_id, task, _ = client.join("synthetic", "none")
        version = 0
        while True:
            a = client.assignment(worker_id, 5.0)
            if a.action is Action.STOP:
                return
            if a.action is Action.WAIT:
                continue
            if a.version != version:
                version = client.pull_weights(worker_id, version).version
            n = len(a.client_ids)
            update = [np.full(s.shape, (a.unit + 1) * n, np.float32) for s in task.update_specs]
            meta = UpdateMeta(worker_id, a.round, version, a.unit, a.client_ids, float(n), 32 * n)
            for _ in range(2):
                try:
                    outcomes.append(client.push(meta, update))
                except FailedPrecondition:
                    outcomes.append("closed")
    except Exception as e:  # noqa: BLE001 - reported to the test thread
        errors.append(e)
    finally:
        client.close()


def test_fifty_concurrent_workers(serve):
    rows = []
    federation = Federation(
        FederationConfig(rounds=ROUNDS, units=CLIENTS, min_workers=CLIENTS,
                         server_optimizer="sgd", server_lr=1.0),
        tiny_model(), [32] * (2 * CLIENTS), on_metrics=rows.append)
    before = [v.numpy().copy() for v in federation.server.model.trainable_variables]
    server = serve(lambda s: coordinator_pb2_grpc.add_CoordinatorServicer_to_server(
        CoordinatorServicer(federation), s), [SERVICE_NAME])
    outcomes, errors = [], []
    threads = [threading.Thread(target=synthetic_worker,
                                args=(f"127.0.0.1:{server.port}", outcomes, errors))
               for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and not any(t.is_alive() for t in threads)
    assert federation.phase == "done" and federation.server.version == ROUNDS + 1
    assert [r["updates_accepted"] for r in rows] == [CLIENTS] * ROUNDS
    accepted = [o for o in outcomes if o != "closed" and o.accepted]
    assert len(accepted) == CLIENTS * ROUNDS
    assert sum(1 for o in outcomes if o != "closed" and o.duplicate) + \
        outcomes.count("closed") == CLIENTS * ROUNDS
    mean_step = sum((u + 1) * 2 for u in range(CLIENTS)) / (2 * CLIENTS)  # = 25.5
    for b, v in zip(before, federation.server.model.trainable_variables):
        np.testing.assert_allclose(v.numpy(), b - ROUNDS * mean_step, rtol=1e-5, atol=1e-4)
