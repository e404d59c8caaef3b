"""gRPC clients of the two services, speaking the domain types of `protocol`, and the
channel they dial with.

Failed calls raise the same FedstreamError types the servers raised, so callers handle
remote and in-process errors alike.
"""

from __future__ import annotations

import functools
from typing import Sequence

import grpc
import numpy as np

from fedstream.common import errors, serde
from fedstream.common.auth import call_metadata
from fedstream.common.codecs import Encoded, Encoding
from fedstream.common.grpc_server import MAX_MESSAGE_BYTES
from fedstream.common.protocol import (
    Assignment,
    Batch,
    DatasetSummary,
    EvaluationResult,
    FederationStatus,
    Joined,
    PartyMessage,
    PushResult,
    SiteData,
    UpdateMeta,
    Weights,
)
from fedstream.common.secagg import MASKED_TENSOR
from fedstream.common.status_codes import error_from_rpc
from fedstream.common.tensors import pack, spec_of
from fedstream.common.tls import TlsConfig
from fedstream.v1 import coordinator_pb2, coordinator_pb2_grpc, datapool_pb2, datapool_pb2_grpc

CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


def channel(address: str, credentials: grpc.ChannelCredentials | None = None) -> grpc.Channel:
    if credentials is not None:
        return grpc.secure_channel(address, credentials, options=CHANNEL_OPTIONS)
    return grpc.insecure_channel(address, options=CHANNEL_OPTIONS)


def wait_ready(ch: grpc.Channel, address: str, timeout_s: float) -> None:
    try:
        grpc.channel_ready_future(ch).result(timeout=timeout_s)
    except grpc.FutureTimeoutError as e:
        raise errors.Unavailable(
            f"no server answered at {address} within {timeout_s:.0f} s: is it running?") from e


def _domain_errors(method):
    @functools.wraps(method)
    def call(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except grpc.RpcError as e:
            raise error_from_rpc(e) from None
    return call


def _connect(address: str, tls: TlsConfig | None, timeout_s: float):
    credentials = tls.channel_credentials() if tls is not None else None
    ch = channel(address, credentials)
    wait_ready(ch, address, timeout_s)
    return ch


class _Client:
    """A channel to one server, ready when constructed, with the caller's token on each call."""

    def __init__(self, address: str, *, connect_timeout_s: float = 30.0,
                 tls: TlsConfig | None = None, token: str | None = None):
        self.address = address
        self._md = call_metadata(token)
        self._channel = _connect(address, tls, connect_timeout_s)

    def close(self) -> None:
        self._channel.close()


class CoordinatorClient(_Client):
    """The coordinator's RPCs as the methods of `Federation` (join, assignment, pull_weights,
    push, deliver, leave, report_evaluation, status, evaluate), so a `WorkerLoop` drives
    either; status codes come back as the domain's errors."""

    def __init__(self, address: str, **connection):
        super().__init__(address, **connection)
        self._stub = coordinator_pb2_grpc.CoordinatorStub(self._channel)
        self._update_names: list[str] | None = None

    @_domain_errors
    def join(self, worker_name: str, device: str, site: str = "",
             site_data: SiteData | None = None) -> Joined:
        request = coordinator_pb2.JoinRequest(worker_name=worker_name, device=device, site=site)
        if site_data is not None:
            request.site_data.CopyFrom(serde.site_data_to_proto(site_data))
        reply = self._stub.Join(request, metadata=self._md)
        task = serde.task_from_proto(reply.task)
        self._update_names = ([MASKED_TENSOR] if task.secure_aggregation
                              else [s.name for s in task.update_specs])
        return Joined(reply.worker_id, task, reply.client_id_base)

    @_domain_errors
    def assignment(self, worker_id: str, wait_s: float) -> Assignment:
        reply = self._stub.GetAssignment(
            coordinator_pb2.AssignmentRequest(worker_id=worker_id, wait_ms=int(wait_s * 1000)),
            timeout=wait_s + 30.0, metadata=self._md)
        return serde.assignment_from_proto(reply)

    @_domain_errors
    def pull_weights(self, worker_id: str, have_version: int) -> Weights:
        stream = self._stub.PullWeights(
            coordinator_pb2.PullWeightsRequest(worker_id=worker_id, have_version=have_version),
            metadata=self._md)
        first = next(stream)
        if first.WhichOneof("kind") == "header" and first.header.unchanged:
            specs, _ = serde.header_from_proto(first.header.tensors)
            return Weights(first.header.version, tuple(specs), None)
        header, arrays = serde.read_one(_prepend(first, stream), accept=tuple(Encoding))
        specs, total = serde.header_from_proto(header.tensors)
        if header.delta_from:
            return Weights(header.version, tuple(specs), None, delta_from=header.delta_from,
                           delta=arrays, wire_bytes=total)
        return Weights(header.version, tuple(specs), arrays, wire_bytes=total)

    @_domain_errors
    def push(self, meta: UpdateMeta, arrays: Sequence[np.ndarray],
             names: Sequence[str] | None = None, encoded: Encoded | None = None) -> PushResult:
        """Push `arrays`, or when `encoded` is given its payload (the encoding of `arrays`)."""
        names = names or self._update_names
        if names is None:
            raise ValueError("push needs the update tensor names: join first or pass names=")
        specs, payload = pack(names, arrays) if encoded is None else (
            [spec_of(n, a) for n, a in zip(names, arrays)], encoded.payload)
        header = coordinator_pb2.UpdateMessage(header=serde.update_meta_to_proto(
            meta, specs, len(payload), Encoding.RAW if encoded is None else encoded.encoding))
        reply = self._stub.PushUpdate(serde.frame(header, payload, coordinator_pb2.UpdateMessage),
                                      metadata=self._md)
        return serde.push_result_from_proto(reply)

    @_domain_errors
    def leave(self, worker_id: str) -> None:
        self._stub.Leave(coordinator_pb2.LeaveRequest(worker_id=worker_id), timeout=5.0,
                         metadata=self._md)

    @_domain_errors
    def report_evaluation(self, result: EvaluationResult) -> None:
        self._stub.ReportEvaluation(serde.evaluation_to_proto(result), timeout=30.0,
                                    metadata=self._md)

    @_domain_errors
    def deliver(self, message: PartyMessage) -> None:
        """A secure-aggregation party's message, on the RPC of its step."""
        rpc, request = serde.PARTY_REQUESTS[type(message)]
        getattr(self._stub, rpc)(request(message), timeout=30.0, metadata=self._md)

    @_domain_errors
    def evaluate(self) -> tuple[int, dict[str, float]]:
        reply = self._stub.Evaluate(coordinator_pb2.EvaluateRequest(), timeout=300.0,
                                    metadata=self._md)
        return reply.version, dict(reply.metrics)

    @_domain_errors
    def status(self) -> FederationStatus:
        return serde.status_from_proto(self._stub.GetStatus(
            coordinator_pb2.GetStatusRequest(), timeout=10.0, metadata=self._md))


def _prepend(first, rest):
    yield first
    yield from rest


class DataPoolClient(_Client):
    """Requests larger than the pool's `max_clients_per_request` (read from GetInfo on first
    use) are split into several, so a unit of any size can be fetched."""

    def __init__(self, address: str, **connection):
        super().__init__(address, **connection)
        self._stub = datapool_pb2_grpc.DataPoolStub(self._channel)
        # clients per StreamBatches request, from GetInfo: None until read, 0 for no limit
        self._max_clients: int | None = None

    def _info(self, label_counts: bool = False) -> datapool_pb2.DatasetInfo:
        info = self._stub.GetInfo(datapool_pb2.GetInfoRequest(label_counts=label_counts),
                                  timeout=30.0, metadata=self._md)
        self._max_clients = info.max_clients_per_request
        return info

    @_domain_errors
    def info(self, label_counts: bool = False) -> DatasetSummary:
        """The pool's summary; its clients' label histograms only when asked for (they grow
        with clients x classes: 10^6 clients of 10 classes would pass gRPC's 4 MiB)."""
        return serde.dataset_summary_from_proto(self._info(label_counts))

    @_domain_errors
    def batches(self, client_ids: Sequence[int], step: int, batch_size: int) -> list[Batch]:
        if self._max_clients is None:
            self._info()
        per_request = self._max_clients or max(1, len(client_ids))
        out = []
        for start in range(0, len(client_ids), per_request):
            ids = list(client_ids[start:start + per_request])
            stream = self._stub.StreamBatches(datapool_pb2.BatchRequest(
                client_ids=ids, step=step, batch_size=batch_size), metadata=self._md)
            out += serde.batches_from_stream(stream, ids)
        return out

    @_domain_errors
    def test_set(self) -> tuple[np.ndarray, np.ndarray]:
        _, (x, y) = serde.read_one(self._stub.StreamTestSet(datapool_pb2.TestSetRequest(),
                                                             metadata=self._md))
        return x, y
