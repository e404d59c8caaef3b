"""A hand-vectorised FedAvg round in JAX, the speed reference of bench/fedavg.py: the round's
clients trained together (`vmap` over a client axis), their local steps in one `lax.scan`,
the whole round one compiled program. Needs only JAX and numpy, and MNIST as fedstream caches
it (`fedstream fetch-mnist`).

    python bench/jax_fedavg.py --model 2nn --epochs 1 --lr 0.1 --rounds 15 --json jax.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

CLIENTS, PER_ROUND, BATCH = 100, 10, 10


def mnist() -> tuple[np.ndarray, np.ndarray]:
    cache = Path(os.environ.get("FEDSTREAM_CACHE", Path.home() / ".cache" / "fedstream"))
    with np.load(cache / "mnist.npz", allow_pickle=False) as data:
        return data["x_train"], data["y_train"]


def init(model: str, key) -> list:
    shapes = {"2nn": [(784, 200), (200,), (200, 200), (200,), (200, 10), (10,)],
              "cnn": [(5, 5, 1, 32), (32,), (5, 5, 32, 64), (64,), (3136, 512), (512,),
                      (512, 10), (10,)]}[model]
    keys = jax.random.split(key, len(shapes))
    return [0.05 * jax.random.normal(k, s) if len(s) > 1 else jnp.zeros(s)
            for k, s in zip(keys, shapes)]


def forward(model: str, params: list, x):
    if model == "2nn":
        w1, b1, w2, b2, w3, b3 = params
        h = jax.nn.relu(x.reshape(x.shape[0], -1) @ w1 + b1)
        return jax.nn.relu(h @ w2 + b2) @ w3 + b3
    c1, cb1, c2, cb2, w1, b1, w2, b2 = params
    h = x.reshape(x.shape[0], 28, 28, 1)
    for kernel, bias in ((c1, cb1), (c2, cb2)):
        h = jax.lax.conv_general_dilated(h, kernel, (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        h = jax.nn.relu(h + bias)
        h = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    h = jax.nn.relu(h.reshape(h.shape[0], -1) @ w1 + b1)
    return h @ w2 + b2


def make_round(model: str, lr: float):
    def loss(params, x, y):
        logits = forward(model, params, x)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))

    def client(params, x, y, order):
        def step(p, idx):
            grads = jax.grad(loss)(p, x[idx], y[idx])
            return [w - lr * g for w, g in zip(p, grads)], None
        trained, _ = jax.lax.scan(step, params, order)
        return trained

    @jax.jit
    def train_round(params, x, y, orders):
        trained = jax.vmap(client, in_axes=(None, 0, 0, 0))(params, x, y, orders)
        return [jnp.mean(t, axis=0) for t in trained]  # equal client sizes: the plain mean

    return train_round


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", choices=("2nn", "cnn"), default="2nn")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--json", required=True)
    args = p.parse_args()
    x, y = mnist()
    rng = np.random.default_rng(0)
    shards = np.array_split(rng.permutation(len(y)), CLIENTS)
    x = (x.astype(np.float32) / 255.0).reshape(len(x), -1)
    params = init(args.model, jax.random.PRNGKey(0))
    train_round = make_round(args.model, args.lr)
    rows = []
    for r in range(args.rounds):
        chosen = rng.choice(CLIENTS, PER_ROUND, replace=False)
        n = len(shards[chosen[0]])
        xs = np.stack([x[shards[c]] for c in chosen])
        ys = np.stack([y[shards[c]] for c in chosen]).astype(np.int32)
        orders = np.stack([np.concatenate([rng.permutation(n) for _ in range(args.epochs)])
                           .reshape(-1, BATCH) for _ in chosen])
        t0 = time.perf_counter()
        params = jax.block_until_ready(train_round(params, xs, ys, orders))
        rows.append({"round": r + 1, "round_s": time.perf_counter() - t0})
    Path(args.json).write_text(json.dumps(rows))


if __name__ == "__main__":
    main()
