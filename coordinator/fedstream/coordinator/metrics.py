"""Per-round metrics: one JSON object per line, flushed as it is written, plus a log line."""

from __future__ import annotations

import json
import logging
import os

log = logging.getLogger(__name__)


class MetricsLog:
    def __init__(self, path: str | None):
        self.path = path
        self._file = None
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            self._file = open(path, "a", buffering=1)

    def __call__(self, metrics: dict) -> None:
        line = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in metrics.items())
        log.info("round done: %s", line)
        if self._file is not None:
            self._file.write(json.dumps(metrics) + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
