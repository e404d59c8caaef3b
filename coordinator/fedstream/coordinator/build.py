"""A federation from its configuration, as both run modes build it: the model from the zoo,
reports off the round's critical path, and either one data pool's clients with evaluation on
its test set, or declared data sites that publish their clients and evaluate on their own
data. No gRPC here, so `simulate` builds without the network stack."""

from __future__ import annotations

import functools
import logging

import numpy as np

from fedstream.common.learning import evaluate
from fedstream.common.protocol import DatasetSummary
from fedstream.coordinator.config import FederationConfig
from fedstream.coordinator.federation import Federation, declared_sites
from fedstream.coordinator.models import MNIST_SHAPE, build_model, input_shape_of

log = logging.getLogger(__name__)

LOSS = "categorical_crossentropy"


def build_federation(config: FederationConfig, summary: DatasetSummary,
                     test_set: tuple[np.ndarray, np.ndarray], on_metrics, *,
                     checkpoint_dir: str | None = None) -> Federation:
    """The federation of one data pool, as both run modes build it: `config.model` for
    `summary`'s classes, evaluation on `test_set`, each step's metrics row to `on_metrics`
    and its checkpoint to `checkpoint_dir`, reported off the lock."""
    model = build_model(config.model, config.model_seed, summary.num_classes,
                        input_shape_of(config.model_input_shape, summary.example_shape))
    evaluator = functools.partial(evaluate, x=test_set[0], y=test_set[1], loss=LOSS,
                                  num_classes=summary.num_classes,
                                  input_divisor=config.input_divisor)
    return Federation(config, model, summary.client_sizes, loss=LOSS,
                      num_classes=summary.num_classes, evaluator=evaluator,
                      on_metrics=on_metrics, checkpoint_dir=checkpoint_dir,
                      background_reports=True)


def build_site_federation(config: FederationConfig, num_classes: int, on_metrics, *,
                          checkpoint_dir: str | None = None) -> Federation:
    """A federation of `config.sites`: no data pool, no test set; the sites evaluate."""
    model = build_model(config.model, config.model_seed, num_classes,
                        input_shape_of(config.model_input_shape, MNIST_SHAPE))
    return Federation(config, model, sites=declared_sites(config, model, num_classes), loss=LOSS,
                      num_classes=num_classes, on_metrics=on_metrics,
                      checkpoint_dir=checkpoint_dir, background_reports=True)


def save_weights(path: str, federation: Federation) -> None:
    arrays = {v.path: v.numpy() for v in federation.server.model.weights}
    np.savez(path, **arrays)
    log.info("saved weights of version %d to %s", federation.server.version, path)
