"""Robust aggregation: the arithmetic on known values, per-client updates end to end, and
a poisoning minority that stops the mean but not the median, trimmed mean or Krum."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from fedstream.common.errors import InvalidArgument
from fedstream.common.learning import evaluate
from fedstream.common.protocol import Batch, UpdateMeta
from fedstream.coordinator import aggregate
from fedstream.coordinator.config import FederationConfig
from fedstream.coordinator.federation import Federation
from fedstream.coordinator.models import build_model
from fedstream.datapool.mnist import load_mnist
from fedstream.datapool.store import ClientStore
from fedstream.worker.compute import GradientComputer
from fedstream.worker.loop import WorkerLoop

from conftest import tiny_model

U = [[np.array([1.0, -4.0], np.float32)], [np.array([2.0, 10.0], np.float32)],
     [np.array([9.0, 0.0], np.float32)]]


def test_median_of_three_known_updates():
    np.testing.assert_array_equal(aggregate.coordinate_median(U)[0], [2.0, 0.0])


def test_trimmed_mean_drops_the_extremes():
    five = U + [[np.array([100.0, 100.0], np.float32)], [np.array([-50.0, 1.0], np.float32)]]
    np.testing.assert_allclose(aggregate.trimmed_mean(five, 0.2)[0], [4.0, 11.0 / 3.0], rtol=1e-6)
    with pytest.raises(ValueError, match="cannot trim"):
        aggregate.trimmed_mean(U, 0.5)


def test_krum_picks_the_update_closest_to_its_neighbours():
    honest = [[np.full(2, v, np.float32)] for v in (1.0, 1.1, 1.15, 1.4)]
    outlier = [[np.array([50.0, -50.0], np.float32)]]
    updates = honest[:2] + outlier + honest[2:]
    # f=1: a score sums the 2 smallest squared distances; 1.1 scores 0.005 + 0.02, the lowest
    assert aggregate.krum_select(updates, byzantine=1) == [1]
    assert sorted(aggregate.krum_select(updates, byzantine=1, select=4)) == [0, 1, 3, 4]
    np.testing.assert_allclose(aggregate.krum(updates, 1, select=4)[0], [1.1625] * 2, rtol=1e-6)
    with pytest.raises(ValueError, match="at least 5"):
        aggregate.krum_select(updates[:4], byzantine=1)


def test_per_client_updates_are_stacked_client_gradients():
    model = tiny_model(seed=3)
    fed = Federation(FederationConfig(units=1, aggregator="median"), model, [8, 8, 8])
    assert fed.task.per_client
    computer = GradientComputer(fed.task, "/CPU:0")
    computer.set_weights([v.numpy() for v in model.weights])
    rng = np.random.default_rng(0)
    batches = [Batch(c, 0, rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
                     rng.integers(0, 10, n).astype(np.uint8)) for c, n in enumerate((8, 5, 3))]
    update = computer.compute(batches)
    assert update.weight == 3 and [a.shape[0] for a in update.arrays] == [3] * 4
    for i, b in enumerate(batches):
        alone = computer.compute([b]).arrays
        for stacked, single in zip(update.arrays, alone):
            np.testing.assert_allclose(stacked[i], single[0], rtol=1e-5, atol=1e-6)


def test_per_client_pushes_must_carry_one_gradient_per_client():
    fed = Federation(FederationConfig(units=1, aggregator="median"), tiny_model(), [8, 8])
    wid, task, _ = fed.join("w", "cpu")
    a = fed.assignment(wid, 0)
    summed = [np.zeros(s.shape, np.float32) for s in task.update_specs]
    with pytest.raises(InvalidArgument, match="does not match"):
        fed.push(UpdateMeta(wid, a.round, a.version, a.unit, a.client_ids, 2.0, 16), summed)
    stacked = [np.zeros((2, *s.shape), np.float32) for s in task.update_specs]
    with pytest.raises(InvalidArgument, match="weight must be 2"):
        fed.push(UpdateMeta(wid, a.round, a.version, a.unit, a.client_ids, 7.0, 16), stacked)
    assert fed.push(UpdateMeta(wid, a.round, a.version, a.unit, a.client_ids, 2.0, 16),
                    stacked).accepted


class Poisoners:
    """A coordinator port on which the workers of some units push sign-flipped, scaled
    gradients."""

    def __init__(self, federation: Federation, units: set[int], scale: float = -10.0):
        self._federation, self._units, self._scale = federation, units, scale

    def __getattr__(self, name):
        return getattr(self._federation, name)

    def push(self, meta, arrays, encoded=None):  # in process: the arrays are what counts
        if meta.unit in self._units:
            arrays = [self._scale * a for a in arrays]
        return self._federation.push(meta, arrays)


@pytest.fixture(scope="module")
def small_mnist():
    m = load_mnist()
    store = ClientStore(m.x_train[:3000], m.y_train[:3000], m.x_test[:1000], m.y_test[:1000],
                        partitioner="iid", n_clients=10, seed=1, dataset="mnist", num_classes=10)
    return store


def accuracy_after_attack(store, aggregator: str) -> float:
    config = FederationConfig(rounds=40, units=10, batch_size=32, normalize=True,
                              server_lr=1e-3, aggregator=aggregator, trim_fraction=0.3,
                              krum_byzantine=3, eval_every=10**6)
    evaluator = functools.partial(evaluate, x=store.x_test, y=store.y_test,
                                  loss="categorical_crossentropy", num_classes=10,
                                  input_divisor=255.0)
    fed = Federation(config, build_model("reference", 0), store.summary.client_sizes,
                     evaluator=evaluator)
    WorkerLoop(Poisoners(fed, {0, 4, 7}), store, name="mixed", device="/CPU:0",
               prefetch=False).run()
    return fed.reports.last_metrics["test_acc"]


def test_a_poisoning_minority_defeats_the_mean_but_not_robust_aggregators(small_mnist):
    poisoned_mean = accuracy_after_attack(small_mnist, "mean")
    robust = {name: accuracy_after_attack(small_mnist, name)
              for name in ("median", "trimmed_mean", "krum")}
    assert poisoned_mean < 0.3, poisoned_mean  # measured: 0.11
    assert all(acc > 0.65 for acc in robust.values()), robust  # measured: 0.81, 0.81, 0.77
