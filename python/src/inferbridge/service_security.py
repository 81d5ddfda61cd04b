"""Transport security of the expansion service: TLS credentials and a bearer-token check.

The token check is a gRPC server interceptor, so it covers every RPC of the service's port
(expansion, discovery, artifact retrieval) before any handler runs. gRPC health checks are left
open: they reveal nothing but "serving", and probes (Docker, Kubernetes) cannot send a token.
"""

from __future__ import annotations

import hmac
import logging
import os
from pathlib import Path
from typing import Any, Callable, Optional

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


class BearerTokenInterceptor(grpc.ServerInterceptor):
    """Answers UNAUTHENTICATED to any RPC (health checks aside) without ``authorization: Bearer <token>``."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        handler = continuation(details)
        if handler is None or details.method.startswith(HEALTH_SERVICE_PREFIX):
            return handler
        sent = dict(details.invocation_metadata or ()).get("authorization")
        if sent is not None and hmac.compare_digest(sent.encode(), self._expected):
            return handler
        problem = "no bearer token was sent" if sent is None else "the bearer token was rejected"
        _LOGGER.warning("Refused %s: %s", details.method, problem)
        return _abort_handler(
            handler,
            grpc.StatusCode.UNAUTHENTICATED,
            f"InferBridge expansion service: {problem}; send the service's token as gRPC metadata "
            "'authorization: Bearer <token>' (Java: Inference.withServiceCredentials or "
            "$INFERBRIDGE_AUTH_TOKEN)",
        )


def _abort_handler(handler: Any, code: grpc.StatusCode, message: str) -> Any:
    """A handler of the same shape as ``handler`` that fails every call with ``code``."""

    def abort(_request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(code, message)

    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort, **kwargs)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort, **kwargs)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort, **kwargs)
    return grpc.unary_unary_rpc_method_handler(abort, **kwargs)
