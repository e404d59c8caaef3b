"""Bearer-token authentication: one server interceptor checks every call.

A server started with `--auth-tokens FILE` (lines `NAME TOKEN [SITE]`; `#` comments) accepts
only calls carrying `authorization: Bearer TOKEN` for a listed token; others get
UNAUTHENTICATED. Health checks and reflection stay open, so probes and tools need no token.
The caller's NAME is available to the servicer through `caller()`, which the coordinator uses
to bind each worker id to the identity that joined with it; a token with a SITE is bound to
that data site (`caller_site()`): its workers may join for that site only.
"""

from __future__ import annotations

import contextvars
import hmac
from dataclasses import dataclass
from pathlib import Path

import grpc

from fedstream.common.options import option, section
from fedstream.common.tls import TlsConfig

OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


@dataclass(frozen=True)
class Identity:
    name: str
    site: str | None = None  # the data site the token is bound to


_caller: contextvars.ContextVar[Identity | None] = contextvars.ContextVar("fedstream_caller",
                                                                           default=None)


def caller() -> str | None:
    """The authenticated name of the current call's caller (None without authentication)."""
    identity = _caller.get()
    return None if identity is None else identity.name


def caller_site() -> str | None:
    """The site the current caller's token is bound to (None: unbound, or no authentication)."""
    identity = _caller.get()
    return None if identity is None else identity.site


def read_tokens(path: str) -> dict[str, Identity]:
    """token -> identity, from lines `NAME TOKEN [SITE]`."""
    tokens = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) not in (2, 3):
            raise ValueError(f"{path}:{number}: expected `NAME TOKEN [SITE]`, got {line!r}")
        name, token, *site = parts
        if len(token) < 16:
            raise ValueError(f"{path}:{number}: the token of {name} is shorter than 16 characters")
        tokens[token] = Identity(name, site[0] if site else None)
    if not tokens:
        raise ValueError(f"{path} lists no tokens")
    return tokens


def call_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


class TokenAuthInterceptor(grpc.ServerInterceptor):
    def __init__(self, tokens: dict[str, Identity]):
        self._tokens = tokens

    def _identify(self, metadata) -> Identity | None:
        presented = next((v for k, v in metadata if k == "authorization"), "")
        if not presented.startswith("Bearer "):
            return None
        token = presented[len("Bearer "):]
        for known, identity in self._tokens.items():
            if hmac.compare_digest(known.encode(), token.encode()):
                return identity
        return None

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(OPEN_SERVICES):
            return handler
        identity = self._identify(handler_call_details.invocation_metadata or ())
        if identity is None:
            return _refusal(handler)
        return _with_caller(handler, identity)


def _wrap(handler, wrap_behavior):
    kinds = [("unary_unary", grpc.unary_unary_rpc_method_handler),
             ("unary_stream", grpc.unary_stream_rpc_method_handler),
             ("stream_unary", grpc.stream_unary_rpc_method_handler),
             ("stream_stream", grpc.stream_stream_rpc_method_handler)]
    for attribute, factory in kinds:
        behavior = getattr(handler, attribute)
        if behavior is not None:
            return factory(wrap_behavior(behavior, streaming=attribute.endswith("_stream")),
                           request_deserializer=handler.request_deserializer,
                           response_serializer=handler.response_serializer)
    return handler


def _with_caller(handler, identity: Identity):
    def wrap(behavior, streaming):
        if streaming:
            def run(request, context):
                token = _caller.set(identity)
                try:
                    yield from behavior(request, context)
                finally:
                    _caller.reset(token)
        else:
            def run(request, context):
                token = _caller.set(identity)
                try:
                    return behavior(request, context)
                finally:
                    _caller.reset(token)
        return run
    return _wrap(handler, wrap)


def _refusal(handler):
    message = ("this server requires a token: pass --auth-token (metadata "
               "`authorization: Bearer <token>`) with a token its operator issued to you")

    def wrap(behavior, streaming):
        def refuse(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        return refuse
    return _wrap(handler, wrap)


def auth_tokens_option():
    """The server's token file, as a configuration field."""
    return option(None, "file of `NAME TOKEN [SITE]` lines: accept only calls bearing one of "
                        "these; a token with a SITE may join for that data site only")


def auth_token_option():
    """A client's bearer token, as a configuration field."""
    return option(None, "bearer token to present", env="FEDSTREAM_TOKEN", secret=True)


@dataclass(frozen=True)
class ClientCredentials:
    """How a client proves who it is and checks whom it talks to (`fedstream status`)."""
    tls: TlsConfig = section(TlsConfig, "TLS (default: plaintext)")
    auth_token: str | None = auth_token_option()


def server_interceptors(tokens_file: str | None) -> list[grpc.ServerInterceptor]:
    return [TokenAuthInterceptor(read_tokens(tokens_file))] if tokens_file else []
