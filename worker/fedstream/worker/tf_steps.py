"""The update computers' compiled programs on TensorFlow: `tf.function` graphs over the
model's variables, XLA for clients trained together. Imported only when the backend is
TensorFlow (`update_computer.backend_steps`); `functional_steps` holds JAX's and PyTorch's.

Clients trained together: every local step one vectorised program for all of them
(`tf.vectorized_map` over `stateless_call`), all the steps of all epochs one program
compiled by XLA. Used for models whose every layer vectorises into batched matrix products
(Dense and shape-only layers). FedAvg 2NN, 5 clients of 600, E=1, B=10, side by side in one
process: 2.1x faster than clients one after another (1.7x to 2.8x per round); XLA took the
together round from 65 to 42 ms. Convolutions do not gain on TensorFlow: `tf.vectorized_map`
turns their filter gradient into a while loop, XLA's CPU convolutions measured 15x slower
than TensorFlow's, and grouped convolutions (the clients side by side on the channel axis)
measured 7-12% slower than clients in turn, the stacked copies of the CNN's 1.6M-weight
dense layer no longer fitting the cache. Convolutional models train clients in turn
(`InTurnTraining`), each epoch's steps one compiled loop.
"""

from __future__ import annotations

from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from fedstream.common.learning import per_example_loss, preprocess
from fedstream.common.protocol import Batch, Task
from fedstream.common.tensors import stack_updates
from fedstream.worker.clients_together import VECTORISED_LAYERS, ClientsTogether, sgd_step


class GradientSteps:
    """The FedSGD gradients of `compute.GradientComputer` as graphs over the model's
    variables (which hold the round's weights)."""

    def __init__(self, task: Task, model: keras.Model):
        self.task, self.model = task, model
        self._trainable = model.trainable_variables
        self._weighted = tf.function(self._weighted_gradient, reduce_retracing=True)
        self._jacobian = tf.function(self._vectorised_client_gradients, reduce_retracing=True)

    def weighted(self, x: np.ndarray, y: np.ndarray, example_weights: np.ndarray):
        """The gradient of sum_i w_i loss_i, and that sum."""
        grads, loss = self._weighted(x, y, example_weights)
        return [g.numpy() for g in grads], float(loss)

    def per_client(self, x: np.ndarray, y: np.ndarray):
        """[clients, B, ...] examples: every client's mean-loss gradient, stacked, and loss."""
        grads, client_losses = self._jacobian(x, y)
        return [g.numpy() for g in grads], client_losses.numpy()

    def _weighted_gradient(self, x, y, example_weights):
        with tf.GradientTape() as tape:
            outputs = self.model(preprocess(x, self.task.input_divisor), training=self.task.dropout)
            losses = per_example_loss(self.task.loss, y, outputs, self.task.num_classes)
            weighted = tf.reduce_sum(losses * example_weights)
        return tape.gradient(weighted, self._trainable), weighted

    def _vectorised_client_gradients(self, x, y):
        def one_client(xy):
            cx, cy = xy
            with tf.GradientTape() as tape:
                outputs = self.model(preprocess(cx, self.task.input_divisor),
                                     training=self.task.dropout)
                loss = tf.reduce_mean(per_example_loss(self.task.loss, cy, outputs,
                                                       self.task.num_classes))
            return tape.gradient(loss, self._trainable), loss

        return tf.vectorized_map(one_client, (x, y))


def trains_together(task: Task, model: keras.Model) -> bool:
    """Whether the model's clients can train on one client axis, and gain from it: layers that
    vectorise, no state but a dropout layer's seed, and dropout off (it draws per client)."""
    return not task.dropout and all(
        type(layer).__name__ in VECTORISED_LAYERS
        and (type(layer).__name__ == "Dropout" or not layer.non_trainable_variables)
        for layer in model.layers)


def local_training(task: Task, model: keras.Model):
    """(clients together, clients in turn): the first for models that gain from it."""
    together = (ClientsTogether(task, TogetherProgram(task, model))
                if trains_together(task, model) else None)
    return together, InTurnTraining(task, model)


class TogetherProgram:
    """All steps of all epochs of a group of clients, one XLA program: `ClientsTogether`'s."""

    def __init__(self, task: Task, model: keras.Model):
        self.task, self.model = task, model
        self._program = None  # traced on first use, for the data's dtype and shape

    def __call__(self, start, client_weights, x, y, order, mask, seeds):
        update, total = self._compiled(x, y, start)(
            [tf.convert_to_tensor(s) for s in start], tf.convert_to_tensor(client_weights),
            tf.convert_to_tensor(x), tf.convert_to_tensor(y), tf.convert_to_tensor(order),
            tf.convert_to_tensor(mask))
        return [u.numpy() for u in update], total.numpy()

    def _compiled(self, x, y, start):
        """One trace per task; XLA compiles once per padded shape."""
        if self._program is None:
            def spec(a):
                return tf.TensorSpec([None, None, *a.shape[2:]], tf.as_dtype(a.dtype))
            rows = [None, None, None]  # clients, steps, minibatch slots
            self._program = tf.function(self._steps, jit_compile=True, input_signature=[
                [tf.TensorSpec(s.shape, s.dtype) for s in start], tf.TensorSpec([None]),
                spec(x), spec(y), tf.TensorSpec(rows, tf.int64), tf.TensorSpec(rows, tf.float32)])
        return self._program

    def _steps(self, start, client_weights, x, y, order, mask):
        local = self.task.local
        clients = tf.shape(order)[0]
        weights = [tf.repeat(s[None], clients, axis=0) for s in start]
        velocity = [tf.zeros_like(w) for w in weights]
        total = tf.zeros([clients])
        for i in tf.range(tf.shape(order)[1]):
            xb = tf.gather(x, order[:, i], batch_dims=1)
            yb = tf.gather(y, order[:, i], batch_dims=1)
            grads, losses = tf.vectorized_map(
                lambda args: self._client_gradient(args, start),
                (tuple(weights), xb, yb, mask[:, i]), fallback_to_while_loop=False)
            active = tf.reduce_any(mask[:, i] > 0, axis=1)
            weights, velocity = sgd_step(weights, velocity, grads, active, local.lr,
                                         local.momentum)
            total += losses
        deltas = [s[None] - w for s, w in zip(start, weights)]
        if self.task.per_client:
            return deltas, total
        return [tf.tensordot(client_weights, d, axes=1) for d in deltas], total

    def _client_gradient(self, args, anchor):
        weights, x, y, mask = args
        weights = list(weights)
        with tf.GradientTape() as tape:
            tape.watch(weights)
            outputs, _ = self.model.stateless_call(
                weights, [tf.convert_to_tensor(v) for v in self.model.non_trainable_variables],
                preprocess(x, self.task.input_divisor), training=False)
            per_example = per_example_loss(self.task.loss, y, outputs, self.task.num_classes)
            loss = tf.reduce_sum(per_example * mask) / tf.maximum(tf.reduce_sum(mask), 1.0)
            total = loss
            if self.task.local.prox_mu > 0:  # FedProx: stay near the round's weights
                total += 0.5 * self.task.local.prox_mu * tf.add_n(
                    [tf.reduce_sum(tf.square(w - a)) for w, a in zip(weights, anchor)])
        return tuple(tape.gradient(total, weights)), loss


class InTurnTraining:
    """Clients one after another on the model's own variables, with Keras' SGD. Nothing
    carries over from one client to the next: weights reset to the round's, the optimizer's
    slots and step count zeroed before every client, and the round's weights restored
    afterwards. An epoch's full minibatches run in one compiled loop, without a return to
    Python between steps."""

    def __init__(self, task: Task, model: keras.Model):
        self.task, self.model = task, model
        self._trainable = model.trainable_variables
        self._optimizer = keras.optimizers.SGD(learning_rate=task.local.lr,
                                               momentum=task.local.momentum)
        self._optimizer.build(self._trainable)
        # what a client may not inherit from the previous one: step count and momentum
        self._client_state = [v for v in self._optimizer.variables if v.name != "learning_rate"]
        self._anchor = [tf.Variable(tf.zeros_like(v), trainable=False) for v in self._trainable]
        self._train_step = tf.function(self._step, reduce_retracing=True)
        self._train_steps = None  # traced on first use, for the data's dtype and shape

    def train(self, batches: Sequence[Batch], start: list[np.ndarray], round_number: int,
              weights: np.ndarray | None, epochs: Sequence[int]):
        """`ClientsTogether.train`'s result, one client after another."""
        for anchor, value in zip(self._anchor, start):
            anchor.assign(value)
        deltas, losses = [], []
        for batch, client_epochs in zip(batches, epochs, strict=True):
            self._start_client(start)
            losses.append(self._train_client(batch, round_number, client_epochs))
            deltas.append([s - v.numpy() for s, v in zip(start, self._trainable)])
        self._start_client(start)  # the model holds the round's weights again
        if weights is None:
            return stack_updates(deltas), np.array(losses)
        return [sum(w * d[i] for w, d in zip(weights, deltas)).astype(np.float32)
                for i in range(len(start))], np.array(losses)

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

    def _train_client(self, batch: Batch, round_number: int, epochs: int) -> float:
        """`epochs` epochs over the client's data in seeded minibatch order. Each epoch's full
        minibatches run as one compiled loop (traced once per task for any number of examples
        and steps, so clients of any size reuse it); a short last minibatch, when the client's
        size is not a multiple of B, is one more step of its own, so every step sees exactly
        the examples and shapes it would one call at a time."""
        local = self.task.local
        n = len(batch.y)
        size = local.batch_size or n
        full = n // size
        x, y = tf.convert_to_tensor(batch.x), tf.convert_to_tensor(batch.y)
        total, steps = 0.0, 0
        for epoch in range(epochs):
            order = np.random.default_rng([round_number, batch.client_id, epoch]).permutation(n)
            if full:
                loop = self._compiled_steps(batch)
                total += float(loop(x, y, order[:full * size].reshape(full, size)))
            if full * size < n:
                rest = order[full * size:]
                total += float(self._train_step(batch.x[rest], batch.y[rest]))
            steps += full + (full * size < n)
        return total / steps
