"""Device choice for a worker, on its Keras backend: one GPU (memory taken as needed, or
capped, so several workers can share one card) or the CPU. Names are `/CPU:0` and `/GPU:<n>`
whatever the backend; `keras_device` turns one into the name `keras.device` takes."""

from __future__ import annotations

import logging

import keras

log = logging.getLogger(__name__)


def keras_device(device: str) -> str:
    """`/GPU:1` -> `gpu:1`, `/CPU:0` -> `cpu`: the spellings every Keras backend's device
    scope accepts (PyTorch's Keras fails to make integer variables under `cpu:0`)."""
    name = device.strip("/").lower()
    return "cpu" if name.startswith("cpu") else name


def select_device(requested: str | None, memory_limit_mb: int = 0) -> str:
    """The device to place work on. Default: the first GPU the backend sees, else the CPU."""
    backend = keras.backend.backend()
    gpus = _gpu_count(backend)
    if requested is None:
        requested = "/GPU:0" if gpus else "/CPU:0"
    kind, _, index = requested.strip("/").upper().partition(":")
    if kind == "CPU":
        if gpus and backend == "tensorflow":
            import tensorflow as tf
            tf.config.set_visible_devices([], "GPU")
        return "/CPU:0"
    if kind != "GPU" or not index.isdigit():
        raise ValueError(f"--device {requested!r}: use /CPU:0 or /GPU:<n>")
    if int(index) >= gpus:
        raise ValueError(f"--device {requested}: the {backend} backend sees {gpus} GPU(s)")
    return _claim_gpu(backend, int(index), memory_limit_mb)


def _gpu_count(backend: str) -> int:
    if backend == "tensorflow":
        import tensorflow as tf
        return len(tf.config.list_physical_devices("GPU"))
    if backend == "jax":
        import jax
        try:
            return len(jax.devices("gpu"))
        except RuntimeError:  # no GPU platform in this jaxlib, or no card
            return 0
    import torch
    return torch.cuda.device_count()


def _claim_gpu(backend: str, index: int, memory_limit_mb: int) -> str:
    """GPU `index` for this process: TensorFlow hides the others and grows (or caps) its
    memory; JAX allocates on demand (`XLA_PYTHON_CLIENT_PREALLOCATE=false`, set when the
    backend was chosen) and caps only by fraction; PyTorch caps by fraction of the card."""
    if backend == "tensorflow":
        import tensorflow as tf
        gpu = tf.config.list_physical_devices("GPU")[index]
        tf.config.set_visible_devices([gpu], "GPU")
        if memory_limit_mb > 0:
            tf.config.set_logical_device_configuration(
                gpu, [tf.config.LogicalDeviceConfiguration(memory_limit=memory_limit_mb)])
        else:
            tf.config.experimental.set_memory_growth(gpu, True)
        return "/GPU:0"
    if memory_limit_mb > 0 and backend == "jax":
        raise ValueError("--gpu-memory-mb: JAX caps GPU memory only as a fraction of the card, "
                         "set before it starts: use XLA_PYTHON_CLIENT_MEM_FRACTION instead")
    if memory_limit_mb > 0:
        import torch
        total = torch.cuda.get_device_properties(index).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, memory_limit_mb * 2**20 / total),
                                                   index)
    return f"/GPU:{index}"
