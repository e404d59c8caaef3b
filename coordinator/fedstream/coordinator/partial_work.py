"""Systems heterogeneity as the FedProx paper (Li et al., MLSys 2020) simulates it: in every
round a share of the sampled clients are stragglers, devices that manage only part of their
local work, a uniformly random 1 to E-1 of their E epochs. FedAvg drops them (their update
never arrives); FedProx keeps their partial updates.

The coordinator draws the stragglers and their epochs from (sampling seed, round) after the
round's sample, so `run` and `simulate` see the same ones, and tells each worker its clients'
epochs in the assignment (`Assignment.local_epochs`). The same seed picks the same stragglers
under both policies, so a comparison differs only in what becomes of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fedstream.coordinator.config import FederationConfig, PartialWorkPolicy

STREAM = 1  # keeps these draws apart from the client sample's, which share the seed


@dataclass(frozen=True)
class RoundWork:
    """Who trains this round, and the epochs of those who do less than `full`."""
    clients: np.ndarray
    full: int
    reduced: dict[int, int] = field(default_factory=dict)  # client id -> epochs
    dropped: int = 0

    def epochs_of(self, client_ids: tuple[int, ...]) -> tuple[int, ...]:
        """Each client's epochs, in order; () when all of them do the full work."""
        if not any(c in self.reduced for c in client_ids):
            return ()
        return tuple(self.reduced.get(c, self.full) for c in client_ids)

    def measurements(self) -> dict[str, float]:
        """What reaches the aggregate, out of the full local work of every sampled client."""
        sampled = len(self.clients) + self.dropped
        done = self.full * len(self.clients) - sum(self.full - e for e in self.reduced.values())
        return {"clients_dropped": self.dropped, "clients_partial": len(self.reduced),
                "local_work": done / (self.full * sampled) if sampled else 1.0}


def draw(config: FederationConfig, sampled: np.ndarray, round_number: int) -> RoundWork:
    full = config.local_epochs
    count = round(config.partial_work * len(sampled))
    if not count:
        return RoundWork(sampled, full)
    rng = np.random.default_rng([config.sampling_seed, round_number, STREAM])
    stragglers = np.sort(rng.choice(len(sampled), size=count, replace=False))
    if config.partial_work_policy is PartialWorkPolicy.DROP:
        return RoundWork(np.delete(sampled, stragglers), full, dropped=count)
    epochs = rng.integers(1, full, size=count)  # 1 .. E-1
    return RoundWork(sampled, full, {int(sampled[i]): int(e)
                                     for i, e in zip(stragglers, epochs)})
