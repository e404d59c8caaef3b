"""The worker's fused multi-client gradient against the reference's one-client-at-a-time form."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from fedstream.common.protocol import Batch, Task, UpdateKind, Weighting
from fedstream.common.tensors import spec_of
from fedstream.worker.compute import GradientComputer

from conftest import tiny_model


def make_task(model, weighting=Weighting.UNIFORM, divisor=1.0):
    return Task(model_json=model.to_json(), loss="categorical_crossentropy", num_classes=10,
                update_kind=UpdateKind.GRADIENT, weighting=weighting, batch_size=8, dropout=False,
                input_divisor=divisor,
                update_specs=tuple(spec_of(v.path, np.zeros(v.shape, np.float32))
                                   for v in model.trainable_variables), rounds=1)


def reference_gradient(model, x, y, divisor):
    """As the reference program: one eager gradient of the mean CCE over one client's batch."""
    with tf.GradientTape() as tape:
        pred = model(tf.cast(x, tf.float32) / divisor if divisor != 1 else tf.cast(x, tf.float32))
        loss = keras.losses.CategoricalCrossentropy()(keras.utils.to_categorical(y, 10), pred)
    return [g.numpy() for g in tape.gradient(loss, model.trainable_weights)]


def batches(sizes, seed=0):
    rng = np.random.default_rng(seed)
    return [Batch(i, 0, rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
                  rng.integers(0, 10, n).astype(np.uint8)) for i, n in enumerate(sizes)]


@pytest.mark.parametrize("weighting", [Weighting.UNIFORM, Weighting.EXAMPLES])
@pytest.mark.parametrize("divisor", [1.0, 255.0])
def test_fused_gradient_equals_sum_of_client_gradients(weighting, divisor):
    model = tiny_model(seed=1)
    computer = GradientComputer(make_task(model, weighting, divisor), "/CPU:0")
    computer.set_weights([v.numpy() for v in model.weights])
    bs = batches([8, 8, 5, 3])
    update = computer.compute(bs)
    client_w = [1.0] * 4 if weighting is Weighting.UNIFORM else [8, 8, 5, 3]
    expected = None
    for w, b in zip(client_w, bs):
        g = [w * a for a in reference_gradient(model, b.x, b.y, divisor)]
        expected = g if expected is None else [e + a for e, a in zip(expected, g)]
    assert update.weight == sum(client_w) and update.num_examples == 24
    for got, want in zip(update.arrays, expected):
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-6)


def test_saturated_softmax_keeps_its_gradient():
    """Raw 0..255 pixels saturate the softmax; the gradient at the output must stay p - y."""
    model = tiny_model(seed=2)
    for v in model.trainable_variables:
        v.assign(v * 20.0)
    computer = GradientComputer(make_task(model), "/CPU:0")
    computer.set_weights([v.numpy() for v in model.weights])
    (b,) = batches([16], seed=3)
    update = computer.compute([b])
    probs_model = keras.Model(model.inputs[0], model.layers[-1].output)
    probs = probs_model(b.x.astype(np.float32)).numpy().astype(np.float64)
    assert probs.max() > 0.999  # saturated
    bias_grad = (probs - np.eye(10)[b.y]).mean(axis=0)
    np.testing.assert_allclose(update.arrays[-1], bias_grad, rtol=1e-3, atol=1e-6)
    assert np.abs(update.arrays[-1]).max() > 0.01


def test_model_loaded_from_json_refuses_a_mismatched_spec():
    model = tiny_model()
    task = make_task(model)
    wrong = Task(**{**task.__dict__, "update_specs": task.update_specs[:-1]})
    with pytest.raises(ValueError, match="trainable shapes"):
        GradientComputer(wrong, "/CPU:0")


def test_large_units_are_computed_in_bounded_slices():
    model = tiny_model(seed=4)
    task = make_task(model)
    whole = GradientComputer(task, "/CPU:0")
    sliced = GradientComputer(task, "/CPU:0", max_examples_per_call=7)
    for c in (whole, sliced):
        c.set_weights([v.numpy() for v in model.weights])
    bs = batches([8, 8, 5, 3], seed=5)
    a, b = whole.compute(bs), sliced.compute(bs)
    assert (a.weight, a.num_examples) == (b.weight, b.num_examples)
    assert abs(a.loss - b.loss) < 1e-5
    for x, y in zip(a.arrays, b.arrays):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)


def test_per_client_gradients_are_each_clients_own_in_client_order():
    """Clients of equal batch size are computed together (vectorised over clients), of
    unequal sizes in groups; each equals that client's gradient computed alone, in order."""
    import dataclasses
    model = tiny_model(seed=2)
    task = dataclasses.replace(make_task(model), per_client=True)
    computer = GradientComputer(task, "/CPU:0", max_examples_per_call=16)  # groups of 2
    computer.set_weights([v.numpy() for v in model.weights])
    rng = np.random.default_rng(5)
    sizes = [8, 5, 8, 8, 5]
    batches = [Batch(c, 0, rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
                     rng.integers(0, 10, n).astype(np.uint8)) for c, n in enumerate(sizes)]
    update = computer.compute(batches)
    assert update.weight == 5 and update.num_examples == sum(sizes)
    for c, b in enumerate(batches):
        want = reference_gradient(model, b.x, b.y, 1.0)
        for got, w in zip(update.arrays, want):
            np.testing.assert_allclose(got[c], w, rtol=1e-4, atol=1e-6)
