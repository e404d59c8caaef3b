"""DataPool gRPC servicer: protobuf in, ClientStore calls, protobuf out. A pool of a site
serves no caller whose token is bound to another site."""

from __future__ import annotations

from fedstream.common import serde
from fedstream.common.auth import caller_site
from fedstream.common.errors import PermissionDenied
from fedstream.common.grpc_server import handles_errors, handles_stream_errors
from fedstream.datapool.store import MAX_BATCH_SIZE, ClientStore
from fedstream.v1 import datapool_pb2_grpc


class DataPoolServicer(datapool_pb2_grpc.DataPoolServicer):
    def __init__(self, store: ClientStore):
        self._store = store

    def _check_site(self) -> None:
        bound, mine = caller_site(), self._store.summary.site
        if bound is not None and bound != mine:
            raise PermissionDenied(f"this data pool serves site {mine or '(none)'!r}; the "
                                   f"caller's token is bound to site {bound!r}")

    @handles_errors
    def GetInfo(self, request, context):
        self._check_site()
        return serde.dataset_info_to_proto(self._store.info(request.label_counts),
                                           max_batch_size=MAX_BATCH_SIZE,
                                           max_clients_per_request=self._store.max_clients_per_request)

    @handles_stream_errors
    def StreamBatches(self, request, context):
        self._check_site()
        batches = self._store.batches(list(request.client_ids), request.step, request.batch_size)
        yield from serde.batches_to_stream(batches, request.step)

    @handles_stream_errors
    def StreamTestSet(self, request, context):
        self._check_site()
        yield from serde.test_set_to_stream(self._store.x_test, self._store.y_test)
