"""Random well-formed-but-wrong and malformed input against live servers, for a bounded
time: the servers must answer every call with a status, stay up, and leave the model as it was."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedstream.common import serde
from fedstream.common.protocol import UpdateMeta
from fedstream.coordinator.config import FederationConfig
from fedstream.coordinator.federation import Federation
from fedstream.coordinator.server import SERVICE_NAME as COORDINATOR
from fedstream.coordinator.servicer import CoordinatorServicer
from fedstream.datapool.server import SERVICE_NAME as DATAPOOL
from fedstream.datapool.servicer import DataPoolServicer
from fedstream.v1 import coordinator_pb2, coordinator_pb2_grpc, datapool_pb2, datapool_pb2_grpc, tensor_pb2

from conftest import synthetic_store, tiny_model, weights_digest

FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=list(HealthCheck))
EXPECTED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
            grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.FAILED_PRECONDITION,
            grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INTERNAL,
            grpc.StatusCode.UNKNOWN}
# what a well-formed request of the right message type may get: never an unhandled exception
REFUSALS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
            grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.FAILED_PRECONDITION,
            grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ALREADY_EXISTS}


@pytest.fixture(scope="module")
def live():
    from fedstream.common.grpc_server import create_server
    federation = Federation(FederationConfig(rounds=10**6, units=2), tiny_model(), [30] * 8)
    store = synthetic_store()

    def register(server):
        coordinator_pb2_grpc.add_CoordinatorServicer_to_server(CoordinatorServicer(federation),
                                                               server)
        datapool_pb2_grpc.add_DataPoolServicer_to_server(DataPoolServicer(store), server)

    server = create_server("127.0.0.1:0", register, [COORDINATOR, DATAPOOL])
    server.set_serving()
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    worker_id, _, _ = federation.join("fuzz", "cpu")
    assignment = federation.assignment(worker_id, 0)
    yield federation, channel, worker_id, assignment
    channel.close()
    server.stop(0)


def call(fn, *args, expected=EXPECTED):
    """Run one RPC; a refusal must be a status with a message, never a hang or a crash."""
    try:
        result = fn(*args, timeout=10)
        return list(result) if hasattr(result, "__iter__") and not hasattr(result, "ListFields") else result
    except grpc.RpcError as e:
        assert e.code() in expected, (e.code(), e.details())
        assert e.details()
        return None


def still_serving(channel):
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


specs = st.lists(st.builds(
    lambda name, dtype, shape: tensor_pb2.TensorSpec(name=name, dtype=dtype, shape=shape),
    st.text(max_size=8), st.integers(-1, 14), st.lists(st.integers(-2, 40), max_size=3)),
    max_size=7)
chunks = st.lists(st.tuples(st.integers(0, 10_000), st.binary(max_size=600)), max_size=4)


@FUZZ
@given(use_real_id=st.booleans(), round_=st.integers(0, 3), version=st.integers(0, 3),
       unit=st.integers(0, 3), clients=st.lists(st.integers(0, 9), max_size=6),
       weight=st.floats(allow_nan=True, allow_infinity=True), examples=st.integers(0, 2**40),
       tensor_specs=specs, total=st.integers(0, 2**40), encoding=st.integers(0, 3),
       body=chunks, header_first=st.booleans())
def test_push_update_survives_anything(live, use_real_id, round_, version, unit, clients, weight,
                                      examples, tensor_specs, total, encoding, body, header_first):
    federation, channel, worker_id, _ = live
    digest, before = weights_digest(federation.server.model), federation.server.version
    header = coordinator_pb2.UpdateHeader(
        worker_id=worker_id if use_real_id else "ghost", round=round_, base_version=version,
        unit=unit, client_ids=clients, weight=weight, num_examples=examples,
        tensors=tensor_pb2.TensorSetHeader(tensors=tensor_specs, total_bytes=total,
                                           encoding=encoding))
    messages = [coordinator_pb2.UpdateMessage(chunk=tensor_pb2.Chunk(offset=o, data=d))
                for o, d in body]
    head = coordinator_pb2.UpdateMessage(header=header)
    messages = [head, *messages] if header_first else [*messages, head]
    stub = coordinator_pb2_grpc.CoordinatorStub(channel)
    call(lambda timeout: stub.PushUpdate(iter(messages), timeout=timeout))
    assert weights_digest(federation.server.model) == digest and federation.server.version == before
    still_serving(channel)


@FUZZ
@given(method=st.sampled_from(["Join", "GetAssignment", "PullWeights", "PushUpdate", "GetStatus",
                               "Leave", "GetInfo", "StreamBatches", "StreamTestSet"]),
       payload=st.binary(max_size=300))
def test_garbage_messages_are_refused(live, method, payload):
    federation, channel, _, _ = live
    digest = weights_digest(federation.server.model)
    service = "DataPool" if method in ("GetInfo", "StreamBatches", "StreamTestSet") else "Coordinator"
    path = f"/fedstream.v1.{service}/{method}"
    streaming_in = method == "PushUpdate"
    streaming_out = method in ("PullWeights", "StreamBatches", "StreamTestSet")
    kind = {(False, False): channel.unary_unary, (False, True): channel.unary_stream,
            (True, False): channel.stream_unary}[(streaming_in, streaming_out)]
    rpc = kind(path)  # raw bytes: no serializer
    request = iter([payload, payload]) if streaming_in else payload
    try:
        result = rpc(request, timeout=10)
        if streaming_out:
            list(result)
    except grpc.RpcError as e:
        assert e.code() in EXPECTED | {grpc.StatusCode.INVALID_ARGUMENT}, e.code()
    assert weights_digest(federation.server.model) == digest
    still_serving(channel)


@FUZZ
@given(clients=st.lists(st.integers(-5, 2**32 - 1), max_size=20),
       step=st.integers(0, 2**64 - 1), batch=st.integers(0, 2**32 - 1))
def test_batch_requests_survive_anything(live, clients, step, batch):
    _, channel, _, _ = live
    stub = datapool_pb2_grpc.DataPoolStub(channel)
    clients = [c % 2**32 for c in clients]
    reply = call(lambda timeout: stub.StreamBatches(
        datapool_pb2.BatchRequest(client_ids=clients, step=step, batch_size=batch),
        timeout=timeout), expected=REFUSALS)
    if reply is not None:  # accepted: it must be a well-formed tensor set for those clients
        header, (x, y) = serde.read_one(reply)
        assert list(header.client_ids) == clients and len(x) == len(y) == sum(header.sizes)
    still_serving(channel)


def test_a_message_over_the_size_limit_is_resource_exhausted(live):
    federation, channel, worker_id, a = live
    stub = coordinator_pb2_grpc.CoordinatorStub(channel)
    update_specs = federation.task.update_specs
    head = coordinator_pb2.UpdateMessage(header=serde.update_meta_to_proto(
        UpdateMeta(worker_id, a.round, a.version, a.unit, a.client_ids, 1.0, 1), update_specs,
        sum(s.nbytes for s in update_specs)))
    big = coordinator_pb2.UpdateMessage(chunk=tensor_pb2.Chunk(data=bytes(5 * 1024 * 1024)))
    with pytest.raises(grpc.RpcError) as e:
        stub.PushUpdate(iter([head, big]), timeout=10)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    still_serving(channel)


@pytest.fixture(scope="module")
def live_sites():
    """A coordinator of sites a and b, a's worker joined."""
    from fedstream.common.grpc_server import create_server
    from fedstream.coordinator.federation import declared_sites
    config = FederationConfig(rounds=10**6, units=1, sites="a,b")
    model = tiny_model()
    federation = Federation(config, model, sites=declared_sites(config, model, 10))
    server = create_server("127.0.0.1:0", lambda s: coordinator_pb2_grpc.add_CoordinatorServicer_to_server(
        CoordinatorServicer(federation), s), [COORDINATOR])
    server.set_serving()
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    stub = coordinator_pb2_grpc.CoordinatorStub(channel)
    spec = tensor_pb2.TensorSpec(name="x", dtype=tensor_pb2.DTYPE_UINT8, shape=[28, 28])
    joined = stub.Join(coordinator_pb2.JoinRequest(
        worker_name="a", device="cpu", site="a", site_data=coordinator_pb2.SiteData(
            client_sizes=[5, 5], example=spec, num_classes=10, num_test=5)), timeout=10)
    yield federation, channel, joined.worker_id
    channel.close()
    server.stop(0)


@FUZZ
@given(site=st.sampled_from(["", "a", "b", "c", "a" * 300]), has_data=st.booleans(),
       sizes=st.lists(st.integers(0, 2**32 - 1), max_size=6),
       dtype=st.integers(-1, 14), shape=st.lists(st.integers(-2, 40), max_size=3),
       classes=st.integers(0, 2**32 - 1), num_test=st.integers(0, 2**32 - 1),
       labels=st.lists(st.integers(0, 2**32 - 1), max_size=30))
def test_site_joins_survive_anything(live_sites, site, has_data, sizes, dtype, shape, classes,
                                     num_test, labels):
    federation, channel, _ = live_sites
    digest, before = weights_digest(federation.server.model), federation.server.version
    request = coordinator_pb2.JoinRequest(worker_name="fuzz", device="cpu", site=site)
    if has_data:
        request.site_data.CopyFrom(coordinator_pb2.SiteData(
            client_sizes=sizes, example=tensor_pb2.TensorSpec(name="x", dtype=dtype,
                                                              shape=shape),
            num_classes=classes, num_test=num_test, label_counts=labels))
    stub = coordinator_pb2_grpc.CoordinatorStub(channel)
    call(lambda timeout: stub.Join(request, timeout=timeout), expected=REFUSALS)
    assert weights_digest(federation.server.model) == digest and federation.server.version == before
    still_serving(channel)


@FUZZ
@given(use_real_id=st.booleans(), version=st.integers(0, 2**64 - 1),
       examples=st.integers(0, 2**64 - 1),
       metrics=st.dictionaries(st.sampled_from(["loss", "accuracy", "other"]),
                               st.floats(allow_nan=True, allow_infinity=True)))
def test_evaluation_reports_survive_anything(live_sites, use_real_id, version, examples,
                                             metrics):
    federation, channel, worker_id = live_sites
    digest = weights_digest(federation.server.model)
    stub = coordinator_pb2_grpc.CoordinatorStub(channel)
    call(lambda timeout: stub.ReportEvaluation(coordinator_pb2.EvaluationReport(
        worker_id=worker_id if use_real_id else "ghost", version=version,
        num_examples=examples, metrics=metrics), timeout=timeout), expected=REFUSALS)
    assert weights_digest(federation.server.model) == digest
    still_serving(channel)
