"""The worker loop against the in-process coordinator and data pool: no network."""

import threading

import numpy as np

from fedstream.common.protocol import Action
from fedstream.coordinator.config import FederationConfig
from fedstream.coordinator.federation import Federation
from fedstream.worker.loop import BatchPrefetcher, WorkerLoop

from conftest import synthetic_store, tiny_model


class CountingStore:
    """The real store, counting the requests that reach it."""

    def __init__(self, store):
        self.store = store
        self.calls = []
        self.lock = threading.Lock()

    def batches(self, client_ids, step, batch_size):
        with self.lock:
            self.calls.append((tuple(client_ids), step))
        return self.store.batches(client_ids, step, batch_size)


def test_prefetched_batches_are_used_and_equal_a_direct_fetch():
    store = synthetic_store()
    counting = CountingStore(store)
    prefetcher = BatchPrefetcher(counting)
    prefetcher.prefetch((1, 2), 3, 8)
    got = prefetcher.get((1, 2), 3, 8)
    assert counting.calls == [((1, 2), 3)]
    for g, w in zip(got, store.batches([1, 2], 3, 8)):
        np.testing.assert_array_equal(g.x, w.x)
    prefetcher.get((1, 2), 4, 8)  # not prefetched: fetched directly
    assert counting.calls[-1] == ((1, 2), 4)
    prefetcher.close()


def test_loop_trains_to_stop_and_every_unit_is_pushed_once():
    store = synthetic_store(n_train=240, n_clients=8)
    config = FederationConfig(rounds=4, units=2, batch_size=8, server_optimizer="sgd",
                              server_lr=0.1)
    rows = []
    fed = Federation(config, tiny_model(), store.summary.client_sizes, on_metrics=rows.append)
    loop = WorkerLoop(fed, CountingStore(store), name="t", device="/CPU:0")
    loop.run()
    assert fed.phase == "done" and loop.units_done == 8 and fed.version == 5
    assert [r["round"] for r in rows] == [1, 2, 3, 4]
    assert all(r["fetch_bytes"] > 0 and r["push_bytes"] > 0 for r in rows)
    assert fed.assignment(loop.worker_id, 0).action is Action.STOP


class Flaky:
    """Wraps a port: the named methods first fail with the given errors, then work."""

    def __init__(self, port, failures):
        self._port = port
        self._failures = failures  # {method: [exception, ...]}
        self.calls = []

    def __getattr__(self, name):
        method = getattr(self._port, name)

        def call(*args, **kwargs):
            self.calls.append(name)
            queue = self._failures.get(name, [])
            if queue:
                raise queue.pop(0)
            return method(*args, **kwargs)
        return call


def test_unavailable_services_are_retried_and_a_forgetful_coordinator_rejoined():
    from fedstream.common.errors import NotFound, Unavailable
    store = synthetic_store(n_train=240, n_clients=8)
    config = FederationConfig(rounds=3, units=2, batch_size=8, server_optimizer="sgd")
    fed = Federation(config, tiny_model(), store.summary.client_sizes)
    coordinator = Flaky(fed, {"assignment": [Unavailable("down"), NotFound("who?")],
                              "push": [Unavailable("down")]})
    data = Flaky(store, {"batches": [Unavailable("restarting")] * 2})
    loop = WorkerLoop(coordinator, data, name="t", device="/CPU:0", prefetch=False)
    first_id = loop.worker_id
    loop.run()
    assert fed.phase == "done" and fed.version == 4
    assert loop.worker_id != first_id and coordinator.calls.count("join") == 2
    assert loop.units_done == 6
