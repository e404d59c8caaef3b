"""Device choice for a worker: one GPU (memory grown on demand, optionally capped) or the CPU."""

from __future__ import annotations

import logging

import tensorflow as tf

log = logging.getLogger(__name__)


def select_device(requested: str | None, memory_limit_mb: int = 0) -> str:
    """Return the TensorFlow device name to place work on.

    Default: the first GPU TensorFlow sees, else the CPU. The chosen GPU grows its memory on
    demand (or gets a hard cap), so several workers can share one card; other GPUs are hidden
    from this process.
    """
    gpus = tf.config.list_physical_devices("GPU")
    if requested is None:
        requested = "/GPU:0" if gpus else "/CPU:0"
    kind, _, index = requested.strip("/").upper().partition(":")
    if kind == "CPU":
        if gpus:
            tf.config.set_visible_devices([], "GPU")
        return "/CPU:0"
    if kind != "GPU" or not index.isdigit():
        raise ValueError(f"--device {requested!r}: use /CPU:0 or /GPU:<n>")
    if int(index) >= len(gpus):
        raise ValueError(f"--device {requested}: TensorFlow sees {len(gpus)} GPU(s)")
    gpu = gpus[int(index)]
    tf.config.set_visible_devices([gpu], "GPU")
    if memory_limit_mb > 0:
        tf.config.set_logical_device_configuration(
            gpu, [tf.config.LogicalDeviceConfiguration(memory_limit=memory_limit_mb)])
    else:
        tf.config.experimental.set_memory_growth(gpu, True)
    return "/GPU:0"
