"""The coordinator's domain logic, driven without a network."""

import numpy as np
import pytest

from fedstream.common.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from fedstream.common.protocol import Action, UpdateMeta
from fedstream.common.tensors import spec_of
from fedstream.coordinator.aggregate import weighted_mean_of_sums
from fedstream.coordinator.config import FederationConfig
from fedstream.coordinator.federation import Federation

from conftest import tiny_model, weights_digest


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def make_federation(units=2, rounds=3, clients=6, clock=None, server_optimizer="sgd", **kw):
    config = FederationConfig(rounds=rounds, units=units, min_workers=1,
                              server_optimizer=server_optimizer, server_lr=kw.pop("lr", 1.0), **kw)
    rows = []
    fed = Federation(config, tiny_model(), [10] * clients, on_metrics=rows.append,
                     clock=clock or FakeClock())
    return fed, rows


def ones_update(fed, value=1.0):
    return [np.full(s.shape, value, np.float32) for s in fed.task.update_specs]


def meta_for(worker, a, weight=None, **over):
    fields = dict(worker_id=worker, round=a.round, base_version=a.version, unit=a.unit,
                  client_ids=a.client_ids, weight=weight or len(a.client_ids), num_examples=10,
                  metrics={"loss": 1.0})
    fields.update(over)
    return UpdateMeta(**fields)


def test_weighted_mean_of_sums():
    partials = [([np.array([2.0, 4.0], np.float32)], 2.0), ([np.array([1.0, 1.0], np.float32)], 1.0)]
    np.testing.assert_allclose(weighted_mean_of_sums(partials)[0], [1.0, 5.0 / 3.0])
    with pytest.raises(ValueError):
        weighted_mean_of_sums([])


def test_a_round_splits_clients_into_units_and_applies_the_mean():
    fed, rows = make_federation(units=2, clients=6)
    wid, task, _ = fed.join("w", "/CPU:0")
    before = [v.numpy().copy() for v in fed.server.model.trainable_variables]
    a0 = fed.assignment(wid, 0)
    a1 = fed.assignment(wid, 0)
    assert (a0.action, a0.client_ids, a1.client_ids) == (Action.TRAIN, (0, 1, 2), (3, 4, 5))
    assert fed.assignment(wid, 0).action is Action.WAIT
    # unit 0 sums 3 clients' gradients of 1, unit 1 of 3: the mean gradient is 1 everywhere
    fed.push(meta_for(wid, a0), ones_update(fed, 1.0 * 3))
    assert fed.server.version == 1
    fed.push(meta_for(wid, a1), ones_update(fed, 1.0 * 3))
    assert fed.server.version == 2 and fed.round == 2
    for b, v in zip(before, fed.server.model.trainable_variables):
        np.testing.assert_allclose(v.numpy(), b - 1.0, rtol=1e-6)  # SGD, lr 1
    assert rows[0]["round"] == 1 and rows[0]["train_loss"] == 1.0


def test_arrival_order_of_units_does_not_change_a_bit():
    rng = np.random.default_rng(0)
    results = []
    for order in ([0, 1, 2], [2, 0, 1]):
        fed, _ = make_federation(units=3, clients=6, server_optimizer="adam", lr=1e-3)
        wid, _, _ = fed.join("w", "cpu")
        assignments = [fed.assignment(wid, 0) for _ in range(3)]
        updates = [[rng.standard_normal(s.shape).astype(np.float32) for s in fed.task.update_specs]
                   for _ in range(3)]
        rng = np.random.default_rng(0)
        for i in order:
            fed.push(meta_for(wid, assignments[i]), updates[i])
        results.append(weights_digest(fed.server.model))
    assert results[0] == results[1]


def test_training_ends_with_stop():
    fed, rows = make_federation(units=1, rounds=2)
    wid, _, _ = fed.join("w", "cpu")
    for _ in range(2):
        a = fed.assignment(wid, 0)
        fed.push(meta_for(wid, a), ones_update(fed))
    assert fed.phase == "done" and len(rows) == 2
    assert fed.assignment(wid, 0).action is Action.STOP
    assert fed.members.wait_all_stopped(0)


def test_first_round_waits_for_min_workers():
    config = FederationConfig(rounds=1, units=2, min_workers=2)
    fed = Federation(config, tiny_model(), [5] * 4)
    w1, _, _ = fed.join("a", "cpu")
    assert fed.assignment(w1, 0).action is Action.WAIT
    fed.join("b", "cpu")
    assert fed.assignment(w1, 0).action is Action.TRAIN


@pytest.fixture
def open_round():
    fed, _ = make_federation(units=2)
    wid, _, _ = fed.join("w", "cpu")
    return fed, wid, fed.assignment(wid, 0)


@pytest.mark.parametrize("change, error, message", [
    (dict(worker_id="nobody"), NotFound, "call Join first"),
    (dict(round=7), FailedPrecondition, "round 7 but round 1"),
    (dict(base_version=0), FailedPrecondition, "pull the weights again"),
    (dict(unit=5), InvalidArgument, "unit 5 does not exist"),
    (dict(client_ids=(0, 1, 4)), PermissionDenied, "other clients"),
    (dict(weight=float("nan")), InvalidArgument, "positive finite"),
    (dict(weight=-1.0), InvalidArgument, "positive finite"),
    (dict(num_examples=0), InvalidArgument, "num_examples"),
])
def test_bad_update_headers_are_refused_and_change_nothing(open_round, change, error, message):
    fed, wid, a = open_round
    digest = weights_digest(fed.server.model)
    with pytest.raises(error, match=message):
        fed.push(meta_for(wid, a, **change), ones_update(fed))
    assert weights_digest(fed.server.model) == digest and fed.server.version == 1


def test_nan_and_wrong_shapes_are_refused(open_round):
    fed, wid, a = open_round
    digest = weights_digest(fed.server.model)
    bad = ones_update(fed)
    bad[1][0] = np.inf
    with pytest.raises(InvalidArgument, match="NaN or Inf"):
        fed.push(meta_for(wid, a), bad)
    with pytest.raises(InvalidArgument, match="does not match"):
        fed.push(meta_for(wid, a), [u.T for u in ones_update(fed)])
    with pytest.raises(InvalidArgument, match="carries 1 tensors"):
        fed.push(meta_for(wid, a), ones_update(fed)[:1])
    with pytest.raises(InvalidArgument, match="does not match"):  # refused on its header
        fed.push(meta_for(wid, a), never_read,
                 specs=[spec_of(s.name, np.zeros(s.shape, np.float64))
                        for s in fed.task.update_specs])
    assert weights_digest(fed.server.model) == digest
    assert fed.push(meta_for(wid, a), ones_update(fed)).accepted


def never_read():
    raise AssertionError("the payload of a refused header was read")


def test_duplicate_push_is_counted_once(open_round):
    fed, wid, a = open_round
    first = fed.push(meta_for(wid, a), ones_update(fed))
    again = fed.push(meta_for(wid, a), ones_update(fed, 100.0))
    assert first.accepted and not first.duplicate
    assert again.duplicate and not again.accepted
    assert fed.policy.units[a.unit].update.arrays[0][0, 0] == 1.0


def test_a_duplicate_after_its_round_closed_is_failed_precondition_not_duplicate():
    """PROTOCOL.md's rule: the round check comes before the duplicate check."""
    fed, _ = make_federation(units=1)
    wid, _, _ = fed.join("w", "cpu")
    a = fed.assignment(wid, 0)
    assert fed.push(meta_for(wid, a), ones_update(fed)).accepted  # closes round 1
    version = fed.server.version
    with pytest.raises(FailedPrecondition, match="round was closed"):
        fed.push(meta_for(wid, a), ones_update(fed))
    assert fed.server.version == version


def test_a_push_retried_after_its_round_closed_counts_in_the_next_rounds_rejections():
    """PROTOCOL.md: refusals count in the round open when they happen."""
    fed, rows = make_federation(units=1, rounds=2)
    wid, _, _ = fed.join("w", "cpu")
    first = fed.assignment(wid, 0)
    fed.push(meta_for(wid, first), ones_update(fed))  # closes round 1
    with pytest.raises(FailedPrecondition):
        fed.push(meta_for(wid, first), ones_update(fed))  # the retry, round 2 open
    second = fed.assignment(wid, 0)
    fed.push(meta_for(wid, second), ones_update(fed))
    fed.reports.flush()
    assert [r["updates_rejected"] for r in rows] == [0, 1]


def test_the_reply_to_the_push_that_ends_training_names_the_last_round_and_final_version():
    """PROTOCOL.md: after the last round no round is open; the reply says round N and the
    version that round made (N + 1 for one step a round)."""
    fed, _ = make_federation(units=1, rounds=2)
    wid, _, _ = fed.join("w", "cpu")
    for _ in range(2):
        a = fed.assignment(wid, 0)
        reply = fed.push(meta_for(wid, a), ones_update(fed))
    assert (reply.round, reply.version, fed.phase) == (2, 3, "done")
    stop = fed.assignment(wid, 0)
    assert (stop.action, stop.round, stop.version) == (Action.STOP, 2, 3)


def test_expired_lease_goes_to_another_worker_and_the_old_holder_is_refused():
    clock = FakeClock()
    fed, _ = make_federation(units=1, clock=clock, lease_s=10.0)
    slow, _, _ = fed.join("slow", "cpu")
    fast, _, _ = fed.join("fast", "cpu")
    a = fed.assignment(slow, 0)
    assert fed.assignment(fast, 0).action is Action.WAIT
    clock.now = 11.0
    b = fed.assignment(fast, 0)
    assert (b.action, b.unit) == (Action.TRAIN, a.unit)
    with pytest.raises(PermissionDenied, match="leased to another worker"):
        fed.push(meta_for(slow, a), ones_update(fed))
    assert fed.push(meta_for(fast, b), ones_update(fed)).accepted


def test_leave_returns_unfinished_work():
    fed, _ = make_federation(units=1)
    w1, _, _ = fed.join("a", "cpu")
    w2, _, _ = fed.join("b", "cpu")
    fed.assignment(w1, 0)
    fed.leave(w1)
    assert fed.assignment(w2, 0).action is Action.TRAIN


def test_invalid_config_names_the_problem():
    with pytest.raises(ValueError, match="weighting='median'"):
        FederationConfig(weighting="median")
    with pytest.raises(ValueError, match="rounds=0"):
        FederationConfig(rounds=0)


def test_evaluation_runs_after_each_pass_and_at_the_end():
    evaluated = []
    config = FederationConfig(rounds=5, units=1, batch_size=4, server_optimizer="sgd")
    fed = Federation(config, tiny_model(), [8, 8], on_metrics=lambda m: None,
                     evaluator=lambda m: evaluated.append(fed.round) or {"test_acc": 0.5})
    wid, _, _ = fed.join("w", "cpu")
    for _ in range(5):
        fed.push(meta_for(wid, fed.assignment(wid, 0)), ones_update(fed, 0.0))
    assert fed.eval_every == 2 and evaluated == [2, 4, 5]


def test_a_worker_gets_its_last_unit_again_so_its_prefetch_is_used():
    fed, _ = make_federation(units=2, rounds=3)
    w1, _, _ = fed.join("a", "cpu")
    w2, _, _ = fed.join("b", "cpu")
    first = {w: fed.assignment(w, 0) for w in (w2, w1)}  # w2 asks first: takes unit 0
    for w, a in first.items():
        fed.push(meta_for(w, a), ones_update(fed))
    again = {w: fed.assignment(w, 0) for w in (w1, w2)}  # w1 asks first this time
    assert {w: a.unit for w, a in again.items()} == {w: a.unit for w, a in first.items()}
    assert all(a.step == 1 for a in again.values())


def test_a_round_closes_at_its_deadline_with_a_quorum_and_refuses_the_straggler():
    clock = FakeClock()
    fed, rows = make_federation(units=3, clients=6, clock=clock, round_deadline_s=5.0, quorum=2)
    wid, _, _ = fed.join("w", "cpu")
    before = [v.numpy().copy() for v in fed.server.model.trainable_variables]
    a0, a1, a2 = (fed.assignment(wid, 0) for _ in range(3))
    fed.push(meta_for(wid, a0), ones_update(fed, 2.0))   # 2 clients, each gradient 1
    clock.now = 6.0
    assert not fed.check_deadline() and fed.round == 1   # past the deadline, one unit < quorum
    fed.push(meta_for(wid, a1), ones_update(fed, 6.0))   # 2 clients, each gradient 3: quorum
    assert fed.round == 2 and rows[0]["stragglers"] == 1 and rows[0]["clients"] == 4
    for b, v in zip(before, fed.server.model.trainable_variables):
        np.testing.assert_allclose(v.numpy(), b - 2.0, rtol=1e-6)  # mean over received: 8/4
    with pytest.raises(FailedPrecondition, match="round 1 but round 2"):
        fed.push(meta_for(wid, a2), ones_update(fed))


def test_deadline_without_quorum_waits_then_closes_on_time():
    clock = FakeClock()
    fed, rows = make_federation(units=2, clients=4, clock=clock, round_deadline_s=5.0, quorum=1)
    wid, _, _ = fed.join("w", "cpu")
    a0, _ = fed.assignment(wid, 0), fed.assignment(wid, 0)
    fed.push(meta_for(wid, a0), ones_update(fed))
    assert not fed.check_deadline()      # quorum reached, deadline not yet
    clock.now = 5.0
    assert fed.check_deadline() and rows[0]["stragglers"] == 1


def test_quorum_must_fit_the_units():
    with pytest.raises(ValueError, match="quorum=3"):
        FederationConfig(units=2, quorum=3)


@pytest.mark.parametrize("name, params", [("reference", 278_410), ("2nn", 199_210),
                                          ("cnn", 1_663_370)])
def test_zoo_models_have_the_published_sizes(name, params):
    from fedstream.coordinator.models import build_model
    assert build_model(name, 0).count_params() == params


def test_a_users_own_model_by_module_and_function():
    from fedstream.coordinator.models import build_model
    model = build_model("conftest:tiny_model", 0)
    assert model.name == "tiny"
    with pytest.raises(ValueError, match="cannot load model factory"):
        build_model("conftest:nothing_here", 0)
    with pytest.raises(ValueError, match="unknown model"):
        build_model("resnet", 0)
