"""Test-set evaluation of the center model."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from fedstream.common.learning import per_example_loss, preprocess


def evaluate(model: keras.Model, x: np.ndarray, y: np.ndarray, *, loss: str, num_classes: int,
             input_divisor: float, batch_size: int = 2000) -> dict[str, float]:
    """Mean loss and accuracy over the whole set, in inference mode."""
    total_loss, correct = 0.0, 0
    for start in range(0, len(x), batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        out = model(preprocess(xb, input_divisor), training=False)
        total_loss += float(tf.reduce_sum(per_example_loss(loss, yb, out, num_classes)))
        correct += int(np.sum(np.argmax(out.numpy(), axis=1) == yb))
    return {"test_loss": total_loss / len(x), "test_acc": correct / len(x)}
