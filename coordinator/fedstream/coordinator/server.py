"""The coordinator process:
`fedstream coordinator --listen 0.0.0.0:50051 --datapool HOST:50052 --workers 2`.

Fetches the data summary and test set from the data pool, builds the model, serves until
the last round is done and every worker was told to stop, saves the final weights, exits.
"""

from __future__ import annotations

import functools
import logging

import numpy as np

from fedstream.common.auth import server_interceptors
from fedstream.common.clients import DataPoolClient
from fedstream.common.grpc_server import bound_address, create_server, publish_address, stop_on_signals
from fedstream.common.learning import configure_threads
from fedstream.common.logs import log_config
from fedstream.common.protocol import DatasetSummary
from fedstream.coordinator.asynchronous import AsyncFederation
from fedstream.coordinator.config import CoordinatorConfig, FederationConfig
from fedstream.coordinator.evaluate import evaluate
from fedstream.coordinator.federation import Federation
from fedstream.coordinator.metrics import MetricsLog
from fedstream.coordinator.models import build_model
from fedstream.coordinator.servicer import CoordinatorServicer
from fedstream.v1 import coordinator_pb2, coordinator_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = coordinator_pb2.DESCRIPTOR.services_by_name["Coordinator"].full_name
STOP_GRACE_S = 5.0  # in-flight RPCs get this long to finish on shutdown


def create_federation(config: FederationConfig, summary: DatasetSummary,
                      test_set: tuple[np.ndarray, np.ndarray], on_metrics, *,
                      checkpoint_dir: str | None = None) -> Federation:
    """The Federation of both run modes, with the model and evaluation on `test_set`."""
    model = build_model(config.model, config.model_seed, summary.num_classes)
    loss = "categorical_crossentropy"
    evaluator = functools.partial(evaluate, x=test_set[0], y=test_set[1], loss=loss,
                                  num_classes=summary.num_classes,
                                  input_divisor=config.input_divisor)
    kind = Federation if config.mode == "sync" else AsyncFederation
    return kind(config, model, summary.client_sizes, loss=loss,
                      num_classes=summary.num_classes, evaluator=evaluator,
                      on_metrics=on_metrics, checkpoint_dir=checkpoint_dir)


def save_weights(path: str, federation: Federation) -> None:
    arrays = {v.path: v.numpy() for v in federation.model.weights}
    np.savez(path, **arrays)
    log.info("saved weights of version %d to %s", federation.version, path)


def serve(config: CoordinatorConfig) -> None:
    log_config(log, "coordinator", config)
    configure_threads(config.threads)
    pool = DataPoolClient(config.datapool, connect_timeout_s=120.0, tls=config.tls,
                          token=config.auth_token)
    summary = pool.info()
    test_set = pool.test_set()
    pool.close()
    log.info("data: %s, %d clients (%s), %d test examples", summary.dataset,
             summary.num_clients, summary.partitioner, summary.num_test)
    metrics = MetricsLog(config.metrics, tensorboard=config.tensorboard,
                         prometheus_port=config.prometheus_port)
    federation = create_federation(config.federation, summary, test_set, metrics,
                                   checkpoint_dir=config.checkpoint_dir)
    server = create_server(
        config.listen,
        lambda s: coordinator_pb2_grpc.add_CoordinatorServicer_to_server(
            CoordinatorServicer(federation), s),
        [SERVICE_NAME], credentials=config.tls.server_credentials(),
        interceptors=server_interceptors(config.auth_tokens))
    # a final checkpoint on SIGTERM: the state after the last closed round
    stopping = stop_on_signals(server, on_stop=federation.save_checkpoint, grace_s=STOP_GRACE_S)
    server.set_serving()
    address = bound_address(config.listen, server.port)
    log.info("coordinator serving on %s; waiting for %d worker(s)", address,
             config.federation.min_workers)
    publish_address(config.port_file, address)
    tick = 0.05 if config.federation.round_deadline_s > 0 else 0.5
    while not stopping.is_set() and not federation.wait_until_done(timeout_s=tick):
        federation.check_deadline()
    if federation.phase == "done":
        if config.save_weights:
            save_weights(config.save_weights, federation)
        if not federation.wait_for_workers_to_stop(timeout_s=10.0):
            log.warning("some workers did not collect STOP within 10 s")
        server.stop(STOP_GRACE_S)
    server.wait()
    metrics.close()
    log.info("coordinator stopped at round %d, version %d", federation.round, federation.version)
