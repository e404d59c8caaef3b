"""DataPool gRPC servicer: protobuf in, ClientStore calls, protobuf out. Nothing else."""

from __future__ import annotations

import logging

import numpy as np

from fedstream.common import serde
from fedstream.common.grpc_server import handles_errors, handles_stream_errors
from fedstream.common.tensors import TensorSpec, pack
from fedstream.datapool.store import ClientStore
from fedstream.v1 import datapool_pb2, datapool_pb2_grpc

log = logging.getLogger(__name__)


def _batch_messages(client_ids, sizes, step: int, xs, ys):
    """One header and the chunks of the batches concatenated (one copy, into the payload)."""
    specs, payload = pack(["x", "y"], [_concat(xs), _concat(ys)])
    header = datapool_pb2.BatchMessage(header=datapool_pb2.BatchHeader(
        client_ids=client_ids, sizes=sizes, step=step,
        tensors=serde.header_to_proto(specs, len(payload))))
    return serde.frame(header, payload, datapool_pb2.BatchMessage)


def _concat(arrays):
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


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
            max_clients_per_request=s.max_clients_per_request,
            label_counts=[v for row in s.label_histograms for v in row])

    @handles_stream_errors
    def StreamBatches(self, request, context):
        batches = self._store.batches(list(request.client_ids), request.step, request.batch_size)
        yield from _batch_messages([b.client_id for b in batches], [len(b.y) for b in batches],
                                   request.step, [b.x for b in batches], [b.y for b in batches])

    @handles_stream_errors
    def StreamTestSet(self, request, context):
        x, y = self._store.x_test, self._store.y_test
        yield from _batch_messages([], [len(y)], 0, [x], [y])
