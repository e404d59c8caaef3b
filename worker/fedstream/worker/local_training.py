"""Local training for the FedAvg family: each client trains from the round's weights with
fresh optimizer state and reports its model delta w_start - w_end.

Nothing carries over from one simulated client to the next, and the model holds the round's
weights afterwards. Minibatch order is shuffled by a generator seeded with (round, client id,
epoch), so simulate and distributed runs train identically. For models that vectorise, the
unit's clients train together on a client axis, every step of every epoch in one compiled
program (`clients_together`); on TensorFlow, other models train clients in turn, each epoch's
steps one compiled loop (`tf_steps.InTurnTraining`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from fedstream.common.protocol import Batch, Task
from fedstream.worker.update_computer import UnitUpdate, UpdateComputer, backend_steps, client_weights


class LocalTrainer(UpdateComputer):
    def __init__(self, task: Task, device: str):
        if task.local is None or task.local.optimizer != "sgd":
            raise ValueError("local training supports the sgd client optimizer")
        super().__init__(task, device)
        with self.on_device():
            self._together, self._in_turn = backend_steps().local_training(task, self.model)

    def compute(self, batches: Sequence[Batch], round_number: int = 0,
                local_epochs: Sequence[int] = ()) -> UnitUpdate:
        start = [v.numpy() for v in self._trainable]
        weights = None if self.task.per_client else client_weights(self.task, batches)
        epochs = self._epochs(local_epochs, len(batches))
        with self.on_device():
            training = self._together if self._together is not None else self._in_turn
            update, losses = training.train(batches, start, round_number, weights, epochs)
        examples = sum(len(b.y) for b in batches)
        if weights is None:
            return UnitUpdate(update, float(len(batches)), examples, float(np.mean(losses)))
        total = float(weights.sum())
        return UnitUpdate(update, total, examples, float(np.dot(weights, losses)) / total)

    def _epochs(self, local_epochs: Sequence[int], clients: int) -> list[int]:
        """Each client's epochs: the task's, or the assignment's (a straggler does fewer)."""
        full = self.task.local.epochs
        if not local_epochs:
            return [full] * clients
        if len(local_epochs) != clients or not all(1 <= e <= full for e in local_epochs):
            raise ValueError(f"the assignment gives local epochs {list(local_epochs)} for "
                             f"{clients} clients: one count in [1, {full}] per client")
        return list(local_epochs)
