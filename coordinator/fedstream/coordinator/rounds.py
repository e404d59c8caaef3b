"""Synchronous rounds (FedSGD, FedAvg and the robust aggregators).

A round asks every sampled client for the update of its next batch. The round's clients are
split into `units` contiguous work units; a worker leases one unit at a time and pushes one
update for it. When every unit is in (or the deadline passed with a quorum), the units'
contributions go through the aggregation stage in unit order, so arrival order never
changes a bit, and the server optimizer applies the result.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from fedstream.common.errors import FailedPrecondition, InvalidArgument
from fedstream.common.protocol import UpdateMeta
from fedstream.coordinator import partial_work
from fedstream.coordinator.aggregation import RoundContext, rule_of
from fedstream.coordinator.config import Sampling
from fedstream.coordinator.policy import RoundPolicy, Step
from fedstream.coordinator.privacy import ClientLevelPrivacy
from fedstream.coordinator.units import Contribution, Unit, fixed_sample_size, sample_round
from fedstream.coordinator.validation import check_claim

log = logging.getLogger(__name__)


class SyncRounds(RoundPolicy):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.privacy = (ClientLevelPrivacy(
            self.config.privacy, self.config.client_sampling,
            shapes=[tuple(v.shape) for v in self.model.trainable],
            expected_clients=self.expected_clients,
            population=lambda: len(self.sites.table()[0]), central_noise=self.central_noise)
            if self.config.private else None)
        # the aggregation stage and its state (client-level DP is the stage when it is on)
        self.aggregation = self.privacy or rule_of(self.config)
        self.aggregation_state = self.aggregation.init()
        self.round = 0
        self.units: list[Unit] = []
        self.work: partial_work.RoundWork | None = None
        self._last_unit: dict[str, int] = {}

    central_noise = True  # client-level DP: the coordinator adds the noise

    def expected_clients(self) -> float:
        """Clients a round samples on average: what client-level DP divides by."""
        n = len(self.sites.table()[0])
        c = self.config
        if c.client_fraction >= 1:
            return float(n)
        if c.sampling is Sampling.POISSON:
            return c.client_fraction * n
        return float(fixed_sample_size(c, n))

    def open(self, round_number):
        """Sample over every site's clients; each site's share splits into `units` units."""
        self.round = round_number
        ids, _ = self.sites.table()
        rng = None if self.privacy is None else self.privacy.sampling_generator(round_number)
        sampled = sample_round(self.config, ids, round_number, rng)
        self.work = partial_work.draw(self.config, sampled, round_number)
        groups = [(site.name, tuple(int(c) for c in g))
                  for site, share in self.sites.by_site(self.work.clients)
                  for g in np.array_split(share, self.config.units) if len(g)]
        self.units = [Unit(i, g, site, local_epochs=self.work.epochs_of(g))
                      for i, (site, g) in enumerate(groups)]

    def lease(self, worker_id, site, now):
        """A unit of the worker's site nobody holds (or whose lease expired), preferring the
        one this worker computed last round: its clients' next batches are what it
        prefetched."""
        last = self._last_unit.get(worker_id)
        preferred = [self.units[last]] if last is not None and last < len(self.units) else []
        for unit in preferred + self.units:
            if unit.site == site and self.leasable(unit, now):
                if unit.leased_to is not None:
                    self.counts["leases_expired"] += 1
                    log.warning("lease of unit %d (round %d) held by %s expired: reassigning",
                                unit.index, self.round, unit.leased_to)
                self._last_unit[worker_id] = unit.index
                unit.lease(worker_id, now, self.config.lease_s)
                return unit
        return None

    def leasable(self, unit: Unit, now: float) -> bool:
        return unit.free(now)

    def step_of(self, unit):
        return self.round - 1

    def admit(self, meta: UpdateMeta) -> Unit:
        if meta.round != self.round:
            raise FailedPrecondition(
                f"update for round {meta.round} but round {self.round} is open: the round was "
                "closed; drop this update and ask GetAssignment for new work")
        if meta.base_version != self.model.version:
            raise FailedPrecondition(
                f"update computed from version {meta.base_version} but the model is at "
                f"version {self.model.version}: pull the weights again and recompute")
        if not 0 <= meta.unit < len(self.units):
            raise InvalidArgument(f"unit {meta.unit} does not exist in round {self.round} "
                                  f"(units 0..{len(self.units) - 1})")
        unit = self.units[meta.unit]
        check_claim(meta, unit)
        return unit

    def check_update(self, meta: UpdateMeta, arrays) -> None:
        if self.privacy is not None:
            self.privacy.check(self.aggregation_state, meta, arrays)

    @property
    def site_evaluations(self) -> bool:
        return self.privacy is None or self.config.dp_release_metrics

    def receive(self, unit: Unit, contribution: Contribution) -> bool:
        unit.update = contribution
        return all(u.update is not None for u in self.units)

    def due(self, now, opened_at):
        """The deadline passed with a quorum of units in, or (Poisson) no client was drawn."""
        if not self.units:
            return True
        received = sum(u.update is not None for u in self.units)
        deadline = self.config.round_deadline_s
        quorum = self.config.quorum or len(self.units)
        return deadline > 0 and received >= quorum and now - opened_at >= deadline

    def step(self) -> Step:
        t0 = time.perf_counter()
        received = [u for u in self.units if u.update is not None]
        stragglers = len(self.units) - len(received)
        if stragglers:
            log.warning("round %d closes at its deadline without %d unit(s): their updates "
                        "will be refused", self.round, stragglers)
        measurements = self.work.measurements() if self.config.partial_work else {}
        if not received and self.privacy is None:  # nobody sampled (Poisson), or all dropped
            return Step([], {**measurements, "stragglers": 0, "empty_round": 1})
        # under DP an empty sample, too, releases a (noise) step
        out = self.aggregate([u.update for u in received], RoundContext(self.model.version))
        t1 = time.perf_counter()
        self.model.apply(out.result)
        return Step(received, {**measurements, **out.measurements, "stragglers": stragglers,
                               "aggregate_s": t1 - t0, "apply_s": time.perf_counter() - t1},
                    final=out.stop, **self.publication())

    def publication(self) -> dict:
        """What of a step's row may be published (client-level DP withholds the rest)."""
        return {} if self.privacy is None else {"released": self.privacy.released}

    def release(self, worker_id):
        for unit in self.units:
            if unit.leased_to == worker_id and unit.update is None:
                unit.leased_to = None

    def close(self):
        self.units = []

    @property
    def clip(self):
        return self.config.dp_clip if self.privacy is None else self.aggregation_state.clip

    def state(self):
        """Beyond the model's round and version (a round's units are resampled): the
        aggregation stage's (client-level DP's clip, which adaptive clipping moves, and its
        privacy ledger)."""
        return self.aggregation.save(self.aggregation_state)

    def restore(self, state):
        """See `state`."""
        self.aggregation_state = self.aggregation.load(state)
