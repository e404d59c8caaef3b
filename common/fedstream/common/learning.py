"""Model pieces the coordinator and the worker share, on whichever Keras backend the process
runs: model loading, input preprocessing, the loss and evaluation. Written in `keras.ops`, so
the same code runs eagerly, inside `tf.function`, `jax.jit` and `torch.func` transforms."""

from __future__ import annotations

import json
import logging
import weakref

import keras
import numpy as np
from keras import ops

from fedstream.common.backend import current

log = logging.getLogger(__name__)

SUPPORTED_LOSSES = ("categorical_crossentropy",)


def model_from_json(model_json: str) -> keras.Model:
    """Rebuild a model from Keras JSON in safe mode: no lambdas, no arbitrary code."""
    config = json.loads(model_json)
    return keras.saving.deserialize_keras_object(config, safe_mode=True)


def preprocess(x, divisor: float):
    x = ops.cast(x, "float32")
    return x if divisor == 1 else x / divisor


def per_example_loss(loss: str, labels, outputs, num_classes: int, from_logits: bool = False):
    """Categorical cross-entropy per example. On a softmax output TensorFlow's Keras computes
    it from the logits, so saturated examples keep their gradient p - y (a clip-then-log form
    loses it); JAX's and PyTorch's Keras would clip, so their programs pass the logits
    themselves (`logits_model`). The one-hot labels are a comparison, not a one-hot op, so
    the loss vectorises over clients on every backend."""
    if loss not in SUPPORTED_LOSSES:
        raise ValueError(f"unsupported loss {loss!r}; supported: {', '.join(SUPPORTED_LOSSES)}")
    classes = ops.arange(num_classes, dtype="int32")
    onehot = ops.cast(ops.equal(ops.expand_dims(ops.cast(labels, "int32"), -1), classes),
                      "float32")
    return keras.losses.categorical_crossentropy(onehot, outputs, from_logits=from_logits)


def logits_model(model: keras.Model) -> keras.Model | None:
    """The model with its final softmax left out (same variables, in the same order, for
    `stateless_call`), or None when its last layer is not a softmax."""
    last = model.layers[-1]
    if last.get_config().get("activation") != "softmax":
        return None

    def clone(layer):
        config = layer.get_config()
        if layer is last:
            config["activation"] = "linear"
        return layer.__class__.from_config(config)
    return keras.models.clone_model(model, clone_function=clone)


def values(variables) -> list:
    """The variables' current values, as constants (no gradient flows back into them)."""
    return [ops.stop_gradient(ops.convert_to_tensor(v)) for v in variables]


_LOGITS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def evaluate(model: keras.Model, x: np.ndarray, y: np.ndarray, *, loss: str, num_classes: int,
             input_divisor: float, batch_size: int = 2000) -> dict[str, float]:
    """Mean loss and accuracy over the whole set, in inference mode: the coordinator's
    central evaluation and a site's federated one. The loss comes from the logits on every
    backend, as TensorFlow's Keras computes it."""
    logits = None
    if not current().keeps_logits:
        if model not in _LOGITS:
            _LOGITS[model] = logits_model(model)
        logits = _LOGITS[model]
    total_loss, correct = 0.0, 0
    for start in range(0, len(x), batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        inputs = preprocess(xb, input_divisor)
        if logits is None:
            out = model(inputs, training=False)
        else:
            out, _ = logits.stateless_call(values(model.trainable_variables),
                                           values(model.non_trainable_variables), inputs)
        losses = per_example_loss(loss, yb, out, num_classes, from_logits=logits is not None)
        total_loss += float(ops.convert_to_numpy(ops.sum(losses)))
        correct += int(np.sum(np.argmax(ops.convert_to_numpy(out), axis=1) == yb))
    return {"test_loss": total_loss / len(x), "test_acc": correct / len(x)}
