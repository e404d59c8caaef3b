"""The coordinator's parts beside the facade, each on its own: the secure round workflow's
door for party messages, site evaluations, membership, snapshots."""

import threading
from collections import Counter

import numpy as np
import pytest

from fedstream.common.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from fedstream.common.protocol import EvaluationResult, KeysAdvert, SiteData, SurvivorsConfirmed
from fedstream.coordinator import checkpoint
from fedstream.coordinator.config import FederationConfig
from fedstream.coordinator.federated_eval import SiteEvaluations
from fedstream.coordinator.membership import Membership
from fedstream.coordinator.rounds import SyncRounds
from fedstream.coordinator.secure_rounds import SecureRounds
from fedstream.coordinator.server_model import ServerModel
from fedstream.coordinator.sites import DataSpec, Sites
from fedstream.coordinator.snapshots import Snapshots
from fedstream.worker.secure_party import SecureParty

from conftest import tiny_model

POOL = Sites.single_pool(SiteData(tuple([10] * 6), (28, 28), None, 10))


def secure_round(parties=3):
    config = FederationConfig(units=parties, secure_aggregation=True, server_optimizer="sgd")
    server = ServerModel(tiny_model(), config.server, config.encodings)
    policy = SecureRounds(config, POOL, server, Counter())
    policy.open(1)
    units = [policy.lease(f"w{i}", "", 0.0) for i in range(parties)]
    return policy, units


def test_a_party_message_reaches_the_secure_sum_only_from_its_units_holder():
    """Adversary: a worker that speaks for a unit it does not hold, or advertises keys of
    another party under its own unit."""
    policy, units = secure_round()
    own = SecureParty(1, 0, [np.zeros(3)], 1.0, 0.0).keys  # party 1: unit 0's
    with pytest.raises(PermissionDenied, match="not leased to worker w1"):
        policy.deliver(KeysAdvert("w1", 1, 0, own), 0.0)
    other = SecureParty(1, 2, [np.zeros(3)], 1.0, 0.0).keys  # party 3's keys, from unit 0
    with pytest.raises(InvalidArgument, match="keys for party 3 sent for unit 0"):
        policy.deliver(KeysAdvert("w0", 1, 0, other), 0.0)
    assert not policy.secure.advertised(3) and not policy.secure.advertised(1)
    policy.deliver(KeysAdvert("w0", 1, 0, own), 0.0)
    assert policy.secure.advertised(1)
    with pytest.raises(FailedPrecondition, match="round 2 is not open"):
        policy.deliver(SurvivorsConfirmed("w0", 2, 0, b""), 0.0)


def test_rounds_in_the_clear_take_no_party_message():
    config = FederationConfig(units=2, server_optimizer="sgd")
    server = ServerModel(tiny_model(), config.server, config.encodings)
    policy = SyncRounds(config, POOL, server, Counter())
    policy.open(1)
    with pytest.raises(FailedPrecondition, match="does not aggregate securely"):
        policy.deliver(SurvivorsConfirmed("w0", 1, 0, b""), 0.0)


def result(worker, examples, accuracy):
    return EvaluationResult(worker, 2, examples, 0.5, accuracy)


def test_site_evaluations_lease_one_worker_per_site_and_weigh_sites_by_examples():
    config = FederationConfig(sites="a,b", lease_s=5.0, eval_timeout_s=30.0)
    sites = Sites(config.site_names, DataSpec((28, 28), 10))
    for name in config.site_names:
        sites.register(name, SiteData((10, 10), (28, 28), None, 10))
    evaluations = SiteEvaluations()
    assert evaluations.open(1, 2, POOL, config) is None  # one pool: the coordinator evaluates
    evaluation = evaluations.open(1, 2, sites, config)
    assert evaluations.lease("a", "w1", 0.0) is evaluation
    assert evaluations.lease("a", "w2", 1.0) is None  # w1 holds site a's lease
    with pytest.raises(FailedPrecondition, match="no evaluation is pending for worker w2"):
        evaluations.record("a", result("w2", 10, 1.0))
    with pytest.raises(InvalidArgument, match="num_examples >= 1"):
        evaluations.record("a", result("w1", 0, 1.0))
    evaluations.record("a", result("w1", 30, 0.9))
    assert evaluations.lease("b", "w3", 2.0) is evaluation
    evaluations.record("b", result("w3", 10, 0.5))
    row = evaluation.wait()
    assert row["test_acc"] == pytest.approx((30 * 0.9 + 10 * 0.5) / 40)
    assert row["eval_sites_missing"] == 0 and set(row["sites"]) == {"a", "b"}


def test_membership_counts_live_workers_per_site_and_waits_for_every_stop():
    now = [0.0]
    members = Membership(lambda: now[0], threading.Condition())
    a, b = members.join("x", "cpu", "a"), members.join("y", "cpu", "b")
    now[0] = 10.0
    members.touch(a)
    assert members.per_site(["a", "b", "c"], within_s=5.0) == {"a": 1, "b": 0, "c": 0}
    with pytest.raises(NotFound, match="call Join first"):
        members.touch("w9-nobody")
    members.stop(a)
    assert not members.wait_all_stopped(0)
    members.stop(b)
    assert members.wait_all_stopped(0)


def test_snapshots_resume_the_model_the_round_and_the_policys_state(tmp_path):
    config = FederationConfig(units=1, server_optimizer="adam", dp_clip=1.0,
                              dp_noise_multiplier=1.0, dp_target_quantile=0.5,
                              dp_quantile_noise=2.0)

    def parts():
        server = ServerModel(tiny_model(), config.server, config.encodings)
        policy = SyncRounds(config, POOL, server, Counter())
        return server, policy, Snapshots(str(tmp_path), config, "{}", server, policy)

    assert Snapshots(None, config, "{}", *parts()[:2]).take(3) is None
    server, policy, snapshots = parts()
    assert snapshots.resume() == 0  # nothing written yet
    policy.open(1)
    policy.receive(policy.lease("w", "", 0.0), policy.contribution(
        *update_for(policy)))
    policy.step()
    checkpoint.save(tmp_path, snapshots.take(1))
    again, resumed_policy, resumed = parts()
    assert resumed.resume() == 1
    assert again.version == server.version == 2
    assert resumed_policy.aggregation_state == policy.aggregation_state
    for a, b in zip(again.weights, server.weights):
        np.testing.assert_array_equal(a, b)


def update_for(policy):
    from fedstream.common.protocol import UpdateMeta
    unit = policy.units[0]
    meta = UpdateMeta("w", 1, policy.model.version, 0, unit.client_ids, len(unit.client_ids),
                      10, unclipped_clients=len(unit.client_ids))
    return meta, [np.zeros(v.shape, np.float32) for v in policy.model.trainable]
