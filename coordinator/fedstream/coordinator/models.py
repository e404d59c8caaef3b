"""The model zoo. Workers never import this: they receive the model as Keras JSON."""

from __future__ import annotations

import keras

from fedstream.coordinator.config import MODELS


def reference_mlp(num_classes: int = 10) -> keras.Model:
    """The reference program's MLP: 278,410 parameters."""
    return keras.Sequential([
        keras.Input(shape=(28, 28)),
        keras.layers.Flatten(),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dense(1280, activation="relu"),
        keras.layers.Dropout(0.2),
        keras.layers.Dense(num_classes, activation="softmax"),
    ], name="reference_mlp")


def build_model(name: str, seed: int, num_classes: int = 10) -> keras.Model:
    """A freshly initialised model; the same seed gives the same initial weights."""
    keras.utils.set_random_seed(seed)
    if name == "reference":
        return reference_mlp(num_classes)
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
