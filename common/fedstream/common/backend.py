"""The Keras backend a process computes with: TensorFlow (the default), JAX or PyTorch.

Keras reads its backend once, when it is first imported, so a process chooses it here before
anything imports Keras; a process then imports TensorFlow only when its backend is TensorFlow.
Updates cross the wire as plain float32 tensors, so workers of different backends can serve
one federation.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import os
import sys

from fedstream.common.options import option

log = logging.getLogger(__name__)

BACKENDS = ("tensorflow", "jax", "torch")
_INSTALL = {"tensorflow": "pip install fedstream", "jax": 'pip install "fedstream[jax]"',
            "torch": 'pip install "fedstream[torch]"'}


def backend_option():
    """A process's backend, as a configuration field."""
    return option(None, "Keras backend to compute with (default: $KERAS_BACKEND, else "
                        "tensorflow)", choices=BACKENDS)


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
    if "keras" in sys.modules:
        current = sys.modules["keras"].backend.backend()
        if current != name:
            raise BackendError(f"Keras was imported with the {current} backend before the "
                               f"{name} backend was chosen: choose it first, or set "
                               f"KERAS_BACKEND={name}")
    elif importlib.util.find_spec(name) is None:
        raise BackendError(f"the {name} backend needs {name} installed: {_INSTALL[name]}")
    os.environ["KERAS_BACKEND"] = name
    if name == "tensorflow" and "tensorflow" not in sys.modules and "jax" not in sys.modules:
        # TensorFlow's Lite converter imports JAX when it is installed: 112 MB more in every
        # TensorFlow process (a worker's imports: 578 MB without, 690 MB with), unused. A
        # finder refuses the import rather than a None in sys.modules, which libraries that
        # ask sys.modules whether JAX is loaded (SciPy's array API helpers, under
        # dp-accounting's PLD accountant) take for a loaded JAX
        sys.meta_path.insert(0, _JaxRefused())
    if name == "jax" and threads == 1 and "jax" not in sys.modules:
        # XLA's CPU client reads its thread pool from the flags once; it knows no other count
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen"
                                   "=false intra_op_parallelism_threads=1").strip()
    if name == "jax":
        # several workers share one GPU: each takes memory as it needs it, as TensorFlow's
        # memory growth does, unless the user chose how JAX allocates
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    import keras  # noqa: F401  (reads KERAS_BACKEND)
    if name != "tensorflow":
        _keep_tensorflow_out()
    if threads > 0:
        _cap_threads(name, threads)
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


def _cap_threads(name: str, threads: int) -> None:
    if name == "tensorflow":
        import tensorflow as tf
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(min(threads, 2))
    elif name == "torch":
        import torch
        torch.set_num_threads(threads)
    elif threads > 1:
        log.warning("JAX's CPU backend caps its threads at 1 or not at all: %d threads asked, "
                    "running uncapped", threads)
