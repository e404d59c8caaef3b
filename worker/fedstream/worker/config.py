"""Worker configuration, declared once (see `fedstream.common.options`). No TensorFlow here,
so argument parsing stays fast."""

from __future__ import annotations

import argparse
import os
import socket
from dataclasses import dataclass

from fedstream.common.auth import auth_token_option
from fedstream.common.backend import backend_option, threads_option
from fedstream.common.options import add_options, from_args, option, section
from fedstream.common.tls import TlsConfig
from fedstream.datapool.server import DataConfig


@dataclass(frozen=True)
class PartyTrustConfig:
    """Secure aggregation against a coordinator that may lie (`fedstream.common.identity`)."""
    secagg_identity: str | None = option(None, "this site's Ed25519 private key (PEM, made by "
                                               "`fedstream secagg-keygen --site <--site, or "
                                               "--name without sites>`): the worker signs its "
                                               "parties' keys with it")
    secagg_peers: str | None = option(None, "the peers file: every site's Ed25519 public key, "
                                            "handed over by the sites' operators, never by "
                                            "the coordinator; a party then shares only with "
                                            "rosters whose every entry a peer signed")
    secagg_min_parties: int = option(2, "a party shares only with rosters of at least this "
                                        "many parties")


@dataclass(frozen=True)
class WorkerConfig:
    coordinator: str = option("127.0.0.1:50051", "coordinator address",
                              env="FEDSTREAM_COORDINATOR")
    coordinator_file: str | None = option(None, "read the coordinator address from this file "
                                                "once it appears (what `coordinator "
                                                "--port-file` writes), instead of "
                                                "--coordinator: a worker started beside its "
                                                "coordinator loads its libraries meanwhile")
    datapool: str = option("127.0.0.1:50052", "data pool address (its site's own pool)",
                           env="FEDSTREAM_DATAPOOL")
    site: str = option("", "the data site this worker serves: it publishes the site's clients "
                           "to the coordinator and reads only the site's data pool (empty: the "
                           "coordinator's one data pool)", env="FEDSTREAM_SITE")
    publish_label_histograms: bool = option(False, "with --site: also tell the coordinator "
                                                   "how many examples of each class every "
                                                   "client holds")
    embed_data: bool = option(False, "serve the site's data in-process from the data options "
                                     "below, with no data pool process (a site of one machine)")
    data: DataConfig = section(DataConfig, "embedded data (with --embed-data)")
    device: str | None = option(None, "/CPU:0 or /GPU:<n> (default: the first GPU, else the CPU)")
    gpu_memory_mb: int = option(0, "hard cap on GPU memory (0: grow on demand)")
    backend: str | None = backend_option()
    threads: int = threads_option()
    name: str = option("", "shown in the coordinator's logs and status (default: "
                           "<host name>-<process id>)")
    tls: TlsConfig = section(TlsConfig, "TLS (default: plaintext)")  # dials both services
    auth_token: str | None = auth_token_option()  # presented to both services
    delay_s: float = option(0.0, "sleep this long after computing each unit (experiments: a "
                                 "slow device)")
    trust: PartyTrustConfig = section(PartyTrustConfig, "secure aggregation: site identities")

    def __post_init__(self):
        if not self.name:  # resolved here, not in the declaration, so --help shows no pid
            object.__setattr__(self, "name", f"{socket.gethostname()}-{os.getpid()}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_options(p, WorkerConfig)


def config_from_args(args: argparse.Namespace) -> WorkerConfig:
    return from_args(WorkerConfig, args)
