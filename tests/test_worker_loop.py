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
        self.threads = []  # which thread asked: "prefetch..." for a background guess
        self.lock = threading.Lock()

    def batches(self, client_ids, step, batch_size):
        with self.lock:
            self.calls.append((tuple(client_ids), step))
            self.threads.append(threading.current_thread().name)
        return self.store.batches(client_ids, step, batch_size)

    def info(self):
        return self.store.info()

    def test_set(self):
        return self.store.test_set()


def test_repeating_clients_are_prefetched_and_equal_a_direct_fetch():
    store = synthetic_store()
    counting = CountingStore(store)
    prefetcher = BatchPrefetcher(counting)
    prefetcher.get((1, 2), 3, 8)
    prefetcher.get((1, 2), 4, 8)  # the clients repeat: step 5 is fetched in the background
    got = prefetcher.get((1, 2), 5, 8)
    prefetcher.close()
    # step 5 was fetched once, in the background; close() may cancel the guess of step 6
    assert counting.calls[:3] == [((1, 2), 3), ((1, 2), 4), ((1, 2), 5)]
    assert counting.calls[3:] in ([], [((1, 2), 6)])
    assert [t.startswith("prefetch") for t in counting.threads[:3]] == [False, False, True]
    for g, w in zip(got, store.batches([1, 2], 5, 8)):
        np.testing.assert_array_equal(g.x, w.x)


def test_changing_clients_are_fetched_on_demand_only():
    counting = CountingStore(synthetic_store())
    prefetcher = BatchPrefetcher(counting)
    for clients in [(1, 2), (3, 4), (3, 5), (6, 7)]:
        prefetcher.get(clients, 0, 8)
    prefetcher.close()
    assert counting.calls == [((1, 2), 0), ((3, 4), 0), ((3, 5), 0), ((6, 7), 0)]
    assert not any(t.startswith("prefetch") for t in counting.threads)


def test_loop_trains_to_stop_and_every_unit_is_pushed_once():
    store = synthetic_store(n_train=240, n_clients=8)
    config = FederationConfig(rounds=4, units=2, batch_size=8, server_optimizer="sgd",
                              server_lr=0.1)
    rows = []
    fed = Federation(config, tiny_model(), store.summary.client_sizes, on_metrics=rows.append)
    loop = WorkerLoop(fed, CountingStore(store), name="t", device="/CPU:0")
    loop.run()
    assert fed.phase == "done" and loop.units_done == 8 and fed.server.version == 5
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
    assert fed.phase == "done" and fed.server.version == 4
    assert loop.worker_id != first_id and coordinator.calls.count("join") == 2
    assert loop.units_done == 6
