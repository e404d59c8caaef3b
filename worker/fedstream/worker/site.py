"""A worker's view of its site's data: the site's data pool (or the store it embeds),
addressed by the federation-wide client ids that assignments carry."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from fedstream.common.errors import FailedPrecondition
from fedstream.common.protocol import Batch, DataPort, DatasetSummary


def check_pool_site(summary: DatasetSummary, site: str) -> None:
    """A worker of site A must not serve site B's data pool (a pool without a site name
    serves whoever reads it)."""
    if summary.site and summary.site != site:
        raise FailedPrecondition(
            f"the data pool belongs to site {summary.site!r} but this worker serves "
            f"{site or 'the coordinator'!r}: start it with --site {summary.site} or point "
            "--datapool at its own site's pool")


class SiteClients:
    def __init__(self, data: DataPort, summary: DatasetSummary, client_id_base: int):
        self._data = data
        self.summary = summary
        self.base = client_id_base
        self._test_set: tuple[np.ndarray, np.ndarray] | None = None

    def _local(self, client_ids: Sequence[int]) -> list[int]:
        n = self.summary.num_clients
        local = [c - self.base for c in client_ids]
        foreign = [c for c, i in zip(client_ids, local) if not 0 <= i < n]
        if foreign:
            raise FailedPrecondition(f"clients {foreign[:5]} are not this site's (federation ids "
                                     f"{self.base}..{self.base + n - 1})")
        return local

    def batches(self, client_ids: Sequence[int], step: int, batch_size: int) -> list[Batch]:
        """Batch `step` of each client; batch size 0 is each client's whole data."""
        local = self._local(client_ids)
        if batch_size == 0:
            batch_size = max(self.summary.client_sizes[i] for i in local)
        fetched = self._data.batches(local, step, batch_size)
        return [Batch(c, b.step, b.x, b.y) for c, b in zip(client_ids, fetched)]

    def test_set(self) -> tuple[np.ndarray, np.ndarray]:
        """The site's held-out examples, fetched once."""
        if self._test_set is None:
            self._test_set = self._data.test_set()
        return self._test_set
