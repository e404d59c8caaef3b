"""Work units: a set of clients that one worker computes and pushes one update for, the lease
that says who holds it, and the seeded client sampling that fills it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from fedstream.common.protocol import UpdateMeta
from fedstream.coordinator.config import FederationConfig, Sampling
from fedstream.coordinator.sites import POOL_SITE


@dataclass(frozen=True)
class Contribution:
    """One unit's accepted update: the weighted sum over its clients (or, for robust
    aggregators, every client's own update stacked [clients, ...]) and their total weight."""
    arrays: Sequence[np.ndarray]
    weight: float
    clients: int
    base_version: int  # the version it was computed from
    metrics: dict[str, float] = field(default_factory=dict)  # the worker's report, and weight
    staleness_factor: float = 1.0  # asynchronous modes: its down-weighting
    unclipped: int = 0  # client-level DP: its clients within the clip, as the worker counts

    @classmethod
    def of(cls, meta: UpdateMeta, arrays: Sequence[np.ndarray],
           unclipped: int = 0) -> Contribution:
        """An admitted update's arrays with its header's weight, clients and report."""
        return cls(list(arrays), float(meta.weight), len(meta.client_ids), meta.base_version,
                   {**meta.metrics, "weight": float(meta.weight), "examples": meta.num_examples},
                   unclipped=unclipped)


@dataclass
class Unit:
    index: int
    client_ids: tuple[int, ...]
    site: str = POOL_SITE  # leased only to this site's workers
    leased_to: str | None = None
    lease_deadline: float = 0.0
    update: Contribution | None = None
    staleness: int = 0  # asynchronous modes: versions between its base and the model's
    local_epochs: tuple[int, ...] = ()  # partial work: each client's epochs; (): all of them

    def lease(self, worker_id: str, now: float, lease_s: float) -> None:
        self.leased_to, self.lease_deadline = worker_id, now + lease_s

    def expired(self, now: float) -> bool:
        """Leased, not pushed, and past its deadline: another worker may take it."""
        return self.update is None and self.leased_to is not None and self.lease_deadline < now

    def free(self, now: float) -> bool:
        return self.update is None and (self.leased_to is None or self.lease_deadline < now)


def fixed_sample_size(config: FederationConfig, n_clients: int) -> int:
    """Clients of a fixed-size sample: max(min_clients, round(C * N)), at most N."""
    return min(n_clients, max(config.min_clients, round(config.client_fraction * n_clients)))


def sample_round(config: FederationConfig, client_ids: np.ndarray, round_number: int,
                 rng: np.random.Generator | None = None) -> np.ndarray:
    """A round's clients out of every site's (`client_ids`, sorted), sorted: all of them, a
    sample of max(min_clients, round(C * N)), or (Poisson) each client with probability C.
    Drawn from `rng` (client-level DP draws it where nobody can redraw it), else seeded by
    (sampling seed, round), so it depends only on them and the client table."""
    if config.client_fraction >= 1:
        return client_ids
    n = len(client_ids)
    if rng is None:
        rng = np.random.default_rng([config.sampling_seed, round_number])
    if config.sampling is Sampling.POISSON:
        return client_ids[rng.random(n) < config.client_fraction]
    k = fixed_sample_size(config, n)
    return client_ids[np.sort(rng.choice(n, size=k, replace=False))]


def sample_unit(config: FederationConfig, client_ids: np.ndarray,
                unit_number: int) -> tuple[int, ...]:
    """The clients of asynchronous unit `unit_number` out of one site's `client_ids`:
    seeded by (sampling seed, unit)."""
    k = min(len(client_ids), config.clients_per_unit)
    rng = np.random.default_rng([config.sampling_seed, unit_number])
    return tuple(int(c) for c in client_ids[np.sort(rng.choice(len(client_ids), k,
                                                              replace=False))])
