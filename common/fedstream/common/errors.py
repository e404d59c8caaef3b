"""Domain errors. Each type stands for one gRPC status code; `grpc_status` maps them in one
place, so domain code never imports grpc and servicers never choose codes themselves."""

from __future__ import annotations


class FedstreamError(Exception):
    """Base: the message says what was wrong and what to do about it."""


class InvalidArgument(FedstreamError):
    """Malformed input: bad stream framing, wrong dtype/shape, NaN/Inf, out-of-range values."""


class NotFound(FedstreamError):
    """An id the server does not know (worker, client)."""


class AlreadyExists(FedstreamError):
    """A name is taken by something else (a site that joined with other clients)."""


class PermissionDenied(FedstreamError):
    """The caller is known but may not do this (work leased to another worker)."""


class FailedPrecondition(FedstreamError):
    """Well-formed input at the wrong time: closed round, stale base version."""


class ResourceExhausted(FedstreamError):
    """The request asks for more than the server accepts."""


class Unavailable(FedstreamError):
    """The server is shutting down or a dependency cannot be reached; retry later."""
