"""What FedBuff and FedAsync share: no round barrier. Workers take work whenever they are
free and push updates computed from whatever version they pulled; the coordinator never
waits.

Staleness is the number of versions between the one an update was computed from and the
current one; updates staler than `max_staleness` are refused with FAILED_PRECONDITION.
A "round" here is one server step; work is handed out in units of `clients_per_unit`
clients sampled by a generator seeded with (sampling seed, unit number).
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from fedstream.common.errors import FailedPrecondition
from fedstream.common.protocol import UpdateMeta
from fedstream.coordinator.policy import RoundPolicy, Step
from fedstream.coordinator.units import Contribution, Unit, sample_unit
from fedstream.coordinator.validation import check_claim


def staleness_weight(kind: str, staleness: int, a: float, b: float) -> float:
    if kind == "constant":
        return 1.0
    if kind == "polynomial":
        return float((1 + staleness) ** -a)
    return 1.0 if staleness <= b else 1.0 / (a * (staleness - b) + 1)  # hinge


class AsynchronousPolicy(RoundPolicy):
    """Units made on demand and kept until applied; subclasses say what an update does
    (`receive`, `step`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.outstanding: dict[int, Unit] = {}
        self.next_unit = 0

    def open(self, round_number):
        """Nothing to prepare: units are made when a worker asks."""

    def lease(self, worker_id, site, now):
        """An expired lease of the worker's site first, else new work of its site's clients:
        never a wait."""
        unit = next((u for u in self.outstanding.values()
                     if u.site == site and u.expired(now)), None)
        if unit is not None:
            self.counts["leases_expired"] += 1
        else:
            clients = self.sites.get(site).client_ids
            unit = Unit(self.next_unit, sample_unit(self.config, clients, self.next_unit), site)
            self.outstanding[unit.index] = unit
            self.next_unit += 1
        unit.lease(worker_id, now, self.config.lease_s)
        return unit

    def step_of(self, unit):
        return unit.index

    def admit(self, meta: UpdateMeta) -> Unit:
        unit = self.outstanding.get(meta.unit)
        if unit is None:
            raise FailedPrecondition(f"unit {meta.unit} is not outstanding (already applied, "
                                     "or never handed out): ask GetAssignment for work")
        check_claim(meta, unit)
        staleness = self.model.version - meta.base_version
        if not 0 <= staleness <= self.config.max_staleness:
            raise FailedPrecondition(
                f"update computed from version {meta.base_version}, the model is at "
                f"{self.model.version}: staleness {staleness} is beyond the bound of "
                f"{self.config.max_staleness}; pull the weights and recompute")
        unit.staleness = staleness
        return unit

    def _store(self, unit: Unit, contribution: Contribution) -> None:
        """Keep an admitted unit's update with its staleness factor."""
        c = self.config
        factor = staleness_weight(c.staleness, unit.staleness, c.staleness_a, c.staleness_b)
        unit.update = dataclasses.replace(contribution, staleness_factor=factor)

    def _applied(self, units: list[Unit], t0: float, t1: float) -> Step:
        for unit in units:
            self.outstanding.pop(unit.index, None)
        stale = [u.staleness for u in units]
        return Step(units, {"aggregate_s": t1 - t0, "apply_s": time.perf_counter() - t1,
                            "staleness_mean": float(np.mean(stale)),
                            "staleness_max": int(max(stale))})

    def release(self, worker_id):
        for unit in self.outstanding.values():
            if unit.leased_to == worker_id and unit.update is None:
                unit.leased_to = None

    def close(self):
        self.outstanding.clear()

    def state(self):
        return {"next_unit": self.next_unit}

    def restore(self, state):
        """Units go on numbering where they stopped, so a restart samples new clients rather
        than repeating the first units' (buffered updates are not kept: they are dropped)."""
        self.next_unit = int(state.get("next_unit", 0))

