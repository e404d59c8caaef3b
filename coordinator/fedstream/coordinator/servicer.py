"""Coordinator gRPC servicer: decode protobuf, call the Federation, encode. Nothing else."""

from __future__ import annotations

from fedstream.common import serde
from fedstream.common.auth import caller
from fedstream.common.grpc_server import handles_errors, handles_stream_errors
from fedstream.coordinator.federation import Federation
from fedstream.coordinator.identities import WorkerIdentities
from fedstream.v1 import coordinator_pb2, coordinator_pb2_grpc


class CoordinatorServicer(coordinator_pb2_grpc.CoordinatorServicer):
    def __init__(self, federation: Federation):
        self._federation = federation
        self._identities = WorkerIdentities()

    def _owned(self, worker_id: str) -> str:
        self._identities.check(worker_id, caller())
        return worker_id

    @handles_errors
    def Join(self, request, context):
        worker_id, task = self._federation.join(request.worker_name, request.device)
        self._identities.bind(worker_id, caller())
        return coordinator_pb2.JoinReply(worker_id=worker_id, task=serde.task_to_proto(task))

    @handles_errors
    def GetAssignment(self, request, context):
        a = self._federation.assignment(self._owned(request.worker_id), request.wait_ms / 1000.0)
        return serde.assignment_to_proto(a)

    @handles_stream_errors
    def PullWeights(self, request, context):
        version, specs, payload = self._federation.weights_payload(self._owned(request.worker_id),
                                                                   request.have_version)
        total = sum(s.nbytes for s in specs)
        header = coordinator_pb2.WeightsMessage(header=coordinator_pb2.WeightsHeader(
            version=version, unchanged=payload is None,
            tensors=serde.header_to_proto(specs, total)))
        if payload is None:
            yield header
        else:
            yield from serde.frame(header, payload, coordinator_pb2.WeightsMessage)

    @handles_errors
    def PushUpdate(self, request_iterator, context):
        def check(header):
            self._owned(header.worker_id)
            specs, _ = serde.header_from_proto(header.tensors)
            self._federation.check_update(serde.update_meta_from_proto(header), specs)

        header, arrays = serde.read_one(request_iterator, validate_header=check)
        result = self._federation.push(serde.update_meta_from_proto(header), arrays)
        return serde.push_result_to_proto(result)

    @handles_errors
    def GetStatus(self, request, context):
        s = self._federation.status()
        return coordinator_pb2.Status(
            phase=s["phase"], round=s["round"], version=s["version"],
            total_rounds=s["total_rounds"],
            workers=[coordinator_pb2.WorkerInfo(**w) for w in s["workers"]],
            last_metrics={k: float(v) for k, v in s["last_metrics"].items()})

    @handles_errors
    def Evaluate(self, request, context):
        version, metrics = self._federation.evaluate()
        return coordinator_pb2.EvaluateReply(version=version, metrics=metrics)

    @handles_errors
    def Leave(self, request, context):
        self._federation.leave(self._owned(request.worker_id))
        return coordinator_pb2.LeaveReply()
