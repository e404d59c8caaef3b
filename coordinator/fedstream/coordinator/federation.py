"""The coordinator's port: a thin facade that owns the lock and wires the parts.

No protobuf and no network here: the gRPC servicer and the in-process simulation both drive
this class, which is how both run modes compute the same model. Each part owns its state
and never calls back up:
- `ServerModel`: weights, version, server optimizer, one pinned snapshot per version;
- `Membership`: who joined (for which site) and was told to stop;
- `Sites`: which site owns which client, as the sites published it;
- a `RoundPolicy` (`SyncRounds`, `SecureRounds`, `FedBuff`, `FedAsync`): units, leases,
  what fits, when the model steps, through the aggregation pipeline (`pipeline`);
- `validation`: pure checks every policy shares;
- `Reporter`: evaluation, checkpoint and metrics sinks of each step, off the lock;
- `FederatedEvaluation`: with sites, each site's evaluation of a version on its own data.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections import Counter
from typing import Callable, Sequence

import keras
import numpy as np

from fedstream.common.codecs import Encoded, Encoding, encoded_size
from fedstream.common.errors import FailedPrecondition, FedstreamError, InvalidArgument
from fedstream.common.protocol import (
    Action,
    Assignment,
    EncryptedShare,
    EvaluationResult,
    FederationStatus,
    Joined,
    PartyKeys,
    PushResult,
    RevealedShare,
    SiteData,
    UpdateKind,
    UpdateMeta,
    Weights,
)
from fedstream.common.secagg import MASKED_TENSOR
from fedstream.common.tensors import TensorSpec, spec_of
from fedstream.coordinator import checkpoint
from fedstream.coordinator.config import FederationConfig, Mode
from fedstream.coordinator.fedasync import FedAsync
from fedstream.coordinator.fedbuff import FedBuff
from fedstream.coordinator.federated_eval import FederatedEvaluation, check_result
from fedstream.coordinator.membership import Membership
from fedstream.coordinator.metrics import flatten
from fedstream.coordinator.policy import RoundPolicy
from fedstream.coordinator.privacy import check_resume
from fedstream.coordinator.reporting import Evaluator, Report, Reporter, step_metrics
from fedstream.coordinator.rounds import SyncRounds
from fedstream.coordinator.secure_rounds import SecureRounds
from fedstream.coordinator.server_model import ServerModel
from fedstream.coordinator.sites import DataSpec, Sites
from fedstream.coordinator.task import make_task, rounds_per_pass
from fedstream.coordinator.units import Contribution, Unit
from fedstream.coordinator.validation import (
    check_finite,
    check_specs,
    check_weight,
    expected_specs,
)

log = logging.getLogger(__name__)

MAX_WAIT_S = 30.0  # longest a GetAssignment long-poll is held


def make_policy(config: FederationConfig, sites: Sites, model: ServerModel, counts: Counter,
                update_kind: UpdateKind) -> RoundPolicy:
    if config.mode is Mode.FEDBUFF:
        return FedBuff(config, sites, model, counts)
    if config.mode is Mode.FEDASYNC:
        return FedAsync(config, sites, model, counts, update_kind=update_kind)
    if config.secure_aggregation:
        return SecureRounds(config, sites, model, counts)
    return SyncRounds(config, sites, model, counts)


def pool_sites(model: keras.Model, client_sizes: Sequence[int], num_classes: int) -> Sites:
    """The clients of the one data pool the coordinator reads."""
    return Sites.single_pool(SiteData(tuple(client_sizes), tuple(model.input_shape[1:]),
                                      None, num_classes))


def declared_sites(config: FederationConfig, model: keras.Model, num_classes: int) -> Sites:
    """The sites a coordinator without a data pool waits for; their data must fit `model`."""
    return Sites(config.site_names, DataSpec(tuple(model.input_shape[1:]), num_classes))


class Federation:
    """The coordinator behind one lock: workers join, ask for work, pull the weights and push
    updates; the round policy decides when the model steps. The gRPC servicer and
    `simulate` both call these methods, so both run modes compute the same model."""

    def __init__(self, config: FederationConfig, model: keras.Model,
                 client_sizes: Sequence[int] = (), *, sites: Sites | None = None,
                 loss: str = "categorical_crossentropy", num_classes: int = 10,
                 evaluator: Evaluator | None = None,
                 on_metrics: Callable[[dict], None] = lambda m: None,
                 clock: Callable[[], float] = time.monotonic,
                 checkpoint_dir: str | None = None, background_reports: bool = False):
        self.config = config
        self.task = make_task(config, model, loss=loss, num_classes=num_classes)
        self.sites = sites if sites is not None else pool_sites(model, client_sizes, num_classes)
        self.eval_every = config.eval_every  # 0: one pass over the clients, at the first round
        self._clock = clock
        self._checkpoint_dir = checkpoint_dir
        self._counts: Counter = Counter()  # updates accepted/duplicate/rejected, leases expired
        self._server = ServerModel(model, config)
        self._specs = tuple(spec_of(n, w) for n, w in zip(self._server.names, self._server.weights))
        self.policy = make_policy(config, self.sites, self._server, self._counts,
                                  self.task.update_kind)
        self._members = Membership(clock)
        self._secure = isinstance(self.policy, SecureRounds)
        # a federated evaluation completes on later calls: its reports wait on a thread
        self._reports = Reporter(model_json=self.task.model_json, evaluator=evaluator,
                                 on_metrics=on_metrics, checkpoint_dir=checkpoint_dir,
                                 background=background_reports or self.sites.federated)
        self._evaluations: list[FederatedEvaluation] = []
        self._cond = threading.Condition()
        self.phase = "waiting_for_workers"
        self.round = 0
        self._opened_at = 0.0
        self._started = 0.0
        self._first_join: float | None = None
        if checkpoint_dir is not None:
            self._resume(checkpoint.load(checkpoint_dir))

    @property
    def model(self) -> keras.Model:
        return self._server.model

    @property
    def image_encoding(self) -> Encoding:
        """How a whole version travels so that workers hold its image exactly."""
        return self._server.image.full_encoding

    @property
    def version(self) -> int:
        return self._server.version

    @property
    def last_metrics(self) -> dict:
        return self._reports.last_metrics

    # -- checkpoints -----------------------------------------------------------------------
    def _resume(self, ckpt: checkpoint.Checkpoint | None) -> None:
        """Continue after the checkpoint's round with its weights and optimizer state."""
        if ckpt is None:
            return
        if ckpt.config.get("units") != self.config.units:
            log.warning("checkpoint was written with %s units, resuming with %d: the model "
                        "will differ from an uninterrupted run by float rounding",
                        ckpt.config.get("units"), self.config.units)
        check_resume(self.config, ckpt.state)
        self._server.restore(ckpt, self._checkpoint_dir)
        self.round = ckpt.round
        self.policy.restore(ckpt.state)
        if self.round >= self.config.rounds:
            self.phase = "done"
        log.info("resumed from %s after round %d (version %d); the next round opens when %d "
                 "worker(s) are back, or %.0f s after the first is", self._checkpoint_dir,
                 self.round, self.version, self.config.min_workers, self.config.rejoin_wait_s)

    def _checkpoint(self, completed_round: int) -> checkpoint.Checkpoint:
        return checkpoint.Checkpoint(
            round=completed_round, version=self.version, model_json=self.task.model_json,
            config=dataclasses.asdict(self.config), weights=list(self._server.weights),
            optimizer=self._server.optimizer_state(), state=self.policy.state())

    def save_checkpoint(self) -> None:
        """Write the state after the last closed round, behind every pending report."""
        if self._checkpoint_dir is None:
            return
        with self._cond:
            completed = self.round - 1 if self.phase == "training" else self.round
            self._reports.submit(Report(None, checkpoint=self._checkpoint(completed)))
        self._reports.flush()

    # -- membership ------------------------------------------------------------------------
    def join(self, worker_name: str, device: str, site: str = "",
             site_data: SiteData | None = None) -> Joined:
        """Register a worker; a site's first worker registers the site's clients."""
        with self._cond:
            registered = self.sites.register(site, site_data)
            worker_id = self._members.join(worker_name, device, site)
            if self._first_join is None:
                self._first_join = self._clock()
            self._start_if_ready()
            return Joined(worker_id, self.task, registered.base)

    def _start_if_ready(self) -> None:
        """The first round opens once --min-workers joined and every declared site published
        its clients. A run resumed from a checkpoint waits for them at most --rejoin-wait-s
        after the first is back, then goes on with those that are: a worker (or a whole site)
        that died with the old coordinator must not stall it; a site back later takes part
        from the next round."""
        if self.phase != "waiting_for_workers" or not len(self._members) or not len(self.sites):
            return
        resumed_and_waited = (self.round > 0 and self._clock() - self._first_join
                              >= self.config.rejoin_wait_s)
        if resumed_and_waited and not self.sites.ready():
            log.warning("resuming without sites %s: they take part once they are back",
                        self.sites.missing())
        if (len(self._members) >= self.config.min_workers and self.sites.ready()
                or resumed_and_waited):
            if not self.eval_every:
                _, sizes = self.sites.table()
                self.eval_every = rounds_per_pass(sizes, self.config.batch_size)
            self._started = self._clock()
            self._open(self.round + 1)

    def leave(self, worker_id: str) -> None:
        with self._cond:
            self._members.touch(worker_id)
            self._members.stop(worker_id)
            self.policy.release(worker_id)
            self._cond.notify_all()

    # -- work ------------------------------------------------------------------------------
    def _open(self, number: int) -> None:
        self.round = number
        self.phase = "training"
        self.policy.open(number)
        self._opened_at = self._clock()
        self._cond.notify_all()
        if self.config.mode is Mode.SYNC and self.policy.due(self._opened_at, self._opened_at):
            self._step()  # a round without clients closes at once

    def assignment(self, worker_id: str, wait_s: float) -> Assignment:
        """The next unit to compute, waiting up to `wait_s` for one: a pending evaluation of
        the worker's site first; STOP when training is over."""
        with self._cond:
            self._members.touch(worker_id)
            site = self._members.site_of(worker_id)
            deadline = self._clock() + min(max(wait_s, 0.0), MAX_WAIT_S)
            while True:
                evaluation = self._evaluation_for(site, worker_id)
                if evaluation is not None:
                    return Assignment(Action.EVALUATE, round=evaluation.round,
                                      version=evaluation.version)
                if self.phase == "done":
                    self._members.stop(worker_id)
                    self._cond.notify_all()
                    return Assignment(Action.STOP, round=self.round, version=self.version)
                secure = (self.policy.secure_step(worker_id, self._clock())
                          if self.phase == "training" and self._secure else None)
                if secure is not None:
                    action, unit, step = secure
                    return Assignment(action, round=self.round, version=self.version,
                                      unit=unit.index, client_ids=unit.client_ids, secure=step)
                unit = (self.policy.lease(worker_id, site, self._clock())
                        if self.phase == "training" else None)
                if unit is not None:
                    return Assignment(Action.TRAIN, round=self.round, version=self.version,
                                      unit=unit.index, client_ids=unit.client_ids,
                                      step=self.policy.step_of(unit), dp_clip=self.policy.clip,
                                      local_epochs=unit.local_epochs)
                remaining = deadline - self._clock()
                if remaining <= 0:
                    return Assignment(Action.WAIT, round=self.round, version=self.version)
                self._cond.wait(min(remaining, self.config.lease_s))

    def _evaluation_for(self, site: str, worker_id: str) -> FederatedEvaluation | None:
        self._evaluations = [e for e in self._evaluations if not e.expired()]
        return next((e for e in self._evaluations
                     if e.lease(site, worker_id, self._clock())), None)

    def report_evaluation(self, result: EvaluationResult) -> None:
        """A site's evaluation of the version its worker was asked to evaluate."""
        check_result(result)
        with self._cond:
            self._members.touch(result.worker_id)
            site = self._members.site_of(result.worker_id)
            evaluation = next((e for e in self._evaluations
                               if e.holds(site, result.worker_id)), None)
            if evaluation is None:
                raise FailedPrecondition(
                    f"no evaluation is pending for worker {result.worker_id} of site {site!r} "
                    "(it timed out, or another worker of the site took it over): drop it and "
                    "ask GetAssignment for work")
            evaluation.record(site, result)
            log.info("site %r evaluated version %d: loss %.4f, accuracy %.4f on %d examples",
                     site, result.version, result.loss, result.accuracy, result.num_examples)

    def pull_weights(self, worker_id: str, have_version: int) -> Weights:
        """The current version as workers hold it (pinned); arrays None when `have_version`
        is current; with weights deltas, also the change from `have_version` when it is the
        previous version."""
        with self._cond:
            self._members.touch(worker_id)
            image = self._server.image
            version, arrays, delta = image.version, image.arrays, image.delta_from(have_version)
        if have_version == version:
            return Weights(version, self._specs, None)
        if delta is None:
            return Weights(version, self._specs, list(arrays),
                           wire_bytes=encoded_size(image.full_encoding, self._specs))
        change, encoded = delta
        return Weights(version, self._specs, list(arrays), delta_from=have_version, delta=change,
                       encoded_delta=encoded, wire_bytes=len(encoded.payload))

    # -- updates ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def _counting_rejections(self):
        try:
            yield
        except FedstreamError:
            self._counts["updates_rejected"] += 1
            raise

    def _check_sender(self, meta: UpdateMeta) -> None:
        """The worker is known, its clients are its site's, and a round is open."""
        self._members.touch(meta.worker_id)
        self.sites.check_owned(self._members.site_of(meta.worker_id), meta.client_ids)
        if self.phase != "training":
            raise FailedPrecondition(f"no round is open (phase {self.phase}): ask GetAssignment "
                                     "for work before pushing")

    def _admit(self, meta: UpdateMeta, specs: Sequence[TensorSpec]) -> Unit:
        self._check_sender(meta)
        unit = self.policy.admit(meta)
        check_weight(meta, per_client=self.task.per_client)
        check_specs(specs, expected_specs(self.task.update_specs, len(meta.client_ids),
                                          per_client=self.task.per_client))
        return unit

    def check_update(self, meta: UpdateMeta, specs: Sequence[TensorSpec]) -> None:
        """Everything about an update that its header decides; raises on the first problem."""
        with self._cond, self._counting_rejections():
            if self._secure:
                self._admit_masked(meta, specs)
            else:
                self._admit(meta, specs)

    def _admit_masked(self, meta: UpdateMeta, specs: Sequence[TensorSpec]) -> Unit:
        """A secure-aggregation party's masked input: one uint32 tensor "masked"."""
        self._check_sender(meta)
        if len(specs) != 1 or specs[0].name != MASKED_TENSOR or specs[0].dtype != np.dtype("<u4") \
                or len(specs[0].shape) != 1:
            raise InvalidArgument("under secure aggregation an update is one uint32 tensor "
                                  "named 'masked' of the party's masked input: mask it "
                                  "(Assignment MASK) before pushing")
        check_weight(meta, per_client=False)
        return self.policy.check_masked(meta, specs[0].shape[0])

    def push(self, meta: UpdateMeta, arrays: Sequence[np.ndarray],
             encoded: Encoded | None = None) -> PushResult:
        """Validate and store one unit's update; a due server step happens before returning.
        `arrays` are the update as the coordinator decodes it; `encoded`, the bytes a network
        client sends instead, is not needed in process."""
        if self._secure:
            raise FailedPrecondition("this federation aggregates securely: push the party's "
                                     "masked input (Assignment MASK), never an update in the "
                                     "clear")
        with self._cond, self._counting_rejections():
            check_finite(self.task.update_specs, arrays)
            unit = self._admit(meta, [spec_of(s.name, a)
                                      for s, a in zip(self.task.update_specs, arrays)])
            self.policy.check_update(meta, arrays)
            if unit.update is not None:
                self._counts["updates_duplicate"] += 1
                return PushResult(False, True, self.round, self.version)
            self._counts["updates_accepted"] += 1
            self._members.credit(meta.worker_id)
            contribution = Contribution([np.asarray(a) for a in arrays], float(meta.weight),
                                        len(meta.client_ids), meta.base_version,
                                        {**meta.metrics, "weight": float(meta.weight),
                                         "examples": meta.num_examples},
                                        unclipped=meta.unclipped_clients)
            if (self.policy.receive(unit, contribution)
                    or self.policy.due(self._clock(), self._opened_at)):
                self._step()
            return PushResult(True, False, self.round, self.version)

    def push_masked(self, meta: UpdateMeta, masked: np.ndarray) -> PushResult:
        """Secure aggregation: store one party's masked input."""
        with self._cond, self._counting_rejections():
            if not self._secure:
                raise FailedPrecondition("this federation does not aggregate securely: push "
                                         "updates in the clear")
            unit = self._admit_masked(meta, [spec_of(MASKED_TENSOR, masked)])
            if unit.update is not None:
                self._counts["updates_duplicate"] += 1
                return PushResult(False, True, self.round, self.version)
            self._counts["updates_accepted"] += 1
            self._members.credit(meta.worker_id)
            self.policy.receive(unit, Contribution(
                [np.array(masked, dtype=np.uint32)], float(meta.weight),
                len(meta.client_ids), meta.base_version,
                {**meta.metrics, "weight": float(meta.weight), "examples": meta.num_examples}))
            self._advance_secure()
            return PushResult(True, False, self.round, self.version)

    # -- secure aggregation ----------------------------------------------------------------
    def advertise_keys(self, worker_id: str, round_number: int, unit: int,
                       keys: PartyKeys) -> None:
        self._secure_message(worker_id, lambda policy, now: policy.advertise(
            worker_id, round_number, keys, now))

    def share_keys(self, worker_id: str, round_number: int, unit: int,
                   shares: Sequence[EncryptedShare]) -> None:
        self._secure_message(worker_id, lambda policy, now: policy.share(
            worker_id, round_number, unit, list(shares), now))

    def confirm_survivors(self, worker_id: str, round_number: int, unit: int,
                          signature: bytes) -> None:
        self._secure_message(worker_id, lambda policy, now: policy.confirm(
            worker_id, round_number, unit, signature, now))

    def reveal_shares(self, worker_id: str, round_number: int, unit: int,
                      shares: Sequence[RevealedShare]) -> None:
        self._secure_message(worker_id, lambda policy, now: policy.reveal(
            worker_id, round_number, unit, list(shares), now))

    def _secure_message(self, worker_id: str,
                        deliver: Callable[[SecureRounds, float], None]) -> None:
        """One party message to the round's secure sum; the next phase may open."""
        with self._cond:
            self._members.touch(worker_id)
            deliver(self._secure_policy(), self._clock())
            self._advance_secure()

    def _secure_policy(self) -> SecureRounds:
        if not self._secure:
            raise FailedPrecondition("this federation does not aggregate securely: push "
                                     "updates in the clear")
        if self.phase != "training":
            raise FailedPrecondition(f"no round is open (phase {self.phase})")
        return self.policy

    def _advance_secure(self) -> None:
        """Wake the parties for the next phase; step once the secure sum closed."""
        self._cond.notify_all()
        if self.policy.due(self._clock(), self._opened_at):
            self._step()

    def check_deadline(self) -> bool:
        """Step if the policy says a deadline passed (units pushed later are refused as for a
        closed round), or start a resumed run whose rejoin wait is over; the coordinator calls
        this periodically."""
        with self._cond:
            self._start_if_ready()
            if self.phase == "training" and self.policy.due(self._clock(), self._opened_at):
                self._step()
                return True
            if self._secure:
                self._cond.notify_all()  # a phase may have closed at its timeout
            return False

    def _step(self) -> None:
        """The model moves to a new version; its report is handed off; the next round opens
        (or training ends)."""
        federated = self.sites.federated
        step = self.policy.step()
        metrics = step_metrics(
            step, self._counts, round_number=self.round, version=self.version,
            opened_at=self._opened_at, started=self._started, now=self._clock(),
            site_workers=self._site_workers() if federated else None)
        self._counts.clear()
        final = self.round >= self.config.rounds or step.final
        due = self.round % self.eval_every == 0 or final
        evaluation = None
        if federated and due and self.policy.site_evaluations:
            evaluation = FederatedEvaluation(
                self.round, self.version, [s.name for s in self.sites],
                lease_s=self.config.lease_s, timeout_s=self.config.eval_timeout_s)
            self._evaluations.append(evaluation)
        self._reports.submit(Report(
            metrics, evaluate=self._server.weights if due and self._reports.evaluates else None,
            checkpoint=None if self._checkpoint_dir is None else self._checkpoint(self.round),
            federated=evaluation))
        if final:
            self.phase = "done"
            self.policy.close()
            self._cond.notify_all()
        else:
            self._open(self.round + 1)

    def _site_workers(self) -> dict[str, int]:
        """Every registered site's connected workers (heard from within a lease)."""
        live = self._members.per_site(self.config.lease_s)
        return {site.name: live.get(site.name, 0) for site in self.sites}

    def evaluate(self) -> tuple[int, dict[str, float]]:
        """The current version and its test metrics, on demand, off the lock."""
        if not self._reports.evaluates:
            raise FailedPrecondition("this coordinator holds no test set (with sites, the sites "
                                     "evaluate on their own data: see the rounds' metrics)")
        with self._cond:
            version, weights = self.version, self._server.weights
        return version, self._reports.evaluate(weights)

    # -- status ----------------------------------------------------------------------------
    def status(self) -> FederationStatus:
        with self._cond:
            return FederationStatus(phase=self.phase, round=self.round, version=self.version,
                                    total_rounds=self.config.rounds,
                                    workers=self._members.status(),
                                    last_metrics=flatten(self.last_metrics))

    def wait_until_done(self, timeout_s: float | None = None) -> bool:
        """True once the last round closed and its report was handled."""
        with self._cond:
            done = self._cond.wait_for(lambda: self.phase == "done", timeout_s)
        if done:
            self._reports.flush()
        return done

    def wait_for_workers_to_stop(self, timeout_s: float) -> bool:
        """After training: give every joined worker the chance to receive STOP."""
        with self._cond:
            return self._cond.wait_for(self._members.all_stopped, timeout_s)

    def flush_reports(self) -> None:
        """Wait for every pending evaluation, checkpoint and metrics row."""
        self._reports.flush()
