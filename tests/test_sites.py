"""Data sites in the coordinator's domain logic, without a network: the client table that
sites publish, units of one site leased only to its workers, permission checks, bad site
data refused without changing anything, and federated evaluation."""

import numpy as np
import pytest

from fedstream.common.errors import AlreadyExists, FailedPrecondition, InvalidArgument, PermissionDenied
from fedstream.common.protocol import Action, EvaluationResult, SiteData, UpdateMeta
from fedstream.coordinator.config import FederationConfig
from fedstream.coordinator.federation import Federation, declared_sites
from fedstream.coordinator.sites import SITE_STRIDE
from fedstream.worker.loop import WorkerLoop

from conftest import synthetic_store, tiny_model, weights_digest


def site_data(sizes=(10, 10, 10), shape=(28, 28), dtype="uint8", classes=10, num_test=20):
    return SiteData(tuple(sizes), shape, np.dtype(dtype), classes, num_test)


def make_federation(sites=("a", "b"), rounds=3, units=1, **kw):
    config = FederationConfig(rounds=rounds, units=units, min_workers=len(sites),
                              sites=",".join(sites), server_optimizer="sgd", server_lr=1.0,
                              eval_every=kw.pop("eval_every", 1000), **kw)
    rows = []
    model = tiny_model()
    fed = Federation(config, model, sites=declared_sites(config, model, 10),
                     on_metrics=rows.append)
    return fed, rows


def push(fed, worker, a, value=1.0, **over):
    fields = dict(worker_id=worker, round=a.round, base_version=a.version, unit=a.unit,
                  client_ids=a.client_ids, weight=len(a.client_ids), num_examples=10,
                  metrics={"loss": 1.0, "push_bytes": 100, "pull_bytes": 50})
    fields.update(over)
    arrays = [np.full(s.shape, value, np.float32) for s in fed.task.update_specs]
    return fed.push(UpdateMeta(**fields), arrays)


def test_clients_are_numbered_per_site_and_the_first_round_waits_for_every_declared_site():
    fed, _ = make_federation()
    b = fed.join("wb", "cpu", "b", site_data(sizes=(5, 6)))
    assert b.client_id_base == SITE_STRIDE  # b is declared second, whoever joins first
    assert fed.phase == "waiting_for_workers"
    a = fed.join("wa", "cpu", "a", site_data())
    assert a.client_id_base == 0 and fed.phase == "training"
    ids, sizes = fed.sites.table()
    assert ids.tolist() == [0, 1, 2, SITE_STRIDE, SITE_STRIDE + 1]
    assert sizes.tolist() == [10, 10, 10, 5, 6]


def test_a_unit_holds_one_sites_clients_and_goes_only_to_that_sites_workers():
    fed, rows = make_federation(units=2)
    a = fed.join("wa", "cpu", "a", site_data(sizes=(10,) * 4)).worker_id
    b = fed.join("wb", "cpu", "b", site_data(sizes=(10,) * 2)).worker_id
    got_a = [fed.assignment(a, 0) for _ in range(3)]
    assert [x.action for x in got_a] == [Action.TRAIN, Action.TRAIN, Action.WAIT]
    assert all(max(x.client_ids) < SITE_STRIDE for x in got_a[:2])
    got_b = [fed.assignment(b, 0) for _ in range(2)]
    assert all(min(x.client_ids) >= SITE_STRIDE for x in got_b)
    for worker, assignment in [(a, got_a[0]), (a, got_a[1]), (b, got_b[0])]:
        push(fed, worker, assignment)
    assert fed.server.version == 1 and fed.round == 1  # site b's second unit is outstanding
    push(fed, b, got_b[1])
    assert fed.server.version == 2
    fed.reports.flush()
    sites = rows[0]["sites"]
    assert sites["a"]["clients"] == 4 and sites["b"]["clients"] == 2
    assert sites["a"]["push_bytes"] == 200 and sites["b"]["workers"] == 1


def test_a_push_for_another_sites_clients_is_permission_denied_and_changes_nothing():
    fed, _ = make_federation()
    a = fed.join("wa", "cpu", "a", site_data()).worker_id
    b = fed.join("wb", "cpu", "b", site_data()).worker_id
    unit_a = fed.assignment(a, 0)
    before = weights_digest(fed.server.model)
    with pytest.raises(PermissionDenied, match="not of site 'b'"):
        push(fed, b, unit_a)
    with pytest.raises(PermissionDenied, match="not of site 'a'"):
        push(fed, a, unit_a, client_ids=(SITE_STRIDE,))
    assert weights_digest(fed.server.model) == before and fed.server.version == 1


@pytest.mark.parametrize("data, error, message", [
    (site_data(shape=(32, 32)), InvalidArgument, r"shape \[32, 32\], the model takes \[28, 28\]"),
    (site_data(classes=3), InvalidArgument, "3 classes, the task has 10"),
    (site_data(sizes=()), InvalidArgument, "no clients"),
    (site_data(sizes=(4, 0)), InvalidArgument, "a client has no examples"),
    (None, InvalidArgument, "must publish its site's data"),
])
def test_site_data_that_does_not_fit_is_refused_with_what_differs(data, error, message):
    fed, _ = make_federation()
    with pytest.raises(error, match=message):
        fed.join("w", "cpu", "a", data)
    assert len(fed.sites) == 0 and fed.status().workers == ()


def test_a_site_name_that_metrics_and_logs_cannot_carry_is_refused():
    fed, _ = make_federation()
    for name in ("a b", "../etc", "x" * 65, "-a", 'a"}'):
        with pytest.raises(InvalidArgument, match="rename it"):
            fed.join("w", "cpu", name, site_data())
    with pytest.raises(ValueError, match="must be 1 to 64 letters"):
        make_federation(sites=("ok", "not ok"))
    assert len(fed.sites) == 0


def test_a_second_dtype_a_site_name_reused_for_other_data_and_a_pool_worker_are_refused():
    fed, _ = make_federation()
    fed.join("wa", "cpu", "a", site_data())
    with pytest.raises(InvalidArgument, match="dtype float32, the other sites' are uint8"):
        fed.join("wb", "cpu", "b", site_data(dtype="float32"))
    with pytest.raises(AlreadyExists, match="site 'a' joined with 3 clients"):
        fed.join("wa2", "cpu", "a", site_data(sizes=(7,)))
    with pytest.raises(FailedPrecondition, match="start the worker with --site"):
        fed.join("pool-worker", "cpu")
    fed.join("wa3", "cpu", "a", site_data())  # a second worker of a site: same data, welcome
    assert len(fed.status().workers) == 2


def test_a_site_that_joins_late_takes_part_from_the_next_round():
    fed, rows = make_federation(sites=("a",), rounds=3)
    a = fed.join("wa", "cpu", "a", site_data()).worker_id
    push(fed, a, fed.assignment(a, 0))
    late = fed.join("wc", "cpu", "c", site_data(sizes=(8,))).worker_id
    assert fed.join("wc2", "cpu", "c", site_data(sizes=(8,))).client_id_base == SITE_STRIDE
    assert fed.assignment(late, 0).action is Action.WAIT  # round 2 was sampled without c
    push(fed, a, fed.assignment(a, 0))
    first = fed.assignment(late, 0)
    assert first.action is Action.TRAIN and first.client_ids == (SITE_STRIDE,)
    assert first.round == 3


def test_federated_evaluation_asks_each_site_once_and_weights_sites_by_examples():
    fed, rows = make_federation(rounds=1)
    a = fed.join("wa", "cpu", "a", site_data()).worker_id
    b = fed.join("wb", "cpu", "b", site_data()).worker_id
    push(fed, a, fed.assignment(a, 0))
    push(fed, b, fed.assignment(b, 0))
    assert fed.phase == "done"
    ask_a = fed.assignment(a, 0)
    assert ask_a.action is Action.EVALUATE and ask_a.version == 2
    assert ask_a.round == 1  # PROTOCOL.md: the round whose step made the version
    with pytest.raises(FailedPrecondition, match="pull the weights again"):
        fed.report_evaluation(EvaluationResult(a, 1, 30, 1.0, 0.9))  # an older version
    with pytest.raises(FailedPrecondition, match="no evaluation is pending"):
        fed.report_evaluation(EvaluationResult(b, 2, 30, 1.0, 0.5))  # b was not asked yet
    fed.report_evaluation(EvaluationResult(a, 2, 30, 1.0, 0.9))
    assert fed.assignment(a, 0).action is Action.STOP  # a's evaluation is in
    assert fed.assignment(b, 0).action is Action.EVALUATE
    with pytest.raises(InvalidArgument, match="accuracy in"):
        fed.report_evaluation(EvaluationResult(b, 2, 10, 2.0, 1.5))
    fed.report_evaluation(EvaluationResult(b, 2, 10, 2.0, 0.5))
    assert fed.wait_until_done(timeout_s=5)
    row = rows[-1]
    assert row["test_acc"] == pytest.approx((30 * 0.9 + 10 * 0.5) / 40)
    assert row["test_loss"] == pytest.approx((30 * 1.0 + 10 * 2.0) / 40)
    assert row["test_examples"] == 40 and row["eval_sites_missing"] == 0
    assert row["sites"]["a"]["test_acc"] == 0.9 and row["sites"]["b"]["test_examples"] == 10
    assert fed.status().last_metrics["sites/b/test_acc"] == 0.5


def test_a_site_that_never_reports_is_left_out_after_the_timeout():
    fed, rows = make_federation(sites=("a", "b"), rounds=1, eval_timeout_s=0.3)
    a = fed.join("wa", "cpu", "a", site_data()).worker_id
    b = fed.join("wb", "cpu", "b", site_data()).worker_id
    push(fed, a, fed.assignment(a, 0))
    push(fed, b, fed.assignment(b, 0))
    assert fed.assignment(a, 0).action is Action.EVALUATE
    fed.report_evaluation(EvaluationResult(a, 2, 30, 1.0, 0.9))
    assert fed.wait_until_done(timeout_s=5)
    assert rows[-1]["eval_sites_missing"] == 1 and rows[-1]["test_acc"] == 0.9
    assert fed.assignment(b, 0).action is Action.STOP  # too late: nothing more to evaluate


def test_site_workers_train_and_evaluate_on_their_own_stores_in_process():
    """Two sites, each a store of its own: every batch a worker fetched came from its own
    site's store, and the final row carries both sites' evaluations."""
    fed, rows = make_federation(rounds=2, units=1)
    stores = {"a": synthetic_store(n_clients=4, seed=1), "b": synthetic_store(n_clients=3, seed=2)}
    fetched = {name: [] for name in stores}

    class Recording:
        def __init__(self, name):
            self.name, self.store = name, stores[name]

        def batches(self, ids, step, bs):
            fetched[self.name].extend(ids)
            return self.store.batches(ids, step, bs)

        def info(self):
            return self.store.info()

        def test_set(self):
            return self.store.test_set()

    loops = [WorkerLoop(fed, Recording(n), name=n, device="/CPU:0", site=n, wait_s=0,
                        prefetch=False) for n in stores]
    running = set(range(len(loops)))
    while running:
        for i in sorted(running):
            if not loops[i].step():
                running.discard(i)
    fed.wait_until_done(timeout_s=10)
    assert set(fetched["a"]) == set(range(4)) and set(fetched["b"]) == set(range(3))
    assert rows[-1]["sites"]["a"]["test_examples"] == 50 and rows[-1]["test_examples"] == 100
    assert rows[-1]["sites"]["b"]["examples"] > 0


def test_a_resumed_run_goes_on_without_a_site_that_does_not_come_back(tmp_path):
    config = FederationConfig(rounds=4, units=1, min_workers=2, sites="a,b",
                              server_optimizer="sgd", rejoin_wait_s=10.0, eval_every=1000)
    model = tiny_model()
    first = Federation(config, model, sites=declared_sites(config, model, 10),
                       checkpoint_dir=str(tmp_path))
    a = first.join("wa", "cpu", "a", site_data()).worker_id
    b = first.join("wb", "cpu", "b", site_data()).worker_id
    push(first, a, first.assignment(a, 0))
    push(first, b, first.assignment(b, 0))
    first.reports.flush()
    now = [0.0]
    model = tiny_model()
    resumed = Federation(config, model, sites=declared_sites(config, model, 10),
                         checkpoint_dir=str(tmp_path), clock=lambda: now[0])
    a = resumed.join("wa", "cpu", "a", site_data()).worker_id
    assert resumed.assignment(a, 0).action is Action.WAIT  # site b may come back
    now[0] = 10.0
    resumed.check_deadline()
    unit = resumed.assignment(a, 0)
    assert (unit.action, unit.round, unit.client_ids) == (Action.TRAIN, 2, (0, 1, 2))
    b = resumed.join("wb", "cpu", "b", site_data()).worker_id  # back: from the next round
    assert resumed.assignment(b, 0).action is Action.WAIT
    push(resumed, a, unit)
    assert resumed.assignment(b, 0).client_ids == (SITE_STRIDE, SITE_STRIDE + 1, SITE_STRIDE + 2)


def test_a_site_whose_data_pool_is_unreachable_never_joins():
    from fedstream.common.errors import Unavailable

    class Unreachable:
        def info(self):
            raise Unavailable("no server answered at 10.0.0.9:50052 within 120 s: is it running?")

    fed, _ = make_federation()
    with pytest.raises(Unavailable, match="is it running"):
        WorkerLoop(fed, Unreachable(), name="w", device="/CPU:0", site="a", retry_s=0.3)
    assert len(fed.sites) == 0 and fed.status().workers == () and fed.server.version == 1
