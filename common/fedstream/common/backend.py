"""The Keras backend a process computes with: TensorFlow (the default), JAX or PyTorch.

Keras reads its backend once, when it is first imported, so a process chooses it here before
anything imports Keras; a process then imports TensorFlow only when its backend is TensorFlow.
Updates cross the wire as plain float32 tensors, so workers of different backends can serve
one federation.

Everything fedstream does differently per backend is one `Backend` here, registered in
`BACKENDS` by name: how to install it, what to set before Keras loads, how to cap its
threads, how it sees and claims GPUs, how the server optimizer's step is compiled, and which
worker module holds its compiled programs (`steps`: the protocol such a module provides is
`fedstream.worker.update_computer.StepsModule`). No other module compares a backend's name.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import os
import sys
from typing import Callable

from fedstream.common.options import option

log = logging.getLogger(__name__)


class Backend:
    """One Keras backend as fedstream uses it. A subclass per backend; heavy imports happen
    inside the methods, in a process that chose this backend."""
    name: str
    install: str  # how a user gets it
    steps: str = "fedstream.worker.functional_steps"  # the worker's compiled programs
    summaries = False  # TensorFlow's summary op (TensorBoard files) is at hand
    keeps_logits = False  # Keras' cross-entropy on a softmax output recovers its logits

    def before_keras(self, threads: int) -> None:
        """Environment Keras' import and the backend read once."""

    def after_keras(self, threads: int) -> None:
        """Keras imported on this backend: keep TensorFlow out, cap the threads."""
        _keep_tensorflow_out()
        self.cap_threads(threads)

    def cap_threads(self, threads: int) -> None:
        if threads > 0:
            log.warning("the %s backend has no thread cap: %d asked, running uncapped",
                        self.name, threads)

    def gpu_count(self) -> int:
        raise NotImplementedError

    def hide_gpus(self) -> None:
        """Compute on the CPU though GPUs are visible."""

    def claim_gpu(self, index: int, memory_limit_mb: int) -> str:
        """GPU `index` for this process, within `memory_limit_mb` (0: no cap); its device."""
        raise NotImplementedError

    def compile_step(self, optimizer, trainable: list) -> Callable[[list], None]:
        """The server optimizer's step on `trainable` as one program (eager by default)."""
        return lambda step: optimizer.apply_gradients(zip(step, trainable))


class TensorFlow(Backend):
    name, install = "tensorflow", "pip install fedstream"
    steps = "fedstream.worker.tf_steps"
    summaries = keeps_logits = True

    def before_keras(self, threads):
        if "tensorflow" not in sys.modules and "jax" not in sys.modules:
            # TensorFlow's Lite converter imports JAX when it is installed: 112 MB more in
            # every TensorFlow process (a worker's imports: 578 MB without, 690 MB with),
            # unused. A finder refuses the import rather than a None in sys.modules, which
            # libraries that ask sys.modules whether JAX is loaded (SciPy's array API
            # helpers, under dp-accounting's PLD accountant) take for a loaded JAX
            sys.meta_path.insert(0, _JaxRefused())

    def after_keras(self, threads):
        if threads > 0:
            import tensorflow as tf
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(min(threads, 2))

    def gpu_count(self):
        import tensorflow as tf
        return len(tf.config.list_physical_devices("GPU"))

    def hide_gpus(self):
        import tensorflow as tf
        tf.config.set_visible_devices([], "GPU")

    def claim_gpu(self, index, memory_limit_mb):
        """Hides the other GPUs and grows (or caps) its memory."""
        import tensorflow as tf
        gpu = tf.config.list_physical_devices("GPU")[index]
        tf.config.set_visible_devices([gpu], "GPU")
        if memory_limit_mb > 0:
            tf.config.set_logical_device_configuration(
                gpu, [tf.config.LogicalDeviceConfiguration(memory_limit=memory_limit_mb)])
        else:
            tf.config.experimental.set_memory_growth(gpu, True)
        return "/GPU:0"

    def compile_step(self, optimizer, trainable):
        """A TensorFlow graph: 10x faster than eager Keras on small models."""
        import tensorflow as tf
        return tf.function(lambda step: optimizer.apply_gradients(zip(step, trainable)))


class Jax(Backend):
    name, install = "jax", 'pip install "fedstream[jax]"'

    def before_keras(self, threads):
        if threads == 1 and "jax" not in sys.modules:
            # XLA's CPU client reads its thread pool from the flags once; it knows no other
            # count
            os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                       + " --xla_cpu_multi_thread_eigen=false"
                                       " intra_op_parallelism_threads=1").strip()
        # several workers share one GPU: each takes memory as it needs it, as TensorFlow's
        # memory growth does, unless the user chose how JAX allocates
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

    def cap_threads(self, threads):
        if threads > 1:
            log.warning("JAX's CPU backend caps its threads at 1 or not at all: %d threads "
                        "asked, running uncapped", threads)

    def gpu_count(self):
        import jax
        try:
            return len(jax.devices("gpu"))
        except RuntimeError:  # no GPU platform in this jaxlib, or no card
            return 0

    def claim_gpu(self, index, memory_limit_mb):
        """JAX allocates on demand (set before it started) and caps only by fraction."""
        if memory_limit_mb > 0:
            raise ValueError("--gpu-memory-mb: JAX caps GPU memory only as a fraction of the "
                             "card, set before it starts: use XLA_PYTHON_CLIENT_MEM_FRACTION "
                             "instead")
        return f"/GPU:{index}"

    def compile_step(self, optimizer, trainable):
        """The optimizer's stateless step under `jax.jit`, its results assigned back (0.7 ms
        against 3.2 ms eager for Adam on the reference MLP)."""
        import jax
        optimizer.build(trainable)
        stateless = jax.jit(optimizer.stateless_apply)

        def apply(step):
            weights, state = stateless([v.value for v in optimizer.variables], step,
                                       [v.value for v in trainable])
            for variable, value in zip([*trainable, *optimizer.variables],
                                       [*weights, *state]):
                variable.assign(value)
        return apply


class Torch(Backend):
    name, install = "torch", 'pip install "fedstream[torch]"'

    def cap_threads(self, threads):
        if threads > 0:
            import torch
            torch.set_num_threads(threads)

    def gpu_count(self):
        import torch
        return torch.cuda.device_count()

    def claim_gpu(self, index, memory_limit_mb):
        """Caps by fraction of the card."""
        if memory_limit_mb > 0:
            import torch
            total = torch.cuda.get_device_properties(index).total_memory
            torch.cuda.set_per_process_memory_fraction(
                min(1.0, memory_limit_mb * 2**20 / total), index)
        return f"/GPU:{index}"


BACKENDS: dict[str, Backend] = {b.name: b for b in (TensorFlow(), Jax(), Torch())}


def current() -> Backend:
    """The backend Keras was imported with in this process."""
    import keras
    return BACKENDS[keras.backend.backend()]


def backend_option():
    """A process's backend, as a configuration field."""
    return option(None, "Keras backend to compute with (default: $KERAS_BACKEND, else "
                        "tensorflow)", choices=tuple(BACKENDS))


def threads_option():
    """A process's cap on compute threads, as a configuration field."""
    return option(0, "compute threads of the backend (0: its default)")


def backend_named(name: str | None = None) -> str:
    """The backend `name` means: itself, else $KERAS_BACKEND, else TensorFlow."""
    return name or os.environ.get("KERAS_BACKEND") or "tensorflow"


class BackendError(RuntimeError):
    """The backend asked for cannot be used in this process."""


def use_backend(name: str | None = None, threads: int = 0) -> str:
    """Make `name` (or $KERAS_BACKEND, else TensorFlow) Keras' backend, with at most `threads`
    compute threads (0: the backend's default), before Keras is first imported. Returns it.

    Several processes of a local federation share few cores; each taking all of them
    oversubscribes the machine.
    """
    name = backend_named(name)
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}")
    backend = BACKENDS[name]
    if "keras" in sys.modules:
        current_name = sys.modules["keras"].backend.backend()
        if current_name != name:
            raise BackendError(f"Keras was imported with the {current_name} backend before the "
                               f"{name} backend was chosen: choose it first, or set "
                               f"KERAS_BACKEND={name}")
    elif importlib.util.find_spec(name) is None:
        raise BackendError(f"the {name} backend needs {name} installed: {backend.install}")
    os.environ["KERAS_BACKEND"] = name
    backend.before_keras(threads)
    import keras  # noqa: F401  (reads KERAS_BACKEND)
    backend.after_keras(threads)
    return name


class _JaxRefused(importlib.abc.MetaPathFinder):
    """Keeps JAX out of a TensorFlow process: importing it fails as if it were absent."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "jax" or fullname.startswith("jax."):
            raise ModuleNotFoundError(f"No module named {fullname!r} (kept out of this "
                                      "TensorFlow process)", name=fullname)
        return None


def _keep_tensorflow_out() -> None:
    """Keras seeds and serialises through TensorFlow whenever it is installed (its lazy
    `tensorflow` module asks whether it imports); telling Keras it does not keeps the 1 GB
    import out of a process on another backend. Nothing Keras computes changes."""
    from keras.src.utils import module_utils
    module_utils.tensorflow._available = False
