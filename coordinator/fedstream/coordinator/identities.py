"""Which authenticated caller owns which worker id, so no worker can act for another."""

from __future__ import annotations

import threading

from fedstream.common.errors import PermissionDenied


class WorkerIdentities:
    def __init__(self):
        self._owners: dict[str, str] = {}
        self._lock = threading.Lock()

    def bind(self, worker_id: str, caller: str | None) -> None:
        if caller is not None:
            with self._lock:
                self._owners[worker_id] = caller

    def check(self, worker_id: str, caller: str | None) -> None:
        with self._lock:
            owner = self._owners.get(worker_id)
        if owner is not None and owner != caller:
            raise PermissionDenied(f"worker {worker_id} joined as {owner!r}; a call "
                                   f"authenticated as {caller!r} may not act for it")
