"""Asynchronous aggregation: FedBuff and FedAsync arithmetic, the staleness bound, no barrier."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fedstream.common.errors import FailedPrecondition
from fedstream.common.protocol import Action, UpdateMeta
from fedstream.coordinator.asynchronous import staleness_weight
from fedstream.coordinator.config import FederationConfig
from fedstream.coordinator.federation import Federation

from conftest import tiny_model


def make(mode="fedbuff", **kw):
    config = FederationConfig(mode=mode, rounds=kw.pop("rounds", 10), server_optimizer="sgd",
                              server_lr=1.0, clients_per_unit=2, **kw)
    rows = []
    return Federation(config, tiny_model(), [8] * 6, on_metrics=rows.append), rows


def push(fed, wid, a, value, version=None):
    n = len(a.client_ids)
    arrays = [np.full(s.shape, value * n, np.float32) for s in fed.task.update_specs]
    return fed.push(UpdateMeta(wid, a.round, a.version if version is None else version, a.unit,
                               a.client_ids, float(n), 8 * n), arrays)


def test_staleness_functions():
    assert staleness_weight("constant", 5, 0.5, 4) == 1.0
    assert staleness_weight("polynomial", 3, 0.5, 4) == pytest.approx(0.5)  # 1/sqrt(1+3)
    assert staleness_weight("hinge", 4, 2.0, 4) == 1.0
    assert staleness_weight("hinge", 6, 2.0, 4) == pytest.approx(1 / 5)


def test_workers_never_wait_for_a_barrier():
    fed, _ = make(buffer_size=3)
    wid, _, _ = fed.join("w", "cpu")
    work = [fed.assignment(wid, 0) for _ in range(5)]
    assert all(a.action is Action.TRAIN for a in work)
    assert len({a.unit for a in work}) == 5 and all(len(a.client_ids) == 2 for a in work)


def test_fedbuff_steps_every_k_updates_down_weighting_stale_ones():
    fed, rows = make(buffer_size=2, staleness="polynomial", staleness_a=0.5)
    wid, _, _ = fed.join("w", "cpu")
    start = [v.numpy().copy() for v in fed.server.model.trainable_variables]
    a, b, c, d = (fed.assignment(wid, 0) for _ in range(4))
    push(fed, wid, a, 1.0)
    assert fed.server.version == 1
    push(fed, wid, b, 3.0)  # second update: one server step, both fresh: mean (2 + 6) / 4
    assert fed.server.version == 2 and rows[-1]["staleness_max"] == 0
    for s, v in zip(start, fed.server.model.trainable_variables):
        np.testing.assert_allclose(v.numpy(), s - 2.0, rtol=1e-6)
    push(fed, wid, c, 1.0)  # computed from version 1, applied at 2: staleness 1
    push(fed, wid, d, 1.0)
    factor = 1 / np.sqrt(2)
    for s, v in zip(start, fed.server.model.trainable_variables):
        np.testing.assert_allclose(v.numpy(), s - 2.0 - factor, rtol=1e-5)
    assert rows[-1]["staleness_max"] == 1 and fed.server.version == 3


def test_updates_beyond_the_staleness_bound_are_refused():
    fed, _ = make(buffer_size=1, max_staleness=1)
    wid, _, _ = fed.join("w", "cpu")
    old = fed.assignment(wid, 0)
    for _ in range(2):
        push(fed, wid, fed.assignment(wid, 0), 1.0)
    assert fed.server.version == 3
    with pytest.raises(FailedPrecondition, match="staleness 2 is beyond the bound of 1"):
        push(fed, wid, old, 1.0)
    with pytest.raises(FailedPrecondition, match="not outstanding"):
        push(fed, wid, dataclasses.replace(old, unit=999), 1.0)


def test_fedasync_mixes_the_client_model_in():
    fed, rows = make(mode="fedasync", update="delta", async_alpha=0.5, staleness="constant")
    wid, _, _ = fed.join("w", "cpu")
    start = [v.numpy().copy() for v in fed.server.model.trainable_variables]
    a, b = fed.assignment(wid, 0), fed.assignment(wid, 0)
    push(fed, wid, a, 2.0)  # client model = start - 2: w = 0.5 w + 0.5 (w - 2) = w - 1
    push(fed, wid, b, 2.0, version=1)  # from version 1 too: client model start - 2 again
    for s, v in zip(start, fed.server.model.trainable_variables):  # 0.5 (s - 1) + 0.5 (s - 2)
        np.testing.assert_allclose(v.numpy(), s - 1.5, rtol=1e-5)
    assert fed.server.version == 3 and [r["staleness_max"] for r in rows] == [0, 1]


def test_fedasync_needs_model_deltas():
    with pytest.raises(ValueError, match="--update delta"):
        make(mode="fedasync")


def test_fedbuff_trains_a_model_with_the_worker_loop():
    from fedstream.worker.loop import WorkerLoop

    from conftest import synthetic_store
    store = synthetic_store(n_train=240, n_clients=8)
    config = FederationConfig(mode="fedbuff", rounds=3, buffer_size=2, clients_per_unit=3,
                              update="delta", local_batch_size=8, client_lr=0.01,
                              server_optimizer="sgd", server_lr=1.0)
    rows = []
    fed = Federation(config, tiny_model(), store.summary.client_sizes, on_metrics=rows.append)
    WorkerLoop(fed, store, name="w", device="/CPU:0", prefetch=False).run()
    assert fed.phase == "done" and fed.server.version == 4 and len(rows) == 3
    assert all(r["updates_accepted"] == 2 for r in rows)


def test_the_coordinators_deadline_tick_is_harmless_without_rounds():
    fed, rows = make(buffer_size=2)
    wid, _, _ = fed.join("w", "cpu")
    push(fed, wid, fed.assignment(wid, 0), 1.0)
    assert not fed.check_deadline() and fed.server.version == 1 and rows == []


def test_a_restarted_coordinator_goes_on_numbering_units(tmp_path):
    config = FederationConfig(mode="fedbuff", rounds=10, server_optimizer="sgd", server_lr=1.0,
                              clients_per_unit=2, buffer_size=2)
    fed = Federation(config, tiny_model(), [8] * 6, checkpoint_dir=str(tmp_path))
    wid, _, _ = fed.join("w", "cpu")
    work = [fed.assignment(wid, 0) for _ in range(3)]
    push(fed, wid, work[0], 1.0)
    push(fed, wid, work[1], 1.0)  # one server step: checkpointed with units 0-2 handed out
    assert fed.server.version == 2
    again = Federation(config, tiny_model(seed=5), [8] * 6, checkpoint_dir=str(tmp_path))
    wid, _, _ = again.join("w", "cpu")
    assert again.server.version == 2 and again.assignment(wid, 0).unit == 3
    with pytest.raises(FailedPrecondition, match="unit 2 is not outstanding"):
        push(again, wid, work[2], 1.0)  # handed out before the restart: dropped, not applied
