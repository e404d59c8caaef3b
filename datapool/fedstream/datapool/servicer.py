"""DataPool gRPC servicer: protobuf in, ClientStore calls, protobuf out. Nothing else."""

from __future__ import annotations

import logging

from fedstream.common import serde
from fedstream.common.grpc_server import handles_errors, handles_stream_errors
from fedstream.common.tensors import TensorSpec, pack
from fedstream.datapool.store import ClientStore
from fedstream.v1 import datapool_pb2, datapool_pb2_grpc

log = logging.getLogger(__name__)


def _batch_messages(client_id: int, step: int, x, y):
    specs, payload = pack(["x", "y"], [x, y])
    header = datapool_pb2.BatchMessage(header=datapool_pb2.BatchHeader(
        client_id=client_id, step=step, tensors=serde.header_to_proto(specs, len(payload))))
    return serde.frame(header, payload, datapool_pb2.BatchMessage)


class DataPoolServicer(datapool_pb2_grpc.DataPoolServicer):
    def __init__(self, store: ClientStore):
        self._store = store

    @handles_errors
    def GetInfo(self, request, context):
        s = self._store.summary
        return datapool_pb2.DatasetInfo(
            dataset=s.dataset, partitioner=s.partitioner, seed=s.seed,
            num_clients=s.num_clients, client_sizes=list(s.client_sizes),
            example=serde.spec_to_proto(TensorSpec("x", s.example_dtype, s.example_shape)),
            num_classes=s.num_classes, num_test=s.num_test, max_batch_size=s.max_batch_size,
            max_clients_per_request=s.max_clients_per_request)

    @handles_stream_errors
    def StreamBatches(self, request, context):
        batches = self._store.batches(list(request.client_ids), request.step, request.batch_size)
        for b in batches:
            yield from _batch_messages(b.client_id, b.step, b.x, b.y)

    @handles_stream_errors
    def StreamTestSet(self, request, context):
        yield from _batch_messages(0, 0, self._store.x_test, self._store.y_test)
