"""Robust rules over every client's own update (units push them stacked [clients, ...]),
equally weighted: the coordinate-wise median, the trimmed mean, Krum / Multi-Krum. The
arithmetic is `aggregate`'s."""

from __future__ import annotations

from fedstream.coordinator import aggregate
from fedstream.coordinator.aggregation.stage import Output, Stage


class PerClient(Stage):
    """A rule over the clients' own updates in unit order, then client order."""

    per_client = True

    def rule(self, updates):
        raise NotImplementedError

    def next(self, state, contributions, context):
        clients = [[a[i] for a in c.arrays] for c in contributions for i in range(c.clients)]
        return Output(self.rule(clients), state)


class Median(PerClient):
    def rule(self, updates):
        return aggregate.coordinate_median(updates)


class TrimmedMean(PerClient):
    def __init__(self, fraction: float):
        self.fraction = fraction

    def rule(self, updates):
        return aggregate.trimmed_mean(updates, self.fraction)


class Krum(PerClient):
    def __init__(self, byzantine: int, select: int):
        self.byzantine, self.select = byzantine, select

    def rule(self, updates):
        return aggregate.krum(updates, self.byzantine, self.select)
