"""The coordinator process:
`fedstream coordinator --listen 0.0.0.0:50051 --datapool HOST:50052 --min-workers 2`, or with
`--sites a,b` a federation of data sites whose data pools it never contacts.

Fetches the data summary and test set from the data pool (without sites), builds the model,
serves until the last round is done and every worker was told to stop, saves the final
weights, exits.
"""

from __future__ import annotations

import logging

from fedstream.common.auth import server_interceptors
from fedstream.common.backend import use_backend
from fedstream.common.clients import DataPoolClient
from fedstream.common.grpc_server import bound_address, create_server, publish_address, stop_on_signals
from fedstream.common.logs import log_config
from fedstream.coordinator.config import CoordinatorConfig
from fedstream.coordinator.metrics import MetricsLog
from fedstream.v1 import coordinator_pb2, coordinator_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = coordinator_pb2.DESCRIPTOR.services_by_name["Coordinator"].full_name
STOP_GRACE_S = 5.0  # in-flight RPCs get this long to finish on shutdown


def serve(config: CoordinatorConfig) -> None:
    log_config(log, "coordinator", config)
    log.info("Keras backend: %s", use_backend(config.backend, config.threads))
    from fedstream.coordinator.build import build_federation, build_site_federation, save_weights
    from fedstream.coordinator.servicer import CoordinatorServicer
    metrics = MetricsLog.of(config.sinks)
    if config.federation.site_names:
        log.info("sites %s: their data stays at each site; the coordinator reads no data pool",
                 ", ".join(config.federation.site_names))
        federation = build_site_federation(config.federation, config.num_classes, metrics,
                                           checkpoint_dir=config.checkpoint_dir)
    else:
        pool = DataPoolClient(config.datapool, connect_timeout_s=120.0, tls=config.tls,
                              token=config.auth_token)
        summary = pool.info()
        test_set = pool.test_set()
        pool.close()
        log.info("data: %s, %d clients (%s), %d test examples", summary.dataset,
                 summary.num_clients, summary.partitioner, summary.num_test)
        federation = build_federation(config.federation, summary, test_set, metrics,
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
        if not federation.members.wait_all_stopped(timeout_s=10.0):
            log.warning("some workers did not collect STOP within 10 s")
        server.stop(STOP_GRACE_S)
    server.wait()
    federation.reports.flush()
    metrics.close()
    log.info("coordinator stopped at round %d, version %d", federation.round, federation.server.version)
