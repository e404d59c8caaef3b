"""Asynchronous aggregation: no round barrier. Workers take work whenever they are free and
push updates computed from whatever version they pulled; the coordinator never waits.

- FedBuff (Nguyen et al., 2022): updates are buffered; every K of them make one server step
  on sum_i s(staleness_i) * update_i / sum_i weight_i, with s(t) = 1/sqrt(1+t) by default.
- FedAsync (Xie et al., 2019): every update is mixed in at once,
  w <- (1 - a_t) w + a_t w_client, a_t = alpha * s(staleness), where w_client is the
  client's model: the weights it started from (kept for `max_staleness` versions) minus its
  mean delta.
Staleness is the number of versions between the one an update was computed from and the
current one; updates staler than `max_staleness` are refused with FAILED_PRECONDITION.
A "round" here is one server step; work is handed out in units of `clients_per_unit`
clients sampled by a generator seeded with (sampling seed, unit number).
"""

from __future__ import annotations

import time
from collections import deque
from typing import Sequence

import numpy as np
import tensorflow as tf

from fedstream.common.errors import FailedPrecondition, InvalidArgument, PermissionDenied
from fedstream.common.protocol import UpdateKind, UpdateMeta
from fedstream.coordinator.federation import Federation, _Unit


def staleness_weight(kind: str, staleness: int, a: float, b: float) -> float:
    if kind == "constant":
        return 1.0
    if kind == "polynomial":
        return float((1 + staleness) ** -a)
    return 1.0 if staleness <= b else 1.0 / (a * (staleness - b) + 1)  # hinge


class AsyncFederation(Federation):
    def __init__(self, *args, **kwargs):
        self._outstanding: dict[int, _Unit] = {}
        self._next_unit = 0  # set before the base class resumes a checkpoint, which restores it
        self._buffer: list[tuple[_Unit, float]] = []
        super().__init__(*args, **kwargs)
        if self.config.mode == "fedasync" and self.task.update_kind is not UpdateKind.MODEL_DELTA:
            raise ValueError("fedasync mixes client models: use --update delta")
        self._history: deque = deque(maxlen=self.config.max_staleness + 1)
        self._remember_version()

    def _remember_version(self) -> None:
        if self.config.mode == "fedasync":
            self._history.append((self.version, [v.numpy() for v in self._trainable]))

    def _checkpoint_state(self) -> dict:
        return {"next_unit": self._next_unit}

    def _restore_state(self, state: dict) -> None:
        """Units go on numbering where they stopped, so a restart samples new clients rather
        than repeating the first units' (buffered updates are not kept: they are dropped)."""
        self._next_unit = int(state.get("next_unit", 0))

    # -- work ------------------------------------------------------------------------------
    def _open_round(self, number: int) -> None:
        self.round = number
        self.phase = "training"
        self._round_started = self._clock()
        self._cond.notify_all()

    def check_deadline(self) -> bool:
        """No rounds to close: server steps happen as updates arrive."""
        return False

    def _step_of(self, unit: _Unit) -> int:
        return unit.index

    def _free_unit(self, worker_id: str) -> _Unit | None:
        """An expired lease first, else new work: never a wait."""
        now = self._clock()
        for unit in self._outstanding.values():
            if unit.partial is None and unit.leased_to is not None and unit.lease_deadline < now:
                self._counts["leases_expired"] += 1
                unit.base_version = self.version
                return unit
        n = len(self._client_sizes)
        k = min(n, self.config.clients_per_unit)
        rng = np.random.default_rng([self.config.sampling_seed, self._next_unit])
        unit = _Unit(self._next_unit, tuple(int(c) for c in np.sort(rng.choice(n, k, replace=False))))
        unit.base_version = self.version
        self._outstanding[unit.index] = unit
        self._next_unit += 1
        return unit

    # -- updates ---------------------------------------------------------------------------
    def _check_meta(self, meta: UpdateMeta) -> _Unit:
        self._touch(meta.worker_id)
        if self.phase != "training":
            raise FailedPrecondition(f"no training in progress (phase {self.phase})")
        unit = self._outstanding.get(meta.unit)
        if unit is None:
            raise FailedPrecondition(f"unit {meta.unit} is not outstanding (already applied, "
                                     "or never handed out): ask GetAssignment for work")
        if tuple(meta.client_ids) != unit.client_ids:
            raise PermissionDenied(f"unit {meta.unit} holds other clients than the update lists")
        if unit.partial is None and unit.leased_to != meta.worker_id:
            raise PermissionDenied(f"unit {meta.unit} is leased to another worker")
        staleness = self.version - meta.base_version
        if not 0 <= staleness <= self.config.max_staleness:
            raise FailedPrecondition(
                f"update computed from version {meta.base_version}, the model is at "
                f"{self.version}: staleness {staleness} is beyond the bound of "
                f"{self.config.max_staleness}; pull the weights and recompute")
        if not (np.isfinite(meta.weight) and meta.weight > 0):
            raise InvalidArgument(f"update weight {meta.weight} must be a positive finite number")
        if meta.num_examples < 1:
            raise InvalidArgument("num_examples must be >= 1")
        if self.config.mode == "fedasync" and meta.base_version not in dict(self._history):
            raise FailedPrecondition(f"the weights of version {meta.base_version} are no longer "
                                     "kept (the coordinator restarted?): pull and recompute")
        unit.staleness = staleness
        unit.pushed_base = meta.base_version
        return unit

    def _received(self, unit: _Unit) -> None:
        c = self.config
        factor = staleness_weight(c.staleness, unit.staleness, c.staleness_a, c.staleness_b)
        if c.mode == "fedasync":
            self._mix(unit, factor)
        else:
            self._buffer.append((unit, factor))
            if len(self._buffer) >= c.buffer_size:
                self._apply_buffer()

    def _apply_buffer(self) -> None:
        t0 = time.perf_counter()
        buffered, self._buffer = self._buffer, []
        total_weight = sum(u.partial[1] for u, _ in buffered)
        step = [np.zeros(s.shape, np.float32) for s in self.task.update_specs]
        for unit, factor in buffered:  # arrival order: asynchrony has no canonical order
            for acc, a in zip(step, unit.partial[0]):
                acc += np.float32(factor) * a
        step = [s / np.float32(total_weight) for s in step]
        t1 = time.perf_counter()
        self._apply([tf.convert_to_tensor(s) for s in step])
        self._advance([u for u, _ in buffered], t0, t1)

    def _mix(self, unit: _Unit, factor: float) -> None:
        t0 = time.perf_counter()
        base = dict(self._history)[unit.pushed_base]
        alpha = self.config.async_alpha * factor
        arrays, weight = unit.partial
        for variable, start, delta in zip(self._trainable, base, arrays):
            client_model = start - delta / np.float32(weight)
            variable.assign((1 - alpha) * variable.numpy() + alpha * client_model)
        self._advance([unit], t0, time.perf_counter())

    def _advance(self, applied: Sequence[_Unit], t0: float, t1: float) -> None:
        self.version += 1
        self._snapshot()
        self._remember_version()
        for unit in applied:
            self._outstanding.pop(unit.index, None)
        stale = [u.staleness for u in applied]
        self._finish_update(applied, {"aggregate_s": t1 - t0,
                                      "apply_s": time.perf_counter() - t1,
                                      "staleness_mean": float(np.mean(stale)),
                                      "staleness_max": int(max(stale))})
