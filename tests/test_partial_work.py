"""Partial work (systems heterogeneity, the FedProx paper): the coordinator's seeded draw of
each round's stragglers and their epochs, the worker training a straggler for exactly its
epochs, and FedAvg's drop against FedProx's keep in a federation's rows."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from test_algorithms import batches, delta_task, fresh

from fedstream.common.protocol import Action
from fedstream.coordinator.config import FederationConfig
from fedstream.coordinator.federation import Federation
from fedstream.coordinator.partial_work import draw
from fedstream.worker.compute import GradientComputer
from fedstream.worker.loop import WorkerLoop

from conftest import synthetic_store, tiny_model


def config(**options):
    return FederationConfig(**{"update": "delta", "local_epochs": 4, "partial_work": 0.5,
                               "partial_work_policy": "keep", **options})


def test_a_share_of_the_sample_gets_one_to_e_minus_one_epochs_drawn_from_seed_and_round():
    sampled = np.arange(100, 120)
    work = draw(config(), sampled, round_number=3)
    assert len(work.reduced) == 10 and set(work.reduced) <= set(sampled.tolist())
    assert set(work.reduced.values()) <= {1, 2, 3}
    assert draw(config(), sampled, 3) == work  # (seed, round): run and simulate agree
    assert draw(config(), sampled, 4).reduced != work.reduced
    assert draw(config(sampling_seed=1), sampled, 3).reduced != work.reduced
    dropped = draw(config(partial_work_policy="drop"), sampled, 3)
    assert sorted(set(sampled.tolist()) - set(dropped.clients.tolist())) == sorted(work.reduced)
    assert dropped.dropped == 10 and not dropped.reduced  # the same stragglers, left out
    assert draw(config(partial_work=0.0), sampled, 3).clients is sampled


def test_the_draw_is_uniform_over_clients_and_over_the_epochs_below_e():
    """Over 2,000 rounds, every client of a sample of 10 is a straggler half the time and a
    straggler's epochs are 1, 2 or 3 a third of the time each (within 4 standard errors)."""
    sampled = np.arange(10)
    rounds = [draw(config(), sampled, r).reduced for r in range(1, 2001)]
    chosen = np.bincount([c for r in rounds for c in r], minlength=10) / len(rounds)
    assert np.abs(chosen - 0.5).max() < 4 * np.sqrt(0.25 / 2000)
    epochs = np.bincount([e for r in rounds for e in r.values()], minlength=4)[1:]
    assert np.abs(epochs / epochs.sum() - 1 / 3).max() < 4 * np.sqrt(2 / 9 / epochs.sum())


@pytest.mark.parametrize("together", [True, False], ids=["clients-together", "in-turn"])
def test_a_straggler_trains_exactly_its_epochs(together):
    """A unit of two clients with 1 and 3 of the task's 3 epochs: the straggler's delta is
    what a task of 1 epoch gives it, the other's what 3 give, summed by example weight."""
    model = tiny_model(seed=8)
    clients = batches([12, 9], seed=9)
    trainer = fresh(delta_task(model, epochs=3, batch_size=4, client_lr=0.05), model)
    if not together:
        trainer._together = None
    mixed = trainer.compute(clients, round_number=2, local_epochs=(1, 3))
    one = fresh(delta_task(model, epochs=1, batch_size=4, client_lr=0.05), model)
    three = fresh(delta_task(model, epochs=3, batch_size=4, client_lr=0.05), model)
    short = one.compute(clients[:1], round_number=2).arrays  # each weighted by its examples
    full = three.compute(clients[1:], round_number=2).arrays
    for got, a, b in zip(mixed.arrays, short, full):
        np.testing.assert_allclose(got, a + b, rtol=0, atol=1e-5 * np.abs(got).max())
    assert mixed.weight == 21


def test_local_epochs_the_task_cannot_do_are_refused():
    model = tiny_model()
    trainer = fresh(delta_task(model, epochs=2), model)
    for bad in [(1,), (0, 2), (1, 3)]:
        with pytest.raises(ValueError, match="one count in \\[1, 2\\] per client"):
            trainer.compute(batches([8, 8]), 1, local_epochs=bad)
    gradient = GradientComputer(dataclasses.replace(trainer.task, local=None), "/CPU:0")
    with pytest.raises(ValueError, match="gradient task"):
        gradient.compute(batches([8]), 1, local_epochs=(1,))


def run(**options):
    store = synthetic_store(n_train=480, n_clients=20)
    rows = []
    fed = Federation(FederationConfig(**{"update": "delta", "local_epochs": 3, "units": 2,
                                         "local_batch_size": 8, "client_fraction": 0.5,
                                         "rounds": 3, "weighting": "examples", **options}),
                     tiny_model(), store.summary.client_sizes, on_metrics=rows.append)
    WorkerLoop(fed, store, name="w", device="/CPU:0", prefetch=False).run()
    fed.reports.flush()
    return fed, rows


def test_fedavg_drops_the_stragglers_and_fedprox_keeps_their_partial_work():
    """Ten clients a round, half of them stragglers: dropped, the round trains five and uses
    half the sampled work; kept, it trains ten, and the rows say how much work was done."""
    _, dropped = run(partial_work=0.5)
    assert [r["clients"] for r in dropped] == [5, 5, 5]
    assert all(r["clients_dropped"] == 5 and r["local_work"] == 0.5 for r in dropped)
    fed, kept = run(partial_work=0.5, partial_work_policy="keep", prox_mu=0.01)
    assert [r["clients"] for r in kept] == [10, 10, 10]
    assert all(r["clients_partial"] == 5 and 0.5 < r["local_work"] < 1 for r in kept)
    nobody = draw(fed.config, np.array([], np.int64), 1)  # an empty Poisson sample
    assert nobody.measurements()["local_work"] == 1.0
    _, full = run()
    assert "local_work" not in full[0] and full[0]["clients"] == 10


def test_an_assignment_carries_each_clients_epochs_only_when_some_do_less():
    store = synthetic_store(n_train=480, n_clients=20)
    fed = Federation(config(local_epochs=3, client_fraction=0.5, units=1), tiny_model(),
                     store.summary.client_sizes)
    worker, _, _ = fed.join("w", "/CPU:0")
    a = fed.assignment(worker, 0)
    assert a.action is Action.TRAIN and len(a.local_epochs) == len(a.client_ids) == 10
    assert sorted(a.local_epochs).count(3) == 5 and all(1 <= e <= 2 for e in
                                                        sorted(a.local_epochs)[:5])
    plain = Federation(config(partial_work=0.0), tiny_model(), store.summary.client_sizes)
    worker, _, _ = plain.join("w", "/CPU:0")
    assert plain.assignment(worker, 0).local_epochs == ()


@pytest.mark.parametrize("options, problem", [
    ({"update": "gradient"}, "give --update delta"),
    ({"mode": "fedbuff"}, "in sync rounds"),
    ({"local_epochs": 1}, "needs --local-epochs >= 2"),
    ({"partial_work": 1.5}, "must be a share in \\[0, 1\\]"),
    ({"dp_clip": 1.0}, "partial work with client-level DP"),
])
def test_settings_partial_work_cannot_serve_are_refused(options, problem):
    with pytest.raises(ValueError, match=problem):
        config(**options)
