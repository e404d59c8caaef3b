"""Shared fixtures: small synthetic data and models, servers on loopback port 0."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fedstream.common.grpc_server import create_server
from fedstream.datapool.store import ClientStore


def synthetic_store(n_train: int = 240, n_clients: int = 8, seed: int = 3,
                    partitioner: str = "reference", **store_options) -> ClientStore:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 10, n_train).astype(np.uint8)
    xt = rng.integers(0, 256, (50, 28, 28), dtype=np.uint8)
    yt = rng.integers(0, 10, 50).astype(np.uint8)
    return ClientStore(x, y, xt, yt, partitioner=partitioner, n_clients=n_clients, seed=seed,
                       dataset="synthetic", num_classes=10, **store_options)


@pytest.fixture
def store() -> ClientStore:
    return synthetic_store()


def tiny_model(seed: int = 0):
    """A 28x28 -> 10 softmax model small enough for millisecond tests."""
    import keras
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((28, 28)), keras.layers.Flatten(),
                             keras.layers.Dense(6, activation="relu"),
                             keras.layers.Dense(10, activation="softmax")], name="tiny")


def weights_digest(model) -> str:
    h = hashlib.sha256()
    for v in model.weights:
        h.update(np.ascontiguousarray(v.numpy()).tobytes())
    return h.hexdigest()


@pytest.fixture
def serve():
    """Start servers on 127.0.0.1:0; stop them all after the test."""
    servers = []

    def start(register, names):
        server = create_server("127.0.0.1:0", register, names)
        server.set_serving()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop(0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_service(tmp_path: Path, name: str, *args: str, listen: str = "127.0.0.1:0",
                   log_name: str | None = None) -> tuple[subprocess.Popen, Path]:
    """Start `fedstream <name>` as a user would; return it and the file its address will
    appear in (a worker given that file with --coordinator-file starts meanwhile)."""
    log_name = log_name or name
    port_file = tmp_path / f"{log_name}.addr"
    port_file.unlink(missing_ok=True)
    log = open(tmp_path / f"{log_name}.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "fedstream.cli", name, "--listen", listen,
                             "--port-file", str(port_file), *args],
                            stdout=log, stderr=subprocess.STDOUT)
    return proc, port_file


def start_service(tmp_path: Path, name: str, *args: str, listen: str = "127.0.0.1:0",
                  log_name: str | None = None) -> tuple[subprocess.Popen, str]:
    """Start `fedstream <name>` as a user would; return it and its address once it serves."""
    log_name = log_name or name
    proc, port_file = launch_service(tmp_path, name, *args, listen=listen, log_name=log_name)
    deadline = time.monotonic() + 180
    while not port_file.exists():
        assert proc.poll() is None and time.monotonic() < deadline, \
            (tmp_path / f"{log_name}.log").read_text()[-3000:]
        time.sleep(0.1)
    return proc, port_file.read_text().strip()


def start_worker(tmp_path: Path, coordinator: str | Path, datapool: str, name: str,
                 *args: str, **env: str) -> subprocess.Popen:
    """A worker of the coordinator at an address, or at the one its port file will hold;
    `env` adds to its environment."""
    log = open(tmp_path / f"{name}.log", "w")
    where = (["--coordinator-file", str(coordinator)] if isinstance(coordinator, Path)
             else ["--coordinator", coordinator])
    return subprocess.Popen([sys.executable, "-m", "fedstream.cli", "worker", *where,
                             "--datapool", datapool, "--threads", "1", "--name", name, *args],
                            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env})


def rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_for_round(metrics: Path, round_: int, procs, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not any(r["round"] >= round_ for r in rows(metrics)):
        assert time.monotonic() < deadline, f"round {round_} not reached"
        for p in procs:
            assert p.poll() in (None, 0), "a service died"
        time.sleep(0.05)


def assert_same_weights(a: Path, b: Path) -> None:
    x, y = np.load(a), np.load(b)
    assert sorted(x.keys()) == sorted(y.keys())
    for k in x:
        assert x[k].tobytes() == y[k].tobytes(), k


def stop(*procs) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()


def arrays_file(tmp_path: Path, examples: int = 120) -> Path:
    """A random MNIST-shaped data set as an .npz for `--data-format arrays`."""
    rng = np.random.default_rng(0)
    path = tmp_path / "data.npz"
    np.savez(path, x_train=rng.integers(0, 256, (examples, 28, 28), dtype=np.uint8),
             y_train=rng.integers(0, 10, examples).astype(np.uint8),
             x_test=rng.integers(0, 256, (20, 28, 28), dtype=np.uint8),
             y_test=rng.integers(0, 10, 20).astype(np.uint8))
    return path
