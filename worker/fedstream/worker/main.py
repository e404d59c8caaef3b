"""The worker process:
`fedstream worker --coordinator HOST:50051 --datapool HOST:50052 [--site NAME] [--device /GPU:0]
[--backend jax]`,
or with `--embed-data` the site's data in-process instead of a data pool."""

from __future__ import annotations

import contextlib
import logging
import signal

from fedstream.common.backend import use_backend
from fedstream.common.clients import CoordinatorClient, DataPoolClient
from fedstream.common.logs import log_config
from fedstream.worker.config import WorkerConfig

log = logging.getLogger(__name__)


class Shutdown(BaseException):
    """Raised by SIGTERM in the main thread, so the loop unwinds and leaves cleanly."""


def run(config: WorkerConfig) -> None:
    log_config(log, "worker", config)
    backend = use_backend(config.backend, config.threads)
    from fedstream.worker.device import select_device
    from fedstream.worker.loop import WorkerLoop
    device = select_device(config.device, config.gpu_memory_mb)
    log.info("worker %s computes on %s with Keras' %s backend", config.name, device, backend)

    def shutdown(signum, _frame):
        raise Shutdown(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, shutdown)
    with contextlib.ExitStack() as open_clients:
        try:
            coordinator = open_clients.enter_context(contextlib.closing(CoordinatorClient(
                config.coordinator, connect_timeout_s=120.0, tls=config.tls,
                token=config.auth_token)))
            if config.embed_data:
                from fedstream.datapool.server import build_store
                data = build_store(config.data, config.site)
            else:
                data = open_clients.enter_context(contextlib.closing(DataPoolClient(
                    config.datapool, connect_timeout_s=120.0, tls=config.tls,
                    token=config.auth_token)))
            WorkerLoop(coordinator, data, name=config.name, device=device, site=config.site,
                       publish_labels=config.publish_label_histograms,
                       delay_s=config.delay_s).run()
        except Shutdown as e:
            log.info("received %s: left the federation", e)
