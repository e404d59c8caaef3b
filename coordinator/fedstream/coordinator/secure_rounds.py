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

from fedstream.common.errors import FailedPrecondition, InvalidArgument, PermissionDenied
from fedstream.common.protocol import (
    Action,
    Assignment,
    KeysAdvert,
    KeyShares,
    PartyMessage,
    SharesRevealed,
    SurvivorsConfirmed,
    UpdateMeta,
    Weighting,
)
from fedstream.common.secagg import MASKED_TENSOR
from fedstream.common.tensors import TensorSpec
from fedstream.coordinator.aggregation import RoundContext
from fedstream.coordinator.policy import Step
from fedstream.coordinator.rounds import SyncRounds
from fedstream.coordinator.secure_sum import Phase, SecureSum
from fedstream.coordinator.units import Contribution, Unit
from fedstream.coordinator.validation import check_weight

_ACTIONS = {"share_keys": Action.SHARE_KEYS, "mask": Action.MASK, "confirm": Action.CONFIRM,
            "unmask": Action.UNMASK}


def _advertise(secure: SecureSum, party: int, message: KeysAdvert) -> None:
    if message.keys.party != party:
        raise InvalidArgument(f"keys for party {message.keys.party} sent for unit "
                              f"{message.unit} (party {party}): advertise your own unit's keys")
    secure.advertise(message.keys)


# each party message, the secure sum's step that takes it
_DELIVER = {
    KeysAdvert: _advertise,
    KeyShares: lambda secure, party, m: secure.share(party, list(m.shares)),
    SurvivorsConfirmed: lambda secure, party, m: secure.confirm(party, m.signature),
    SharesRevealed: lambda secure, party, m: secure.reveal(party, list(m.shares)),
}


class SecureRounds(SyncRounds):
    central_noise = False  # with client-level DP the parties add it
    phased = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._shapes = [tuple(v.shape) for v in self.model.trainable]
        self._length = sum(int(np.prod(s)) for s in self._shapes) + 1
        self.secure: SecureSum | None = None

    def open(self, round_number):
        super().open(round_number)
        _, sizes = self.sites.table()
        size_of = dict(zip(self.sites.table()[0].tolist(), sizes.tolist()))
        uniform = self.config.weighting is Weighting.UNIFORM
        weights = {u.index + 1: (float(len(u.client_ids)) if uniform
                                 else float(sum(size_of[i] for i in u.client_ids)))
                   for u in self.units}
        s, dp = self.config.secagg, self.config.privacy
        self.secure = SecureSum(
            round_number, weights, self._length, s.secagg_threshold,
            value_range=self.clip if dp.private else s.secagg_range,
            noise_std=dp.dp_noise_multiplier * self.clip, timeout_s=s.secagg_timeout_s,
            opened_at=None, bits=s.secagg_bits, colluders=s.secagg_colluders,
            neighbours=s.secagg_neighbours)

    def leasable(self, unit: Unit, now: float) -> bool:
        return (unit.free(now) and self.secure.phase is Phase.ADVERTISE
                and not self.secure.advertised(unit.index + 1))

    def assign(self, worker_id, site, now, round_number):
        """A party's next secure-aggregation step first, else a unit to compute and
        advertise."""
        if self.secure is not None:
            self.secure.advance(now)
            for unit in self.units:
                if unit.leased_to == worker_id:
                    step = self.secure.step_for(unit.index + 1)
                    if step is not None:
                        return Assignment(_ACTIONS[step[0]], round=round_number,
                                          version=self.model.version, unit=unit.index,
                                          client_ids=unit.client_ids, secure=step[1])
        return super().assign(worker_id, site, now, round_number)

    def deliver(self, message: PartyMessage, now: float) -> None:
        """A party's message to the round's secure sum, from the worker holding its unit."""
        if self.secure is None or message.round != self.round:
            raise FailedPrecondition(f"round {message.round} is not open (round {self.round} "
                                     "is): drop this message and ask GetAssignment for work")
        if not 0 <= message.unit < len(self.units) \
                or self.units[message.unit].leased_to != message.worker_id:
            raise PermissionDenied(f"unit {message.unit} of round {message.round} is not "
                                   f"leased to worker {message.worker_id}")
        _DELIVER[type(message)](self.secure, message.unit + 1, message)
        self.secure.advance(now)

    def check_header(self, meta: UpdateMeta, specs) -> Unit:
        """A party's masked input: one uint32 tensor "masked" of the secure sum's length."""
        if len(specs) != 1 or specs[0].name != MASKED_TENSOR \
                or specs[0].dtype != np.dtype("<u4") or len(specs[0].shape) != 1:
            raise InvalidArgument("under secure aggregation an update is one uint32 tensor "
                                  "named 'masked' of the party's masked input: mask it "
                                  "(Assignment MASK) before pushing")
        check_weight(meta, per_client=False)
        unit = self.admit(meta)
        if unit.update is None:
            self.secure.check_masked(meta.unit + 1, specs[0].shape[0])
        return unit

    def update_specs(self, meta):
        return [TensorSpec(MASKED_TENSOR, np.dtype("<u4"), (self._length,))]

    def contribution(self, meta, arrays):
        return Contribution.of(meta, [np.array(arrays[0], dtype=np.uint32)])

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
        if secure.phase is Phase.ABANDONED:  # nothing revealed, nothing spent
            return Step([], {**stats, "secagg_abandoned": 1, "stragglers": len(self.units)},
                        **self.publication())
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
        # parties under DP add the noise on the ring and send no loss
        ring = (self.clip * 2.0 ** secure.fixed_point.bits, self._length - 1)
        out = self.aggregate(total, RoundContext(self.model.version,
                                                 ring if self.privacy is not None else None))
        measurements = (out.measurements if self.privacy is not None
                        else {"train_loss": result.loss_sum / weight})
        self.model.apply(out.result)
        return Step(units, {**stats, **measurements, "secagg_dropped": len(result.dropped),
                            "secagg_abandoned": 0,
                            "stragglers": len(self.units) - len(units),
                            "secagg_precision": secure.fixed_point.step},
                    final=out.stop, **self.publication())
