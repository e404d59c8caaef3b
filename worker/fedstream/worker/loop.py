"""The worker loop, the same in both run modes: ask for work, pull weights when the version
changed, fetch the unit's batches, compute, push, until told to stop. A worker of a data
site publishes its site's clients when it joins, reads only its site's data pool, and
evaluates the model on the site's held-out examples when asked.

Each push reports where the worker's time and bytes went (pull, fetch, compute, and the
previous push), so the coordinator's per-round metrics show the split without guessing.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from fedstream.common.errors import FailedPrecondition, FedstreamError, NotFound, Unavailable
from fedstream.common.learning import evaluate
from fedstream.common.protocol import (
    Action,
    Batch,
    CoordinatorPort,
    DataPort,
    EvaluationResult,
    KeysAdvert,
    KeyShares,
    SharesRevealed,
    SurvivorsConfirmed,
    UpdateMeta,
)
from fedstream.worker.compression import UpdateEncoder
from fedstream.worker.computers import make_computer
from fedstream.worker.privacy import clip_and_sum
from fedstream.worker.secure_party import (
    UNSIGNED,
    PartyTrust,
    ProtocolViolation,
    SecureParties,
    SecureParty,
)
from fedstream.worker.site import SiteClients, check_pool_site

log = logging.getLogger(__name__)


class BatchPrefetcher:
    """Fetches the batches a worker will most likely need next (its unit's clients, next
    step) while it computes, so the data pool's latency hides behind the device call.

    It guesses only while units repeat their clients (the sticky units of FedSGD). Sampled
    clients and asynchronous units change every time: there a guess would be a wasted fetch,
    so after one unit with new clients it fetches on demand until the clients repeat."""

    def __init__(self, data: DataPort):
        self._data = data
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch")
        self._key: tuple | None = None
        self._future: Future | None = None
        self._previous_ids: tuple[int, ...] | None = None

    def get(self, client_ids: tuple[int, ...], step: int, batch_size: int) -> list[Batch]:
        batches = self._fetch(client_ids, step, batch_size)
        if client_ids == self._previous_ids:
            self._prefetch(client_ids, step + 1, batch_size)
        self._previous_ids = client_ids
        return batches

    def _fetch(self, client_ids: tuple[int, ...], step: int, batch_size: int) -> list[Batch]:
        key = (client_ids, step, batch_size)
        if self._future is not None and self._key == key:
            future, self._future = self._future, None
            try:
                return future.result()
            except FedstreamError as e:
                log.info("prefetch failed (%s); fetching again", e)
        return self._data.batches(client_ids, step, batch_size)

    def _prefetch(self, client_ids: tuple[int, ...], step: int, batch_size: int) -> None:
        self._key = (client_ids, step, batch_size)
        self._future = self._pool.submit(self._data.batches, client_ids, step, batch_size)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class WorkerLoop:
    """A worker's life: join, then lease units, pull the weights, fetch the unit's batches,
    compute and push the update, until the coordinator says STOP. It drives either a
    `Federation` in process or a `CoordinatorClient` over gRPC. It survives its services
    restarting: an unreachable coordinator or data pool is retried with backoff for up to
    `retry_s`, and a coordinator that no longer knows this worker (it restarted) is joined
    again."""

    def __init__(self, coordinator: CoordinatorPort, data: DataPort, *, name: str, device: str,
                 site: str = "", publish_labels: bool = False, wait_s: float = 10.0,
                 prefetch: bool = True, retry_s: float = 300.0, delay_s: float = 0.0,
                 trust: PartyTrust = UNSIGNED):
        self._coordinator = coordinator
        self._wait_s = wait_s
        self._retry_s = retry_s
        self._delay_s = delay_s
        self._name, self._device, self._site = name, device, site
        publishing = bool(site and publish_labels)
        summary = self._retrying(lambda: data.info(label_counts=True) if publishing
                                 else data.info(), "data pool info")
        check_pool_site(summary, site)
        self._site_data = summary.site_data(publish_labels=publish_labels) if site else None
        joined = self._retrying(self._join, "join")
        self.worker_id, self.task = joined.worker_id, joined.task
        log.info("joined as %s%s: %s updates for a task of %d rounds", self.worker_id,
                 f" for site {site!r} (its clients are {joined.client_id_base}.."
                 f"{joined.client_id_base + summary.num_clients - 1})" if site else "",
                 self.task.update_kind.value, self.task.rounds)
        self._data = SiteClients(data, summary, joined.client_id_base)
        self.computer = self._make_computer(self.task)
        self._encoder = UpdateEncoder(self.task)
        self._prefetcher = BatchPrefetcher(self._data) if prefetch else None
        self._parties = SecureParties()
        self._trust = trust
        self.version = 0
        self._held: list[np.ndarray] | None = None  # the weights held, to add a change to
        self._pulled_bytes = 0
        self.units_done = 0
        self._last_push_s = 0.0

    def _retrying(self, call, what: str):
        delay, deadline = 0.2, time.monotonic() + self._retry_s
        while True:
            try:
                return call()
            except Unavailable as e:
                if time.monotonic() > deadline:
                    raise
                log.warning("%s: service unavailable (%s); retrying in %.1f s", what, e, delay)
                time.sleep(delay)
                delay = min(2 * delay, 5.0)

    def _make_computer(self, task):
        """With client-level DP the computer gives every client's update, to be clipped."""
        return make_computer(dataclasses.replace(task, per_client=True) if task.dp_clip > 0
                             else task, self._device)

    def _join(self):
        return self._coordinator.join(self._name, self._device, self._site, self._site_data)

    def _rejoin(self) -> None:
        joined = self._retrying(self._join, "join")
        task = joined.task
        if task.model_json != self.task.model_json or task.update_specs != self.task.update_specs:
            self.computer = self._make_computer(task)
        if task.update_encoding != self.task.update_encoding:
            self._encoder = UpdateEncoder(task)
        log.warning("the coordinator forgot worker %s (it restarted?): joined again as %s",
                    self.worker_id, joined.worker_id)
        self.worker_id, self.task, self.version, self._held = joined.worker_id, task, 0, None
        self._data.base = joined.client_id_base

    def _batches(self, client_ids, step) -> list[Batch]:
        bs = self.task.batch_size
        if self._prefetcher is None:
            return self._retrying(lambda: self._data.batches(client_ids, step, bs), "batches")
        return self._retrying(lambda: self._prefetcher.get(client_ids, step, bs), "batches")

    def step(self) -> bool:
        """Handle one assignment; False once the coordinator says STOP."""
        try:
            return self._step()
        except NotFound:
            self._rejoin()
            return True

    def _step(self) -> bool:
        a = self._retrying(lambda: self._coordinator.assignment(self.worker_id, self._wait_s),
                           "assignment")
        if a.action is Action.STOP:
            return False
        if a.action is Action.WAIT:
            return True
        if a.action in (Action.SHARE_KEYS, Action.MASK, Action.CONFIRM, Action.UNMASK):
            self._secure_step(a)
            return True
        t0 = time.perf_counter()
        self._pull(a.version)
        if a.action is Action.EVALUATE:
            self._evaluate()
            return True
        t1 = time.perf_counter()
        batches = self._batches(a.client_ids, a.step)
        t2 = time.perf_counter()
        update = self.computer.compute(batches, a.round, a.local_epochs)
        unclipped = 0
        if self.task.dp_clip > 0:
            update, unclipped = clip_and_sum(update, a.dp_clip or self.task.dp_clip)
        if self.task.secure_aggregation:
            arrays, encoded = update.arrays, None
        else:
            arrays, encoded = self._encoder.encode(update.arrays, a.client_ids, a.round)
        if self._delay_s:
            time.sleep(self._delay_s)
        t3 = time.perf_counter()
        meta = UpdateMeta(
            worker_id=self.worker_id, round=a.round, base_version=self.version, unit=a.unit,
            client_ids=a.client_ids, weight=update.weight, num_examples=update.num_examples,
            metrics={"loss": update.loss, "pull_s": t1 - t0, "fetch_s": t2 - t1,
                     "compute_s": t3 - t2, "push_s": self._last_push_s,
                     "pull_bytes": self._pulled_bytes,
                     "fetch_bytes": sum(b.x.nbytes + b.y.nbytes for b in batches),
                     "push_bytes": (sum(g.nbytes for g in arrays) if encoded is None
                                    else len(encoded.payload))},
            unclipped_clients=unclipped)
        self._pulled_bytes = 0
        if self.task.secure_aggregation:
            self._advertise(a, meta, update)
            return True
        try:
            self._retrying(lambda: self._coordinator.push(meta, arrays, encoded=encoded), "push")
        except FailedPrecondition as e:
            log.warning("update for round %d unit %d dropped: %s", a.round, a.unit, e)
            return True
        finally:
            self._last_push_s = time.perf_counter() - t3
        self.units_done += 1
        return True

    def _advertise(self, a, meta: UpdateMeta, update) -> None:
        """Secure aggregation: the unit's update stays here as a party of the round; its
        public keys go to the coordinator, its masked input follows at MASK."""
        party = SecureParty(a.round, a.unit, update.arrays, update.weight, update.loss,
                            self._trust)
        self._parties.add(party, dataclasses.replace(meta, metrics={
            k: v for k, v in meta.metrics.items() if k != "loss"}))  # the loss goes masked
        try:
            self._retrying(lambda: self._coordinator.deliver(
                KeysAdvert(self.worker_id, a.round, a.unit, party.keys)), "advertise keys")
        except FailedPrecondition as e:
            log.warning("round %d unit %d dropped: %s", a.round, a.unit, e)

    def _secure_step(self, a) -> None:
        """One step of a party this worker holds; a request the protocol forbids is refused
        (the party stays silent and drops out)."""
        held = self._parties.get(a.round, a.unit)
        if held is None or a.secure is None:
            log.warning("no party of round %d unit %d here (this worker restarted?): it drops "
                        "out", a.round, a.unit)
            time.sleep(min(self._wait_s, 1.0))
            return
        party, meta = held
        coordinator = self._coordinator
        try:
            if a.action is Action.SHARE_KEYS:
                shares = party.share(a.secure)
                self._retrying(lambda: coordinator.deliver(
                    KeyShares(self.worker_id, a.round, a.unit, shares)), "share keys")
            elif a.action is Action.MASK:
                masked = party.mask(a.secure)
                meta = dataclasses.replace(meta, metrics={**meta.metrics,
                                                          "push_bytes": masked.nbytes})
                self._retrying(lambda: coordinator.push(meta, [masked]), "push")
                self.units_done += 1
            elif a.action is Action.CONFIRM:
                signature = party.confirm(a.secure)
                self._retrying(lambda: coordinator.deliver(SurvivorsConfirmed(
                    self.worker_id, a.round, a.unit, signature)), "confirm survivors")
            else:
                shares = party.unmask(a.secure)
                self._retrying(lambda: coordinator.deliver(
                    SharesRevealed(self.worker_id, a.round, a.unit, shares)), "reveal")
        except ProtocolViolation as e:
            log.error("%s", e)
            self._parties.drop(a.round, a.unit)
        except FailedPrecondition as e:
            log.warning("secure aggregation step of round %d unit %d dropped: %s", a.round,
                        a.unit, e)

    def _pull(self, version: int) -> None:
        """Hold `version` (or the newer one the coordinator has); the bytes pulled count
        until the next push reports them."""
        if version == self.version:
            return
        weights = self._retrying(
            lambda: self._coordinator.pull_weights(self.worker_id, self.version), "pull")
        if weights.delta is not None and weights.delta_from == self.version and self._held:
            arrays = [h + d for h, d in zip(self._held, weights.delta)]  # as the coordinator
        elif weights.arrays is not None:
            arrays = weights.arrays
        else:
            self.version = weights.version
            return
        self.computer.set_weights(arrays)
        self._held = arrays if self.task.weights_delta else None
        self.version = weights.version
        self._pulled_bytes += weights.wire_bytes

    def _evaluate(self) -> None:
        """The site's federated evaluation: the model on the site's held-out examples."""
        x, y = self._retrying(self._data.test_set, "test set")
        metrics = evaluate(self.computer.model, x, y, loss=self.task.loss,
                           num_classes=self.task.num_classes,
                           input_divisor=self.task.input_divisor)
        result = EvaluationResult(self.worker_id, self.version, len(y), metrics["test_loss"],
                                  metrics["test_acc"])
        try:
            self._retrying(lambda: self._coordinator.report_evaluation(result), "evaluation")
        except FailedPrecondition as e:
            log.warning("evaluation of version %d dropped: %s", self.version, e)

    def run(self) -> None:
        """Work until STOP; on any other exit hand unfinished work back to the coordinator."""
        try:
            while self.step():
                pass
        except BaseException:
            try:
                self._coordinator.leave(self.worker_id)
            except FedstreamError as e:
                log.warning("could not leave cleanly: %s", e)
            raise
        finally:
            if self._prefetcher is not None:
                self._prefetcher.close()
        log.info("worker %s stopped after %d units", self.worker_id, self.units_done)
