"""Transport security of the expansion service: TLS credentials, and the admission of calls
(a bearer-token check, a bound per client address, a deadline for the request to arrive).

Admission is a gRPC server interceptor, so it covers every RPC of the service's port
(expansion, discovery, artifact retrieval, health) as the call arrives. gRPC health checks need
no token: they reveal nothing but "serving", and probes (Docker, Kubernetes) cannot send one.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import grpc

_LOGGER = logging.getLogger("inferbridge.expansion_service")

TOKEN_ENV = "INFERBRIDGE_AUTH_TOKEN"
HEALTH_SERVICE_PREFIX = "/grpc.health.v1.Health/"


def read_token(token_file: Optional[str]) -> Optional[str]:
    """The bearer token from ``token_file``, else from $INFERBRIDGE_AUTH_TOKEN; None for neither."""
    if token_file:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as e:
            raise ValueError(f"--auth-token-file={token_file!r} cannot be read: {e.strerror}") from None
        if not token:
            raise ValueError(f"--auth-token-file={token_file!r} is empty; put the token in it")
        return token
    token = os.environ.get(TOKEN_ENV, "").strip()
    return token or None


def server_credentials(
    cert_file: Optional[str], key_file: Optional[str], client_ca_file: Optional[str]
) -> Optional[grpc.ServerCredentials]:
    """TLS credentials from PEM files; None when TLS is not configured."""
    if not cert_file and not key_file:
        if client_ca_file:
            raise ValueError("--tls-client-ca-file needs --tls-cert-file and --tls-key-file")
        return None
    if not (cert_file and key_file):
        missing = "--tls-key-file" if cert_file else "--tls-cert-file"
        raise ValueError(f"TLS needs both --tls-cert-file and --tls-key-file; {missing} is missing")
    key, cert = _read_pem("--tls-key-file", key_file), _read_pem("--tls-cert-file", cert_file)
    client_ca = _read_pem("--tls-client-ca-file", client_ca_file) if client_ca_file else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def _read_pem(flag: str, path: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ValueError(f"{flag}={path!r} cannot be read: {e.strerror}") from None
    if b"-----BEGIN " not in data:
        raise ValueError(f"{flag}={path!r} is not a PEM file (no '-----BEGIN' line)")
    return data


class CallAdmission(grpc.ServerInterceptor):
    """Every call of the service's port is admitted here as it arrives, before its request:

    - without ``authorization: Bearer <token>`` (when the service has one; health checks aside)
      it is answered UNAUTHENTICATED at once;
    - one client address (an IPv4 address, an IPv6 /64) has at most ``per_peer`` calls at a
      time: more are answered RESOURCE_EXHAUSTED;
    - a call whose request has not arrived within ``arrival_secs`` is cancelled.

    gRPC counts a call against the service's concurrent-call bound from its headers on, and runs
    a handler of a unary request only once the request arrived: calls that never send one held
    the bound's every slot, for ever (health checks answered "Concurrent RPC limit exceeded"),
    and a refusal of a missing token waited for the request too. Handlers here take their
    request as a stream of one, so that this runs when the call arrives.
    """

    def __init__(self, token: Optional[str], per_peer: int, arrival_secs: float) -> None:
        self._expected = None if token is None else f"Bearer {token}".encode()
        self._per_peer = per_peer
        self._arrival_secs = arrival_secs
        self._calls: dict[str, int] = {}
        self._lock = threading.Lock()
        self._refusals = _QuietLog(60.0)

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        handler = continuation(details)
        if handler is None or handler.request_streaming:  # unknown method; no such method is served
            return handler
        refusal = None
        if self._expected is not None and not details.method.startswith(HEALTH_SERVICE_PREFIX):
            sent = dict(details.invocation_metadata or ()).get("authorization")
            if sent is None or not hmac.compare_digest(sent.encode(), self._expected):
                problem = "no bearer token was sent" if sent is None else "the bearer token was rejected"
                self._refusals.warning("Refused %s: %s", details.method, problem)
                refusal = (
                    f"InferBridge expansion service: {problem}; send the service's token as gRPC metadata "
                    "'authorization: Bearer <token>' (Java: Inference.withServiceCredentials or "
                    "$INFERBRIDGE_AUTH_TOKEN)"
                )
        kwargs = {"request_deserializer": handler.request_deserializer, "response_serializer": handler.response_serializer}
        if handler.response_streaming:
            def streamed(requests: Any, context: grpc.ServicerContext) -> Any:
                with self._admitted(context, refusal):
                    request = self._request(requests, context)
                    yield from handler.unary_stream(request, context)

            return grpc.stream_stream_rpc_method_handler(streamed, **kwargs)

        def answered(requests: Any, context: grpc.ServicerContext) -> Any:
            with self._admitted(context, refusal):
                return handler.unary_unary(self._request(requests, context), context)

        return grpc.stream_unary_rpc_method_handler(answered, **kwargs)

    @contextlib.contextmanager
    def _admitted(self, context: grpc.ServicerContext, refusal: Optional[str]) -> Iterator[None]:
        if refusal is not None:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, refusal)
        peer = _peer_address(context.peer())
        with self._lock:
            held = self._calls.get(peer, 0)
            if held < self._per_peer:
                self._calls[peer] = held + 1
        if held >= self._per_peer:
            self._refusals.warning("Refused a call from %s: it has %d calls open", peer, held)
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"InferBridge expansion service: this client address has {held} calls open; allowed: at most "
                f"{self._per_peer} at a time",
            )
        try:
            yield
        finally:
            with self._lock:
                left = self._calls[peer] - 1
                if left:
                    self._calls[peer] = left
                else:
                    del self._calls[peer]

    def _request(self, requests: Any, context: grpc.ServicerContext) -> Any:
        """The call's one request; the call is cancelled if it does not come in time."""
        timer = threading.Timer(self._arrival_secs, context.cancel)
        timer.daemon = True
        timer.start()
        try:
            request = next(requests, None)
        finally:
            timer.cancel()
        if request is None:
            context.abort(grpc.StatusCode.CANCELLED, f"InferBridge expansion service: no request within {self._arrival_secs:g} s")
        return request


def _peer_address(peer: str) -> str:
    """The client's address of a gRPC peer ("ipv4:10.0.0.7:5123", "ipv6:[fd00::1]:5123"): IPv4
    whole, IPv6 its /64 (one host may hold a whole /64); anything else as it is."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    if kind == "ipv6":
        try:
            network = ipaddress.IPv6Network(f"{rest.rpartition(':')[0].strip('[]')}/64", strict=False)
        except ValueError:
            return peer
        return str(network)
    return kind


class _QuietLog:
    """Warnings, at most ``burst`` per ``period_secs``, then one saying how many were left out:
    a client refused in a loop must not flood the log."""

    def __init__(self, period_secs: float, burst: int = 100) -> None:
        self._period = period_secs
        self._burst = burst
        self._started = 0.0
        self._logged = self._left_out = 0
        self._lock = threading.Lock()

    def warning(self, message: str, *args: Any) -> None:
        with self._lock:
            now = time.monotonic()
            left_out = 0
            if now - self._started >= self._period:
                left_out, self._started, self._logged, self._left_out = self._left_out, now, 0, 0
            if self._logged >= self._burst:
                self._left_out += 1
                return
            self._logged += 1
        if left_out:
            _LOGGER.warning("%d more refusals in the %g s before were not logged", left_out, self._period)
        _LOGGER.warning(message, *args)
