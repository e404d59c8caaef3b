"""Worker configuration and flags. No TensorFlow here, so argument parsing stays fast."""

from __future__ import annotations

import argparse
import os
import socket
from dataclasses import dataclass, field

from fedstream.common.auth import add_client_auth_arguments
from fedstream.common.tls import TlsConfig, add_tls_arguments, tls_from_args


@dataclass(frozen=True)
class WorkerConfig:
    coordinator: str = "127.0.0.1:50051"  # coordinator address
    datapool: str = "127.0.0.1:50052"  # data pool address
    device: str | None = None  # /CPU:0 or /GPU:<n>; None: the first GPU, else the CPU
    gpu_memory_mb: int = 0  # hard cap on GPU memory (0: grow on demand)
    threads: int = 0  # TensorFlow threads (0: TensorFlow's default)
    name: str = f"{socket.gethostname()}-{os.getpid()}"  # shown in the coordinator's logs
    tls: TlsConfig = field(default_factory=TlsConfig)  # dials both services with it
    auth_token: str | None = None  # bearer token presented to both services
    delay_s: float = 0.0  # sleep this long after each unit: an artificially slow device


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = WorkerConfig()
    p.add_argument("--coordinator", default=os.environ.get("FEDSTREAM_COORDINATOR", d.coordinator))
    p.add_argument("--datapool", default=os.environ.get("FEDSTREAM_DATAPOOL", d.datapool))
    p.add_argument("--device", default=None, help="/CPU:0 or /GPU:<n> (default: first GPU, else CPU)")
    p.add_argument("--gpu-memory-mb", type=int, default=0, help="cap GPU memory (0: grow on demand)")
    p.add_argument("--threads", type=int, default=d.threads)
    p.add_argument("--name", default=d.name)
    p.add_argument("--delay-s", type=float, default=0.0,
                   help="sleep this long after computing each unit (experiments: a slow device)")
    add_tls_arguments(p)
    add_client_auth_arguments(p)


def config_from_args(args: argparse.Namespace) -> WorkerConfig:
    return WorkerConfig(coordinator=args.coordinator, datapool=args.datapool, device=args.device,
                        gpu_memory_mb=args.gpu_memory_mb, threads=args.threads, name=args.name,
                        tls=tls_from_args(args), auth_token=args.auth_token,
                        delay_s=args.delay_s)
