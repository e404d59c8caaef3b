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

from fedstream.common.protocol import Batch, Task
from fedstream.common.tensors import stack_updates
from fedstream.worker.update_computer import UnitUpdate, UpdateComputer, backend_steps, client_weights

MAX_EXAMPLES_PER_CALL = 8192


class GradientComputer(UpdateComputer):
    def __init__(self, task: Task, device: str, *,
                 max_examples_per_call: int = MAX_EXAMPLES_PER_CALL):
        super().__init__(task, device)
        self.max_examples_per_call = max_examples_per_call
        with self.on_device():
            self._steps = backend_steps().GradientSteps(task, self.model)

    def compute(self, batches: Sequence[Batch], round_number: int = 0,
                local_epochs: Sequence[int] = ()) -> UnitUpdate:
        if local_epochs:
            raise ValueError("the assignment gives local epochs to a gradient task: a "
                             "gradient has no local work to cut")
        if self.task.per_client:
            return self._per_client(batches)
        weights = client_weights(self.task, batches)
        sizes = [len(b.y) for b in batches]
        x = np.concatenate([b.x for b in batches])
        y = np.concatenate([b.y for b in batches])
        example_weights = np.repeat(weights / np.array(sizes, np.float32), sizes)
        sums, weighted_loss = None, 0.0
        with self.on_device():
            for start in range(0, len(y), self.max_examples_per_call):
                window = slice(start, start + self.max_examples_per_call)
                grads, loss = self._steps.weighted(x[window], y[window], example_weights[window])
                sums = grads if sums is None else [s + g for s, g in zip(sums, grads)]
                weighted_loss += loss
        total = float(weights.sum())
        return UnitUpdate(sums, total, int(sum(sizes)), weighted_loss / total)

    def _per_client(self, batches: Sequence[Batch]) -> UnitUpdate:
        """Each client's own mean-loss gradient, stacked [clients, ...]: robust aggregators
        and client-level DP look at clients one by one, so nothing may be summed here.
        Clients with batches of one size are computed together, one program vectorised over
        them, at most `max_examples_per_call` examples a call."""
        order = sorted(range(len(batches)), key=lambda i: len(batches[i].y))
        per_client: list = [None] * len(batches)
        losses = np.zeros(len(batches), np.float64)
        with self.on_device():
            start = 0
            while start < len(order):
                n = len(batches[order[start]].y)
                group = [i for i in order[start:] if len(batches[i].y) == n]
                group = group[:max(1, self.max_examples_per_call // max(1, n))]
                x = np.stack([batches[i].x for i in group])
                y = np.stack([batches[i].y for i in group])
                grads, client_losses = self._steps.per_client(x, y)
                for k, i in enumerate(group):
                    per_client[i] = [g[k] for g in grads]
                    losses[i] = float(client_losses[k])
                start += len(group)
        return UnitUpdate(stack_updates(per_client), float(len(batches)),
                          sum(len(b.y) for b in batches), float(np.mean(losses)))
