"""TensorFlow pieces the coordinator and the worker share: thread budget, model loading,
input preprocessing and the loss. Imported only by processes that run TensorFlow."""

from __future__ import annotations

import json
import logging

import keras
import numpy as np
import tensorflow as tf

log = logging.getLogger(__name__)

SUPPORTED_LOSSES = ("categorical_crossentropy",)


def configure_threads(threads: int) -> None:
    """Cap TensorFlow's thread pools (0 = its default), before any op runs.

    Several TensorFlow processes share few cores in a local federation; each taking all
    of them oversubscribes the machine.
    """
    if threads > 0:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(min(threads, 2))


def model_from_json(model_json: str) -> keras.Model:
    """Rebuild a model from Keras JSON in safe mode: no lambdas, no arbitrary code."""
    config = json.loads(model_json)
    return keras.saving.deserialize_keras_object(config, safe_mode=True)


def preprocess(x: np.ndarray | tf.Tensor, divisor: float) -> tf.Tensor:
    x = tf.cast(x, tf.float32)
    return x if divisor == 1 else x / divisor


def per_example_loss(loss: str, labels: tf.Tensor, outputs: tf.Tensor, num_classes: int) -> tf.Tensor:
    """Categorical cross-entropy per example. On a softmax output Keras computes it from the
    logits, so saturated examples keep their gradient p - y (a clip-then-log form loses it)."""
    if loss not in SUPPORTED_LOSSES:
        raise ValueError(f"unsupported loss {loss!r}; supported: {', '.join(SUPPORTED_LOSSES)}")
    onehot = tf.one_hot(tf.cast(labels, tf.int32), num_classes)
    return keras.losses.categorical_crossentropy(onehot, outputs)


def evaluate(model: keras.Model, x: np.ndarray, y: np.ndarray, *, loss: str, num_classes: int,
             input_divisor: float, batch_size: int = 2000) -> dict[str, float]:
    """Mean loss and accuracy over the whole set, in inference mode: the coordinator's
    central evaluation and a site's federated one."""
    total_loss, correct = 0.0, 0
    for start in range(0, len(x), batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        out = model(preprocess(xb, input_divisor), training=False)
        total_loss += float(tf.reduce_sum(per_example_loss(loss, yb, out, num_classes)))
        correct += int(np.sum(np.argmax(out.numpy(), axis=1) == yb))
    return {"test_loss": total_loss / len(x), "test_acc": correct / len(x)}
