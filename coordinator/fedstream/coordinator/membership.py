"""Which workers joined, when each was last heard from, and which were told to stop."""

from __future__ import annotations

import logging
import threading
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Iterable

from fedstream.common.errors import NotFound
from fedstream.common.protocol import WorkerStatus

log = logging.getLogger(__name__)


@dataclass
class _Worker:
    name: str
    device: str
    site: str
    last_seen: float
    accepted: int = 0
    stopped: bool = False


class Membership:
    def __init__(self, clock: Callable[[], float], changed: threading.Condition):
        self._clock = clock
        self._changed = changed  # the federation's lock: workers stop under it
        self._workers: dict[str, _Worker] = {}

    def __len__(self) -> int:
        return len(self._workers)

    def join(self, name: str, device: str, site: str) -> str:
        worker_id = f"w{len(self._workers) + 1}-{uuid.uuid4().hex[:8]}"
        self._workers[worker_id] = _Worker(name, device, site, self._clock())
        log.info("[Join] worker %s (%s on %s%s) joined; %d connected", worker_id, name, device,
                 f", site {site!r}" if site else "", len(self._workers))
        return worker_id

    def site_of(self, worker_id: str) -> str:
        return self._workers[worker_id].site

    def per_site(self, sites: Iterable[str], within_s: float) -> dict[str, int]:
        """Workers of each of `sites` heard from within `within_s` and not stopped."""
        now = self._clock()
        live = Counter(w.site for w in self._workers.values()
                       if not w.stopped and now - w.last_seen <= within_s)
        return {site: live.get(site, 0) for site in sites}

    def touch(self, worker_id: str) -> None:
        """Note that the worker called; NOT_FOUND for an id this coordinator never gave."""
        worker = self._workers.get(worker_id)
        if worker is None:
            raise NotFound(f"unknown worker id {worker_id!r}: call Join first and use the id "
                           "it returns")
        worker.last_seen = self._clock()

    def credit(self, worker_id: str) -> None:
        self._workers[worker_id].accepted += 1

    def stop(self, worker_id: str) -> None:
        self._workers[worker_id].stopped = True

    def wait_all_stopped(self, timeout_s: float) -> bool:
        """After training: whether every joined worker received STOP within `timeout_s`."""
        with self._changed:
            return self._changed.wait_for(
                lambda: all(w.stopped for w in self._workers.values()), timeout_s)

    def status(self) -> tuple[WorkerStatus, ...]:
        now = self._clock()
        return tuple(WorkerStatus(worker_id=wid, worker_name=w.name, device=w.device,
                                  last_seen_s_ago=now - w.last_seen, updates_accepted=w.accepted,
                                  site=w.site)
                     for wid, w in self._workers.items())
