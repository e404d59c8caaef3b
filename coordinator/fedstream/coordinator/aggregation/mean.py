"""The weighted mean of fused unit sums: FedSGD's and FedAvg's aggregate."""

from __future__ import annotations

from fedstream.coordinator import aggregate
from fedstream.coordinator.aggregation.stage import Output, Stage


class WeightedMean(Stage):
    """sum of the units' weighted sums / sum of their weights."""

    per_client = False  # units push their clients' weighted sum

    def next(self, state, contributions, context):
        return Output(aggregate.weighted_mean_of_sums(
            [(c.arrays, c.weight) for c in contributions]), state)
