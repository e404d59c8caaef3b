"""The data pool process: `fedstream datapool --listen 0.0.0.0:50052 [--data mnist.npz]`."""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass, field, replace

from fedstream.common.auth import add_server_auth_arguments, server_interceptors
from fedstream.common.grpc_server import bound_address, create_server, publish_address, stop_on_signals
from fedstream.common.logs import log_config
from fedstream.common.tls import TlsConfig, add_tls_arguments, tls_from_args
from fedstream.datapool.mnist import load_mnist
from fedstream.datapool.partition import PARTITIONERS
from fedstream.datapool.servicer import DataPoolServicer
from fedstream.datapool.store import ClientStore
from fedstream.v1 import datapool_pb2, datapool_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = datapool_pb2.DESCRIPTOR.services_by_name["DataPool"].full_name


@dataclass(frozen=True)
class DataPoolConfig:
    listen: str = "127.0.0.1:50052"  # host:port to serve on; port 0 picks a free port
    data: str | None = None  # mnist.npz or IDX folder; None: cached copy, fetched on first use
    clients: int = 100  # number of simulated clients
    partitioner: str = "reference"  # "reference" (seeded shuffle, contiguous shards) or "iid"
    seed: int = 200  # partition seed (the reference program uses 200)
    dirichlet_alpha: float = 0.5  # dirichlet partitioner: concentration (small: more skew)
    min_client_size: int = 10  # dirichlet partitioner: fewest examples a client may hold
    port_file: str | None = None  # write the bound host:port here once serving
    tls: TlsConfig = field(default_factory=TlsConfig)  # plaintext unless certificates are given
    auth_tokens: str | None = None  # file of `NAME TOKEN` lines; None: no authentication


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    """What data and which partition: shared by the data pool, `run` and `simulate`."""
    d = DataPoolConfig()
    p.add_argument("--data", default=os.environ.get("FEDSTREAM_DATA"),
                   help="keras-layout mnist.npz or a folder of the four IDX files "
                        "(default: the cached copy, fetched on first use)")
    p.add_argument("--clients", type=int, default=d.clients, help="number of clients")
    p.add_argument("--partitioner", choices=PARTITIONERS, default=d.partitioner)
    p.add_argument("--data-seed", dest="seed", type=int, default=d.seed, help="partition seed")
    p.add_argument("--dirichlet-alpha", type=float, default=d.dirichlet_alpha,
                   help="dirichlet partitioner: label concentration (small: more skew)")
    p.add_argument("--min-client-size", type=int, default=d.min_client_size,
                   help="dirichlet partitioner: fewest examples per client")


def data_config_from_args(args: argparse.Namespace) -> DataPoolConfig:
    return DataPoolConfig(data=args.data, clients=args.clients, partitioner=args.partitioner,
                          seed=args.seed, dirichlet_alpha=args.dirichlet_alpha,
                          min_client_size=args.min_client_size)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--listen", default=os.environ.get("FEDSTREAM_DATAPOOL_LISTEN",
                                                      DataPoolConfig.listen),
                   help="host:port to serve on (port 0: any free port)")
    p.add_argument("--port-file", default=None, help="write the bound host:port here when ready")
    add_data_arguments(p)
    add_tls_arguments(p)
    add_server_auth_arguments(p)


def config_from_args(args: argparse.Namespace) -> DataPoolConfig:
    return replace(data_config_from_args(args), listen=args.listen, port_file=args.port_file,
                   tls=tls_from_args(args), auth_tokens=args.auth_tokens)


def build_store(config: DataPoolConfig) -> ClientStore:
    mnist = load_mnist(config.data)
    return ClientStore(mnist.x_train, mnist.y_train, mnist.x_test, mnist.y_test,
                       partitioner=config.partitioner, n_clients=config.clients,
                       seed=config.seed, dataset="mnist", num_classes=10,
                       dirichlet_alpha=config.dirichlet_alpha,
                       min_client_size=config.min_client_size)


def serve(config: DataPoolConfig) -> None:
    log_config(log, "datapool", config)
    store = build_store(config)
    server = create_server(
        config.listen,
        lambda s: datapool_pb2_grpc.add_DataPoolServicer_to_server(DataPoolServicer(store), s),
        [SERVICE_NAME], credentials=config.tls.server_credentials(),
        interceptors=server_interceptors(config.auth_tokens))
    stop_on_signals(server)
    server.set_serving()
    address = bound_address(config.listen, server.port)
    log.info("datapool serving on %s\n%s", address, store.summary.describe())
    publish_address(config.port_file, address)
    server.wait()
    log.info("datapool stopped")

