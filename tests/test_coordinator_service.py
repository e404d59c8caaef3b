"""The Coordinator service over real gRPC: the happy path and every malformed input.

Each refused call must return its status code with a message, and leave the model and its
version untouched (checked by hash)."""

import grpc
import numpy as np
import pytest

from fedstream.common import serde
from fedstream.common.clients import CoordinatorClient
from fedstream.common.errors import FailedPrecondition, NotFound
from fedstream.common.protocol import Action, UpdateMeta
from fedstream.common.tensors import pack
from fedstream.coordinator.config import FederationConfig
from fedstream.coordinator.federation import Federation
from fedstream.coordinator.server import SERVICE_NAME
from fedstream.coordinator.servicer import CoordinatorServicer
from fedstream.v1 import coordinator_pb2, coordinator_pb2_grpc, tensor_pb2

from conftest import tiny_model, weights_digest


@pytest.fixture
def coordinator(serve):
    config = FederationConfig(rounds=3, units=2, min_workers=1, server_optimizer="sgd",
                              server_lr=0.1)
    federation = Federation(config, tiny_model(), [10] * 4)
    server = serve(lambda s: coordinator_pb2_grpc.add_CoordinatorServicer_to_server(
        CoordinatorServicer(federation), s), [SERVICE_NAME])
    client = CoordinatorClient(f"127.0.0.1:{server.port}", connect_timeout_s=5)
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    yield federation, client, coordinator_pb2_grpc.CoordinatorStub(channel)
    channel.close()
    client.close()


def zeros_update(federation):
    return [np.zeros(s.shape, np.float32) for s in federation.task.update_specs]


def test_a_worker_round_trip_over_grpc(coordinator):
    federation, client, _ = coordinator
    wid, task, _ = client.join("w", "/CPU:0")
    assert task.update_specs == federation.task.update_specs
    first = client.pull_weights(wid, 0)
    assert first.version == 1
    for got, v in zip(first.arrays, federation.server.model.weights):
        assert got.tobytes() == v.numpy().tobytes()
    assert client.pull_weights(wid, 1).arrays is None  # already current: nothing transferred
    for _ in range(2):
        a = client.assignment(wid, 1.0)
        assert a.action is Action.TRAIN
        update = [np.full(s.shape, 0.5, np.float32) for s in task.update_specs]
        result = client.push(UpdateMeta(wid, a.round, a.version, a.unit, a.client_ids,
                                        float(len(a.client_ids)), 20), update)
        assert result.accepted
    assert federation.server.version == 2 and client.pull_weights(wid, 1).version == 2
    status = client.status()
    assert (status.phase, status.round, status.workers[0].updates_accepted) == ("training", 2, 2)


def test_unknown_worker_is_not_found(coordinator):
    _, client, _ = coordinator
    with pytest.raises(NotFound, match="call Join first"):
        client.assignment("ghost", 0)
    with pytest.raises(NotFound):
        client.pull_weights("ghost", 0)


def update_messages(federation, wid, a, *, arrays=None, names=None, **header_changes):
    arrays = arrays if arrays is not None else zeros_update(federation)
    specs, payload = pack(names or [s.name for s in federation.task.update_specs], arrays)
    meta = UpdateMeta(wid, a.round, a.version, a.unit, a.client_ids, 2.0, 20)
    header = serde.update_meta_to_proto(meta, specs, len(payload))
    for key, value in header_changes.items():
        setattr(header, key, value)
    return list(serde.frame(coordinator_pb2.UpdateMessage(header=header), payload,
                            coordinator_pb2.UpdateMessage, chunk_bytes=1000))


def _chunk(offset, data):
    return coordinator_pb2.UpdateMessage(chunk=tensor_pb2.Chunk(offset=offset, data=data))


MALFORMED = {
    "empty stream": (lambda m, f: [], "INVALID_ARGUMENT", "start with a header"),
    "chunk before header": (lambda m, f: m[1:], "INVALID_ARGUMENT", "start with a header"),
    "truncated": (lambda m, f: m[:-1], "INVALID_ARGUMENT", "truncated"),
    "second header": (lambda m, f: m + m[:1], "INVALID_ARGUMENT", "second header"),
    "gap": (lambda m, f: m[:1] + m[2:], "INVALID_ARGUMENT", "without gaps"),
    "past declared size": (lambda m, f: m + [_chunk(f, b"\0" * 4)], "INVALID_ARGUMENT",
                           "past the"),
}


@pytest.mark.parametrize("case", MALFORMED, ids=list(MALFORMED))
def test_malformed_update_streams(coordinator, case):
    federation, client, stub = coordinator
    wid, _, _ = client.join("w", "cpu")
    a = client.assignment(wid, 1.0)
    digest = weights_digest(federation.server.model)
    messages = update_messages(federation, wid, a)
    total = messages[0].header.tensors.total_bytes
    mutate, code, text = MALFORMED[case]
    with pytest.raises(grpc.RpcError) as e:
        stub.PushUpdate(iter(mutate(messages, total)))
    assert e.value.code().name == code and text in e.value.details()
    assert weights_digest(federation.server.model) == digest and federation.server.version == 1
    assert federation.policy.units[a.unit].update is None


def test_wrong_shape_dtype_and_nan_get_invalid_argument(coordinator):
    federation, client, stub = coordinator
    wid, _, _ = client.join("w", "cpu")
    a = client.assignment(wid, 1.0)
    digest = weights_digest(federation.server.model)
    good = zeros_update(federation)
    cases = {
        "shape": update_messages(federation, wid, a, arrays=[g.reshape(-1) for g in good]),
        "dtype": update_messages(federation, wid, a, arrays=[g.astype(np.float64) for g in good]),
        "nan": update_messages(federation, wid, a,
                               arrays=[np.full_like(g, np.nan) for g in good]),
    }
    unknown_dtype = update_messages(federation, wid, a)
    unknown_dtype[0].header.tensors.tensors[0].dtype = 77
    cases["unknown dtype"] = unknown_dtype
    for name, messages in cases.items():
        with pytest.raises(grpc.RpcError) as e:
            stub.PushUpdate(iter(messages))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
        assert e.value.details(), name
    assert weights_digest(federation.server.model) == digest


def test_wrong_round_and_stale_version_get_failed_precondition(coordinator):
    federation, client, stub = coordinator
    wid, _, _ = client.join("w", "cpu")
    a = client.assignment(wid, 1.0)
    digest = weights_digest(federation.server.model)
    for change, text in ((dict(round=5), "round 5 but round 1"),
                         (dict(base_version=0), "pull the weights again")):
        with pytest.raises(grpc.RpcError) as e:
            stub.PushUpdate(iter(update_messages(federation, wid, a, **change)))
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert text in e.value.details()
    with pytest.raises(FailedPrecondition):
        client.push(UpdateMeta(wid, 9, a.version, a.unit, a.client_ids, 1.0, 1),
                    zeros_update(federation))
    assert weights_digest(federation.server.model) == digest


def test_pushing_another_workers_unit_is_permission_denied(coordinator):
    federation, client, stub = coordinator
    w1, _, _ = client.join("a", "cpu")
    w2, _, _ = client.join("b", "cpu")
    a = client.assignment(w1, 1.0)
    with pytest.raises(grpc.RpcError) as e:
        stub.PushUpdate(iter(update_messages(federation, w2, a)))
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_garbage_bytes_on_the_port_leave_the_server_serving(coordinator):
    import socket
    federation, client, _ = coordinator
    host, port = client.address.split(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"\x16\x03\x01 this is not http/2 at all" * 50)
        try:
            s.recv(1024)
        except OSError:
            pass
    wid, _, _ = client.join("after", "cpu")
    assert client.pull_weights(wid, 0).version == 1


def test_reflection_describes_the_coordinator(coordinator):
    from google.protobuf import descriptor_pb2
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
    _, client, _ = coordinator
    with grpc.insecure_channel(client.address) as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        requests = [reflection_pb2.ServerReflectionRequest(list_services=""),
                    reflection_pb2.ServerReflectionRequest(
                        file_containing_symbol="fedstream.v1.Coordinator")]
        listed, described = list(stub.ServerReflectionInfo(iter(requests)))
    names = {s.name for s in listed.list_services_response.service}
    assert {"fedstream.v1.Coordinator", "grpc.health.v1.Health"} <= names
    files = [descriptor_pb2.FileDescriptorProto.FromString(b)
             for b in described.file_descriptor_response.file_descriptor_proto]
    methods = {m.name for f in files for s in f.service for m in s.method}
    assert {"Join", "GetAssignment", "PullWeights", "PushUpdate", "GetStatus"} <= methods


def test_status_command_prints_the_coordinators_state(coordinator, capsys):
    import json

    from fedstream.cli.main import main
    _, client, _ = coordinator
    client.join("w", "cpu")
    assert main(["status", client.address]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["phase"] == "training" and status["workers"][0]["worker_name"] == "w"


def test_evaluation_on_demand(serve):
    federation = Federation(FederationConfig(units=1), tiny_model(), [4],
                            evaluator=lambda m: {"test_acc": 0.5, "test_loss": 2.0})
    server = serve(lambda s: coordinator_pb2_grpc.add_CoordinatorServicer_to_server(
        CoordinatorServicer(federation), s), [SERVICE_NAME])
    client = CoordinatorClient(f"127.0.0.1:{server.port}")
    assert client.evaluate() == (1, {"test_acc": 0.5, "test_loss": 2.0})
    client.close()


def test_evaluation_without_a_test_set_is_failed_precondition(coordinator):
    _, client, _ = coordinator
    with pytest.raises(FailedPrecondition, match="holds no test set"):
        client.evaluate()
