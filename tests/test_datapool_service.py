"""The DataPool service over real gRPC on a loopback port."""

import re

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from fedstream.common.clients import DataPoolClient
from fedstream.common.errors import InvalidArgument
from fedstream.datapool.server import SERVICE_NAME
from fedstream.datapool.servicer import DataPoolServicer
from fedstream.v1 import datapool_pb2, datapool_pb2_grpc


@pytest.fixture
def pool(serve, store):
    server = serve(lambda s: datapool_pb2_grpc.add_DataPoolServicer_to_server(
        DataPoolServicer(store), s), [SERVICE_NAME])
    address = f"127.0.0.1:{server.port}"
    client = DataPoolClient(address, connect_timeout_s=5)
    yield address, client
    client.close()


def test_info_describes_the_partition(pool, store):
    _, client = pool
    info = client.info()
    assert info.client_sizes == store.summary.client_sizes
    assert info.example_shape == (28, 28) and info.example_dtype == np.uint8
    assert (info.partitioner, info.num_test) == ("reference", 50)
    assert info.label_histograms == ()  # clients x classes values: only when asked for
    labelled = client.info(label_counts=True)
    assert labelled.label_histograms == store.summary.label_histograms
    assert [sum(h) for h in labelled.label_histograms] == list(info.client_sizes)


def test_batches_arrive_bit_identical_to_the_store(pool, store):
    _, client = pool
    got = client.batches([5, 0, 7], step=3, batch_size=8)
    want = store.batches([5, 0, 7], 3, 8)
    assert [b.client_id for b in got] == [5, 0, 7]
    for g, w in zip(got, want):
        assert g.x.tobytes() == w.x.tobytes() and g.y.tobytes() == w.y.tobytes()
        assert g.x.shape == w.x.shape


def test_test_set_arrives_whole(pool, store):
    _, client = pool
    x, y = client.test_set()
    np.testing.assert_array_equal(x, store.x_test)
    np.testing.assert_array_equal(y, store.y_test)


@pytest.mark.parametrize("request_fields, message", [
    (dict(client_ids=[0, 42], batch_size=8), "unknown client ids \\[42\\]"),
    (dict(client_ids=[0], batch_size=0), "batch_size 0"),
    (dict(client_ids=[0], batch_size=10**9), "out of range"),
])
def test_bad_batch_requests_get_invalid_argument(pool, request_fields, message):
    address, _ = pool
    with grpc.insecure_channel(address) as ch:
        stub = datapool_pb2_grpc.DataPoolStub(ch)
        with pytest.raises(grpc.RpcError) as e:
            list(stub.StreamBatches(datapool_pb2.BatchRequest(**request_fields)))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert re.search(message, e.value.details())


def test_client_raises_domain_errors(pool):
    _, client = pool
    with pytest.raises(InvalidArgument, match="INVALID_ARGUMENT: unknown client"):
        client.batches([1000], 0, 4)


def test_health_and_reflection(pool):
    address, _ = pool
    with grpc.insecure_channel(address) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        for service in ("", SERVICE_NAME):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        reply = next(stub.ServerReflectionInfo(iter([
            reflection_pb2.ServerReflectionRequest(list_services="")])))
        names = {s.name for s in reply.list_services_response.service}
    assert {"fedstream.v1.DataPool", "grpc.health.v1.Health"} <= names


def test_health_command_exit_codes(pool, capsys):
    from fedstream.cli.main import main
    address, _ = pool
    assert main(["health", address]) == 0
    assert "SERVING" in capsys.readouterr().out
    assert main(["health", "127.0.0.1:1", "--timeout", "0.5"]) == 1


def test_the_client_splits_requests_beyond_the_pools_limit(serve):
    from fedstream.common.errors import ResourceExhausted

    from conftest import synthetic_store
    store = synthetic_store(n_clients=8, max_clients_per_request=3)
    with pytest.raises(ResourceExhausted, match="at most 3"):
        store.batches(list(range(8)), 0, 4)  # the pool itself refuses 8 clients at once
    server = serve(lambda s: datapool_pb2_grpc.add_DataPoolServicer_to_server(
        DataPoolServicer(store), s), [SERVICE_NAME])
    client = DataPoolClient(f"127.0.0.1:{server.port}", connect_timeout_s=5)
    got = client.batches([7, 6, 5, 4, 3, 2, 1, 0], step=1, batch_size=4)
    client.close()
    assert [b.client_id for b in got] == [7, 6, 5, 4, 3, 2, 1, 0]
    for g in got:
        (want,) = store.batches([g.client_id], 1, 4)
        assert g.x.tobytes() == want.x.tobytes() and g.y.tobytes() == want.y.tobytes()
