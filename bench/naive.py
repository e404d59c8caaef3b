"""The baseline: the reference algorithm computed as the reference program computes it.

One eager GradientTape per client, gradients summed in Python, divided by the client count,
Adam applied: the loop that made the reference author give up on speed. Same data, batches
and model as fedstream's reference recipe, so only the computation differs.

    python bench/naive.py --rounds 10 --json naive.json
"""

from __future__ import annotations

import argparse
import json
import time

from fedstream.common.backend import use_backend


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json", required=True)
    args = p.parse_args()
    use_backend("tensorflow", args.threads)

    import keras
    import tensorflow as tf

    from fedstream.coordinator.models import build_model
    from fedstream.datapool.server import DataConfig, build_store

    store = build_store(DataConfig())
    model = build_model("reference", seed=0)
    optimizer = keras.optimizers.Adam(learning_rate=1e-4)
    cce = keras.losses.CategoricalCrossentropy()
    clients = list(range(store.summary.num_clients))
    rows = []
    for step in range(args.rounds):
        t0 = time.perf_counter()
        grad_list = []
        for batch in store.batches(clients, step, 32):
            with tf.GradientTape() as tape:
                loss = cce(keras.utils.to_categorical(batch.y, 10), model(batch.x))
            grad_list.append(tape.gradient(loss, model.trainable_weights))
        grads = grad_list[0]
        for other in grad_list[1:]:
            grads = [g + o for g, o in zip(grads, other)]
        grads = [g / len(clients) for g in grads]
        optimizer.apply_gradients(zip(grads, model.trainable_weights))
        rows.append({"round": step + 1, "round_s": time.perf_counter() - t0})
    with open(args.json, "w") as f:
        json.dump(rows, f)


if __name__ == "__main__":
    main()
