"""The coordinator's port: the lock, the phase machine and the calls workers make.

No protobuf and no network here: the gRPC servicer and the in-process simulation both drive
this class, which is how both run modes compute the same model. Each part owns its state
and never calls back up:
- `ServerModel`: weights, version, server optimizer, one pinned snapshot per version;
- `Membership`: who joined (for which site) and was told to stop;
- `Sites`: which site owns which client, as the sites published it;
- a `RoundPolicy` (`SyncRounds`, the `SecureRounds` workflow, `FedBuff`, `FedAsync`): units,
  leases, which update fits, when the model steps, through its aggregation stage;
- `Reporter`: evaluation, checkpoint and metrics sinks of each step, off the lock;
- `SiteEvaluations`: with sites, each site's evaluation of a version on its own data;
- `Snapshots`: the checkpoint written after a round and resumed from.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter
from typing import Callable, Sequence

import keras
import numpy as np

from fedstream.common.codecs import Encoded
from fedstream.common.errors import FailedPrecondition, FedstreamError
from fedstream.common.protocol import (
    Action,
    Assignment,
    EvaluationResult,
    FederationStatus,
    Joined,
    PartyMessage,
    PushResult,
    SiteData,
    UpdateMeta,
    Weights,
)
from fedstream.common.tensors import TensorSpec, spec_of
from fedstream.coordinator.config import FederationConfig, Mode
from fedstream.coordinator.fedasync import FedAsync
from fedstream.coordinator.fedbuff import FedBuff
from fedstream.coordinator.federated_eval import SiteEvaluations
from fedstream.coordinator.membership import Membership
from fedstream.coordinator.metrics import flatten
from fedstream.coordinator.policy import RoundPolicy
from fedstream.coordinator.reporting import Evaluator, Report, Reporter, step_metrics
from fedstream.coordinator.rounds import SyncRounds
from fedstream.coordinator.secure_rounds import SecureRounds
from fedstream.coordinator.server_model import ServerModel
from fedstream.coordinator.sites import DataSpec, Sites
from fedstream.coordinator.snapshots import Snapshots
from fedstream.coordinator.task import make_task, rounds_per_pass
from fedstream.coordinator.validation import specs_of

log = logging.getLogger(__name__)

MAX_WAIT_S = 30.0  # longest a GetAssignment long-poll is held


def make_policy(config: FederationConfig, sites: Sites, model: ServerModel,
                counts: Counter) -> RoundPolicy:
    """The round policy a configuration asks for: its mode, secure rounds within sync."""
    if config.mode is Mode.FEDBUFF:
        return FedBuff(config, sites, model, counts)
    if config.mode is Mode.FEDASYNC:
        return FedAsync(config, sites, model, counts)
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


@contextlib.contextmanager
def _counting_rejections(counts: Counter):
    try:
        yield
    except FedstreamError:
        counts["updates_rejected"] += 1
        raise


class Federation:
    """The coordinator behind one lock: workers join, ask for work, pull the weights and push
    updates; the round policy decides when the model steps. The gRPC servicer and
    `simulate` both call these methods, so both run modes compute the same model.

    Phases: waiting_for_workers -> training (round r open; the policy collects; a step
    opens round r + 1) -> done."""

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
        self._cond = threading.Condition()
        self._counts: Counter = Counter()  # updates accepted/duplicate/rejected, leases expired
        self.server = ServerModel(model, config.server, config.encodings)
        self._specs = tuple(spec_of(n, w) for n, w in zip(self.server.names, self.server.weights))
        self.policy = make_policy(config, self.sites, self.server, self._counts)
        self.members = Membership(clock, self._cond)
        # a federated evaluation completes on later calls: its reports wait on a thread
        self.reports = Reporter(model_json=self.task.model_json, evaluator=evaluator,
                                on_metrics=on_metrics, checkpoint_dir=checkpoint_dir,
                                background=background_reports or self.sites.federated)
        self._evaluations = SiteEvaluations()
        self._snapshots = Snapshots(checkpoint_dir, config, self.task.model_json, self.server,
                                    self.policy)
        self.round = self._snapshots.resume()
        self.phase = "done" if self.round >= config.rounds else "waiting_for_workers"
        self._opened_at = 0.0
        self._started = 0.0
        self._first_join: float | None = None

    def join(self, worker_name: str, device: str, site: str = "",
             site_data: SiteData | None = None) -> Joined:
        """Register a worker; a site's first worker registers the site's clients."""
        with self._cond:
            registered = self.sites.register(site, site_data)
            worker_id = self.members.join(worker_name, device, site)
            if self._first_join is None:
                self._first_join = self._clock()
            self.check_deadline()
            return Joined(worker_id, self.task, registered.base)

    def leave(self, worker_id: str) -> None:
        with self._cond:
            self.members.touch(worker_id)
            self.members.stop(worker_id)
            self.policy.release(worker_id)
            self._cond.notify_all()

    def assignment(self, worker_id: str, wait_s: float) -> Assignment:
        """The next step to take, waiting up to `wait_s` for one: a pending evaluation of
        the worker's site first; STOP when training is over."""
        with self._cond:
            self.members.touch(worker_id)
            site = self.members.site_of(worker_id)
            deadline = self._clock() + min(max(wait_s, 0.0), MAX_WAIT_S)
            while True:
                evaluation = self._evaluations.lease(site, worker_id, self._clock())
                if evaluation is not None:
                    return Assignment(Action.EVALUATE, round=evaluation.round,
                                      version=evaluation.version)
                if self.phase == "done":
                    self.members.stop(worker_id)
                    self._cond.notify_all()
                    return Assignment(Action.STOP, round=self.round, version=self.server.version)
                work = (self.policy.assign(worker_id, site, self._clock(), self.round)
                        if self.phase == "training" else None)
                if work is not None:
                    return work
                remaining = deadline - self._clock()
                if remaining <= 0:
                    return Assignment(Action.WAIT, round=self.round, version=self.server.version)
                self._cond.wait(min(remaining, self.config.lease_s))

    def pull_weights(self, worker_id: str, have_version: int) -> Weights:
        """The current version as workers hold it (pinned): see `WeightsImage.pull`."""
        with self._cond:
            self.members.touch(worker_id)
            return self.server.image.pull(have_version, self._specs)

    def push(self, meta: UpdateMeta,
             arrays: Sequence[np.ndarray] | Callable[[], Sequence[np.ndarray]], *,
             specs: Sequence[TensorSpec] = (), encoded: Encoded | None = None) -> PushResult:
        """One unit's update (under secure aggregation, its party's masked input): checked,
        stored, and a due server step taken before returning. Over the network `arrays` is
        the stream's reader and `specs` its header: the header is checked before a byte of
        the payload is read. `encoded`, the bytes a network client sends, is not needed in
        process."""
        if callable(arrays):
            with self._cond, _counting_rejections(self._counts):
                self._admit(meta, specs)
            arrays = arrays()
        with self._cond, _counting_rejections(self._counts):
            unit = self._admit(meta, specs_of(arrays, self.policy.update_specs(meta)))
            contribution = self.policy.contribution(meta, arrays)
            if unit.update is not None:
                self._counts["updates_duplicate"] += 1
                return PushResult(False, True, self.round, self.server.version)
            self._counts["updates_accepted"] += 1
            self.members.credit(meta.worker_id)
            due = self.policy.receive(unit, contribution)
            if self.policy.phased:
                self._cond.notify_all()  # the next phase may have opened
            if due or self.policy.due(self._clock(), self._opened_at):
                self._close_round()
            return PushResult(True, False, self.round, self.server.version)

    def _admit(self, meta: UpdateMeta, specs: Sequence[TensorSpec]):
        """The unit an update is for: its worker is known, its clients are its site's, a round
        is open and the policy takes its header."""
        self.members.touch(meta.worker_id)
        self.sites.check_owned(self.members.site_of(meta.worker_id), meta.client_ids)
        if self.phase != "training":
            raise FailedPrecondition(f"no round is open (phase {self.phase}): ask GetAssignment "
                                     "for work before pushing")
        return self.policy.check_header(meta, specs)

    def deliver(self, message: PartyMessage) -> None:
        """A secure-aggregation party's message to the open round; the next phase may open."""
        with self._cond:
            self.members.touch(message.worker_id)
            if self.phase != "training":
                raise FailedPrecondition(f"no round is open (phase {self.phase})")
            self.policy.deliver(message, self._clock())
            self._cond.notify_all()
            if self.policy.due(self._clock(), self._opened_at):
                self._close_round()

    def report_evaluation(self, result: EvaluationResult) -> None:
        """A site's evaluation of the version its worker was asked to evaluate."""
        with self._cond:
            self.members.touch(result.worker_id)
            self._evaluations.record(self.members.site_of(result.worker_id), result)

    def check_deadline(self) -> bool:
        """The phase machine's tick, called periodically: open the first round once
        --min-workers joined and every declared site published its clients; step when the
        policy says a deadline passed (later pushes are refused as for a closed round). A
        resumed run waits for its workers at most --rejoin-wait-s after the first is back,
        then goes on: a worker (or a site) that died with the old coordinator must not stall
        it; one back later takes part from the next round. True when the model stepped."""
        with self._cond:
            if self.phase == "waiting_for_workers" and len(self.members) and len(self.sites):
                resumed_and_waited = (self.round > 0 and self._clock() - self._first_join
                                      >= self.config.rejoin_wait_s)
                if resumed_and_waited and not self.sites.ready():
                    log.warning("resuming without sites %s: they take part once they are back",
                                self.sites.missing())
                if (len(self.members) >= self.config.min_workers and self.sites.ready()
                        or resumed_and_waited):
                    if not self.eval_every:
                        _, sizes = self.sites.table()
                        self.eval_every = rounds_per_pass(sizes, self.config.batch_size)
                    self._started = self._clock()
                    self._close_round(opening=True)
            if self.phase == "training" and self.policy.due(self._clock(), self._opened_at):
                self._close_round()
                return True
            if self.policy.phased:
                self._cond.notify_all()  # a phase may have closed at its timeout
            return False

    def _close_round(self, opening: bool = False) -> None:
        """The open round closes: the model moves to a new version, its report is handed
        off; then the next round opens (or training ends). `opening`: no round is open yet,
        only open the next. A synchronous round without clients closes at once."""
        while True:
            if not opening:
                step = self.policy.step()
                final = self.round >= self.config.rounds or step.final
                due = self.round % self.eval_every == 0 or final
                self.reports.submit(Report(
                    step_metrics(step, self._counts, round_number=self.round,
                                 version=self.server.version, opened_at=self._opened_at,
                                 started=self._started, now=self._clock(),
                                 site_workers=self.members.per_site(
                                     [s.name for s in self.sites], self.config.lease_s)
                                 if self.sites.federated else None),
                    evaluate=self.server.weights if due and self.reports.evaluates else None,
                    checkpoint=self._snapshots.take(self.round),
                    federated=self._evaluations.open(
                        self.round, self.server.version, self.sites, self.config)
                    if due and self.policy.site_evaluations else None))
                self._counts.clear()
                if final:
                    self.phase = "done"
                    self.policy.close()
                    self._cond.notify_all()
                    return
            self.round += 1
            self.phase = "training"
            self.policy.open(self.round)
            self._opened_at = self._clock()
            self._cond.notify_all()
            if not (self.config.mode is Mode.SYNC
                    and self.policy.due(self._opened_at, self._opened_at)):
                return
            opening = False

    def evaluate(self) -> tuple[int, dict[str, float]]:
        """The current version and its test metrics, on demand, off the lock."""
        if not self.reports.evaluates:
            raise FailedPrecondition("this coordinator holds no test set (with sites, the sites "
                                     "evaluate on their own data: see the rounds' metrics)")
        with self._cond:
            version, weights = self.server.version, self.server.weights
        return version, self.reports.evaluate(weights)

    def status(self) -> FederationStatus:
        with self._cond:
            return FederationStatus(phase=self.phase, round=self.round,
                                    version=self.server.version,
                                    total_rounds=self.config.rounds,
                                    workers=self.members.status(),
                                    last_metrics=flatten(self.reports.last_metrics))

    def save_checkpoint(self) -> None:
        """Write the state after the last closed round, behind every pending report."""
        with self._cond:
            completed = self.round - 1 if self.phase == "training" else self.round
            snapshot = self._snapshots.take(completed)
            if snapshot is not None:
                self.reports.submit(Report(None, checkpoint=snapshot))
        self.reports.flush()

    def wait_until_done(self, timeout_s: float | None = None) -> bool:
        """True once the last round closed and its report was handled."""
        with self._cond:
            done = self._cond.wait_for(lambda: self.phase == "done", timeout_s)
        if done:
            self.reports.flush()
        return done
