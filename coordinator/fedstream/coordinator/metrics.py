"""Per-round metrics, written where people look: a JSONL file (one object per round, flushed
as written), TensorBoard event files, a Prometheus endpoint, and a log line."""

from __future__ import annotations

import json
import logging
import os
from typing import Mapping

from fedstream.common.backend import BACKENDS, backend_named
from fedstream.coordinator.config import MetricsConfig

log = logging.getLogger(__name__)


def flatten(metrics: Mapping) -> dict[str, float]:
    """A row with its per-site metrics as `sites/<site>/<metric>` keys (TensorBoard tags,
    status), numbers only."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, Mapping):
            out.update({f"{key}/{k}": v for k, v in flatten(value).items()})
        elif isinstance(value, (int, float)):
            out[key] = value
    return out


class TensorBoardScalars:
    """Scalars for TensorBoard through TensorFlow's own summary op, tagged for the scalars
    dashboard, so writing them needs no `tensorboard` package (viewing does)."""

    def __init__(self, logdir: str):
        backend = backend_named()  # the process's, once chosen
        if not BACKENDS[backend].summaries:
            raise ValueError(f"--tensorboard writes through TensorFlow, which a process on the "
                             f"{backend} backend does not load: leave it off (--metrics "
                             f"writes the same figures as JSONL) or use --backend tensorflow")
        import tensorflow as tf
        from tensorflow.core.framework import summary_pb2

        self._tf = tf
        self._writer = tf.summary.create_file_writer(logdir)
        self._metadata = summary_pb2.SummaryMetadata()
        self._metadata.plugin_data.plugin_name = "scalars"

    def write(self, metrics: dict) -> None:
        step = int(metrics["round"])
        with self._writer.as_default():
            for key, value in flatten(metrics).items():
                if key != "round":
                    self._tf.summary.write(key, self._tf.constant(float(value)), step=step,
                                           metadata=self._metadata)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class PrometheusGauges:
    """`fedstream_<metric>` gauges holding the last round's values, served over HTTP; per-site
    metrics as `fedstream_site_<metric>{site="<name>"}`."""

    def __init__(self, port: int, host: str = "0.0.0.0"):
        import prometheus_client

        self._client = prometheus_client
        self._registry = prometheus_client.CollectorRegistry()
        self._gauges: dict = {}
        self._server, self._thread = prometheus_client.start_http_server(
            port, addr=host, registry=self._registry)
        self.port = self._server.server_port
        log.info("Prometheus metrics on http://%s:%d/metrics", host, self.port)

    def write(self, metrics: dict) -> None:
        for key, value in metrics.items():
            if isinstance(value, (int, float)):
                gauge = self._gauges.get(key)
                if gauge is None:
                    gauge = self._client.Gauge(f"fedstream_{key}", f"last round's {key}",
                                               registry=self._registry)
                    self._gauges[key] = gauge
                gauge.set(value)
        for site, values in metrics.get("sites", {}).items():
            for key, value in values.items():
                gauge = self._gauges.get(("site", key))
                if gauge is None:
                    gauge = self._client.Gauge(f"fedstream_site_{key}", f"last round's {key} "
                                               "of each site", ["site"], registry=self._registry)
                    self._gauges[("site", key)] = gauge
                gauge.labels(site=site).set(value)

    def close(self) -> None:
        self._server.shutdown()
        self._thread.join(5)


class MetricsLog:
    @classmethod
    def of(cls, config: MetricsConfig) -> MetricsLog:
        return cls(config.metrics, tensorboard=config.tensorboard,
                   prometheus_port=config.prometheus_port)

    def __init__(self, path: str | None, *, tensorboard: str | None = None,
                 prometheus_port: int | None = None):
        self.path = path
        self._file = None
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            self._file = open(path, "a", buffering=1)
        self._sinks = []
        if tensorboard:
            self._sinks.append(TensorBoardScalars(tensorboard))
        if prometheus_port is not None:
            self._sinks.append(PrometheusGauges(prometheus_port))

    def __call__(self, metrics: dict) -> None:
        line = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in metrics.items())
        log.info("round done: %s", line)
        if self._file is not None:
            self._file.write(json.dumps(metrics) + "\n")
        for sink in self._sinks:
            sink.write(metrics)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        for sink in self._sinks:
            sink.close()
