"""Domain errors <-> gRPC status codes, in one table read both ways: servers abort with the
code of the error raised, clients raise the error of the code received."""

from __future__ import annotations

import grpc

from fedstream.common import errors

_STATUS = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
}


def grpc_status(error: errors.FedstreamError) -> grpc.StatusCode:
    for kind, code in _STATUS.items():
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.INTERNAL


def error_from_rpc(error: grpc.RpcError) -> errors.FedstreamError:
    """The domain error for a failed call, so clients raise the same types servers do."""
    code = error.code()
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:  # a hung or unreachable peer: retry later
        return errors.Unavailable(f"{code.name}: {error.details()}")
    kind = next((k for k, c in _STATUS.items() if c == code), errors.FedstreamError)
    return kind(f"{code.name}: {error.details()}")
