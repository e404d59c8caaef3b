"""Logging set-up and the one-line dump of a resolved configuration at start."""

from __future__ import annotations

import dataclasses
import json
import logging
import os


def setup_logging(level: str | None = None) -> None:
    logging.basicConfig(
        level=(level or os.environ.get("FEDSTREAM_LOG_LEVEL", "INFO")).upper(),
        format="%(asctime)s %(levelname)s [%(name)s] %(message)s",
    )


def log_config(logger: logging.Logger, name: str, config) -> None:
    logger.info("%s config: %s", name, json.dumps(dataclasses.asdict(config), sort_keys=True,
                                                  default=str))
