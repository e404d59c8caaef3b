"""FedAsync (Xie et al., 2019): every update is mixed in at once,
w <- (1 - a_t) w + a_t w_client, a_t = alpha * s(staleness), where w_client is the client's
model: the weights it started from (kept for `max_staleness` versions) minus its mean delta.
"""

from __future__ import annotations

import time
from collections import deque

import numpy as np

from fedstream.common.errors import FailedPrecondition
from fedstream.common.protocol import UpdateKind
from fedstream.coordinator.asynchronous import AsynchronousPolicy


class FedAsync(AsynchronousPolicy):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.config.update is not UpdateKind.MODEL_DELTA:
            raise ValueError("fedasync mixes client models: use --update delta")
        self._history: deque = deque(maxlen=self.config.max_staleness + 1)
        self._pending = None

    def open(self, round_number):
        """Remember the weights of the version updates will now be computed from."""
        if not self._history or self._history[-1][0] != self.model.version:
            self._history.append((self.model.version, self.model.trainable_arrays()))

    def admit(self, meta):
        unit = super().admit(meta)
        if meta.base_version not in dict(self._history):
            raise FailedPrecondition(f"the weights of version {meta.base_version} are no longer "
                                     "kept (the coordinator restarted?): pull and recompute")
        return unit

    def receive(self, unit, contribution):
        self._store(unit, contribution)
        self._pending = unit
        return True

    def step(self):
        t0 = time.perf_counter()
        unit, self._pending = self._pending, None
        base = dict(self._history)[unit.update.base_version]
        alpha = self.config.async_alpha * unit.update.staleness_factor
        weight = unit.update.weight
        mixed = [(1 - alpha) * current + alpha * (start - delta / np.float32(weight))
                 for current, start, delta in zip(self.model.trainable_arrays(), base,
                                                  unit.update.arrays)]
        t1 = time.perf_counter()
        self.model.assign_trainable(mixed)
        return self._applied([unit], t0, t1)
