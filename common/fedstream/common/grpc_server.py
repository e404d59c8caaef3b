"""One gRPC server factory for every service: options, health, reflection, graceful stop;
and the servicer decorators that turn domain errors into status codes."""

from __future__ import annotations

import functools
import logging
import os
import signal
import threading
import time
from concurrent import futures
from typing import Callable, Iterable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from fedstream.common import errors
from fedstream.common.status_codes import grpc_status

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # gRPC's default, stated: tensors arrive in 1 MiB chunks

SERVER_OPTIONS = [
    # Chunked tensor streams keep every message small; keep the default limit explicit.
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    # Let idle workers keep their connection alive across long rounds and evaluation.
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # Refuse to share a port with a stale process: a second bind must fail loudly.
    ("grpc.so_reuseport", 0),
]


def handles_errors(method: Callable) -> Callable:
    """Servicer decorator: domain errors become `context.abort(code, message)`."""
    name = method.__qualname__

    @functools.wraps(method)
    def unary(self, request, context):
        try:
            return method(self, request, context)
        except errors.FedstreamError as e:
            log.info("[%s] refused: %s", name, e)
            context.abort(grpc_status(e), str(e))

    return unary


def handles_stream_errors(method: Callable) -> Callable:
    """As `handles_errors`, for server-streaming methods (generators)."""
    name = method.__qualname__

    @functools.wraps(method)
    def streaming(self, request, context):
        try:
            yield from method(self, request, context)
        except errors.FedstreamError as e:
            log.info("[%s] refused: %s", name, e)
            context.abort(grpc_status(e), str(e))

    return streaming


class Server:
    """A started gRPC server with health and reflection, and the port it bound."""

    def __init__(self, grpc_server: grpc.Server, port: int, health_servicer: health.HealthServicer,
                 service_names: Iterable[str]):
        self.grpc_server = grpc_server
        self.port = port
        self.health = health_servicer
        self.service_names = list(service_names)

    def set_serving(self) -> None:
        for name in [*self.service_names, ""]:
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    def stop(self, grace_s: float = 5.0) -> None:
        """Health NOT_SERVING first, then let in-flight RPCs finish within the grace period."""
        self.health.enter_graceful_shutdown()
        self.grpc_server.stop(grace_s).wait()

    def wait(self) -> None:
        self.grpc_server.wait_for_termination()


def create_server(address: str, register: Callable[[grpc.Server], None],
                  service_names: Iterable[str], *, max_workers: int = 64,
                  credentials: grpc.ServerCredentials | None = None,
                  interceptors: Iterable[grpc.ServerInterceptor] = ()) -> Server:
    """Bind `address` ("host:port", port 0 picks a free one), register services, start.
    With `credentials` the port speaks TLS (see fedstream.common.tls)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers,
                                                    thread_name_prefix="rpc"),
                         options=SERVER_OPTIONS, interceptors=list(interceptors))
    register(server)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = list(service_names)
    reflection.enable_server_reflection(
        [*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    try:
        port = (server.add_secure_port(address, credentials) if credentials is not None
                else server.add_insecure_port(address))
    except RuntimeError as e:
        raise errors.Unavailable(f"cannot listen on {address}: {e}") from e
    if port == 0:
        raise errors.Unavailable(f"cannot listen on {address}: address in use or invalid")
    server.start()
    return Server(server, port, health_servicer, names)


def stop_on_signals(server: Server, on_stop: Callable[[], None] = lambda: None,
                    grace_s: float = 5.0) -> threading.Event:
    """SIGTERM/SIGINT: run `on_stop`, then stop the server gracefully. Returns the stop event."""
    stopping = threading.Event()

    def handle(signum, _frame):
        if stopping.is_set():
            return
        stopping.set()
        log.info("received %s: shutting down", signal.Signals(signum).name)
        threading.Thread(target=_stop, daemon=True).start()

    def _stop():
        try:
            on_stop()
        except Exception:  # a failed last checkpoint must not keep the server up
            log.exception("could not finish before stopping")
        finally:
            server.stop(grace_s)

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    return stopping


def publish_address(path: str | None, address: str) -> None:
    """Atomically write the bound address to `path`, so a launcher never reads half a line."""
    if path:
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            f.write(address + "\n")
        os.replace(tmp, path)


def published_address(path: str, timeout_s: float) -> str:
    """The address a service publishes to `path` (`publish_address`), once it appears."""
    deadline = time.monotonic() + timeout_s
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no address appeared in {path} within {timeout_s:.0f} s: is "
                               "the service started with --port-file pointing there?")
        time.sleep(0.05)
    with open(path) as f:
        return f.read().strip()


def bound_address(listen: str, port: int) -> str:
    return f"{listen.rsplit(':', 1)[0]}:{port}"
