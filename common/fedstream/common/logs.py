"""Logging set-up and the one-line dump of a resolved configuration at start."""

from __future__ import annotations

import dataclasses
import json
import logging
import os

from fedstream.common.options import secret_names


def setup_logging(level: str | None = None) -> None:
    logging.basicConfig(
        level=(level or os.environ.get("FEDSTREAM_LOG_LEVEL", "INFO")).upper(),
        format="%(asctime)s %(levelname)s [%(name)s] %(message)s",
    )


def _redacted(value, secrets: set[str]):
    if isinstance(value, dict):
        return {k: ("***" if k in secrets and v else _redacted(v, secrets))
                for k, v in value.items()}
    return value


def log_config(logger: logging.Logger, name: str, config) -> None:
    """The resolved configuration, secrets masked."""
    values = _redacted(dataclasses.asdict(config), secret_names(type(config)))
    logger.info("%s config: %s", name, json.dumps(values, sort_keys=True, default=str))
