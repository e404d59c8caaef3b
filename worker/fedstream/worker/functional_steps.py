"""The update computers' programs on JAX and PyTorch: pure functions of the weights over
Keras' `stateless_call`, written once in `keras.ops`, differentiated, mapped over clients and
compiled by the backend's own transforms (`jax.value_and_grad`, `jax.vmap`, `jax.jit`;
`torch.func.grad_and_value`, `torch.func.vmap`, `torch.compile` for local training's step).
`tf_steps` holds TensorFlow's.

Every model trains its clients together here, convolutional and stateful ones included: a
client's non-trainable state (batch statistics, a dropout layer's seed) is its own, mapped
with it, and a client's dropout draws from (round, client id), so a simulate run equals a
distributed one. PyTorch's `vmap` neither draws randomness per client nor maps Keras'
convolutions (channels-last copies), so there, with dropout on or layers beyond
`VECTORISED_LAYERS`, clients run one after another through the same function. JAX maps
every model; on the CPU its convolutions are XLA's, far slower than TensorFlow's.

JAX compiles once per shape: the fused gradient pads its examples (with weight 0) and the
per-client gradient its clients to `clients_together.bucket`, so units of varying sizes
reuse a handful of programs, as local training's groups do.
"""

from __future__ import annotations

import logging
from typing import Sequence

import keras
import numpy as np
from keras import ops

from fedstream.common.learning import logits_model, per_example_loss, preprocess, values
from fedstream.common.protocol import Task
from fedstream.worker.clients_together import VECTORISED_LAYERS, ClientsTogether, bucket, sgd_step

log = logging.getLogger(__name__)


class _Jax:
    """JAX's transforms. Matrix products run at JAX's default precision: float32 on the CPU,
    TF32 on an NVIDIA GPU unless `jax_default_matmul_precision` says otherwise."""

    pads = True  # compiled per shape

    def __init__(self):
        import jax
        self._jax = jax

    def jit(self, f):
        return self._jax.jit(f)

    def compile_step(self, f):
        return f  # inside the program `jit` compiles

    def value_and_grad(self, f):
        """f(params, ...) -> (value, aux) becomes a function returning ((value, aux), grads)."""
        return self._jax.value_and_grad(f, has_aux=True)

    def one_by_one(self, task: Task, model: keras.Model) -> bool:
        return False

    def vmap(self, f, in_axes, one_by_one: bool):
        return self._jax.vmap(f, in_axes=in_axes)


class _Torch:
    """PyTorch's function transforms. Local training's step, mapped over the clients, is
    `torch.compile`d once per shape: FedAvg 2NN, 5 clients of 600, E=1, B=10, on this CPU,
    38 ms a unit against 200 ms eager, after 6.7 s of compiling; compiling the unit's whole
    unrolled loop instead took 217 s. Gradients, and clients mapped one by one, run eagerly."""

    pads = False

    def __init__(self):
        import torch
        self._torch = torch
        self._func = torch.func

    def jit(self, f):
        return f

    def compile_step(self, f):
        """`f` compiled, or `f` itself from the first call whose compiling fails (a host
        without a C++ compiler, say), with a warning saying why."""
        from torch._dynamo.exc import BackendCompilerFailed
        compiled = self._torch.compile(f, dynamic=False)
        chosen = [compiled]

        def step(*args):
            try:
                return chosen[0](*args)
            except BackendCompilerFailed as e:
                log.warning("torch.compile failed (%s): local training steps run eagerly",
                            str(e).splitlines()[0])
                chosen[0] = f
                return f(*args)
        return step

    def value_and_grad(self, f):
        grad_and_value = self._func.grad_and_value(f, has_aux=True)

        def value_and_grad(*args):
            grads, value_and_aux = grad_and_value(*args)
            return value_and_aux, grads
        return value_and_grad

    def one_by_one(self, task: Task, model: keras.Model) -> bool:
        return task.dropout or any(type(layer).__name__ not in VECTORISED_LAYERS
                                   for layer in model.layers)

    def vmap(self, f, in_axes, one_by_one: bool):
        if not one_by_one:
            return self._func.vmap(f, in_dims=in_axes)

        def one_by_one(*args):
            n = next(keras.tree.flatten(a)[0].shape[0] for a, axis in zip(args, in_axes)
                     if axis == 0)
            outs = [f(*(_row(a, i) if axis == 0 else a for a, axis in zip(args, in_axes)))
                    for i in range(n)]
            return keras.tree.map_structure(lambda *xs: ops.stack(xs), *outs)
        return one_by_one


# each backend these programs serve, its function transforms (a new backend adds one here)
TRANSFORMS = {"jax": _Jax, "torch": _Torch}


def _row(tree, i: int):
    return keras.tree.map_structure(lambda t: t[i], tree)


def _transforms():
    return TRANSFORMS[keras.backend.backend()]()


class _Loss:
    """The task's loss at given weights, through `stateless_call`: from the logits when the
    model ends in a softmax, as TensorFlow's Keras computes it, so every backend trains alike."""

    def __init__(self, task: Task, model: keras.Model):
        self.task = task
        logits = logits_model(model)
        self._net, self._from_logits = (model, False) if logits is None else (logits, True)

    def per_example(self, weights, state, x, y, training: bool):
        outputs, state = self._net.stateless_call(
            weights, state, preprocess(x, self.task.input_divisor), training=training)
        return per_example_loss(self.task.loss, y, outputs, self.task.num_classes,
                                from_logits=self._from_logits), state


def _tensors(*arrays):
    return [ops.convert_to_tensor(a) for a in arrays]


def _numpy(tensors: Sequence) -> list[np.ndarray]:
    return [np.asarray(ops.convert_to_numpy(t)) for t in tensors]


class GradientSteps:
    """The FedSGD gradients of `compute.GradientComputer` at the model's current weights."""

    def __init__(self, task: Task, model: keras.Model):
        self.task, self.model = task, model
        self._do = _transforms()
        self._loss = _Loss(task, model)
        # padding is invisible only in inference mode (no batch statistics, no dropout)
        self._pads = self._do.pads and not task.dropout
        self._weighted = self._do.jit(self._do.value_and_grad(self._weighted_loss))
        self._clients = self._do.jit(self._do.vmap(self._do.value_and_grad(self._mean_loss),
                                                   (None, None, 0, 0),
                                                   self._do.one_by_one(task, model)))

    def weighted(self, x: np.ndarray, y: np.ndarray, example_weights: np.ndarray):
        """The gradient of sum_i w_i loss_i, and that sum. The model's state (batch
        statistics, a dropout seed) moves on, as it would training on the model."""
        if self._pads:
            x, y, example_weights = _padded(bucket(len(y)), x, y, example_weights)
        (loss, state), grads = self._weighted(
            values(self.model.trainable_variables), values(self.model.non_trainable_variables),
            *_tensors(x, y, example_weights))
        for variable, value in zip(self.model.non_trainable_variables, state):
            variable.assign(value)
        return _numpy(grads), float(ops.convert_to_numpy(loss))

    def per_client(self, x: np.ndarray, y: np.ndarray):
        """[clients, B, ...] examples: every client's mean-loss gradient, stacked, and loss."""
        clients = len(x)
        if self._pads:
            x, y = _padded(bucket(clients), x, y)
        (losses, _), grads = self._clients(
            values(self.model.trainable_variables), values(self.model.non_trainable_variables),
            *_tensors(x, y))
        return [g[:clients] for g in _numpy(grads)], _numpy([losses])[0][:clients]

    def _weighted_loss(self, weights, state, x, y, example_weights):
        losses, state = self._loss.per_example(weights, state, x, y, self.task.dropout)
        return ops.sum(losses * example_weights), state

    def _mean_loss(self, weights, state, x, y):
        losses, _ = self._loss.per_example(weights, state, x, y, self.task.dropout)
        return ops.mean(losses), ()


def _padded(size: int, *arrays: np.ndarray) -> list[np.ndarray]:
    """The arrays with zeros appended along their first axis up to `size`."""
    return [np.concatenate([a, np.zeros((size - len(a), *a.shape[1:]), a.dtype)])
            if size > len(a) else a for a in arrays]


def local_training(task: Task, model: keras.Model):
    """(clients together, clients in turn): every model trains its clients together."""
    return ClientsTogether(task, TogetherProgram(task, model)), None


class TogetherProgram:
    """All steps of all epochs of a group of clients: each step one function mapped over the
    clients, the steps one loop, the weighted sum of the deltas at the end. On JAX the whole
    is one `jax.jit` program; on PyTorch the mapped step is `torch.compile`d and the loop
    runs in Python. `ClientsTogether`'s program."""

    def __init__(self, task: Task, model: keras.Model):
        self.task, self.model = task, model
        self._do = _transforms()
        self._loss = _Loss(task, model)
        self._seed_slots = [i for i, v in enumerate(model.non_trainable_variables)
                            if "seed_generator_state" in v.path]
        self._gradient = self._do.value_and_grad(self._masked_loss)
        one_by_one = self._do.one_by_one(task, model)
        each = self._do.vmap(self._step, (0, 0, 0, 0, 0, 0, 0, None), one_by_one)
        self._each_step = each if one_by_one else self._do.compile_step(each)
        self._program = self._do.jit(self._clients)

    def __call__(self, start, client_weights, x, y, order, mask, seeds):
        update, total = self._program(
            _tensors(*start), values(self.model.non_trainable_variables),
            *_tensors(client_weights, x, y, order, mask, seeds))
        return _numpy(update), _numpy([total])[0]

    def _clients(self, start, state, client_weights, x, y, order, mask, seeds):
        """A step per column of `order` for every client, each with its own weights,
        momentum and state (its dropout seeded by `seeds`)."""
        clients = order.shape[0]
        state = [ops.repeat(ops.expand_dims(v, 0), clients, axis=0) for v in state]
        for i in self._seed_slots:
            state[i] = ops.cast(seeds, state[i].dtype)
        weights = [ops.repeat(ops.expand_dims(s, 0), clients, axis=0) for s in start]

        def step(i, carry):
            weights, velocity, state, total = carry
            weights, velocity, state, loss = self._each_step(
                weights, velocity, state, x, y, order[:, i], mask[:, i], start)
            return weights, velocity, state, total + loss

        weights, _, _, total = ops.fori_loop(
            0, order.shape[1], step,
            (weights, [ops.zeros_like(w) for w in weights], state, ops.zeros((clients,))))
        deltas = [ops.expand_dims(s, 0) - w for s, w in zip(start, weights)]
        if self.task.per_client:
            return deltas, total
        return [ops.tensordot(client_weights, d, axes=1) for d in deltas], total

    def _step(self, weights, velocity, state, x, y, rows, mask, anchor):
        """One client's step on the examples `rows` of its data, standing still when its
        mask is empty."""
        (_, (loss, state)), grads = self._gradient(weights, state, ops.take(x, rows, axis=0),
                                                   ops.take(y, rows, axis=0), mask, anchor)
        weights, velocity = sgd_step(weights, velocity, grads, ops.any(mask > 0),
                                     self.task.local.lr, self.task.local.momentum)
        return weights, velocity, state, loss

    def _masked_loss(self, weights, state, x, y, mask, anchor):
        per_example, state = self._loss.per_example(weights, state, x, y, self.task.dropout)
        loss = ops.sum(per_example * mask) / ops.maximum(ops.sum(mask), 1.0)
        total = loss
        if self.task.local.prox_mu > 0:  # FedProx: stay near the round's weights
            total = total + 0.5 * self.task.local.prox_mu * sum(
                ops.sum(ops.square(w - a)) for w, a in zip(weights, anchor))
        return total, (loss, state)
