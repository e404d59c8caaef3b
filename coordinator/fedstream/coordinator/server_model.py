"""The center model: its weights, version and server optimizer, the one place they change.

Every version's weights are kept as a read-only snapshot taken when the version is made, so
pulls, evaluation and checkpoints read a pinned version without holding the coordinator's
lock and without racing the next server step; beside them, the image workers pull
(`WeightsImage`: the weights as the wire's encoding gives them). Written against Keras 3's
backend-neutral API, so a coordinator runs on whichever backend its host has.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from fedstream.common.backend import current
from fedstream.coordinator.checkpoint import Checkpoint
from fedstream.coordinator.config import EncodingConfig, ServerOptimizerConfig
from fedstream.coordinator.optimizers import make_server_optimizer
from fedstream.coordinator.weights_image import WeightsImage


def _frozen(variables) -> tuple[np.ndarray, ...]:
    arrays = tuple(np.array(v.numpy()) for v in variables)
    for a in arrays:
        a.flags.writeable = False
    return arrays


class ServerModel:
    def __init__(self, model: keras.Model, server: ServerOptimizerConfig,
                 encodings: EncodingConfig):
        self.model = model
        self._server = server
        self.optimizer = make_server_optimizer(server.server_optimizer, server.server_lr,
                                               momentum=server.server_momentum,
                                               epsilon=server.server_epsilon or None)
        self.trainable = list(model.trainable_variables)
        self.names = tuple(v.path for v in model.weights)
        self._apply = current().compile_step(self.optimizer, self.trainable)
        self.version = 1
        self.weights = _frozen(model.weights)
        self.image = WeightsImage(encodings.weights_encoding, encodings.weights_delta)
        self.image.advance(self.version, self.weights)

    def apply(self, step: list[np.ndarray]) -> None:
        """One server-optimizer step on the aggregate; a new version."""
        self._apply([ops.convert_to_tensor(s) for s in step])
        self._advance()

    def assign_trainable(self, arrays: list[np.ndarray]) -> None:
        """Replace the trainable weights (a mixing rule rather than an optimizer step)."""
        for variable, value in zip(self.trainable, arrays):
            variable.assign(value)
        self._advance()

    def trainable_arrays(self) -> list[np.ndarray]:
        return [v.numpy() for v in self.trainable]

    def _advance(self) -> None:
        self.version += 1
        self.weights = _frozen(self.model.weights)
        self.image.advance(self.version, self.weights)

    def optimizer_state(self) -> list[np.ndarray]:
        return [np.array(v.numpy()) for v in self.optimizer.variables]

    def restore(self, ckpt: Checkpoint, source: str) -> None:
        """Weights, optimizer state and version of a checkpoint written by this model."""
        shapes = [tuple(w.shape) for w in ckpt.weights]
        if shapes != [tuple(v.shape) for v in self.model.weights]:
            raise ValueError(f"the checkpoint in {source} holds another model "
                             f"(weights {shapes}): use another --checkpoint-dir")
        for variable, value in zip(self.model.weights, ckpt.weights):
            variable.assign(value)
        self.optimizer.build(self.trainable)
        if len(ckpt.optimizer) != len(self.optimizer.variables):
            raise ValueError("the checkpoint's optimizer state does not fit "
                             f"--server-optimizer {self._server.server_optimizer}")
        for variable, value in zip(self.optimizer.variables, ckpt.optimizer):
            variable.assign(value)
        self.version = ckpt.version
        self.weights = _frozen(self.model.weights)
        self.image.advance(self.version, self.weights, chained=False)
