"""A cross-device population: 10^5 registered clients of one example each, 1,000 a round.
The figures against 10^6 live in bench/scale.py; here, that such a federation trains at all
in a few seconds, and that the coordinator holds at most 200 bytes per registered client."""

from __future__ import annotations

import tracemalloc

import numpy as np

from fedstream.common.protocol import Action, UpdateMeta
from fedstream.coordinator.config import FederationConfig
from fedstream.coordinator.federation import Federation
from fedstream.coordinator.models import build_model
from fedstream.datapool.store import ClientStore
from fedstream.worker.loop import WorkerLoop

POPULATION, SAMPLED = 100_000, 1000


def config(clients: int, **options) -> FederationConfig:
    return FederationConfig(**{"model": "logistic", "batch_size": 1, "units": 2,
                               "client_fraction": SAMPLED / clients, "rounds": 3,
                               "server_optimizer": "sgd", "server_lr": 0.1, **options})


def test_a_hundred_thousand_clients_train_a_round_of_a_thousand():
    rng = np.random.default_rng(0)
    store = ClientStore(rng.standard_normal((POPULATION, 10), np.float32),
                        rng.integers(0, 10, POPULATION), rng.standard_normal((100, 10), np.float32),
                        rng.integers(0, 10, 100), partitioner="iid", n_clients=POPULATION,
                        seed=0, dataset="scale", num_classes=10)
    rows = []
    fed = Federation(config(POPULATION), build_model("logistic", 0, 10, (10,)),
                     store.summary.client_sizes, on_metrics=rows.append)
    WorkerLoop(fed, store, name="w", device="/CPU:0", prefetch=False).run()
    fed.reports.flush()
    assert [(r["round"], r["clients"]) for r in rows] == [(1, SAMPLED), (2, SAMPLED),
                                                           (3, SAMPLED)]


def held_bytes(clients: int) -> int:
    """What a coordinator of `clients` registered clients holds after two rounds."""
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    fed = Federation(config(clients), build_model("logistic", 0, 10, (10,)), [1] * clients)
    worker, task, _ = fed.join("w", "/CPU:0")
    zeros = [np.zeros(s.shape, np.float32) for s in task.update_specs]
    for _ in range(4):  # two rounds of two units
        a = fed.assignment(worker, 0)
        assert a.action is Action.TRAIN
        fed.push(UpdateMeta(worker, a.round, a.version, a.unit, a.client_ids,
                            len(a.client_ids), len(a.client_ids)), zeros)
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return held


def test_the_coordinator_holds_at_most_200_bytes_per_registered_client():
    per_client = (held_bytes(POPULATION) - held_bytes(SAMPLED)) / (POPULATION - SAMPLED)
    assert per_client <= 200, f"{per_client:.0f} bytes per registered client"
