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


SECRET_KEYS = {"auth_token"}


def _redacted(value):
    if isinstance(value, dict):
        return {k: ("***" if k in SECRET_KEYS and v else _redacted(v)) for k, v in value.items()}
    return value


def log_config(logger: logging.Logger, name: str, config) -> None:
    """The resolved configuration, secrets masked."""
    logger.info("%s config: %s", name, json.dumps(_redacted(dataclasses.asdict(config)),
                                                  sort_keys=True, default=str))
