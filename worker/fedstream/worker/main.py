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
from fedstream.common.grpc_server import published_address
from fedstream.common.logs import log_config
from fedstream.worker.config import WorkerConfig

log = logging.getLogger(__name__)


class Shutdown(BaseException):
    """Raised by SIGTERM in the main thread, so the loop unwinds and leaves cleanly."""


def party_trust(config: WorkerConfig):
    """The secure-aggregation trust a worker's flags state; its identity is named after its
    site (or, in a single data pool, after the worker)."""
    from fedstream.common.identity import Peers, SiteIdentity
    from fedstream.worker.secure_party import PartyTrust
    t = config.trust
    if not t.secagg_peers:
        log.warning("secure aggregation (if the coordinator asks for it) accepts unsigned "
                    "rosters: an honest-but-curious coordinator is covered, one that "
                    "substitutes keys is not (--secagg-peers)")
    return PartyTrust(
        identity=SiteIdentity.load(config.site or config.name, t.secagg_identity)
        if t.secagg_identity else None,
        peers=Peers.load(t.secagg_peers) if t.secagg_peers else None,
        min_parties=t.secagg_min_parties)


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
            address = (published_address(config.coordinator_file, timeout_s=120.0)
                       if config.coordinator_file else config.coordinator)
            coordinator = open_clients.enter_context(contextlib.closing(CoordinatorClient(
                address, connect_timeout_s=120.0, tls=config.tls, token=config.auth_token)))
            if config.embed_data:
                from fedstream.datapool.server import build_store
                data = build_store(config.data, config.site)
            else:
                data = open_clients.enter_context(contextlib.closing(DataPoolClient(
                    config.datapool, connect_timeout_s=120.0, tls=config.tls,
                    token=config.auth_token)))
            WorkerLoop(coordinator, data, name=config.name, device=device, site=config.site,
                       publish_labels=config.publish_label_histograms,
                       delay_s=config.delay_s, trust=party_trust(config)).run()
        except Shutdown as e:
            log.info("received %s: left the federation", e)
