"""The aggregation pipeline: contributions in, one server step out, built from stages that
share one interface, the way TensorFlow Federated composes aggregation factories.

A stage is an `Aggregator`; a wrapper stage holds an inner one and transforms what goes in
(staleness weighting). Client-level DP, with state of its own (the clip, the ledger), is
`privacy.ClientLevelPrivacy`. The arithmetic lives in `aggregate`.
"""

from __future__ import annotations

import abc
from typing import Sequence

import numpy as np

from fedstream.coordinator import aggregate
from fedstream.coordinator.config import Aggregator as Rule
from fedstream.coordinator.config import FederationConfig, Mode
from fedstream.coordinator.units import Contribution


class Aggregator(abc.ABC):
    @abc.abstractmethod
    def __call__(self, contributions: Sequence[Contribution]) -> list[np.ndarray]:
        """The step the server optimizer applies. Contributions arrive in a canonical order
        (unit order for rounds), and the result depends on nothing else."""


class WeightedMean(Aggregator):
    """sum of the units' weighted sums / sum of their weights: FedSGD and FedAvg."""

    def __call__(self, contributions):
        return aggregate.weighted_mean_of_sums([(c.arrays, c.weight) for c in contributions])


class PerClient(Aggregator):
    """A robust rule over every client's own update (units carry them stacked), in unit
    order, then client order."""

    def __init__(self, rule):
        self._rule = rule

    def __call__(self, contributions):
        clients = [[a[i] for a in c.arrays] for c in contributions for i in range(c.clients)]
        return self._rule(clients)


class StalenessWeighted(Aggregator):
    """Scales each contribution by its staleness factor and keeps its weight, so the inner
    mean is FedBuff's sum_i s(t_i) update_i / sum_i weight_i."""

    def __init__(self, inner: Aggregator):
        self._inner = inner

    def __call__(self, contributions):
        scaled = [Contribution([np.float32(c.staleness_factor) * a for a in c.arrays], c.weight,
                               c.clients, c.base_version) for c in contributions]
        return self._inner(scaled)


def build_aggregator(config: FederationConfig) -> Aggregator:
    """The pipeline a configuration asks for (client-level DP is a stage of its own,
    `privacy.ClientLevelPrivacy`, around the sum)."""
    rule = config.aggregator
    if rule is Rule.MEDIAN:
        inner: Aggregator = PerClient(aggregate.coordinate_median)
    elif rule is Rule.TRIMMED_MEAN:
        inner = PerClient(lambda u: aggregate.trimmed_mean(u, config.trim_fraction))
    elif rule is Rule.KRUM:
        inner = PerClient(lambda u: aggregate.krum(u, config.krum_byzantine, config.krum_select))
    else:
        inner = WeightedMean()
    return StalenessWeighted(inner) if config.mode is Mode.FEDBUFF else inner
