"""Local training for the FedAvg family: each client trains from the round's weights with
fresh optimizer state and reports its model delta w_start - w_end.

Nothing carries over from one simulated client to the next: the weights are reset to the
round's and the optimizer's slots and step count zeroed before every client, and restored to
the round's weights afterwards. Minibatch order is shuffled by a generator seeded with
(round, client id, epoch), so simulate and distributed runs train identically.
"""

from __future__ import annotations

from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from fedstream.common.learning import per_example_loss, preprocess
from fedstream.common.protocol import Batch, Task
from fedstream.common.tensors import stack_updates
from fedstream.worker.update_computer import UnitUpdate, UpdateComputer, client_weights


class LocalTrainer(UpdateComputer):
    def __init__(self, task: Task, device: str):
        if task.local is None or task.local.optimizer != "sgd":
            raise ValueError("local training supports the sgd client optimizer")
        super().__init__(task, device)
        with tf.device(device):
            self._optimizer = keras.optimizers.SGD(learning_rate=task.local.lr,
                                                   momentum=task.local.momentum)
            self._optimizer.build(self._trainable)
            # what a client may not inherit from the previous one: step count and momentum
            self._client_state = [v for v in self._optimizer.variables
                                  if v.name != "learning_rate"]
            self._anchor = [tf.Variable(tf.zeros_like(v), trainable=False)
                            for v in self._trainable]
        self._train_step = tf.function(self._step, reduce_retracing=True)

    def _step(self, x, y):
        with tf.GradientTape() as tape:
            outputs = self.model(preprocess(x, self.task.input_divisor),
                                 training=self.task.dropout)
            loss = tf.reduce_mean(per_example_loss(self.task.loss, y, outputs,
                                                   self.task.num_classes))
            total = loss
            if self.task.local.prox_mu > 0:  # FedProx: stay near the round's weights
                total += 0.5 * self.task.local.prox_mu * tf.add_n(
                    [tf.reduce_sum(tf.square(w - a)) for w, a in zip(self._trainable, self._anchor)])
        grads = tape.gradient(total, self._trainable)
        self._optimizer.apply_gradients(zip(grads, self._trainable))
        return loss

    def _start_client(self, start: Sequence[np.ndarray]) -> None:
        for variable, value in zip(self._trainable, start):
            variable.assign(value)
        for slot in self._client_state:
            slot.assign(tf.zeros_like(slot))

    def _train_client(self, batch: Batch, round_number: int) -> float:
        local = self.task.local
        n = len(batch.y)
        size = local.batch_size or n
        losses = []
        for epoch in range(local.epochs):
            order = np.random.default_rng([round_number, batch.client_id, epoch]).permutation(n)
            for begin in range(0, n, size):
                chosen = order[begin:begin + size]
                losses.append(self._train_step(batch.x[chosen], batch.y[chosen]))
        return float(tf.reduce_mean(tf.stack(losses)))

    def compute(self, batches: Sequence[Batch], round_number: int = 0) -> UnitUpdate:
        start = [v.numpy() for v in self._trainable]
        for anchor, value in zip(self._anchor, start):
            anchor.assign(value)
        deltas, losses = [], []
        with tf.device(self.device):
            for batch in batches:
                self._start_client(start)
                losses.append(self._train_client(batch, round_number))
                deltas.append([s - v.numpy() for s, v in zip(start, self._trainable)])
            self._start_client(start)  # the model holds the round's weights again
        examples = sum(len(b.y) for b in batches)
        if self.task.per_client:
            return UnitUpdate(stack_updates(deltas), float(len(batches)), examples,
                              float(np.mean(losses)))
        weights = client_weights(self.task, batches)
        summed = [sum(w * d[i] for w, d in zip(weights, deltas)).astype(np.float32)
                  for i in range(len(start))]
        total = float(weights.sum())
        return UnitUpdate(summed, total, examples,
                          float(np.dot(weights, losses)) / total)
