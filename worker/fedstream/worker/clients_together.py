"""The clients of a unit trained together: their weights stacked on a client axis, every local
step one vectorised program for all of them, all the steps of all epochs one compiled program
(the backend's: `tf_steps.TogetherProgram`, `functional_steps.TogetherProgram`). Clients
still share nothing: each has its own weights, momentum, minibatch order and proximal anchor
term, exactly the rules of one client alone. This module lays the clients' data out for the
program, on any backend.

Unequal clients: a client's steps are its minibatches, a short last one included; every step
carries a mask of which of its B slots are real examples, and a step whose mask is empty
leaves that client's weights and momentum as they were. Clients whose step counts fall in one
`bucket` (at most 1/8 apart) train in one group padded to the bucket, and a group's number of
clients is padded to its bucket with clients that never step, so a long run with clients of
many sizes, or units of varying numbers of clients (Poisson sampling), compiles only a
handful of programs, each once; clients of equal size are padded to nothing. A group whose
stacked weights, momentum and gradients would pass `MAX_STACKED_BYTES` trains in slices, so
device memory is bounded whatever the number of clients.
"""

from __future__ import annotations

import logging
import math
from typing import Callable, Sequence

import numpy as np
from keras import ops

from fedstream.common.protocol import Batch, Task

log = logging.getLogger(__name__)

VECTORISED_LAYERS = {"Dense", "Flatten", "Reshape", "Activation", "Dropout"}  # batched matmuls
MAX_STACKED_BYTES = 512 << 20  # weights, velocity and gradients of the clients trained at once

# (start, client weights, x, y, order, mask, seeds) -> (update, each client's sum of step losses)
Program = Callable[..., tuple[list[np.ndarray], np.ndarray]]


def bucket(count: int) -> int:
    """The padded size of a count (steps, minibatch width, clients, examples): up to 16 as it
    is, beyond that the next number with four significant bits (17 -> 18, 61 -> 64,
    65 -> 72), so padding adds less than 1/8."""
    if count <= 16:
        return count
    unit = 1 << (count.bit_length() - 4)
    return -(-count // unit) * unit


class ClientsTogether:
    def __init__(self, task: Task, program: Program):
        self.task = task
        self._program = program
        self.shapes: set[tuple[int, int, int]] = set()  # (clients, steps, width) compiled

    def train(self, batches: Sequence[Batch], start: Sequence[np.ndarray], round_number: int,
              weights: np.ndarray | None, epochs: Sequence[int]
              ) -> tuple[list[np.ndarray], np.ndarray]:
        """The unit's update from the round's weights `start`: sum over clients of weight x
        delta (start - end) per variable, or, for a task that wants per-client updates (then
        `weights` is None), every client's delta stacked [clients, ...]; and each client's
        mean training loss, in the given order. Client i trains `epochs[i]` of the task's
        epochs (a straggler fewer: its later epochs' steps are masked out). The deltas and
        their sum are made inside the compiled program: nothing per client comes back."""
        stacked = self.task.per_client
        update = ([np.zeros((len(batches), *s.shape), np.float32) for s in start] if stacked
                  else [np.zeros_like(s) for s in start])
        losses = np.zeros(len(batches))
        per_client = 3 * sum(s.nbytes for s in start)
        at_once = max(1, MAX_STACKED_BYTES // per_client)
        for members in self._groups(batches):
            for first in range(0, len(members), at_once):
                chosen = members[first:first + at_once]
                part, part_losses = self._train_group(
                    [batches[i] for i in chosen], [epochs[i] for i in chosen], start,
                    round_number, None if stacked else weights[chosen],
                    slots=max(len(chosen), min(bucket(len(chosen)), at_once)))
                losses[chosen] = part_losses
                for total, value in zip(update, part):
                    if stacked:
                        total[chosen] = value[:len(chosen)]
                    else:
                        total += value
        return update, losses

    def _groups(self, batches: Sequence[Batch]) -> list[list[int]]:
        """Indices of the clients that train together: one bucket of step counts and of
        minibatch width (the whole client when the task's batch size is 0)."""
        groups: dict[tuple[int, int], list[int]] = {}
        for i, b in enumerate(batches):
            size = self._width(b)
            groups.setdefault((bucket(math.ceil(len(b.y) / size)), bucket(size)),
                              []).append(i)
        return list(groups.values())

    def _width(self, batch: Batch) -> int:
        return self.task.local.batch_size or len(batch.y)

    def _train_group(self, group: Sequence[Batch], epochs: Sequence[int],
                     start: Sequence[np.ndarray], round_number: int,
                     weights: np.ndarray | None, slots: int):
        """Pads the group to one shape (steps and width exactly its own when its clients are
        alike, else the bucket's; `slots` clients, the ones past the group's never stepping),
        lays every client's seeded minibatch order of every epoch out as rows of indices and
        masks, and runs them all in one call."""
        local = self.task.local
        clients = len(group)
        widths = [self._width(b) for b in group]
        steps = [math.ceil(len(b.y) / w) for b, w in zip(group, widths)]
        width = widths[0] if len(set(widths)) == 1 else bucket(max(widths))
        per_epoch = steps[0] if len(set(steps)) == 1 else bucket(max(steps))
        examples = per_epoch * width
        x = np.zeros((slots, examples, *group[0].x.shape[1:]), group[0].x.dtype)
        y = np.zeros((slots, examples), group[0].y.dtype)
        order = np.zeros((slots, local.epochs, per_epoch, width), np.int64)
        mask = np.zeros((slots, local.epochs, per_epoch, width), np.float32)
        for c, (b, w) in enumerate(zip(group, widths)):
            n = len(b.y)
            x[c, :n], y[c, :n] = b.x, b.y
            for e in range(epochs[c]):
                drawn = np.random.default_rng([round_number, b.client_id, e]).permutation(n)
                rows = np.zeros(steps[c] * w, np.int64)
                rows[:n] = drawn
                order[c, e, :steps[c], :w] = rows.reshape(steps[c], w)
                mask[c, e, :steps[c], :w] = (np.arange(steps[c] * w) < n).reshape(steps[c], w)
        client_weights = np.zeros(slots, np.float32)  # padding clients weigh nothing
        client_weights[:clients] = 1.0 if weights is None else weights
        shape = (slots, local.epochs * per_epoch, width)
        if shape not in self.shapes:
            log.info("compiling local training for %d clients x %d steps of %d", *shape)
            self.shapes.add(shape)
        seeds = np.zeros((slots, 2), np.int64)  # what a client's dropout draws from
        seeds[:clients] = [(round_number, b.client_id) for b in group]
        update, total = self._program(list(start), client_weights, x, y, order.reshape(shape),
                                      mask.reshape(shape), seeds)
        return update, total[:clients] / (np.array(epochs) * np.array(steps))


def sgd_step(weights, velocity, grads, active, lr: float, momentum: float):
    """Keras' SGD for the clients whose step is real (w -= lr g, or v = momentum v - lr g,
    w += v); the others, on a padded step, keep their weights and momentum. `active` is one
    flag per client ([clients] on a client axis, a scalar inside a map over clients). XLA
    fuses the selection into the update (a `tf.cond` skipping it when every step is real
    measured slower: 69-82 against 60-62 ms a W2 round)."""
    if momentum:
        velocity = [_moved(active, -g * lr + v * momentum, v) for g, v in zip(grads, velocity)]
        return [_moved(active, w + v, w) for w, v in zip(weights, velocity)], velocity
    return [_moved(active, w - g * lr, w) for w, g in zip(weights, grads)], velocity


def _moved(active, new, old):
    """`new` for the clients that took a step, `old` for those whose step was padding."""
    return ops.where(ops.reshape(active, [-1] + [1] * (len(old.shape) - 1)), new, old)
