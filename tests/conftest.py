"""Shared fixtures: small synthetic data and models, servers on loopback port 0."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from fedstream.common.grpc_server import create_server
from fedstream.datapool.store import ClientStore


def synthetic_store(n_train: int = 240, n_clients: int = 8, seed: int = 3,
                    partitioner: str = "reference") -> ClientStore:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 10, n_train).astype(np.uint8)
    xt = rng.integers(0, 256, (50, 28, 28), dtype=np.uint8)
    yt = rng.integers(0, 10, 50).astype(np.uint8)
    return ClientStore(x, y, xt, yt, partitioner=partitioner, n_clients=n_clients, seed=seed,
                       dataset="synthetic", num_classes=10)


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
