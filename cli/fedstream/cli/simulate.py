"""`fedstream simulate`: coordinator, data pool and worker logic wired in one process.

No network and no serialisation: the worker loop calls the Federation and the ClientStore
directly. With the same seeds and `--workers K` (K work units per round) the model equals,
bit for bit, that of a distributed run with K workers.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass, field, replace

from fedstream.common.logs import log_config
from fedstream.coordinator.config import (
    FederationConfig,
    add_federation_arguments,
    add_metrics_arguments,
    federation_config_from_args,
)
from fedstream.datapool.server import DataPoolConfig, add_data_arguments
from fedstream.datapool.server import data_config_from_args as data_config

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SimulateConfig:
    data: DataPoolConfig = field(default_factory=DataPoolConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    workers: int = 2  # workers to emulate: the number of work units per round
    device: str | None = None  # /CPU:0 or /GPU:<n>
    threads: int = 0  # TensorFlow threads (0: TensorFlow's default)
    metrics: str | None = None  # per-round metrics JSONL file
    tensorboard: str | None = None  # TensorBoard event-file folder
    save_weights: str | None = None  # final weights as .npz


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_data_arguments(p)
    p.add_argument("--workers", type=int, default=2, help="workers to emulate (work units per round)")
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=0)
    add_metrics_arguments(p)
    p.add_argument("--save-weights", default=None, help="save the final weights (.npz) here")
    add_federation_arguments(p)


def config_from_args(args: argparse.Namespace) -> SimulateConfig:
    # One in-process worker loop computes every unit, so the first round opens on its join.
    federation = replace(federation_config_from_args(args, workers=args.workers), min_workers=1)
    return SimulateConfig(data=data_config(args), federation=federation, workers=args.workers,
                          device=args.device, threads=args.threads, metrics=args.metrics,
                          tensorboard=args.tensorboard,
                          save_weights=args.save_weights)


def run(config: SimulateConfig) -> dict:
    """Train to the end; return the last round's metrics."""
    log_config(log, "simulate", config)
    from fedstream.common.learning import configure_threads
    configure_threads(config.threads)
    from fedstream.coordinator.build import build_federation, save_weights
    from fedstream.coordinator.metrics import MetricsLog
    from fedstream.datapool.server import build_store
    from fedstream.worker.device import select_device
    from fedstream.worker.loop import WorkerLoop

    device = select_device(config.device)
    store = build_store(config.data)
    metrics = MetricsLog(config.metrics, tensorboard=config.tensorboard)
    federation = build_federation(config.federation, store.summary,
                                  (store.x_test, store.y_test), metrics)
    WorkerLoop(federation, store, name="simulate", device=device, prefetch=False).run()
    federation.wait_until_done()
    metrics.close()
    if config.save_weights:
        save_weights(config.save_weights, federation)
    print(json.dumps(federation.last_metrics))
    return federation.last_metrics
