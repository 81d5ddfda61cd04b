"""Helpers of the security suite: starting the real InferBridge expansion service.

Every service is the real ``inferbridge-expansion-service`` in a child process, started exactly
as ``inferbridge.local_services.expansion_service`` starts it (same command line, same readiness
check, ``wait_until_serving``), except that its log goes to a file the tests read (the address and
worker pool lines) and its process id is kept (its listening sockets are read from /proc). The
suite's services start together, once per session (conftest.py), to keep it fast.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import subprocess
import sys
import typing
from pathlib import Path
from typing import Optional

import grpc
from apache_beam.portability.api import beam_expansion_api_pb2_grpc

from inferbridge import Inference, Model, healthcheck, testing
from inferbridge.local_services import free_port
from inferbridge.spec import RUN_INFERENCE_URN

START_TIMEOUT_SECS = 180
# What Beam's clients send as the input of the attacked transform: Rows (id, pixels).
INPUT_SCHEMA_FIELDS = [("id", int), ("pixels", typing.Sequence[float])]


@dataclasses.dataclass
class Service:
    """One running service: its address (``localhost:PORT``), process and log."""

    name: str
    port: int
    process: subprocess.Popen
    log_path: Path
    ca_file: Optional[str] = None
    token: Optional[str] = None

    @property
    def address(self) -> str:
        return f"localhost:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text()


def _child_env(extra: dict[str, str]) -> dict[str, str]:
    # Flags can be set by INFERBRIDGE_* variables: none leak in from the developer's shell.
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERBRIDGE_")}
    env.update(extra)
    return env


def launch(name: str, log_dir: Path, service_args=(), env=None, port: int = 0) -> tuple[subprocess.Popen, int, Path]:
    """Starts ``python -m inferbridge.expansion_service`` (as local_services does); doesn't wait."""
    port = port or free_port()
    log_path = log_dir / f"{name}.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "inferbridge.expansion_service", "--port", str(port), "--log-level", "INFO", *service_args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_child_env(env or {}),
        )
    return process, port, log_path


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def self_signed_certificate(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for localhost / 127.0.0.1 and its key, as PEM files."""
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    try:
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", str(key_path), "-out", str(cert_path), "-days", "2", "-subj", "/CN=localhost",
             "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
            check=True, capture_output=True,
        )
        return cert_path, key_path
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@dataclasses.dataclass(frozen=True)
class Layout:
    """Folders of the suite: model roots of the services, a place outside them, certificates."""

    base: Path
    trusted: Path  # --trusted-model-root of the default service
    models: Path  # --model-root of the default service
    outside: Path  # under no root
    certs: Path




class WritesMarker:
    """Unpickling this creates ``path``: proof that a payload was decoded. The pickle names only
    ``builtins.open``: it works in any process, this class need not be importable there."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


# --- requests ---------------------------------------------------------------------------------


def expansion_request(urn, payload=b"", row_schema=None):
    from apache_beam.typehints import schemas

    row_schema = row_schema or schemas.named_fields_to_schema(INPUT_SCHEMA_FIELDS)
    return testing.expansion_request(urn, payload, row_schema, name="Attack", namespace="attack")


def native_payload(model: Model, **options) -> bytes:
    """The configuration payload of the native InferBridge URN for one model."""
    _, payload = Inference(model, key_field="id", feature_fields="pixels", **options).to_runner_api_parameter(None)
    return payload.SerializeToString()


def native_request(model: Model, **options):
    return expansion_request(RUN_INFERENCE_URN, native_payload(model, **options))


def channel_to(service: Service):
    if service.ca_file:
        return grpc.secure_channel(service.address, grpc.ssl_channel_credentials(Path(service.ca_file).read_bytes()))
    return grpc.insecure_channel(service.address)


def expand(service: Service, request, metadata=None):
    with channel_to(service) as channel:
        return beam_expansion_api_pb2_grpc.ExpansionServiceStub(channel).Expand(request, metadata=metadata, timeout=60)


def assert_healthy(service: Service):
    assert service.process.poll() is None, f"the service exited ({service.process.returncode}):\n{service.log()}"
    assert healthcheck.check(service.address, ca_file=service.ca_file) == "SERVING"
