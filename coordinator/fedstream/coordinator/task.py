"""The task a federation hands every worker: what to compute and how, built once from the
configuration and the model, so a worker needs no model code and no configuration."""

from __future__ import annotations

from typing import Sequence

import keras
import numpy as np

from fedstream.common.protocol import LocalTraining, Task, UpdateKind, steps_per_pass
from fedstream.common.tensors import TensorSpec
from fedstream.coordinator.aggregation import rule_of
from fedstream.coordinator.config import FederationConfig


def make_task(config: FederationConfig, model: keras.Model, *, loss: str,
              num_classes: int) -> Task:
    delta = config.update is UpdateKind.MODEL_DELTA
    return Task(
        model_json=model.to_json(), loss=loss, num_classes=num_classes,
        update_kind=UpdateKind.MODEL_DELTA if delta else UpdateKind.GRADIENT,
        weighting=config.weighting,
        # 0: local training fetches each client's whole data as its one "batch"
        batch_size=0 if delta else config.batch_size,
        dropout=config.dropout,
        input_divisor=config.input_divisor,
        update_specs=tuple(TensorSpec(v.path, np.dtype("<f4"), tuple(v.shape))
                           for v in model.trainable_variables),
        rounds=config.rounds, per_client=rule_of(config).per_client,
        update_encoding=config.update_encoding, topk_fraction=config.topk_fraction,
        weights_encoding=config.weights_encoding, weights_delta=config.weights_delta,
        dp_clip=config.dp_clip, secure_aggregation=config.secure_aggregation,
        local=LocalTraining(epochs=config.local_epochs, batch_size=config.local_batch_size,
                            lr=config.client_lr, momentum=config.client_momentum,
                            prox_mu=config.prox_mu) if delta else None)


def rounds_per_pass(client_sizes: Sequence[int], batch_size: int) -> int:
    """Rounds until the largest client has served each of its batches once."""
    return max(steps_per_pass(n, batch_size) for n in client_sizes)
