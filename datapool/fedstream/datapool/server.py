"""The data pool process: `fedstream datapool --listen 0.0.0.0:50052 [--data mnist.npz]`."""

from __future__ import annotations

import argparse
import enum
import logging
from dataclasses import dataclass

from fedstream.common.auth import auth_tokens_option, server_interceptors
from fedstream.common.grpc_server import bound_address, create_server, publish_address, stop_on_signals
from fedstream.common.logs import log_config
from fedstream.common.options import add_options, coerce_choices, from_args, option, section
from fedstream.common.tls import TlsConfig
from fedstream.datapool.arrays import ArrayKeys, LabelledData, load_arrays, load_mnist_data
from fedstream.datapool.partition import Partitioner
from fedstream.datapool.servicer import DataPoolServicer
from fedstream.datapool.store import ClientStore
from fedstream.v1 import datapool_pb2, datapool_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = datapool_pb2.DESCRIPTOR.services_by_name["DataPool"].full_name


class DataFormat(str, enum.Enum):
    MNIST = "mnist"  # canonical MNIST, checked
    ARRAYS = "arrays"  # any .npz of named feature and label arrays
    TABLE = "table"  # Parquet or Arrow IPC: feature, label and client-id columns
    SYNTHETIC = "synthetic"  # the FedProx paper's Synthetic(alpha, beta), generated


@dataclass(frozen=True)
class DataConfig:
    """What data and which partition: shared by the data pool, `run`, `simulate` and
    `partitions`."""
    data: str | None = option(None, "mnist: a keras-layout mnist.npz or a folder of the four "
                                    "IDX files (default: the cached copy, fetched on first "
                                    "use); arrays: an .npz of feature and label arrays",
                              env="FEDSTREAM_DATA")
    data_format: DataFormat = option(DataFormat.MNIST, "mnist (canonical MNIST, checked), "
                                     "arrays (.npz) or table (Parquet/Arrow): a site's own "
                                     "data, any example shape and dtype; synthetic: the "
                                     "FedProx paper's Synthetic(alpha, beta), one client per "
                                     "device (--partitioner natural)")
    x_key: str = option("x_train", "arrays: the training examples' array")
    y_key: str = option("y_train", "arrays: the training labels' array (integers)")
    x_test_key: str = option("x_test", "arrays: the held-out examples' array")
    y_test_key: str = option("y_test", "arrays: the held-out labels' array")
    num_classes: int = option(0, "arrays, table: the classes (0: one more than the largest "
                                 "label)")
    test_data: str | None = option(None, "table: the held-out examples' file (same columns)")
    feature_column: str = option("features", "table: the examples' column (numbers or lists)")
    label_column: str = option("label", "table: the labels' column (integers)")
    client_column: str = option("", "table: each example's client id, for --partitioner "
                                    "natural (one client per distinct id)")
    example_shape: str = option("", "table: reshape each example's values, e.g. 28,28")
    clients: int = option(100, "number of clients")
    partitioner: Partitioner = option(Partitioner.REFERENCE, "reference (seeded shuffle, "
                                      "contiguous shards), iid, shards (two label-sorted shards "
                                      "per client) or dirichlet (label skew)")
    data_seed: int = option(200, "partition seed (the reference program uses 200); "
                                 "synthetic: the generator's seed")
    synthetic_alpha: float = option(0.0, "synthetic: how much the devices' models differ (the "
                                         "standard deviation of their means)")
    synthetic_beta: float = option(0.0, "synthetic: how much the devices' data differ (the "
                                        "standard deviation of their means)")
    synthetic_iid: bool = option(False, "synthetic: the IID variant, one model and one data "
                                        "distribution for every device")
    dirichlet_alpha: float = option(0.5, "dirichlet partitioner: label concentration (small: "
                                         "more skew)")
    min_client_size: int = option(10, "dirichlet partitioner: fewest examples per client")

    def __post_init__(self):
        problems = coerce_choices(self)
        if self.data_format is DataFormat.SYNTHETIC and \
                self.partitioner is not Partitioner.NATURAL:
            problems.append("synthetic data's clients are its devices: give --partitioner "
                            "natural (--clients sets how many devices)")
        if problems:
            raise ValueError("invalid data config: " + "; ".join(problems))


@dataclass(frozen=True)
class DataPoolConfig:
    listen: str = option("127.0.0.1:50052", "host:port to serve on (port 0: any free port)",
                         env="FEDSTREAM_DATAPOOL_LISTEN")
    port_file: str | None = option(None, "write the bound host:port here when ready")
    site: str = option("", "the data site this pool belongs to: only workers started with the "
                           "same --site read it")
    data: DataConfig = section(DataConfig, "data")
    tls: TlsConfig = section(TlsConfig, "TLS (default: plaintext)")
    auth_tokens: str | None = auth_tokens_option()


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_options(p, DataPoolConfig)


def config_from_args(args: argparse.Namespace) -> DataPoolConfig:
    return from_args(DataPoolConfig, args)


def _data_file(config: DataConfig) -> str:
    if config.data is None:
        raise ValueError(f"--data-format {config.data_format.value} needs --data FILE")
    return config.data


def _mnist(config: DataConfig) -> LabelledData:
    return load_mnist_data(config.data)


def _arrays(config: DataConfig) -> LabelledData:
    return load_arrays(_data_file(config), ArrayKeys(config.x_key, config.y_key,
                                                     config.x_test_key, config.y_test_key),
                       config.num_classes)


def _table(config: DataConfig) -> LabelledData:
    from fedstream.datapool.table import TableColumns, load_table
    shape = tuple(int(v) for v in config.example_shape.split(",") if v.strip())
    return load_table(_data_file(config), config.test_data, TableColumns(
        config.feature_column, config.label_column, config.client_column, shape),
        config.num_classes)


def _synthetic(config: DataConfig) -> LabelledData:
    from fedstream.datapool.synthetic import Synthetic, generate
    return generate(Synthetic(config.synthetic_alpha, config.synthetic_beta,
                              config.synthetic_iid, config.clients, config.data_seed))


LOADERS = {DataFormat.MNIST: _mnist, DataFormat.ARRAYS: _arrays, DataFormat.TABLE: _table,
           DataFormat.SYNTHETIC: _synthetic}
assert set(LOADERS) == set(DataFormat)


def load_data(config: DataConfig) -> LabelledData:
    """The data `config` names, through its format's loader: a new format is an enum value,
    a loader and its line in `LOADERS`."""
    return LOADERS[config.data_format](config)


def build_store(config: DataConfig, site: str = "",
                data: LabelledData | None = None) -> ClientStore:
    """The partitioned store of `config`'s data (or of `data`, already loaded)."""
    d = data or load_data(config)
    return ClientStore(d.x_train, d.y_train, d.x_test, d.y_test,
                       partitioner=config.partitioner.value, n_clients=config.clients,
                       seed=config.data_seed, dataset=d.name, num_classes=d.num_classes,
                       dirichlet_alpha=config.dirichlet_alpha,
                       min_client_size=config.min_client_size, site=site,
                       client_ids=d.client_ids)


def serve(config: DataPoolConfig) -> None:
    log_config(log, "datapool", config)
    store = build_store(config.data, config.site)
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

