"""The coordinator's domain logic: rounds, work units, leases, validation, aggregation.

No protobuf and no network here: the gRPC servicer and the in-process simulation both drive
this class, which is how both run modes compute the same model.

A round asks every client for the update of its next batch. The round's clients are split
into `units` contiguous work units; a worker leases one unit at a time and pushes one update
for it: the weighted sum of its clients' updates plus the sum of their weights. When every
unit is in, the partial sums are added in unit order (so arrival order never changes a bit),
divided by the total weight and handed to the server optimizer; the version advances.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from fedstream.common.errors import FailedPrecondition, FedstreamError, InvalidArgument, NotFound, PermissionDenied
from fedstream.common.protocol import (
    Action,
    Assignment,
    LocalTraining,
    PushResult,
    Task,
    UpdateKind,
    UpdateMeta,
    Weighting,
    Weights,
)
from fedstream.common.tensors import TensorSpec, pack, spec_of, unpack
from fedstream.coordinator import aggregate, checkpoint
from fedstream.coordinator.aggregate import weighted_mean_of_sums
from fedstream.coordinator.config import FederationConfig
from fedstream.coordinator.optimizers import make_server_optimizer

log = logging.getLogger(__name__)

MAX_WAIT_S = 30.0  # longest a GetAssignment long-poll is held


@dataclass
class _Worker:
    name: str
    device: str
    last_seen: float
    accepted: int = 0
    stopped: bool = False


@dataclass
class _Unit:
    index: int
    client_ids: tuple[int, ...]
    leased_to: str | None = None
    lease_deadline: float = 0.0
    partial: tuple[list[np.ndarray], float] | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    base_version: int = 0  # async: the version the unit was handed out at
    pushed_base: int = 0  # async: the version its update says it was computed from
    staleness: int = 0  # async: versions between that and the one it was applied to


def rounds_per_pass(client_sizes: Sequence[int], batch_size: int) -> int:
    return max(math.ceil(n / batch_size) for n in client_sizes)


def unit_metrics(reports: Sequence[dict[str, float]]) -> dict[str, float]:
    """One round's worker reports combined: the training loss weighted like the updates,
    byte counts summed, timings (`*_s`) averaged over units."""
    total_weight = sum(r["weight"] for r in reports)
    out = {"train_loss": sum(r.get("loss", 0.0) * r["weight"] for r in reports) / total_weight}
    for key in sorted({k for r in reports for k in r}):
        values = [float(r[key]) for r in reports if key in r]
        if key.endswith("_bytes"):
            out[key] = sum(values)
        elif key.endswith("_s"):
            out[key] = sum(values) / len(values)
    return out


class Federation:
    def __init__(self, config: FederationConfig, model: keras.Model, client_sizes: Sequence[int],
                 *, loss: str = "categorical_crossentropy", num_classes: int = 10,
                 evaluator: Callable[[keras.Model], dict[str, float]] | None = None,
                 on_metrics: Callable[[dict], None] = lambda m: None,
                 clock: Callable[[], float] = time.monotonic,
                 checkpoint_dir: str | None = None):
        self.config = config
        self.model = model
        self._client_sizes = tuple(client_sizes)
        self._evaluator = evaluator
        self._on_metrics = on_metrics
        self._checkpoint_dir = checkpoint_dir
        self._clock = clock
        self._optimizer = make_server_optimizer(config.server_optimizer, config.server_lr,
                                                momentum=config.server_momentum,
                                                epsilon=config.server_epsilon or None)
        self._trainable = list(model.trainable_variables)
        self._apply = tf.function(  # one graph: 10x faster than eager Keras on small models
            lambda grads: self._optimizer.apply_gradients(zip(grads, self._trainable)))
        self._last_unit: dict[str, int] = {}
        self._counts: Counter = Counter()  # updates accepted/duplicate/rejected, leases expired
        delta = config.update == "delta"
        self.task = Task(
            model_json=model.to_json(), loss=loss, num_classes=num_classes,
            update_kind=UpdateKind.MODEL_DELTA if delta else UpdateKind.GRADIENT,
            weighting=Weighting(config.weighting),
            # local training fetches a client's whole data as its one "batch"
            batch_size=max(client_sizes) if delta else config.batch_size,
            dropout=config.dropout,
            input_divisor=config.input_divisor,
            update_specs=tuple(TensorSpec(v.path, np.dtype("<f4"), tuple(v.shape))
                               for v in self._trainable),
            rounds=config.rounds, per_client=config.aggregator != "mean",
            local=LocalTraining(epochs=config.local_epochs, batch_size=config.local_batch_size,
                                lr=config.client_lr, momentum=config.client_momentum,
                                prox_mu=config.prox_mu) if delta else None)
        self.eval_every = config.eval_every or rounds_per_pass(client_sizes, config.batch_size)
        self._cond = threading.Condition()
        self._workers: dict[str, _Worker] = {}
        self.phase = "waiting_for_workers"
        self.round = 0
        self.version = 1
        self._units: list[_Unit] = []
        self._round_started = 0.0
        self._started = 0.0
        self.last_metrics: dict[str, float] = {}
        self._snapshot()
        if checkpoint_dir is not None:
            self._resume(checkpoint.load(checkpoint_dir))

    # -- checkpoints -----------------------------------------------------------------------
    def _resume(self, ckpt: checkpoint.Checkpoint | None) -> None:
        """Continue after the checkpoint's round with its weights and optimizer state."""
        if ckpt is None:
            return
        shapes = [tuple(w.shape) for w in ckpt.weights]
        if shapes != [tuple(v.shape) for v in self.model.weights]:
            raise ValueError(f"the checkpoint in {self._checkpoint_dir} holds another model "
                             f"(weights {shapes}): use another --checkpoint-dir")
        if ckpt.config.get("units") != self.config.units:
            log.warning("checkpoint was written with %s units, resuming with %d: the model "
                        "will differ from an uninterrupted run by float rounding",
                        ckpt.config.get("units"), self.config.units)
        for variable, value in zip(self.model.weights, ckpt.weights):
            variable.assign(value)
        self._optimizer.build(self._trainable)
        if len(ckpt.optimizer) != len(self._optimizer.variables):
            raise ValueError("the checkpoint's optimizer state does not fit "
                             f"--server-optimizer {self.config.server_optimizer}")
        for variable, value in zip(self._optimizer.variables, ckpt.optimizer):
            variable.assign(value)
        self.round, self.version = ckpt.round, ckpt.version
        self._restore_state(ckpt.state)
        self._snapshot()
        if self.round >= self.config.rounds:
            self.phase = "done"
        log.info("resumed from %s after round %d (version %d)", self._checkpoint_dir,
                 self.round, self.version)

    def save_checkpoint(self, completed_round: int | None = None) -> None:
        """Write the state after `completed_round` (default: the last closed round)."""
        if self._checkpoint_dir is None:
            return
        with self._cond:
            if completed_round is None:
                completed_round = self.round - 1 if self.phase == "training" else self.round
            self._write_checkpoint(completed_round)

    def _write_checkpoint(self, completed_round: int) -> None:
        checkpoint.save(self._checkpoint_dir, checkpoint.Checkpoint(
            round=completed_round,
            version=self.version, model_json=self.task.model_json,
            config=dataclasses.asdict(self.config),
            weights=[np.asarray(v.numpy()) for v in self.model.weights],
            optimizer=[np.asarray(v.numpy()) for v in self._optimizer.variables],
            state=self._checkpoint_state()))

    def _checkpoint_state(self) -> dict:
        """What a mode keeps beyond weights, optimizer, round and version: none here."""
        return {}

    def _restore_state(self, state: dict) -> None:
        """The counterpart of `_checkpoint_state`."""

    # -- weights ---------------------------------------------------------------------------
    def _snapshot(self) -> None:
        names = [v.path for v in self.model.weights]
        specs, payload = pack(names, [np.asarray(v.numpy()) for v in self.model.weights])
        self._weights = (self.version, tuple(specs), payload)

    def weights_payload(self, worker_id: str, have_version: int
                        ) -> tuple[int, tuple[TensorSpec, ...], bytes | None]:
        """(version, specs, payload); payload None when `have_version` is current."""
        with self._cond:
            self._touch(worker_id)
            version, specs, payload = self._weights
        return version, specs, (None if have_version == version else payload)

    def pull_weights(self, worker_id: str, have_version: int) -> Weights:
        version, specs, payload = self.weights_payload(worker_id, have_version)
        return Weights(version, specs, None if payload is None else unpack(specs, payload))

    # -- membership ------------------------------------------------------------------------
    def join(self, worker_name: str, device: str) -> tuple[str, Task]:
        with self._cond:
            worker_id = f"w{len(self._workers) + 1}-{uuid.uuid4().hex[:8]}"
            self._workers[worker_id] = _Worker(worker_name, device, self._clock())
            log.info("[Join] worker %s (%s on %s) joined; %d connected", worker_id, worker_name,
                     device, len(self._workers))
            if self.phase == "waiting_for_workers" and len(self._workers) >= self.config.min_workers:
                self._started = self._clock()
                self._open_round(self.round + 1)
            return worker_id, self.task

    def leave(self, worker_id: str) -> None:
        with self._cond:
            worker = self._touch(worker_id)
            worker.stopped = True
            for unit in self._units:
                if unit.leased_to == worker_id and unit.partial is None:
                    unit.leased_to = None
            self._cond.notify_all()

    def _touch(self, worker_id: str) -> _Worker:
        worker = self._workers.get(worker_id)
        if worker is None:
            raise NotFound(f"unknown worker id {worker_id!r}: call Join first and use the id "
                           "it returns")
        worker.last_seen = self._clock()
        return worker

    # -- rounds ----------------------------------------------------------------------------
    def _open_round(self, number: int) -> None:
        self.round = number
        self.phase = "training"
        groups = np.array_split(self._sample(number), self.config.units)
        self._units = [_Unit(i, tuple(int(c) for c in g)) for i, g in enumerate(groups) if len(g)]
        self._round_started = self._clock()
        self._cond.notify_all()

    def _sample(self, round_number: int) -> np.ndarray:
        """This round's clients, sorted: all of them, or a seeded sample of
        max(min_clients, round(C * N)) that depends only on (sampling seed, round)."""
        n = len(self._client_sizes)
        if self.config.client_fraction >= 1:
            return np.arange(n)
        k = min(n, max(self.config.min_clients, round(self.config.client_fraction * n)))
        rng = np.random.default_rng([self.config.sampling_seed, round_number])
        return np.sort(rng.choice(n, size=k, replace=False))

    def assignment(self, worker_id: str, wait_s: float) -> Assignment:
        """The next unit to compute, waiting up to `wait_s` for one; STOP when training is over."""
        with self._cond:
            worker = self._touch(worker_id)
            deadline = self._clock() + min(max(wait_s, 0.0), MAX_WAIT_S)
            while True:
                if self.phase == "done":
                    worker.stopped = True
                    self._cond.notify_all()
                    return Assignment(Action.STOP, round=self.round, version=self.version)
                unit = self._free_unit(worker_id) if self.phase == "training" else None
                if unit is not None:
                    self._last_unit[worker_id] = unit.index
                    unit.leased_to = worker_id
                    unit.lease_deadline = self._clock() + self.config.lease_s
                    return Assignment(Action.TRAIN, round=self.round, version=self.version,
                                      unit=unit.index, client_ids=unit.client_ids,
                                      step=self._step_of(unit))
                remaining = deadline - self._clock()
                if remaining <= 0:
                    return Assignment(Action.WAIT, round=self.round, version=self.version)
                self._cond.wait(min(remaining, self.config.lease_s))

    def _step_of(self, unit: _Unit) -> int:
        """Which batch of its clients a unit computes: this round's."""
        return self.round - 1

    def _free_unit(self, worker_id: str) -> _Unit | None:
        """A unit nobody holds (or whose lease expired), preferring the one this worker
        computed last round: its clients' next batches are what it prefetched."""
        now = self._clock()
        last = self._last_unit.get(worker_id)
        preferred = [self._units[last]] if last is not None and last < len(self._units) else []
        for unit in preferred + self._units:
            if unit.partial is None and (unit.leased_to is None or unit.lease_deadline < now):
                if unit.leased_to is not None:
                    self._counts["leases_expired"] += 1
                    log.warning("lease of unit %d (round %d) held by %s expired: reassigning",
                                unit.index, self.round, unit.leased_to)
                return unit
        return None

    # -- updates ---------------------------------------------------------------------------
    def check_update(self, meta: UpdateMeta, specs: Sequence[TensorSpec]) -> None:
        """Everything about an update that its header decides; raises on the first problem."""
        with self._cond, self._counting_rejections():
            self._check_meta(meta)
            self._check_specs(specs, len(meta.client_ids))

    @contextlib.contextmanager
    def _counting_rejections(self):
        try:
            yield
        except FedstreamError:
            self._counts["updates_rejected"] += 1
            raise

    def _check_meta(self, meta: UpdateMeta) -> _Unit:
        self._touch(meta.worker_id)
        if self.phase != "training":
            raise FailedPrecondition(f"no round is open (phase {self.phase}): ask GetAssignment "
                                     "for work before pushing")
        if meta.round != self.round:
            raise FailedPrecondition(
                f"update for round {meta.round} but round {self.round} is open: the round was "
                "closed; drop this update and ask GetAssignment for new work")
        if meta.base_version != self.version:
            raise FailedPrecondition(
                f"update computed from version {meta.base_version} but the model is at "
                f"version {self.version}: pull the weights again and recompute")
        if not 0 <= meta.unit < len(self._units):
            raise InvalidArgument(f"unit {meta.unit} does not exist in round {self.round} "
                                  f"(units 0..{len(self._units) - 1})")
        unit = self._units[meta.unit]
        if tuple(meta.client_ids) != unit.client_ids:
            raise PermissionDenied(f"unit {meta.unit} holds other clients than the update lists: "
                                   "push exactly the client ids of your assignment")
        if unit.partial is None and unit.leased_to != meta.worker_id:
            raise PermissionDenied(f"unit {meta.unit} is leased to another worker (your lease "
                                   "expired or it was never yours): ask GetAssignment for work")
        if not (math.isfinite(meta.weight) and meta.weight > 0):
            raise InvalidArgument(f"update weight {meta.weight} must be a positive finite number")
        if self.task.per_client and meta.weight != len(meta.client_ids):
            raise InvalidArgument(f"per-client updates weigh one per client: weight must be "
                                  f"{len(meta.client_ids)}, not {meta.weight}")
        if meta.num_examples < 1:
            raise InvalidArgument("num_examples must be >= 1")
        return unit

    def _check_specs(self, specs: Sequence[TensorSpec], n_clients: int) -> None:
        expected = self.task.update_specs
        if self.task.per_client:  # one gradient per client, stacked
            expected = [TensorSpec(s.name, s.dtype, (n_clients, *s.shape)) for s in expected]
        if len(specs) != len(expected):
            raise InvalidArgument(f"update carries {len(specs)} tensors, the model has "
                                  f"{len(expected)} trainable variables")
        for got, want in zip(specs, expected):
            if (got.name, got.dtype, got.shape) != (want.name, want.dtype, want.shape):
                raise InvalidArgument(
                    f"update tensor {got.name!r} {got.dtype.name}{list(got.shape)} does not "
                    f"match {want.name!r} {want.dtype.name}{list(want.shape)}: send one tensor "
                    "per trainable variable in the task's order")

    def push(self, meta: UpdateMeta, arrays: Sequence[np.ndarray]) -> PushResult:
        """Validate and store one unit's update; the last unit of a round closes it."""
        with self._cond, self._counting_rejections():
            for spec, array in zip(self.task.update_specs, arrays):
                if not np.all(np.isfinite(array)):
                    raise InvalidArgument(f"update tensor {spec.name!r} contains NaN or Inf: the "
                                          "client diverged or the tensor is corrupt; not applied")
            unit = self._check_meta(meta)
            self._check_specs([spec_of(s.name, a) for s, a in zip(self.task.update_specs, arrays)],
                              len(meta.client_ids))
            if unit.partial is not None:
                self._counts["updates_duplicate"] += 1
                return PushResult(False, True, self.round, self.version)
            self._counts["updates_accepted"] += 1
            unit.partial = ([np.asarray(a) for a in arrays], float(meta.weight))
            unit.metrics = {**meta.metrics, "weight": float(meta.weight)}
            self._workers[meta.worker_id].accepted += 1
            self._received(unit)
            return PushResult(True, False, self.round, self.version)

    def _received(self, unit: _Unit) -> None:
        """A unit's update is stored: close the round if it was the last one needed."""
        if self._round_complete():
            self._close_round()

    def _round_complete(self) -> bool:
        """Every unit is in, or the deadline passed with a quorum of them."""
        received = sum(u.partial is not None for u in self._units)
        if received == len(self._units):
            return True
        deadline = self.config.round_deadline_s
        quorum = self.config.quorum or len(self._units)
        return (deadline > 0 and received >= quorum
                and self._clock() - self._round_started >= deadline)

    def check_deadline(self) -> bool:
        """Close the open round if its deadline passed with a quorum; the coordinator calls
        this periodically. Units pushed later are refused as for a closed round."""
        with self._cond:
            if self.phase == "training" and self._round_complete():
                self._close_round()
                return True
            return False

    def _aggregate(self, received: Sequence[_Unit]) -> list[np.ndarray]:
        if not self.task.per_client:
            return weighted_mean_of_sums([u.partial for u in received])
        clients = [[a[i] for a in u.partial[0]] for u in received
                   for i in range(len(u.client_ids))]  # unit order, then client order
        c = self.config
        if c.aggregator == "median":
            return aggregate.coordinate_median(clients)
        if c.aggregator == "trimmed_mean":
            return aggregate.trimmed_mean(clients, c.trim_fraction)
        return aggregate.krum(clients, c.krum_byzantine, c.krum_select)

    def _close_round(self) -> None:
        t0 = time.perf_counter()
        received = [u for u in self._units if u.partial is not None]
        stragglers = len(self._units) - len(received)
        if stragglers:
            log.warning("round %d closes at its deadline without %d unit(s): their updates "
                        "will be refused", self.round, stragglers)
        mean = self._aggregate(received)
        t1 = time.perf_counter()
        self._apply([tf.convert_to_tensor(g) for g in mean])
        self.version += 1
        self._snapshot()
        t2 = time.perf_counter()
        self._finish_update(received, {"stragglers": stragglers, "aggregate_s": t1 - t0,
                                       "apply_s": t2 - t1})

    def _finish_update(self, received: Sequence[_Unit], extra: dict) -> None:
        """After the model moved to a new version: metrics, evaluation, checkpoint, and the
        next round (or the end)."""
        now = self._clock()
        round_s = now - self._round_started
        metrics = {
            "round": self.round, "version": self.version, "round_s": round_s,
            "rounds_per_s": 1.0 / round_s if round_s > 0 else float("inf"),
            "elapsed_s": now - self._started,
            "clients": sum(len(u.client_ids) for u in received),
            **unit_metrics([u.metrics for u in received]), **extra,
            **{k: self._counts[k] for k in ("updates_accepted", "updates_duplicate",
                                            "updates_rejected", "leases_expired")},
        }
        self._counts.clear()
        if self._evaluator is not None and (self.round % self.eval_every == 0
                                            or self.round == self.config.rounds):
            metrics.update(self._evaluator(self.model))
        if self.round >= self.config.rounds:
            self.phase = "done"
            self._units = []
        self.save_checkpoint(completed_round=self.round)
        self.last_metrics = metrics
        self._on_metrics(metrics)
        if self.phase == "done":
            self._cond.notify_all()
        else:
            self._open_round(self.round + 1)

    def evaluate(self) -> tuple[int, dict[str, float]]:
        """The current version and its test metrics, on demand."""
        if self._evaluator is None:
            raise FailedPrecondition("this coordinator was started without a test set")
        with self._cond:
            return self.version, self._evaluator(self.model)

    # -- status ----------------------------------------------------------------------------
    def status(self) -> dict:
        with self._cond:
            now = self._clock()
            return {
                "phase": self.phase, "round": self.round, "version": self.version,
                "total_rounds": self.config.rounds, "last_metrics": dict(self.last_metrics),
                "workers": [{"worker_id": wid, "worker_name": w.name, "device": w.device,
                             "last_seen_s_ago": now - w.last_seen, "updates_accepted": w.accepted}
                            for wid, w in self._workers.items()],
            }

    def wait_until_done(self, timeout_s: float | None = None) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.phase == "done", timeout_s)

    def wait_for_workers_to_stop(self, timeout_s: float) -> bool:
        """After training: give every joined worker the chance to receive STOP."""
        with self._cond:
            return self._cond.wait_for(
                lambda: all(w.stopped for w in self._workers.values()), timeout_s)
