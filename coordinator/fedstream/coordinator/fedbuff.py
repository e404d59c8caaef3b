"""FedBuff (Nguyen et al., 2022): updates are buffered; every K of them make one server
step on sum_i s(staleness_i) * update_i / sum_i weight_i, with s(t) = 1/sqrt(1+t) by default.
The buffer is summed in arrival order: asynchrony has no canonical order."""

from __future__ import annotations

import time

from fedstream.coordinator.aggregation import RoundContext, rule_of
from fedstream.coordinator.asynchronous import AsynchronousPolicy


class FedBuff(AsynchronousPolicy):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.aggregation = rule_of(self.config)  # staleness-weighted
        self.aggregation_state = self.aggregation.init()
        self._buffer = []

    def receive(self, unit, contribution):
        self._store(unit, contribution)
        self._buffer.append(unit)
        return len(self._buffer) >= self.config.buffer_size

    def step(self):
        t0 = time.perf_counter()
        buffered, self._buffer = self._buffer, []
        out = self.aggregate([u.update for u in buffered], RoundContext(self.model.version))
        t1 = time.perf_counter()
        self.model.apply(out.result)
        return self._applied(buffered, t0, t1)
