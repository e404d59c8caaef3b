"""Aggregation as stages with explicit state (`stage.Stage`): one file per concern, a
registry of the rules a configuration names, and `build`, which picks a policy's chain.

- `mean`: the weighted mean of fused unit sums (FedSGD, FedAvg);
- `robust`: median, trimmed mean, Krum over every client's own update;
- `staleness`: FedBuff's staleness weighting around an inner stage;
- `fedstream.coordinator.privacy`: client-level DP, one stage: the check of clipped
  updates, the noise, the adaptive clip and the privacy ledger (its state: the clip and the
  ledger);
- the secure sum is a round workflow (`secure_rounds`): the stage after it sees one
  contribution, the survivors' sum.

A new rule: a `Stage` in a file here and its line in `RULES` (and its name among the
config's `Aggregator` choices).
"""

from __future__ import annotations

from typing import Callable

from fedstream.coordinator.aggregation.mean import WeightedMean
from fedstream.coordinator.aggregation.robust import Krum, Median, TrimmedMean
from fedstream.coordinator.aggregation.stage import Output, RoundContext, Stage
from fedstream.coordinator.aggregation.staleness import StalenessWeighted
from fedstream.coordinator.config import Mode

# --aggregator's name -> the stage, from the aggregation section of the config
RULES: dict[str, Callable[..., Stage]] = {
    "mean": lambda config: WeightedMean(),
    "median": lambda config: Median(),
    "trimmed_mean": lambda config: TrimmedMean(config.trim_fraction),
    "krum": lambda config: Krum(config.krum_byzantine, config.krum_select),
}


def rule_of(config) -> Stage:
    """The configuration's aggregation rule (staleness-weighted under FedBuff)."""
    stage = RULES[config.aggregation.aggregator.value](config.aggregation)
    return StalenessWeighted(stage) if config.mode is Mode.FEDBUFF else stage


__all__ = ["RULES", "Output", "RoundContext", "Stage", "rule_of"]
