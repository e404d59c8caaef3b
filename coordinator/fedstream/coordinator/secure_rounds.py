"""Synchronous rounds under secure aggregation: every unit of a round is a party of the
round's `SecureSum`, and the model steps on the sum it reveals, never on a unit's update.

A unit is leased once: its party's secrets live in the worker that computed it, so a unit
whose party advertised keys is never handed to another worker; a party that goes silent
drops out, and the round goes on without its clients while the threshold holds. With
client-level DP the parties add the noise (distributed DP): each adds standard deviation
multiplier * clip / sqrt(t), so any t or more survivors' sum carries at least the stated
noise, and the coordinator adds none.
"""

from __future__ import annotations

import numpy as np

from fedstream.common.errors import FailedPrecondition, PermissionDenied
from fedstream.common.protocol import (
    Action,
    EncryptedShare,
    PartyKeys,
    RevealedShare,
    SecureStep,
    UpdateMeta,
    Weighting,
)
from fedstream.coordinator.policy import Step
from fedstream.coordinator.rounds import SyncRounds
from fedstream.coordinator.secure_sum import Phase, SecureSum
from fedstream.coordinator.units import Contribution, Unit

_ACTIONS = {"share_keys": Action.SHARE_KEYS, "mask": Action.MASK, "confirm": Action.CONFIRM,
            "unmask": Action.UNMASK}


class SecureRounds(SyncRounds):
    central_noise = False  # with client-level DP the parties add it

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._shapes = [tuple(v.shape) for v in self.model.trainable]
        self._length = sum(int(np.prod(s)) for s in self._shapes) + 1
        self.secure: SecureSum | None = None

    def open(self, round_number):
        super().open(round_number)
        _, sizes = self.sites.table()
        size_of = dict(zip(self.sites.table()[0].tolist(), sizes.tolist()))
        c = self.config
        weights = {u.index + 1: (float(len(u.client_ids)) if c.weighting is Weighting.UNIFORM
                                 else float(sum(size_of[i] for i in u.client_ids)))
                   for u in self.units}
        self.secure = SecureSum(
            round_number, weights, self._length, c.secagg_threshold,
            value_range=self.clip if c.private else c.secagg_range,
            noise_std=c.dp_noise_multiplier * self.clip, timeout_s=c.secagg_timeout_s,
            opened_at=None, bits=c.secagg_bits, colluders=c.secagg_colluders,
            neighbours=c.secagg_neighbours)

    def leasable(self, unit: Unit, now: float) -> bool:
        return (unit.free(now) and self.secure.phase is Phase.ADVERTISE
                and not self.secure.advertised(unit.index + 1))

    def secure_step(self, worker_id: str, now: float) -> tuple[Action, Unit, SecureStep] | None:
        """The next secure-aggregation step of a party the worker holds."""
        if self.secure is None:
            return None
        self.secure.advance(now)
        for unit in self.units:
            if unit.leased_to == worker_id:
                step = self.secure.step_for(unit.index + 1)
                if step is not None:
                    return _ACTIONS[step[0]], unit, step[1]
        return None

    def _holder(self, worker_id: str, round_number: int, unit: int) -> int:
        if self.secure is None or round_number != self.round:
            raise FailedPrecondition(f"round {round_number} is not open (round {self.round} "
                                     "is): drop this message and ask GetAssignment for work")
        if not 0 <= unit < len(self.units) or self.units[unit].leased_to != worker_id:
            raise PermissionDenied(f"unit {unit} of round {round_number} is not leased to "
                                   f"worker {worker_id}")
        return unit + 1

    def advertise(self, worker_id: str, round_number: int, keys: PartyKeys, now: float):
        self._holder(worker_id, round_number, keys.party - 1)
        self.secure.advertise(keys)
        self.secure.advance(now)

    def share(self, worker_id: str, round_number: int, unit: int,
              shares: list[EncryptedShare], now: float):
        self.secure.share(self._holder(worker_id, round_number, unit), shares)
        self.secure.advance(now)

    def confirm(self, worker_id: str, round_number: int, unit: int, signature: bytes,
                now: float):
        self.secure.confirm(self._holder(worker_id, round_number, unit), signature)
        self.secure.advance(now)

    def reveal(self, worker_id: str, round_number: int, unit: int,
               shares: list[RevealedShare], now: float):
        self.secure.reveal(self._holder(worker_id, round_number, unit), shares)
        self.secure.advance(now)

    def check_masked(self, meta: UpdateMeta, length: int) -> Unit:
        unit = self.admit(meta)
        if unit.update is None:
            self.secure.check_masked(meta.unit + 1, length)
        return unit

    def receive(self, unit: Unit, contribution: Contribution) -> bool:
        self.secure.mask(unit.index + 1, contribution.arrays[0])
        unit.update = contribution
        return False  # `due` says when the secure sum closed

    def due(self, now, opened_at):
        if not self.units:
            return True
        self.secure.advance(now)
        return self.secure.closed

    def step(self) -> Step:
        if not self.units:
            return super().step()
        secure = self.secure
        stats = {"secagg_parties": len(self.units), "secagg_threshold": secure.threshold}
        released = {} if self.privacy is None else {"released": self.privacy.released}
        if secure.phase is Phase.ABANDONED:  # nothing revealed, nothing spent
            return Step([], {**stats, "secagg_abandoned": 1, "stragglers": len(self.units)},
                        **released)
        result = secure.result
        units = [self.units[p - 1] for p in result.survivors]
        weight = sum(u.update.weight for u in units)
        arrays, offset = [], 0
        for shape in self._shapes:
            n = int(np.prod(shape))
            arrays.append(result.total[offset:offset + n].reshape(shape).astype(np.float32))
            offset += n
        total = [Contribution(arrays, weight, sum(u.update.clients for u in units),
                              self.model.version)]
        measurements = {"train_loss": result.loss_sum / weight}
        if self.privacy is not None:  # parties add noise and send no loss
            ring = (self.clip * 2.0 ** secure.fixed_point.bits, self._length - 1)
            mean, measurements = self.privacy.next(total, self.model.version, ring)
            released["final"] = self.privacy.exhausted()
        else:
            mean = self._aggregate(total)
        self.model.apply(mean)
        return Step(units, {**stats, **measurements, "secagg_dropped": len(result.dropped),
                            "secagg_abandoned": 0,
                            "stragglers": len(self.units) - len(units),
                            "secagg_precision": secure.fixed_point.step}, **released)

