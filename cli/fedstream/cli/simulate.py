"""`fedstream simulate`: coordinator, data pool and worker logic wired in one process.

No network and no serialisation: the worker loop calls the Federation and the ClientStore
directly. With the same seeds and `--units K` the model equals, bit for bit, that of a
distributed run with K workers (which makes K units per round).
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass

from fedstream.common.logs import log_config
from fedstream.common.options import add_options, from_args, option, section
from fedstream.coordinator.config import FederationConfig, MetricsConfig
from fedstream.datapool.server import DataConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SimulateConfig:
    data: DataConfig = section(DataConfig, "data")
    federation: FederationConfig = section(FederationConfig,
                                           "federation (defaults: the reference recipe)")
    device: str | None = option(None, "/CPU:0 or /GPU:<n> (default: the first GPU, else the CPU)")
    threads: int = option(0, "TensorFlow threads (0: TensorFlow's default)")
    sinks: MetricsConfig = section(MetricsConfig)
    save_weights: str | None = option(None, "save the final weights (.npz) here")


# One in-process worker loop computes every unit, so the first round opens on its join; by
# default a round has the 2 units of `fedstream run`'s 2 workers, so both give the same model.
ONE_WORKER = ("min_workers",)
DEFAULTS = {"units": 2}


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_options(p, SimulateConfig, exclude=ONE_WORKER, defaults=DEFAULTS)


def config_from_args(args: argparse.Namespace) -> SimulateConfig:
    return from_args(SimulateConfig, args)


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
    metrics = MetricsLog.of(config.sinks)
    federation = build_federation(config.federation, store.summary,
                                  (store.x_test, store.y_test), metrics)
    WorkerLoop(federation, store, name="simulate", device=device, prefetch=False).run()
    federation.wait_until_done()
    metrics.close()
    if config.save_weights:
        save_weights(config.save_weights, federation)
    print(json.dumps(federation.last_metrics))
    return federation.last_metrics
