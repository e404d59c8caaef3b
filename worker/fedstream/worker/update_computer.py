"""What every update computer shares: the task's model on one device, the weights it is set
to, and the one method a worker loop calls. Implementations: the fused FedSGD gradient
(`compute.GradientComputer`) and local training (`local_training.LocalTrainer`);
`computers.make_computer` picks one for a task. They lay the data out on the host; the
compiled programs they call are the backend's (`backend_steps`)."""

from __future__ import annotations

import abc
import importlib
from dataclasses import dataclass
from typing import Protocol, Sequence

import keras
import numpy as np

from fedstream.common.backend import current
from fedstream.common.learning import model_from_json
from fedstream.common.protocol import Batch, Task, Weighting
from fedstream.worker.device import keras_device


@dataclass(frozen=True)
class UnitUpdate:
    arrays: list[np.ndarray]  # sum over clients of weight * update, or per-client, stacked
    weight: float  # sum of the clients' weights
    num_examples: int
    loss: float  # the clients' weighted mean training loss


def client_weights(task: Task, batches: Sequence[Batch]) -> np.ndarray:
    """Each client's weight in the aggregate: 1, or its number of examples."""
    if task.weighting is Weighting.EXAMPLES:
        return np.array([len(b.y) for b in batches], np.float32)
    return np.ones(len(batches), np.float32)


class LocalTrainer(Protocol):
    def train(self, batches: Sequence[Batch], start: list[np.ndarray], round_number: int,
              weights: np.ndarray | None, epochs: Sequence[int]
              ) -> tuple[list[np.ndarray], np.ndarray]:
        """Every client's local training from `start`: (the weighted sum of their model
        deltas, or [clients, ...] stacked when `weights` is None; each client's loss)."""


class Gradients(Protocol):
    def weighted(self, x, y, example_weights) -> tuple[list, object]:
        """sum_i example_weights[i] * grad loss_i at the model's weights; the weighted loss."""

    def per_client(self, x, y) -> tuple[list, object]:
        """Every client's own gradient, stacked [clients, ...], and each one's loss."""


class StepsModule(Protocol):
    """What a backend's steps module provides (`Backend.steps`): the compiled programs the
    update computers run. `tf_steps` on TensorFlow; `functional_steps` (`jax.jit`, `vmap`;
    `torch.func`) on JAX and PyTorch."""

    def GradientSteps(self, task: Task, model: keras.Model) -> Gradients:  # noqa: N802
        """FedSGD's gradients over `model`'s variables."""

    def local_training(self, task: Task, model: keras.Model
                       ) -> tuple[LocalTrainer | None, LocalTrainer]:
        """(clients trained together in one program, or None where the model does not
        vectorise; clients trained in turn)."""


def backend_steps() -> StepsModule:
    """The compiled programs of the process's Keras backend."""
    return importlib.import_module(current().steps)


class UpdateComputer(abc.ABC):
    def __init__(self, task: Task, device: str):
        self.task = task
        self.device = device
        with self.on_device():
            self.model = model_from_json(task.model_json)
        shapes = [tuple(v.shape) for v in self.model.trainable_variables]
        expected = [s.shape for s in task.update_specs]
        if shapes != expected:
            raise ValueError(f"the task's model has trainable shapes {shapes}, but its update "
                             f"spec lists {expected}")
        self._trainable = self.model.trainable_variables

    def on_device(self):
        """A scope placing what is made in it on the computer's device."""
        return keras.device(keras_device(self.device))

    def set_weights(self, arrays: Sequence[np.ndarray]) -> None:
        for variable, array in zip(self.model.weights, arrays, strict=True):
            variable.assign(array)

    @abc.abstractmethod
    def compute(self, batches: Sequence[Batch], round_number: int = 0,
                local_epochs: Sequence[int] = ()) -> UnitUpdate:
        """The unit's update from the current weights, which it leaves as they were.
        `round_number` seeds whatever a computation draws at random (local training's
        minibatch order); a gradient draws nothing. `local_epochs`, local training's only:
        each client's epochs when the assignment gives fewer than the task's."""
