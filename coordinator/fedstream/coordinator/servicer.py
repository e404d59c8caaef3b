"""Coordinator gRPC servicer: decode protobuf, call the Federation, encode. It also owns the
wire form of the weights: packed once per version, on the first pull that needs it."""

from __future__ import annotations

import threading

from fedstream.common import serde
from fedstream.common.auth import caller, caller_site
from fedstream.common.codecs import Encoding, encode
from fedstream.common.errors import PermissionDenied
from fedstream.common.grpc_server import handles_errors, handles_stream_errors
from fedstream.common.protocol import Weights
from fedstream.coordinator.federation import Federation
from fedstream.coordinator.identities import WorkerIdentities
from fedstream.v1 import coordinator_pb2, coordinator_pb2_grpc


class PackedWeights:
    """The payload of the latest version pulled whole, in the encoding that carries its image
    exactly; concurrent pulls of one version pack once."""

    def __init__(self, encoding: Encoding):
        self.encoding = encoding
        self._lock = threading.Lock()
        self._version = -1
        self._payload = b""

    def payload(self, weights: Weights) -> bytes:
        with self._lock:
            if weights.version != self._version:
                self._payload = encode(self.encoding, weights.arrays)
                self._version = weights.version
            return self._payload


class CoordinatorServicer(coordinator_pb2_grpc.CoordinatorServicer):
    def __init__(self, federation: Federation):
        self._federation = federation
        self._identities = WorkerIdentities()
        self._packed = PackedWeights(federation.server.image.full_encoding)
        self._update_encodings = (Encoding.RAW, federation.task.update_encoding)

    def _owned(self, worker_id: str) -> str:
        self._identities.check(worker_id, caller())
        return worker_id

    @handles_errors
    def Join(self, request, context):
        bound = caller_site()
        if bound is not None and request.site != bound:
            raise PermissionDenied(f"this token is bound to site {bound!r}; it may not join for "
                                   f"{request.site or 'the coordinator'!r}: use the token its "
                                   "operator issued for that site")
        joined = self._federation.join(
            request.worker_name, request.device, request.site,
            serde.site_data_from_proto(request.site_data) if request.HasField("site_data")
            else None)
        self._identities.bind(joined.worker_id, caller())
        return coordinator_pb2.JoinReply(worker_id=joined.worker_id,
                                         task=serde.task_to_proto(joined.task),
                                         client_id_base=joined.client_id_base)

    @handles_errors
    def GetAssignment(self, request, context):
        a = self._federation.assignment(self._owned(request.worker_id), request.wait_ms / 1000.0)
        return serde.assignment_to_proto(a)

    @handles_stream_errors
    def PullWeights(self, request, context):
        weights = self._federation.pull_weights(self._owned(request.worker_id),
                                                request.have_version)
        if weights.arrays is None:
            yield coordinator_pb2.WeightsMessage(header=coordinator_pb2.WeightsHeader(
                version=weights.version, unchanged=True,
                tensors=serde.header_to_proto(weights.specs, sum(s.nbytes for s in weights.specs))))
            return
        if weights.encoded_delta is not None:
            payload, encoding = weights.encoded_delta.payload, weights.encoded_delta.encoding
        else:
            payload, encoding = self._packed.payload(weights), self._packed.encoding
        header = coordinator_pb2.WeightsMessage(header=coordinator_pb2.WeightsHeader(
            version=weights.version, unchanged=False, delta_from=weights.delta_from,
            tensors=serde.header_to_proto(weights.specs, len(payload), encoding)))
        yield from serde.frame(header, payload, coordinator_pb2.WeightsMessage)

    @handles_errors
    def PushUpdate(self, request_iterator, context):
        header, read = serde.open_one(request_iterator, accept=self._update_encodings)
        self._owned(header.worker_id)
        specs, _ = serde.header_from_proto(header.tensors)
        return serde.push_result_to_proto(self._federation.push(
            serde.update_meta_from_proto(header), read, specs=specs))

    @handles_errors
    def GetStatus(self, request, context):
        return serde.status_to_proto(self._federation.status())

    @handles_errors
    def Evaluate(self, request, context):
        version, metrics = self._federation.evaluate()
        return coordinator_pb2.EvaluateReply(version=version, metrics=metrics)

    @handles_errors
    def ReportEvaluation(self, request, context):
        self._owned(request.worker_id)
        self._federation.report_evaluation(serde.evaluation_from_proto(request))
        return coordinator_pb2.EvaluationReply(accepted=True)

    def _deliver(self, message):
        self._owned(message.worker_id)
        self._federation.deliver(message)
        return coordinator_pb2.SecureReply()

    @handles_errors
    def AdvertiseKeys(self, request, context):
        return self._deliver(serde.keys_advert_from_proto(request))

    @handles_errors
    def ShareKeys(self, request, context):
        return self._deliver(serde.key_shares_from_proto(request))

    @handles_errors
    def ConfirmSurvivors(self, request, context):
        return self._deliver(serde.confirmation_from_proto(request))

    @handles_errors
    def RevealShares(self, request, context):
        return self._deliver(serde.reveal_from_proto(request))

    @handles_errors
    def Leave(self, request, context):
        self._federation.leave(self._owned(request.worker_id))
        return coordinator_pb2.LeaveReply()
