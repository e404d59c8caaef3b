"""FedBuff's staleness weighting around an inner stage: each contribution scaled by its
staleness factor, its weight kept, so an inner mean is sum_i s(t_i) update_i / sum_i w_i."""

from __future__ import annotations

import numpy as np

from fedstream.coordinator.aggregation.stage import Stage
from fedstream.coordinator.units import Contribution


class StalenessWeighted(Stage):
    def __init__(self, inner: Stage):
        self.inner = inner
        self.per_client = inner.per_client

    def init(self):
        return self.inner.init()

    def next(self, state, contributions, context):
        scaled = [Contribution([np.float32(c.staleness_factor) * a for a in c.arrays], c.weight,
                               c.clients, c.base_version) for c in contributions]
        return self.inner.next(state, scaled, context)

    def save(self, state):
        return self.inner.save(state)

    def load(self, saved):
        return self.inner.load(saved)
