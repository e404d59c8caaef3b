"""Data sites over real gRPC: what a site's worker publishes at Join, the status codes a
stranger's client sees for bad site data, another site's clients and evaluation reports,
tokens bound to a site, and a worker pointed at another site's data pool."""

import grpc
import numpy as np
import pytest

from fedstream.common.auth import TokenAuthInterceptor, read_tokens
from fedstream.common.clients import CoordinatorClient, DataPoolClient
from fedstream.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
)
from fedstream.common.grpc_server import create_server
from fedstream.common.protocol import Action, EvaluationResult, SiteData, UpdateMeta
from fedstream.coordinator.config import FederationConfig
from fedstream.coordinator.federation import Federation, declared_sites
from fedstream.coordinator.server import SERVICE_NAME
from fedstream.coordinator.servicer import CoordinatorServicer
from fedstream.coordinator.sites import SITE_STRIDE
from fedstream.datapool.server import SERVICE_NAME as POOL_SERVICE
from fedstream.datapool.servicer import DataPoolServicer
from fedstream.v1 import coordinator_pb2, coordinator_pb2_grpc, datapool_pb2, datapool_pb2_grpc
from fedstream.worker.loop import WorkerLoop

from conftest import synthetic_store, tiny_model, weights_digest

A_TOKEN, B_TOKEN = "hospital-a-token-0123456789", "hospital-b-token-0123456789"


def data(sizes=(10, 10), classes=10, shape=(28, 28)):
    return SiteData(tuple(sizes), shape, np.dtype("uint8"), classes, 50)


@pytest.fixture
def sites(tmp_path):
    """A coordinator of sites a and b behind tokens bound to them."""
    (tmp_path / "tokens").write_text(f"a-worker {A_TOKEN} a\nb-worker {B_TOKEN} b\n")
    config = FederationConfig(rounds=2, units=1, min_workers=2, sites="a,b",
                              server_optimizer="sgd", server_lr=1.0, eval_timeout_s=2)
    model = tiny_model()
    federation = Federation(config, model, sites=declared_sites(config, model, 10))
    server = create_server(
        "127.0.0.1:0", lambda s: coordinator_pb2_grpc.add_CoordinatorServicer_to_server(
            CoordinatorServicer(federation), s), [SERVICE_NAME],
        interceptors=[TokenAuthInterceptor(read_tokens(str(tmp_path / "tokens")))])
    server.set_serving()
    address = f"127.0.0.1:{server.port}"
    a = CoordinatorClient(address, token=A_TOKEN)
    b = CoordinatorClient(address, token=B_TOKEN)
    yield federation, a, b
    a.close()
    b.close()
    server.stop(0)


def test_a_site_worker_publishes_its_clients_and_learns_their_federation_ids(sites):
    federation, a, b = sites
    assert b.join("wb", "cpu", "b", data(sizes=(5,))).client_id_base == SITE_STRIDE
    joined = a.join("wa", "cpu", "a", data())
    assert joined.client_id_base == 0 and federation.phase == "training"
    assignment = a.assignment(joined.worker_id, 1.0)
    assert assignment.action is Action.TRAIN and assignment.client_ids == (0, 1)
    status = b.status()
    assert sorted(w.site for w in status.workers) == ["a", "b"]


@pytest.mark.parametrize("bad, code, message", [
    (data(shape=(32, 32)), InvalidArgument, r"INVALID_ARGUMENT: site 'a' does not fit the task: "
                                            r"examples of shape \[32, 32\]"),
    (data(classes=100), InvalidArgument, "100 classes, the task has 10"),
    (data(sizes=()), InvalidArgument, "it has no clients"),
])
def test_site_data_that_does_not_fit_is_refused_over_grpc(sites, bad, code, message):
    federation, a, _ = sites
    with pytest.raises(code, match=message):
        a.join("wa", "cpu", "a", bad)
    assert len(federation.sites) == 0 and federation.status().workers == ()


def test_a_token_bound_to_a_site_cannot_join_for_another(sites):
    federation, a, _ = sites
    with pytest.raises(PermissionDenied, match="this token is bound to site 'a'"):
        a.join("intruder", "cpu", "b", data())
    with pytest.raises(PermissionDenied, match="bound to site 'a'"):
        a.join("intruder", "cpu")  # nor for the coordinator's own pool
    assert len(federation.sites) == 0


def test_a_site_reusing_a_name_for_other_data_is_already_exists(sites):
    _, a, _ = sites
    a.join("wa", "cpu", "a", data())
    with pytest.raises(AlreadyExists, match="ALREADY_EXISTS: site 'a' joined with 2 clients"):
        a.join("wa2", "cpu", "a", data(sizes=(3, 3, 3)))


def test_another_sites_clients_and_unasked_evaluations_are_refused(sites):
    federation, a, b = sites
    wa = a.join("wa", "cpu", "a", data()).worker_id
    wb = b.join("wb", "cpu", "b", data()).worker_id
    unit_a = a.assignment(wa, 1.0)
    update = [np.ones(s.shape, np.float32) for s in federation.task.update_specs]
    digest = weights_digest(federation.server.model)
    meta = UpdateMeta(wb, unit_a.round, unit_a.version, unit_a.unit, unit_a.client_ids, 2.0, 20)
    with pytest.raises(PermissionDenied, match="not of site 'b'"):
        b.push(meta, update)
    with pytest.raises(FailedPrecondition, match="no evaluation is pending"):
        b.report_evaluation(EvaluationResult(wb, 1, 50, 1.0, 0.5))
    with pytest.raises(InvalidArgument, match="num_examples >= 1"):
        b.report_evaluation(EvaluationResult(wb, 1, 0, 1.0, 0.5))
    stub = coordinator_pb2_grpc.CoordinatorStub(b._channel)  # a request no client sends
    with pytest.raises(grpc.RpcError) as refused:
        stub.ReportEvaluation(coordinator_pb2.EvaluationReport(
            worker_id=wb, version=1, num_examples=5, metrics={"loss": 1.0}),
            metadata=(("authorization", f"Bearer {B_TOKEN}"),))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "needs the metrics 'loss' and 'accuracy'" in refused.value.details()
    assert weights_digest(federation.server.model) == digest and federation.server.version == 1


def test_a_worker_refuses_to_serve_another_sites_data_pool(serve):
    store = synthetic_store(site="hospital-b")
    server = serve(lambda s: datapool_pb2_grpc.add_DataPoolServicer_to_server(
        DataPoolServicer(store), s), [POOL_SERVICE])
    pool = DataPoolClient(f"127.0.0.1:{server.port}")
    assert pool.info().site == "hospital-b"
    config = FederationConfig(rounds=1, sites="hospital-a")
    model = tiny_model()
    federation = Federation(config, model, sites=declared_sites(config, model, 10))
    with pytest.raises(FailedPrecondition, match="belongs to site 'hospital-b' but this worker "
                                                 "serves 'hospital-a'"):
        WorkerLoop(federation, pool, name="w", device="/CPU:0", site="hospital-a")
    assert len(federation.sites) == 0
    pool.close()


def test_a_site_worker_asks_its_pool_for_label_counts_only_when_it_publishes_them(serve):
    """GetInfo leaves the clients x classes label counts out unless asked (at 10^6 clients
    they would pass gRPC's 4 MiB); a site worker with --publish-label-histograms asks, and
    the coordinator gets them at Join."""
    store = synthetic_store(site="a")
    server = serve(lambda s: datapool_pb2_grpc.add_DataPoolServicer_to_server(
        DataPoolServicer(store), s), [POOL_SERVICE])
    for publish in (False, True):
        pool = DataPoolClient(f"127.0.0.1:{server.port}")
        config = FederationConfig(rounds=1, sites="a")
        model = tiny_model()
        federation = Federation(config, model, sites=declared_sites(config, model, 10))
        WorkerLoop(federation, pool, name="w", device="/CPU:0", site="a",
                   publish_labels=publish)
        (site,) = federation.sites
        assert site.data.label_histograms == (store.summary.label_histograms if publish
                                              else ())
        pool.close()


def test_a_data_pool_request_without_clients_is_invalid_argument(serve):
    server = serve(lambda s: datapool_pb2_grpc.add_DataPoolServicer_to_server(
        DataPoolServicer(synthetic_store()), s), [POOL_SERVICE])
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stream = datapool_pb2_grpc.DataPoolStub(channel).StreamBatches(
            datapool_pb2.BatchRequest(client_ids=[], step=0, batch_size=8))
        with pytest.raises(grpc.RpcError) as refused:
            list(stream)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "lists no client ids" in refused.value.details()


def test_a_sites_data_pool_refuses_a_token_bound_to_another_site(tmp_path):
    (tmp_path / "tokens").write_text(f"a-worker {A_TOKEN} hospital-a\nb-worker {B_TOKEN} hospital-b\n")
    server = create_server(
        "127.0.0.1:0", lambda s: datapool_pb2_grpc.add_DataPoolServicer_to_server(
            DataPoolServicer(synthetic_store(site="hospital-b")), s), [POOL_SERVICE],
        interceptors=[TokenAuthInterceptor(read_tokens(str(tmp_path / "tokens")))])
    server.set_serving()
    address = f"127.0.0.1:{server.port}"
    foreign, own = DataPoolClient(address, token=A_TOKEN), DataPoolClient(address, token=B_TOKEN)
    with pytest.raises(PermissionDenied, match="bound to site 'hospital-a'"):
        foreign.info()
    with pytest.raises(PermissionDenied, match="serves site 'hospital-b'"):
        foreign.batches([0], 0, 8)
    with pytest.raises(PermissionDenied):
        foreign.test_set()
    assert own.info().site == "hospital-b" and len(own.batches([0], 0, 8)) == 1
    foreign.close()
    own.close()
    server.stop(0)
