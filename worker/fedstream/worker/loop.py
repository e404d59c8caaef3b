"""The worker loop, the same in both run modes: ask for work, pull weights when the version
changed, fetch the unit's batches, compute, push, until told to stop."""

from __future__ import annotations

import logging

from fedstream.common.errors import FailedPrecondition, FedstreamError
from fedstream.common.protocol import Action, CoordinatorPort, DataPort, UpdateMeta
from fedstream.worker.compute import GradientComputer

log = logging.getLogger(__name__)


class WorkerLoop:
    def __init__(self, coordinator: CoordinatorPort, data: DataPort, *, name: str, device: str,
                 wait_s: float = 10.0):
        self._coordinator = coordinator
        self._data = data
        self._wait_s = wait_s
        self.worker_id, self.task = coordinator.join(name, device)
        self.computer = GradientComputer(self.task, device)
        self.version = 0
        self.units_done = 0

    def step(self) -> bool:
        """Handle one assignment; False once the coordinator says STOP."""
        a = self._coordinator.assignment(self.worker_id, self._wait_s)
        if a.action is Action.STOP:
            return False
        if a.action is Action.WAIT:
            return True
        if a.version != self.version:
            weights = self._coordinator.pull_weights(self.worker_id, self.version)
            if weights.arrays is not None:
                self.computer.set_weights(weights.arrays)
            self.version = weights.version
        batches = self._data.batches(a.client_ids, a.step, self.task.batch_size)
        update = self.computer.compute(batches)
        meta = UpdateMeta(worker_id=self.worker_id, round=a.round, base_version=self.version,
                          unit=a.unit, client_ids=a.client_ids, weight=update.weight,
                          num_examples=update.num_examples, metrics={"loss": update.loss})
        try:
            self._coordinator.push(meta, update.arrays)
        except FailedPrecondition as e:
            log.warning("update for round %d unit %d dropped: %s", a.round, a.unit, e)
            return True
        self.units_done += 1
        return True

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
        log.info("worker %s stopped after %d units", self.worker_id, self.units_done)
