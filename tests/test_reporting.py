"""Evaluation, checkpoints and metrics run off the round's critical path, on the version the
step made, in step order; a failure among them is not lost."""

import threading

import numpy as np
import pytest

from fedstream.common.protocol import UpdateMeta
from fedstream.coordinator import checkpoint
from fedstream.coordinator.config import FederationConfig
from fedstream.coordinator.federation import Federation

from conftest import tiny_model


def push_all(fed, wid, value=1.0):
    a = fed.assignment(wid, 0)
    return fed.push(UpdateMeta(wid, a.round, a.version, a.unit, a.client_ids,
                               float(len(a.client_ids)), 8),
                    [np.full(s.shape, value, np.float32) for s in fed.task.update_specs])


def test_the_next_round_opens_while_the_last_one_is_still_evaluated(tmp_path):
    release, started = threading.Event(), threading.Event()
    seen, rows = [], []

    def slow_evaluator(model):
        started.set()
        assert release.wait(10)
        seen.append([w.copy() for w in model.get_weights()])
        return {"test_acc": 0.5}

    config = FederationConfig(rounds=3, units=1, eval_every=1, server_optimizer="sgd",
                              server_lr=1.0)
    fed = Federation(config, tiny_model(), [8, 8], evaluator=slow_evaluator,
                     on_metrics=rows.append, checkpoint_dir=str(tmp_path),
                     background_reports=True)
    wid, _, _ = fed.join("w", "cpu")
    push_all(fed, wid)
    assert started.wait(10)
    after_round_1 = [w.copy() for w in fed.server.model.get_weights()]
    push_all(fed, wid)  # round 2 is open and closes while round 1 is still being evaluated
    assert fed.round == 3 and rows == []
    release.set()
    push_all(fed, wid)
    assert fed.wait_until_done(10)
    assert [r["round"] for r in rows] == [1, 2, 3] and all("test_acc" in r for r in rows)
    for got, want in zip(seen[0], after_round_1):  # round 1's pinned weights, not the live ones
        np.testing.assert_array_equal(got, want)
    assert checkpoint.load(tmp_path).round == 3


def test_a_failing_report_is_raised_when_the_coordinator_waits_for_it():
    def broken(model):
        raise OSError("disk full")

    fed = Federation(FederationConfig(rounds=1, units=1, eval_every=1, server_optimizer="sgd"),
                     tiny_model(), [8], evaluator=broken, background_reports=True)
    wid, _, _ = fed.join("w", "cpu")
    push_all(fed, wid)
    with pytest.raises(RuntimeError, match="reporting a round failed: disk full"):
        fed.wait_until_done(10)


def test_on_demand_evaluation_reads_the_current_version():
    fed = Federation(FederationConfig(rounds=2, units=1, server_optimizer="sgd"), tiny_model(),
                     [8], evaluator=lambda m: {"norm": float(sum(np.abs(w).sum()
                                                                 for w in m.get_weights()))})
    wid, _, _ = fed.join("w", "cpu")
    push_all(fed, wid, value=0.5)
    version, metrics = fed.evaluate()
    assert version == 2
    assert metrics["norm"] == pytest.approx(sum(float(np.abs(w.numpy()).sum())
                                                for w in fed.server.model.weights), rel=1e-6)
