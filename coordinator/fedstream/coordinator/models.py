"""The model zoo. Workers never import this: they receive the model as Keras JSON.

`--model` takes a zoo name or `package.module:function`, a function of `num_classes`
returning an uncompiled Keras model that takes the data's examples; its JSON travels to
workers, which load it in safe mode, so it must use built-in Keras layers only. The zoo's
models take any example shape (the CNN: any height x width).
"""

from __future__ import annotations

import importlib

import keras

from fedstream.coordinator.config import MODELS

MNIST_SHAPE = (28, 28)


def reference_mlp(num_classes: int = 10, input_shape: tuple[int, ...] = MNIST_SHAPE
                  ) -> keras.Model:
    """The reference program's MLP: 278,410 parameters on MNIST."""
    return keras.Sequential([
        keras.Input(shape=input_shape),
        keras.layers.Flatten(),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dense(1280, activation="relu"),
        keras.layers.Dropout(0.2),
        keras.layers.Dense(num_classes, activation="softmax"),
    ], name="reference_mlp")


def mlp_2nn(num_classes: int = 10, input_shape: tuple[int, ...] = MNIST_SHAPE) -> keras.Model:
    """The FedAvg paper's 2NN: 784-200-200-10 with ReLU, 199,210 parameters on MNIST."""
    return keras.Sequential([
        keras.Input(shape=input_shape),
        keras.layers.Flatten(),
        keras.layers.Dense(200, activation="relu"),
        keras.layers.Dense(200, activation="relu"),
        keras.layers.Dense(num_classes, activation="softmax"),
    ], name="mlp_2nn")


def cnn(num_classes: int = 10, input_shape: tuple[int, ...] = MNIST_SHAPE) -> keras.Model:
    """The FedAvg paper's CNN: two 5x5 convolutions (32, 64 channels) each followed by 2x2
    max pooling, a 512-unit ReLU layer and a softmax: 1,663,370 parameters on MNIST."""
    if len(input_shape) != 2:
        raise ValueError(f"the cnn takes height x width examples, not {input_shape}")
    return keras.Sequential([
        keras.Input(shape=input_shape),
        keras.layers.Reshape((*input_shape, 1)),
        keras.layers.Conv2D(32, 5, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Conv2D(64, 5, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Flatten(),
        keras.layers.Dense(512, activation="relu"),
        keras.layers.Dense(num_classes, activation="softmax"),
    ], name="cnn")


def logistic(num_classes: int = 10, input_shape: tuple[int, ...] = MNIST_SHAPE) -> keras.Model:
    """Multinomial logistic regression, the FedProx paper's model for its synthetic data: one
    dense softmax layer (610 parameters on Synthetic's 60 features)."""
    return keras.Sequential([
        keras.Input(shape=input_shape),
        keras.layers.Flatten(),
        keras.layers.Dense(num_classes, activation="softmax"),
    ], name="logistic")


ZOO = {"reference": reference_mlp, "2nn": mlp_2nn, "cnn": cnn, "logistic": logistic}
assert tuple(ZOO) == MODELS


def input_shape_of(text: str, default: tuple[int, ...]) -> tuple[int, ...]:
    """`--model-input-shape` ("60", "28,28"), or `default` when it is empty."""
    try:
        shape = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"--model-input-shape {text!r}: give sizes like 60 or 28,28") from None
    return shape or tuple(default)


def build_model(name: str, seed: int, num_classes: int = 10,
                input_shape: tuple[int, ...] = MNIST_SHAPE) -> keras.Model:
    """A freshly initialised model; the same seed gives the same initial weights. The zoo's
    models take `input_shape`; a factory of the user's decides its own."""
    keras.utils.set_random_seed(seed)
    if name in ZOO:
        return ZOO[name](num_classes, tuple(input_shape))
    module_name, sep, function = name.partition(":")
    if not sep:
        raise ValueError(f"unknown model {name!r}: choose one of {', '.join(ZOO)} or give "
                         "package.module:function")
    try:
        factory = getattr(importlib.import_module(module_name), function)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot load model factory {name!r}: {e}") from e
    model = factory(num_classes)
    if not isinstance(model, keras.Model):
        raise ValueError(f"{name} returned {type(model).__name__}, not a keras.Model")
    return model
