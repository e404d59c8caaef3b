"""Client updates on one device: the FedSGD gradient of many clients in one device call.

The coordinator wants, per work unit, sum_c w_c * g_c where g_c is the gradient of client c's
mean loss over its batch. That equals the gradient of one loss over the concatenated batches
with per-example weights w_c / n_c, so a unit of any number of clients, equal batch sizes or
not, costs one forward and one backward pass (exact up to float summation order). Units larger
than `max_examples_per_call` are computed in slices of that many examples and summed, so
device memory depends on that bound, not on the number of clients.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf

from fedstream.common.learning import per_example_loss, preprocess
from fedstream.common.protocol import Batch, Task
from fedstream.common.tensors import stack_updates
from fedstream.worker.update_computer import UnitUpdate, UpdateComputer, client_weights

MAX_EXAMPLES_PER_CALL = 8192


class GradientComputer(UpdateComputer):
    def __init__(self, task: Task, device: str, *,
                 max_examples_per_call: int = MAX_EXAMPLES_PER_CALL):
        super().__init__(task, device)
        self.max_examples_per_call = max_examples_per_call
        self._step = tf.function(self._weighted_gradient, reduce_retracing=True)
        self._jacobian = tf.function(self._vectorised_client_gradients, reduce_retracing=True)

    def compute(self, batches: Sequence[Batch], round_number: int = 0) -> UnitUpdate:
        if self.task.per_client:
            return self._per_client(batches)
        weights = client_weights(self.task, batches)
        sizes = [len(b.y) for b in batches]
        x = np.concatenate([b.x for b in batches])
        y = np.concatenate([b.y for b in batches])
        example_weights = np.repeat(weights / np.array(sizes, np.float32), sizes)
        sums, weighted_loss = None, 0.0
        with tf.device(self.device):
            for start in range(0, len(y), self.max_examples_per_call):
                window = slice(start, start + self.max_examples_per_call)
                grads, loss = self._step(x[window], y[window], example_weights[window])
                sums = grads if sums is None else [s + g for s, g in zip(sums, grads)]
                weighted_loss += float(loss)
        total = float(weights.sum())
        return UnitUpdate([g.numpy() for g in sums], total, int(sum(sizes)),
                          weighted_loss / total)

    def _per_client(self, batches: Sequence[Batch]) -> UnitUpdate:
        """Each client's own mean-loss gradient, stacked [clients, ...]: robust aggregators
        and client-level DP look at clients one by one, so nothing may be summed here.
        Clients with batches of one size are computed together, one program vectorised over
        them (`tf.vectorized_map`), at most `max_examples_per_call` examples a call."""
        order = sorted(range(len(batches)), key=lambda i: len(batches[i].y))
        per_client: list = [None] * len(batches)
        losses = np.zeros(len(batches), np.float64)
        with tf.device(self.device):
            start = 0
            while start < len(order):
                n = len(batches[order[start]].y)
                group = [i for i in order[start:] if len(batches[i].y) == n]
                group = group[:max(1, self.max_examples_per_call // max(1, n))]
                x = np.stack([batches[i].x for i in group])
                y = np.stack([batches[i].y for i in group])
                grads, client_losses = self._client_gradients(x, y)
                for k, i in enumerate(group):
                    per_client[i] = [g[k] for g in grads]
                    losses[i] = float(client_losses[k])
                start += len(group)
        return UnitUpdate(stack_updates(per_client), float(len(batches)),
                          sum(len(b.y) for b in batches), float(np.mean(losses)))

    def _vectorised_client_gradients(self, x, y):
        """[clients, B, ...] examples: every client's mean-loss gradient, stacked, one
        vectorised program over the clients."""
        def one_client(xy):
            cx, cy = xy
            with tf.GradientTape() as tape:
                outputs = self.model(preprocess(cx, self.task.input_divisor),
                                     training=self.task.dropout)
                loss = tf.reduce_mean(per_example_loss(self.task.loss, cy, outputs,
                                                       self.task.num_classes))
            return tape.gradient(loss, self._trainable), loss

        return tf.vectorized_map(one_client, (x, y))

    def _client_gradients(self, x: np.ndarray, y: np.ndarray):
        grads, client_losses = self._jacobian(x, y)
        return [g.numpy() for g in grads], client_losses.numpy()

    def _weighted_gradient(self, x, y, example_weights):
        with tf.GradientTape() as tape:
            outputs = self.model(preprocess(x, self.task.input_divisor), training=self.task.dropout)
            losses = per_example_loss(self.task.loss, y, outputs, self.task.num_classes)
            weighted = tf.reduce_sum(losses * example_weights)
        return tape.gradient(weighted, self._trainable), weighted

