"""Server optimizers applied to the aggregate (FedOpt: Reddi et al., 2021).

SGD with lr 1 on model deltas is FedAvg, SGD with momentum FedAvgM, Adam, Adagrad and Yogi
the adaptive family. Keras ships all but Yogi, which is written here as a Keras optimizer so
every server optimizer checkpoints and runs the same way.
"""

from __future__ import annotations

import keras
from keras import ops

from fedstream.coordinator.config import ServerOptimizer


class Yogi(keras.optimizers.Optimizer):
    """Yogi (Zaheer et al., 2018): Adam with an additive second-moment update,
    v <- v - (1 - beta_2) * g^2 * sign(v - g^2), which grows v only as fast as g^2 does."""

    def __init__(self, learning_rate=0.01, beta_1=0.9, beta_2=0.99, epsilon=1e-3,
                 initial_accumulator=1e-6, name="yogi", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.beta_1, self.beta_2, self.epsilon = beta_1, beta_2, epsilon
        self.initial_accumulator = initial_accumulator

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._m = [self.add_variable_from_reference(v, "momentum") for v in var_list]
        self._v = [self.add_variable_from_reference(
            v, "velocity", initializer=keras.initializers.Constant(self.initial_accumulator))
            for v in var_list]

    def update_step(self, gradient, variable, learning_rate):
        i = self._get_variable_index(variable)
        m, v = self._m[i], self._v[i]
        lr = ops.cast(learning_rate, variable.dtype)
        g2 = ops.square(gradient)
        self.assign(m, self.beta_1 * m + (1 - self.beta_1) * gradient)
        self.assign(v, v - (1 - self.beta_2) * g2 * ops.sign(v - g2))
        self.assign_sub(variable, lr * m / (ops.sqrt(v) + self.epsilon))

    def get_config(self):
        return {**super().get_config(), "beta_1": self.beta_1, "beta_2": self.beta_2,
                "epsilon": self.epsilon, "initial_accumulator": self.initial_accumulator}


def make_server_optimizer(name: ServerOptimizer | str, lr: float, *, momentum: float = 0.0,
                          epsilon: float | None = None) -> keras.optimizers.Optimizer:
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate=lr, momentum=momentum)
    if name == "adam":
        return keras.optimizers.Adam(learning_rate=lr, epsilon=epsilon or 1e-7)
    if name == "adagrad":
        return keras.optimizers.Adagrad(learning_rate=lr, epsilon=epsilon or 1e-7)
    if name == "yogi":
        return Yogi(learning_rate=lr, epsilon=epsilon or 1e-3)
    raise ValueError(f"unknown server optimizer {name!r}; choose one of "
                     f"{', '.join(o.value for o in ServerOptimizer)}")
