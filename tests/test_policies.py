"""Each round policy on its own, without the Federation facade: tiny arrays through
`SyncRounds`, `FedBuff` and `FedAsync`, a real (tiny) server model under SGD(lr=1), so a
step's effect on the weights can be computed by hand."""

from collections import Counter

import numpy as np
import pytest

from fedstream.common.errors import FailedPrecondition
from fedstream.common.protocol import SiteData, UpdateKind, UpdateMeta
from fedstream.coordinator.config import FederationConfig
from fedstream.coordinator.fedasync import FedAsync
from fedstream.coordinator.fedbuff import FedBuff
from fedstream.coordinator.rounds import SyncRounds
from fedstream.coordinator.server_model import ServerModel
from fedstream.coordinator.sites import Sites
from fedstream.coordinator.units import Contribution

from conftest import tiny_model

F32 = np.float32


def policy_of(kind, clients=6, **options):
    delta = {"update": UpdateKind.MODEL_DELTA} if kind is FedAsync else {}
    config = FederationConfig(**{"server_optimizer": "sgd", "server_lr": 1.0, **delta,
                                 **options})
    model = ServerModel(tiny_model(), config.server, config.encodings)
    sites = Sites.single_pool(SiteData(tuple([10] * clients), (28, 28), None, 10))
    return kind(config, sites, model, Counter()), model


def filled(model, value):
    return [np.full(v.shape, value, F32) for v in model.trainable]


def push(policy, model, worker, value, base_version=None):
    """Lease, admit and store one unit's update of `value` everywhere; True when a step is
    due."""
    unit = policy.lease(worker, "", 0.0)
    meta = UpdateMeta(worker, policy.round if hasattr(policy, "round") else 0,
                      model.version if base_version is None else base_version, unit.index,
                      unit.client_ids, float(len(unit.client_ids)), 10)
    admitted = policy.admit(meta)
    arrays = [a * F32(len(unit.client_ids)) for a in filled(model, value)]  # a weighted sum
    return policy.receive(admitted, Contribution(arrays, meta.weight, len(unit.client_ids),
                                                 meta.base_version))


def test_sync_rounds_split_the_sample_into_units_and_step_on_their_mean():
    policy, model = policy_of(SyncRounds, units=2)
    policy.open(1)
    assert [len(u.client_ids) for u in policy.units] == [3, 3]
    before = model.trainable_arrays()
    assert not push(policy, model, "a", 1.0)
    with pytest.raises(FailedPrecondition, match="round 2 but round 1 is open"):
        policy.admit(UpdateMeta("b", 2, model.version, 1, policy.units[1].client_ids, 3.0, 1))
    assert push(policy, model, "b", 3.0)  # the last unit: a step is due
    step = policy.step()
    assert len(step.units) == 2 and step.metrics["stragglers"] == 0
    for got, was in zip(model.trainable_arrays(), before):
        np.testing.assert_allclose(got, was - 2.0, rtol=1e-6)  # w - mean(1, 3)
    assert model.version == 2


def test_sync_rounds_refuse_an_update_from_an_older_version():
    policy, model = policy_of(SyncRounds, units=1)
    policy.open(1)
    unit = policy.lease("a", "", 0.0)
    with pytest.raises(FailedPrecondition, match="pull the weights again"):
        policy.admit(UpdateMeta("a", 1, model.version - 1, unit.index, unit.client_ids, 6.0, 1))


def test_fedbuff_steps_every_k_updates_down_weighting_the_stale():
    """K = 2; the second buffer holds one update a version old: FedBuff's
    sum_i s(t_i) u_i / sum_i w_i with s(1) = 1/sqrt(2)."""
    policy, model = policy_of(FedBuff, mode="fedbuff", buffer_size=2, clients_per_unit=2)
    assert not push(policy, model, "a", 1.0)
    assert push(policy, model, "b", 1.0)
    stale_base = model.version
    policy.step()
    before = model.trainable_arrays()
    assert not push(policy, model, "a", 2.0, base_version=stale_base)  # one version old
    assert push(policy, model, "b", 2.0)
    step = policy.step()
    assert step.metrics["staleness_max"] == 1
    expected = (2.0 / np.sqrt(2) + 2.0) / 2
    for got, was in zip(model.trainable_arrays(), before):
        np.testing.assert_allclose(got, was - expected, rtol=1e-5)


def test_fedbuff_refuses_an_update_staler_than_the_bound():
    policy, model = policy_of(FedBuff, mode="fedbuff", buffer_size=1, max_staleness=0,
                              clients_per_unit=2)
    base = model.version
    push(policy, model, "a", 1.0)
    policy.step()
    unit = policy.lease("b", "", 0.0)
    with pytest.raises(FailedPrecondition, match="staleness 1 is beyond the bound of 0"):
        policy.admit(UpdateMeta("b", 0, base, unit.index, unit.client_ids, 2.0, 1))


def test_fedasync_mixes_each_client_model_in_at_once():
    """w <- (1 - a) w + a (w_start - mean delta), with a = alpha for a fresh update."""
    policy, model = policy_of(FedAsync, mode="fedasync", async_alpha=0.5, clients_per_unit=2,
                              update="delta")
    policy.open(1)
    start = model.trainable_arrays()
    assert push(policy, model, "a", 0.4)  # every update steps
    policy.step()
    for got, was in zip(model.trainable_arrays(), start):
        np.testing.assert_allclose(got, 0.5 * was + 0.5 * (was - 0.4), rtol=1e-5, atol=1e-7)
