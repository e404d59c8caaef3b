"""Local training for the FedAvg family: each client trains from the round's weights with
fresh optimizer state and reports its model delta w_start - w_end.

Nothing carries over from one simulated client to the next: the weights are reset to the
round's and the optimizer's slots and step count zeroed before every client, and restored to
the round's weights afterwards. Minibatch order is shuffled by a generator seeded with
(round, client id, epoch), so simulate and distributed runs train identically. An epoch's
steps run in one compiled loop, without a return to Python between them; for models that
vectorise, the unit's clients train together on a client axis, every step of every epoch in
one XLA program (`clients_together`).
"""

from __future__ import annotations

from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from fedstream.common.learning import per_example_loss, preprocess
from fedstream.common.protocol import Batch, Task
from fedstream.common.tensors import stack_updates
from fedstream.worker.clients_together import ClientsTogether, trains_together
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
        self._train_steps = None  # traced on first use, for the data's dtype and shape
        self._together = (ClientsTogether(task, self.model)
                          if trains_together(task, self.model) else None)

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

    def _steps(self, x, y, order):
        """One full minibatch per row of `order` ([steps, batch size] indices into x and y),
        all in one graph: no return to Python between steps. Returns the sum of their losses."""
        total = tf.constant(0.0)
        for i in tf.range(tf.shape(order)[0]):
            total += self._step(tf.gather(x, order[i]), tf.gather(y, order[i]))
        return total

    def _compiled_steps(self, batch: Batch):
        """`_steps` as one graph for any number of examples and steps: traced once per task."""
        if self._train_steps is None:
            def spec(a):
                return tf.TensorSpec([None, *a.shape[1:]], tf.as_dtype(a.dtype))
            self._train_steps = tf.function(self._steps, input_signature=[
                spec(batch.x), spec(batch.y), tf.TensorSpec([None, None], tf.int64)])
        return self._train_steps

    def _start_client(self, start: Sequence[np.ndarray]) -> None:
        for variable, value in zip(self._trainable, start):
            variable.assign(value)
        for slot in self._client_state:
            slot.assign(tf.zeros_like(slot))

    def _train_client(self, batch: Batch, round_number: int) -> float:
        """E epochs over the client's data in seeded minibatch order. Each epoch's full
        minibatches run as one compiled loop (traced once per task for any number of examples
        and steps, so clients of any size reuse it); a short last minibatch, when the client's size is
        not a multiple of B, is one more step of its own, so every step sees exactly the
        examples and shapes it would one call at a time."""
        local = self.task.local
        n = len(batch.y)
        size = local.batch_size or n
        full = n // size
        x, y = tf.convert_to_tensor(batch.x), tf.convert_to_tensor(batch.y)
        total, steps = 0.0, 0
        for epoch in range(local.epochs):
            order = np.random.default_rng([round_number, batch.client_id, epoch]).permutation(n)
            if full:
                loop = self._compiled_steps(batch)
                total += float(loop(x, y, order[:full * size].reshape(full, size)))
            if full * size < n:
                rest = order[full * size:]
                total += float(self._train_step(batch.x[rest], batch.y[rest]))
            steps += full + (full * size < n)
        return total / steps

    def compute(self, batches: Sequence[Batch], round_number: int = 0) -> UnitUpdate:
        start = [v.numpy() for v in self._trainable]
        weights = None if self.task.per_client else client_weights(self.task, batches)
        with tf.device(self.device):
            if self._together is not None:
                update, losses = self._together.train(batches, start, round_number, weights)
            else:
                update, losses = self._train_in_turn(batches, start, round_number, weights)
        examples = sum(len(b.y) for b in batches)
        if weights is None:
            return UnitUpdate(update, float(len(batches)), examples, float(np.mean(losses)))
        total = float(weights.sum())
        return UnitUpdate(update, total, examples, float(np.dot(weights, losses)) / total)

    def _train_in_turn(self, batches: Sequence[Batch], start: list[np.ndarray],
                       round_number: int, weights: np.ndarray | None):
        """`ClientsTogether.train`'s result, one client after another."""
        for anchor, value in zip(self._anchor, start):
            anchor.assign(value)
        deltas, losses = [], []
        for batch in batches:
            self._start_client(start)
            losses.append(self._train_client(batch, round_number))
            deltas.append([s - v.numpy() for s, v in zip(start, self._trainable)])
        self._start_client(start)  # the model holds the round's weights again
        if weights is None:
            return stack_updates(deltas), losses
        return [sum(w * d[i] for w, d in zip(weights, deltas)).astype(np.float32)
                for i in range(len(start))], losses
