"""`fedstream simulate`: coordinator, data pool and worker logic wired in one process.

No network and no serialisation: the worker loop calls the Federation and the ClientStore
directly. With the same seeds and `--units K` the model equals, bit for bit, that of a
distributed run with K workers (which makes K units per round). With `--sites N` the data
is split into N sites as `fedstream run --sites N` splits it, each with its own store and
worker loop (taking turns), and the sites evaluate on their own held-out examples.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass

from fedstream.common.backend import backend_option, threads_option
from fedstream.common.logs import log_config
from fedstream.common.options import add_options, from_args, option, section
from fedstream.coordinator.config import FederationConfig, MetricsConfig
from fedstream.datapool.server import DataConfig
from fedstream.datapool.sites import SiteSplitConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SimulateConfig:
    data: DataConfig = section(DataConfig, "data")
    split: SiteSplitConfig = section(SiteSplitConfig, "data sites")
    federation: FederationConfig = section(FederationConfig,
                                           "federation (defaults: the reference recipe)")
    device: str | None = option(None, "/CPU:0 or /GPU:<n> (default: the first GPU, else the CPU)")
    backend: str | None = backend_option()
    threads: int = threads_option()
    sinks: MetricsConfig = section(MetricsConfig)
    save_weights: str | None = option(None, "save the final weights (.npz) here")


# One in-process worker loop computes every unit, so the first round opens on its join; by
# default a round has the 2 units of `fedstream run`'s 2 workers, so both give the same model.
# With --sites, the sites are named by the split.
SET_HERE = ("min_workers", "RoundsConfig.sites")
DEFAULTS = {"units": 2}


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_options(p, SimulateConfig, exclude=SET_HERE, defaults=DEFAULTS)


def config_from_args(args: argparse.Namespace) -> SimulateConfig:
    split = from_args(SiteSplitConfig, args)
    return from_args(SimulateConfig, args, federation={"sites": ",".join(split.names)})


def run(config: SimulateConfig) -> dict:
    """Train to the end; return the last round's metrics."""
    log_config(log, "simulate", config)
    from fedstream.common.backend import use_backend
    log.info("Keras backend: %s", use_backend(config.backend, config.threads))
    from fedstream.coordinator.build import build_federation, save_weights
    from fedstream.coordinator.metrics import MetricsLog
    from fedstream.datapool.server import build_store
    from fedstream.worker.device import select_device
    from fedstream.worker.loop import WorkerLoop

    device = select_device(config.device)
    metrics = MetricsLog.of(config.sinks)
    if config.split.sites:
        federation = _run_sites(config, device, metrics)
    else:
        store = build_store(config.data)
        federation = build_federation(config.federation, store.summary,
                                      (store.x_test, store.y_test), metrics)
        WorkerLoop(federation, store, name="simulate", device=device, prefetch=False).run()
    federation.wait_until_done()
    metrics.close()
    if config.save_weights:
        save_weights(config.save_weights, federation)
    print(json.dumps(federation.reports.last_metrics))
    return federation.reports.last_metrics


def _run_sites(config: SimulateConfig, device: str, metrics):
    """One store and one worker loop per site; the loops take turns, one assignment each,
    until every one was told to stop."""
    from fedstream.coordinator.build import build_site_federation
    from fedstream.datapool.server import build_store, load_data
    from fedstream.datapool.sites import split_sites
    from fedstream.worker.loop import WorkerLoop

    data = load_data(config.data)
    stores = [build_store(config.data, part.name, data=part)
              for part in split_sites(data, config.split)]
    federation = build_site_federation(config.federation, data.num_classes, metrics)
    loops = [WorkerLoop(federation, store, name=store.summary.site, device=device,
                        site=store.summary.site, wait_s=0.0, prefetch=False)
             for store in stores]
    running = list(loops)
    while running:
        running = [loop for loop in running if loop.step()]
    return federation
