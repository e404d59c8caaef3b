"""Device choice for a worker, on its Keras backend: one GPU (memory taken as needed, or
capped, so several workers can share one card) or the CPU. Names are `/CPU:0` and `/GPU:<n>`
whatever the backend; `keras_device` turns one into the name `keras.device` takes."""

from __future__ import annotations

import logging

from fedstream.common.backend import current

log = logging.getLogger(__name__)


def keras_device(device: str) -> str:
    """`/GPU:1` -> `gpu:1`, `/CPU:0` -> `cpu`: the spellings every Keras backend's device
    scope accepts (PyTorch's Keras fails to make integer variables under `cpu:0`)."""
    name = device.strip("/").lower()
    return "cpu" if name.startswith("cpu") else name


def select_device(requested: str | None, memory_limit_mb: int = 0) -> str:
    """The device to place work on. Default: the first GPU the backend sees, else the CPU."""
    backend = current()
    gpus = backend.gpu_count()
    if requested is None:
        requested = "/GPU:0" if gpus else "/CPU:0"
    kind, _, index = requested.strip("/").upper().partition(":")
    if kind == "CPU":
        if gpus:
            backend.hide_gpus()
        return "/CPU:0"
    if kind != "GPU" or not index.isdigit():
        raise ValueError(f"--device {requested!r}: use /CPU:0 or /GPU:<n>")
    if int(index) >= gpus:
        raise ValueError(f"--device {requested}: the {backend.name} backend sees {gpus} GPU(s)")
    return backend.claim_gpu(int(index), memory_limit_mb)
