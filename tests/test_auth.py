"""Token authentication on a real coordinator: one interceptor, every RPC."""

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fedstream.common.auth import TokenAuthInterceptor, read_tokens
from fedstream.common.clients import CoordinatorClient
from fedstream.common.errors import FedstreamError, PermissionDenied
from fedstream.common.protocol import UpdateMeta
from fedstream.coordinator.config import FederationConfig
from fedstream.coordinator.federation import Federation
from fedstream.coordinator.server import SERVICE_NAME
from fedstream.coordinator.servicer import CoordinatorServicer
from fedstream.v1 import coordinator_pb2_grpc

from conftest import tiny_model, weights_digest

ALICE, BOB = "alice-token-0123456789", "bob-token-0123456789ab"


@pytest.fixture
def secured(serve, tmp_path):
    (tmp_path / "tokens").write_text(f"# issued tokens\nalice {ALICE}\nbob {BOB}\n")
    tokens = read_tokens(str(tmp_path / "tokens"))
    federation = Federation(FederationConfig(rounds=2, units=1, server_optimizer="sgd"),
                            tiny_model(), [4, 4])
    from fedstream.common.grpc_server import create_server
    server = create_server(
        "127.0.0.1:0", lambda s: coordinator_pb2_grpc.add_CoordinatorServicer_to_server(
            CoordinatorServicer(federation), s), [SERVICE_NAME],
        interceptors=[TokenAuthInterceptor(tokens)])
    server.set_serving()
    yield federation, f"127.0.0.1:{server.port}"
    server.stop(0)


@pytest.mark.parametrize("token", [None, "not-a-real-token-at-all"])
def test_calls_without_a_valid_token_are_unauthenticated(secured, token):
    _, address = secured
    client = CoordinatorClient(address, token=token)
    with pytest.raises(FedstreamError, match="UNAUTHENTICATED: this server requires a token"):
        client.join("w", "cpu")
    with pytest.raises(FedstreamError, match="UNAUTHENTICATED"):
        client.pull_weights("w1", 0)  # a server stream is guarded too
    client.close()


def test_health_stays_open(secured):
    _, address = secured
    with grpc.insecure_channel(address) as ch:
        reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_a_worker_cannot_act_for_another(secured):
    federation, address = secured
    alice, bob = CoordinatorClient(address, token=ALICE), CoordinatorClient(address, token=BOB)
    wid, task, _ = alice.join("alice-gpu", "cpu")
    bob.join("bob-gpu", "cpu")
    digest = weights_digest(federation.server.model)
    with pytest.raises(PermissionDenied, match="joined as 'alice'"):
        bob.assignment(wid, 0)
    a = alice.assignment(wid, 1.0)
    update = [np.ones(s.shape, np.float32) for s in task.update_specs]
    meta = UpdateMeta(wid, a.round, a.version, a.unit, a.client_ids, 2.0, 8)
    with pytest.raises(PermissionDenied):
        bob.push(meta, update, names=[s.name for s in task.update_specs])
    assert weights_digest(federation.server.model) == digest
    assert alice.push(meta, update).accepted
    alice.close()
    bob.close()


@pytest.mark.parametrize("text, message", [
    ("alice\n", "expected `NAME TOKEN \\[SITE\\]`"),
    ("alice 0123456789abcdef site extra\n", "expected `NAME TOKEN \\[SITE\\]`"),
    ("alice short\n", "shorter than 16"),
    ("# nothing\n", "lists no tokens"),
])
def test_bad_token_files_are_refused(tmp_path, text, message):
    (tmp_path / "tokens").write_text(text)
    with pytest.raises(ValueError, match=message):
        read_tokens(str(tmp_path / "tokens"))
