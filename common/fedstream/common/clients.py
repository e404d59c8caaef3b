"""gRPC clients of the two services, speaking the domain types of `protocol`.

Failed calls raise the same FedstreamError types the servers raised, so callers handle
remote and in-process errors alike.
"""

from __future__ import annotations

import functools
from typing import Sequence

import grpc
import numpy as np

from fedstream.common import serde
from fedstream.common.auth import call_metadata
from fedstream.common.errors import InvalidArgument
from fedstream.common.grpc_server import channel, error_from_rpc, wait_ready
from fedstream.common.protocol import Assignment, Batch, DatasetSummary, PushResult, Task, UpdateMeta, Weights
from fedstream.common.tensors import pack
from fedstream.common.tls import TlsConfig
from fedstream.v1 import coordinator_pb2, coordinator_pb2_grpc, datapool_pb2, datapool_pb2_grpc


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


class CoordinatorClient:
    def __init__(self, address: str, *, connect_timeout_s: float = 30.0,
                 tls: TlsConfig | None = None, token: str | None = None):
        self.address = address
        self._md = call_metadata(token)
        self._channel = _connect(address, tls, connect_timeout_s)
        self._stub = coordinator_pb2_grpc.CoordinatorStub(self._channel)
        self._update_names: list[str] | None = None

    def close(self) -> None:
        self._channel.close()

    @_domain_errors
    def join(self, worker_name: str, device: str) -> tuple[str, Task]:
        reply = self._stub.Join(coordinator_pb2.JoinRequest(worker_name=worker_name, device=device),
                                metadata=self._md)
        task = serde.task_from_proto(reply.task)
        self._update_names = [s.name for s in task.update_specs]
        return reply.worker_id, task

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
        header, arrays = serde.read_one(_prepend(first, stream))
        specs, _ = serde.header_from_proto(header.tensors)
        return Weights(header.version, tuple(specs), arrays)

    @_domain_errors
    def push(self, meta: UpdateMeta, arrays: Sequence[np.ndarray],
             names: Sequence[str] | None = None) -> PushResult:
        names = names or self._update_names
        if names is None:
            raise ValueError("push needs the update tensor names: join first or pass names=")
        specs, payload = pack(names, arrays)
        header = coordinator_pb2.UpdateMessage(
            header=serde.update_meta_to_proto(meta, specs, len(payload)))
        reply = self._stub.PushUpdate(serde.frame(header, payload, coordinator_pb2.UpdateMessage),
                                      metadata=self._md)
        return serde.push_result_from_proto(reply)

    @_domain_errors
    def leave(self, worker_id: str) -> None:
        self._stub.Leave(coordinator_pb2.LeaveRequest(worker_id=worker_id), timeout=5.0,
                         metadata=self._md)

    @_domain_errors
    def evaluate(self) -> tuple[int, dict[str, float]]:
        reply = self._stub.Evaluate(coordinator_pb2.EvaluateRequest(), timeout=300.0,
                                    metadata=self._md)
        return reply.version, dict(reply.metrics)

    @_domain_errors
    def status(self) -> coordinator_pb2.Status:
        return self._stub.GetStatus(coordinator_pb2.GetStatusRequest(), timeout=10.0,
                                    metadata=self._md)


def _prepend(first, rest):
    yield first
    yield from rest


class DataPoolClient:
    def __init__(self, address: str, *, connect_timeout_s: float = 30.0,
                 tls: TlsConfig | None = None, token: str | None = None):
        self.address = address
        self._md = call_metadata(token)
        self._channel = _connect(address, tls, connect_timeout_s)
        self._stub = datapool_pb2_grpc.DataPoolStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    @_domain_errors
    def info(self) -> DatasetSummary:
        r = self._stub.GetInfo(datapool_pb2.GetInfoRequest(), timeout=30.0, metadata=self._md)
        example = serde.spec_from_proto(r.example)
        return DatasetSummary(
            dataset=r.dataset, partitioner=r.partitioner, seed=r.seed,
            client_sizes=tuple(r.client_sizes), example_shape=example.shape,
            example_dtype=example.dtype, num_classes=r.num_classes, num_test=r.num_test,
            max_batch_size=r.max_batch_size, max_clients_per_request=r.max_clients_per_request,
            label_histograms=tuple(tuple(r.label_counts[c * r.num_classes:(c + 1) * r.num_classes])
                                   for c in range(r.num_clients if r.label_counts else 0)))

    @_domain_errors
    def batches(self, client_ids: Sequence[int], step: int, batch_size: int) -> list[Batch]:
        stream = self._stub.StreamBatches(datapool_pb2.BatchRequest(
            client_ids=list(client_ids), step=step, batch_size=batch_size), metadata=self._md)
        header, (x, y) = serde.read_one(stream)
        if list(header.client_ids) != list(client_ids) or sum(header.sizes) != len(y):
            raise InvalidArgument("the data pool answered for other clients or sizes than asked")
        ends = np.cumsum(header.sizes)
        return [Batch(c, header.step, x[e - n:e], y[e - n:e])
                for c, n, e in zip(header.client_ids, header.sizes, ends)]

    @_domain_errors
    def test_set(self) -> tuple[np.ndarray, np.ndarray]:
        _, (x, y) = serde.read_one(self._stub.StreamTestSet(datapool_pb2.TestSetRequest(),
                                                             metadata=self._md))
        return x, y
