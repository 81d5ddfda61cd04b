"""``inferbridge-healthcheck``: exits 0 when an expansion service answers SERVING, else 1.

It is the container's HEALTHCHECK: with no flags it asks 127.0.0.1:$INFERBRIDGE_PORT, over TLS
when $INFERBRIDGE_TLS_CERT_FILE is set (trusting that certificate).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def check(address: str, timeout_secs: float = 5.0, ca_file: Optional[str] = None, server_name: str = "localhost") -> str:
    """The serving status of the service at ``address`` (e.g. "SERVING"); raises grpc.RpcError."""
    if ca_file:
        credentials = grpc.ssl_channel_credentials(root_certificates=Path(ca_file).read_bytes())
        channel = grpc.secure_channel(address, credentials, options=[("grpc.ssl_target_name_override", server_name)])
    else:
        channel = grpc.insecure_channel(address)
    with channel:
        response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout_secs)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="inferbridge-healthcheck", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--address",
        default=f"127.0.0.1:{os.environ.get('INFERBRIDGE_PORT', '8097')}",
        help="host:port of the service (default: %(default)s, from $INFERBRIDGE_PORT)",
    )
    parser.add_argument(
        "--tls-ca-file",
        default=os.environ.get("INFERBRIDGE_TLS_CERT_FILE") or None,
        help="PEM certificate to trust; TLS is used when set (default: $INFERBRIDGE_TLS_CERT_FILE)",
    )
    parser.add_argument(
        "--tls-server-name", default="localhost", help="name the certificate is checked against (default: %(default)s)"
    )
    parser.add_argument("--timeout-secs", type=float, default=5.0, help="(default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        status = check(args.address, args.timeout_secs, args.tls_ca_file, args.tls_server_name)
    except grpc.RpcError as e:
        print(f"inferbridge-healthcheck: {args.address}: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"inferbridge-healthcheck: --tls-ca-file={args.tls_ca_file!r}: {e.strerror}", file=sys.stderr)
        return 1
    print(f"{args.address}: {status}")
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
