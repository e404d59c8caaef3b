"""The FedAvg family: local training, FedProx, client state isolation, server optimizers,
client sampling; arithmetic checked against hand-computed values."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from fedstream.common.protocol import Batch, LocalTraining, UpdateKind, Weighting
from fedstream.coordinator.config import FederationConfig
from fedstream.coordinator.federation import Federation
from fedstream.coordinator.optimizers import Yogi, make_server_optimizer
from fedstream.coordinator.units import sample_round
from fedstream.worker.compute import GradientComputer
from fedstream.worker.computers import make_computer
from fedstream.worker.local_training import LocalTrainer
from fedstream.worker.site import SiteClients

from conftest import synthetic_store, tiny_model


def delta_task(model, **local):
    fed = Federation(FederationConfig(update="delta", weighting="examples", units=1,
                                      **{f"local_{k}" if k in ("epochs", "batch_size") else k: v
                                         for k, v in local.items()}),
                     model, [16, 16, 16])
    return fed.task


def batches(sizes, seed=0):
    rng = np.random.default_rng(seed)
    return [Batch(c, 0, rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
                  rng.integers(0, 10, n).astype(np.uint8)) for c, n in enumerate(sizes)]


def fresh(task, model):
    computer = make_computer(task, "/CPU:0")
    computer.set_weights([v.numpy() for v in model.weights])
    return computer


def test_delta_task_asks_for_whole_client_data():
    task = delta_task(tiny_model(), epochs=2, batch_size=4, client_lr=0.05)
    assert task.update_kind is UpdateKind.MODEL_DELTA and task.batch_size == 0
    assert task.local == LocalTraining(epochs=2, batch_size=4, lr=0.05)
    assert isinstance(make_computer(task, "/CPU:0"), LocalTrainer)
    store = synthetic_store(n_train=60, n_clients=3, partitioner="iid")
    # batch size 0 is each client's whole data, whatever the sizes of the unit's clients
    whole = SiteClients(store, store.summary, 0).batches([0, 2], 7, task.batch_size)
    for b in whole:
        np.testing.assert_array_equal(b.x, store.client(b.client_id)[0])


def test_one_full_batch_step_is_lr_times_the_gradient():
    model = tiny_model(seed=1)
    task = delta_task(model, epochs=1, batch_size=0, client_lr=0.01)
    (b,) = batches([16])
    delta = fresh(task, model).compute([b], round_number=1)
    grad_task = dataclasses.replace(task, update_kind=UpdateKind.GRADIENT, local=None,
                                    weighting=Weighting.UNIFORM)
    gradient = GradientComputer(grad_task, "/CPU:0")
    gradient.set_weights([v.numpy() for v in model.weights])
    g = gradient.compute([b]).arrays
    assert delta.weight == 16  # examples weighting: n_c * delta_c
    for d, gi in zip(delta.arrays, g):
        np.testing.assert_allclose(d / 16, 0.01 * gi, rtol=2e-3, atol=1e-6)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_no_state_leaks_between_clients_of_a_unit(momentum):
    model = tiny_model(seed=2)
    task = dataclasses.replace(delta_task(model, epochs=2, batch_size=4, client_lr=0.001,
                                          client_momentum=momentum),
                               weighting=Weighting.UNIFORM)
    a, b = batches([12, 9], seed=4)
    together = fresh(task, model).compute([a, b], round_number=3).arrays
    alone = [fresh(task, model).compute([x], round_number=3).arrays for x in (a, b)]
    for t, x, y in zip(together, *alone):
        np.testing.assert_allclose(t, x + y, rtol=1e-4, atol=1e-5)
    trainer = fresh(task, model)
    trainer.compute([a, b], round_number=3)
    for v, w in zip(trainer.model.weights, model.weights):  # back at the round's weights
        np.testing.assert_array_equal(v.numpy(), w.numpy())


@pytest.mark.parametrize("momentum, prox_mu", [(0.0, 0.0), (0.9, 0.1)])
def test_the_compiled_epoch_loop_equals_one_step_at_a_time(momentum, prox_mu):
    """Clients of 12 and 9 examples, B=4: full minibatches in the compiled loop, a short last
    one (9 = 2 x 4 + 1) on its own; every step must match the step-by-step reference bit for
    bit, and one trace of the loop serves both sizes and both rounds."""
    model = tiny_model(seed=6)
    task = delta_task(model, epochs=2, batch_size=4, client_lr=0.01, client_momentum=momentum,
                      prox_mu=prox_mu)
    clients = batches([12, 9], seed=7)
    trainer = fresh(task, model)
    trainer._together = None  # clients one after another: the path convolutional models take
    for round_number in (1, 2):
        fast = [trainer.compute([c], round_number=round_number).arrays for c in clients]
        for client, got in zip(clients, fast):
            reference = fresh(task, model)
            steps = reference._in_turn
            start = [v.numpy() for v in steps._trainable]
            for anchor, value in zip(steps._anchor, start):
                anchor.assign(value)
            steps._start_client(start)
            for epoch in range(2):
                order = np.random.default_rng([round_number, client.client_id, epoch]
                                              ).permutation(len(client.y))
                for begin in range(0, len(client.y), 4):
                    chosen = order[begin:begin + 4]
                    steps._train_step(client.x[chosen], client.y[chosen])
            for g, s, v in zip(got, start, steps._trainable):
                want = (s - v.numpy()) * len(client.y)  # examples weighting
                assert g.tobytes() == want.astype(np.float32).tobytes()
    assert trainer._in_turn._train_steps.experimental_get_tracing_count() == 1


@pytest.mark.parametrize("momentum, prox_mu", [(0.0, 0.0), (0.9, 0.1)])
def test_clients_trained_together_match_clients_trained_in_turn(momentum, prox_mu):
    """The client axis changes only the float order inside each step's products: over 2
    epochs of 3 steps of 4 (and a short last step for the client of 9), the deltas agree to
    1e-5 of their size. Sizes 12, 12, 9: one group of two and one of one."""
    model = tiny_model(seed=8)
    task = delta_task(model, epochs=2, batch_size=4, client_lr=0.01, client_momentum=momentum,
                      prox_mu=prox_mu)
    clients = batches([12, 12, 9], seed=9)
    together = fresh(task, model)
    assert together._together is not None
    in_turn = fresh(task, model)
    in_turn._together = None
    for a, b in zip(together.compute(clients, round_number=4).arrays,
                    in_turn.compute(clients, round_number=4).arrays):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * np.abs(b).max())
    for v, w in zip(together.model.weights, model.weights):  # the model was never moved
        np.testing.assert_array_equal(v.numpy(), w.numpy())


@pytest.mark.parametrize("batch_size, momentum, prox_mu", [(4, 0.0, 0.0), (4, 0.9, 0.1),
                                                      (0, 0.9, 0.0)])
def test_clients_of_unequal_sizes_trained_together_match_clients_trained_in_turn(
        batch_size, momentum, prox_mu):
    """Sizes 5 to 72 with B=4 are 2 to 18 steps: 65 and 72 examples (17 and 18 steps) share the
    bucket of 18 steps, the client of 17 standing still on its padded last step of each
    epoch, and 5 and 7 examples (2 steps each) train together with short last minibatches of
    their own; with B=0 (the whole client) the minibatch widths are padded instead. Deltas
    and each unit's loss agree with training the clients in turn."""
    model = tiny_model(seed=10)
    task = delta_task(model, epochs=2, batch_size=batch_size, client_lr=0.01,
                      client_momentum=momentum, prox_mu=prox_mu)
    clients = batches([5, 12, 17, 65, 40, 7, 72], seed=11)
    together = fresh(task, model)
    in_turn = fresh(task, model)
    in_turn._together = None
    got, want = (t.compute(clients, round_number=5) for t in (together, in_turn))
    for a, b in zip(got.arrays, want.arrays):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * np.abs(b).max())
    assert got.loss == pytest.approx(want.loss, rel=1e-5)


def test_clients_of_nearby_sizes_share_one_compiled_program():
    """Units of clients with 65 to 72 examples (B=4: 17 or 18 steps) over several rounds: one
    trace, and one padded shape (3 clients, 18 steps of 4)."""
    model = tiny_model(seed=12)
    task = delta_task(model, epochs=1, batch_size=4, client_lr=0.01)
    trainer = fresh(task, model)
    for round_number, sizes in enumerate([[65, 72, 70], [66, 69, 71], [68, 72, 67]]):
        trainer.compute(batches(sizes, seed=round_number), round_number)
    together = trainer._together
    assert together._program._program.experimental_get_tracing_count() == 1
    assert together.shapes == {(3, 18, 4)}


def test_units_of_17_and_18_clients_share_one_program_and_match_training_in_turn():
    """Poisson sampling varies a unit's clients: 17 are padded to the bucket of 18 with a
    client that never steps, so both rounds run one shape, and the 17 real deltas are those
    of training in turn."""
    model = tiny_model(seed=18)
    task = delta_task(model, epochs=1, batch_size=4, client_lr=0.01, client_momentum=0.9)
    trainer = fresh(task, model)
    for round_number, count in ((1, 17), (2, 18)):
        clients = batches([8] * count, seed=round_number)
        in_turn = fresh(task, model)
        in_turn._together = None
        for a, b in zip(trainer.compute(clients, round_number).arrays,
                        in_turn.compute(clients, round_number).arrays):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * np.abs(b).max())
    assert trainer._together.shapes == {(18, 2, 4)}


def test_buckets_pad_by_less_than_an_eighth():
    from fedstream.worker.clients_together import bucket
    assert [bucket(s) for s in (1, 9, 16, 17, 18, 19, 60, 61, 64, 65, 70, 600)] == [
        1, 9, 16, 18, 18, 20, 60, 64, 64, 72, 72, 640]
    for count in range(1, 5000):
        assert count <= bucket(count) < count * 9 / 8


def test_a_model_with_a_dropout_layer_trains_together_as_in_turn():
    """Dropout off: the layer is the identity on both paths, its seed state passed along."""
    keras.utils.set_random_seed(16)
    model = keras.Sequential([keras.Input((28, 28)), keras.layers.Flatten(),
                              keras.layers.Dense(6, activation="relu"), keras.layers.Dropout(0.2),
                              keras.layers.Dense(10, activation="softmax")])
    task = delta_task(model, epochs=1, batch_size=4, client_lr=0.01)
    together, in_turn = fresh(task, model), fresh(task, model)
    assert together._together is not None
    in_turn._together = None
    clients = batches([12, 8], seed=17)
    for a, b in zip(together.compute(clients, round_number=1).arrays,
                    in_turn.compute(clients, round_number=1).arrays):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * np.abs(b).max())


def test_clients_trained_together_in_slices_when_their_weights_would_not_fit(monkeypatch):
    from fedstream.worker import clients_together
    model = tiny_model(seed=8)
    task = delta_task(model, epochs=1, batch_size=4, client_lr=0.01)
    clients = batches([12, 12, 12], seed=9)
    whole = fresh(task, model).compute(clients, round_number=2).arrays
    per_client = 3 * sum(v.numpy().nbytes for v in model.trainable_variables)
    monkeypatch.setattr(clients_together, "MAX_STACKED_BYTES", 2 * per_client)  # 2 at once
    trainer = fresh(task, model)
    groups = []
    train_group = trainer._together._train_group
    trainer._together._train_group = lambda group, *a, **k: groups.append(
        len(group)) or train_group(group, *a, **k)
    sliced = trainer.compute(clients, round_number=2).arrays
    assert groups == [2, 1]
    for a, b in zip(whole, sliced):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * np.abs(b).max())


def test_convolutional_and_stateful_models_train_clients_in_turn():
    from fedstream.coordinator.models import build_model
    from fedstream.worker.tf_steps import trains_together
    assert not trains_together(delta_task(build_model("cnn", 0)), build_model("cnn", 0))
    assert trains_together(delta_task(build_model("2nn", 0)), build_model("2nn", 0))
    # a dropout layer's only state is its seed: with dropout off, its clients train together
    reference = build_model("reference", 0)
    assert trains_together(delta_task(reference), reference)
    assert not trains_together(dataclasses.replace(delta_task(reference), dropout=True),
                               reference)
    keras.utils.set_random_seed(0)
    normalised = keras.Sequential([keras.Input((28, 28)), keras.layers.Flatten(),
                                   keras.layers.BatchNormalization(),
                                   keras.layers.Dense(10, activation="softmax")])
    assert not trains_together(delta_task(normalised), normalised)


def test_fedprox_pulls_clients_towards_the_round_weights():
    model = tiny_model(seed=3)
    (b,) = batches([16], seed=5)
    norms = []
    for mu in (0.0, 10.0):
        task = delta_task(model, epochs=5, batch_size=4, client_lr=0.001, prox_mu=mu)
        delta = fresh(task, model).compute([b], round_number=1).arrays
        norms.append(np.sqrt(sum(float(np.sum(d ** 2)) for d in delta)))
    assert norms[1] < 0.9 * norms[0]


def test_fedavg_server_step_moves_to_the_weighted_mean_of_client_models():
    fed = Federation(FederationConfig(update="delta", server_optimizer="sgd", server_lr=1.0,
                                      units=2, weighting="examples"), tiny_model(), [10, 30])
    wid, _, _ = fed.join("w", "cpu")
    start = [v.numpy().copy() for v in fed.server.model.trainable_variables]
    from fedstream.common.protocol import UpdateMeta
    for n, value in ((10, 1.0), (30, 5.0)):  # client models w - value
        a = fed.assignment(wid, 0)
        fed.push(UpdateMeta(wid, a.round, a.version, a.unit, a.client_ids, float(n), n),
                 [np.full(s.shape, n * value, np.float32) for s in fed.task.update_specs])
    for s, v in zip(start, fed.server.model.trainable_variables):  # w - (10*1 + 30*5) / 40
        np.testing.assert_allclose(v.numpy(), s - 4.0, rtol=1e-6)


def test_yogi_matches_its_update_rule():
    var = tf.Variable([1.0, -2.0])
    opt = Yogi(learning_rate=0.1, beta_1=0.9, beta_2=0.99, epsilon=1e-3, initial_accumulator=1e-6)
    m, v, w = np.zeros(2), np.full(2, 1e-6), np.array([1.0, -2.0])
    for g in ([0.5, -1.0], [0.2, 3.0]):
        opt.apply_gradients([(tf.constant(g), var)])
        g = np.array(g)
        m = 0.9 * m + 0.1 * g
        v = v - 0.01 * g ** 2 * np.sign(v - g ** 2)
        w = w - 0.1 * m / (np.sqrt(v) + 1e-3)
    np.testing.assert_allclose(var.numpy(), w, rtol=1e-5)


@pytest.mark.parametrize("name, kwargs, kind", [
    ("sgd", {"momentum": 0.9}, keras.optimizers.SGD), ("adam", {}, keras.optimizers.Adam),
    ("adagrad", {}, keras.optimizers.Adagrad), ("yogi", {}, Yogi)])
def test_server_optimizers(name, kwargs, kind):
    opt = make_server_optimizer(name, 0.5, **kwargs)
    assert isinstance(opt, kind)
    if name == "sgd":
        var = tf.Variable([0.0])
        for _ in range(2):
            opt.apply_gradients([(tf.constant([1.0]), var)])
        np.testing.assert_allclose(var.numpy(), [-0.5 - 0.5 * 1.9])  # FedAvgM: v = 0.9v + g


def test_client_sampling_is_seeded_and_sized():
    def sampled(seed, rounds=3):
        fed = Federation(FederationConfig(rounds=rounds, units=2, client_fraction=0.1,
                                          min_clients=3, sampling_seed=seed,
                                          server_optimizer="sgd"), tiny_model(), [5] * 20)
        return [sorted(sample_round(fed.config, np.arange(20), r).tolist()) for r in range(1, rounds + 1)]

    first = sampled(7)
    assert first == sampled(7) and first != sampled(8)
    assert all(len(s) == 3 for s in first)  # max(min_clients, round(0.1 * 20))
    assert len({tuple(s) for s in first}) > 1
    fed = Federation(FederationConfig(units=2, client_fraction=0.25, server_optimizer="sgd"),
                     tiny_model(), [5] * 20)
    wid, _, _ = fed.join("w", "cpu")
    units = [fed.assignment(wid, 0).client_ids for _ in range(2)]
    sampled = sample_round(fed.config, np.arange(20), 1).tolist()
    assert sorted(units[0] + units[1]) == sorted(sampled) and len(units[0]) == 3


def test_fedavg_learns_on_a_slice_of_mnist():
    import functools

    from fedstream.common.learning import evaluate
    from fedstream.coordinator.models import build_model
    from fedstream.datapool.mnist import load_mnist
    from fedstream.datapool.store import ClientStore
    from fedstream.worker.loop import WorkerLoop
    m = load_mnist()
    store = ClientStore(m.x_train[:3000], m.y_train[:3000], m.x_test[:1000], m.y_test[:1000],
                        partitioner="iid", n_clients=10, seed=1, dataset="mnist", num_classes=10)
    config = FederationConfig(rounds=5, units=2, update="delta", local_epochs=1,
                              local_batch_size=10, client_lr=0.1, client_fraction=0.5,
                              server_optimizer="sgd", server_lr=1.0, weighting="examples",
                              normalize=True, eval_every=5, model="2nn")
    evaluator = functools.partial(evaluate, x=store.x_test, y=store.y_test,
                                  loss="categorical_crossentropy", num_classes=10,
                                  input_divisor=255.0)
    rows = []
    fed = Federation(config, build_model("2nn", 0), store.summary.client_sizes,
                     evaluator=evaluator, on_metrics=rows.append)
    WorkerLoop(fed, store, name="fedavg", device="/CPU:0", prefetch=False).run()
    assert [r["clients"] for r in rows] == [5] * 5
    assert rows[-1]["test_acc"] > 0.8, rows[-1]
