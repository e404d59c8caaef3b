"""Client data held in memory: every client's shard stored contiguously, batches as views."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from fedstream.common.errors import InvalidArgument, ResourceExhausted
from fedstream.common.protocol import Batch, DatasetSummary, steps_per_pass
from fedstream.datapool.partition import label_histograms, partition

MAX_BATCH_SIZE = 65536
MAX_CLIENTS_PER_REQUEST = 100_000


class ClientStore:
    """The partitioned training set and the test set; answers batch requests by slicing."""

    def __init__(self, x: np.ndarray, y: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, *,
                 partitioner: str, n_clients: int, seed: int, dataset: str, num_classes: int,
                 dirichlet_alpha: float = 0.5, min_client_size: int = 10,
                 max_clients_per_request: int = MAX_CLIENTS_PER_REQUEST, site: str = "",
                 client_ids: np.ndarray | None = None):
        shards = partition(partitioner, y, n_clients, seed, alpha=dirichlet_alpha,
                           min_size=min_client_size, client_ids=client_ids)
        order = np.concatenate(shards)
        self._x = np.ascontiguousarray(x[order])
        self._y = np.ascontiguousarray(y[order])
        sizes = np.array([len(s) for s in shards], dtype=np.int64)
        self._starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        self.x_test, self.y_test = x_test, y_test
        self.max_clients_per_request = max_clients_per_request
        self.summary = DatasetSummary(
            dataset=dataset, partitioner=partitioner, seed=seed,
            client_sizes=tuple(sizes.tolist()), example_shape=tuple(x.shape[1:]),
            example_dtype=x.dtype, num_classes=num_classes, num_test=len(x_test),
            label_histograms=tuple(map(tuple, label_histograms(y, shards, num_classes).tolist())),
            site=site)

    def info(self, label_counts: bool = False) -> DatasetSummary:
        """The summary; the clients' label histograms only when asked for."""
        return self.summary if label_counts else dataclasses.replace(self.summary,
                                                                     label_histograms=())

    def test_set(self) -> tuple[np.ndarray, np.ndarray]:
        return self.x_test, self.y_test

    def client(self, client_id: int) -> tuple[np.ndarray, np.ndarray]:
        start = self._starts[client_id]
        end = start + self.summary.client_sizes[client_id]
        return self._x[start:end], self._y[start:end]

    def batches(self, client_ids: Sequence[int], step: int, batch_size: int) -> list[Batch]:
        """Batch `step` (modulo the client's pass) of each client, as views of the store."""
        self.check_request(client_ids, batch_size)
        out = []
        for cid in client_ids:
            x, y = self.client(cid)
            s = step % steps_per_pass(len(x), batch_size)
            window = slice(s * batch_size, (s + 1) * batch_size)
            out.append(Batch(cid, step, x[window], y[window]))
        return out

    def check_request(self, client_ids: Sequence[int], batch_size: int) -> None:
        n = self.summary.num_clients
        if not client_ids:
            raise InvalidArgument("the request lists no client ids: ask for at least one client")
        if not 1 <= batch_size <= MAX_BATCH_SIZE:
            raise InvalidArgument(f"batch_size {batch_size} is out of range: ask for 1..{MAX_BATCH_SIZE}")
        if len(client_ids) > self.max_clients_per_request:
            raise ResourceExhausted(f"{len(client_ids)} clients in one request; split it into "
                                    f"requests of at most {self.max_clients_per_request}")
        bad = [c for c in client_ids if not 0 <= c < n]
        if bad:
            raise InvalidArgument(f"unknown client ids {bad[:5]}: this pool serves clients 0..{n - 1}")
