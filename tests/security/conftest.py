"""Fixtures of the security suite: live InferBridge expansion services, started once, together."""

from __future__ import annotations

import pickle
import secrets
import subprocess
import time

import pytest

from attack_support import START_TIMEOUT_SECS, Layout, Service, launch, self_signed_certificate
from inferbridge.local_services import wait_until_serving


@pytest.fixture(scope="session")
def layout(tmp_path_factory) -> Layout:
    base = tmp_path_factory.mktemp("security")
    dirs = {name: base / name for name in ("trusted", "models", "outside", "certs", "logs")}
    for d in dirs.values():
        d.mkdir()
    return Layout(base, dirs["trusted"], dirs["models"], dirs["outside"], dirs["certs"])


@pytest.fixture(scope="session")
def services(layout):
    """Every service of the suite, by name, started concurrently (each also with the default
    service's model roots, so that the same valid request expands everywhere).

    default:          the defaults, plus --trusted-model-root and --model-root
    token_env:        a bearer token from $INFERBRIDGE_AUTH_TOKEN, listening on all interfaces
                      (--host=0.0.0.0, as in a container): the worker pool must stay on loopback
    tls:              TLS (--tls-cert-file/--tls-key-file, self-signed for localhost) and a bearer
                      token from --auth-token-file: how a service reachable beyond this machine runs
    external_limited: --environment-type=EXTERNAL (no embedded worker pool) and
                      --max-request-bytes=65536
    """
    logs = layout.base / "logs"
    roots = [f"--trusted-model-root={layout.trusted}", f"--model-root={layout.models}"]
    env_token, file_token = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    token_file = layout.base / "token"
    token_file.write_text(file_token + "\n")
    token_file.chmod(0o600)
    cert, key = self_signed_certificate(layout.certs, "service")
    configs = {
        "default": dict(service_args=roots),
        "token_env": dict(service_args=[*roots, "--host=0.0.0.0"], env={"INFERBRIDGE_AUTH_TOKEN": env_token}, token=env_token),
        "tls": dict(
            service_args=[*roots, f"--tls-cert-file={cert}", f"--tls-key-file={key}", f"--auth-token-file={token_file}"],
            ca_file=str(cert),
            token=file_token,
        ),
        "external_limited": dict(
            service_args=[*roots, "--environment-type=EXTERNAL", "--environment-config=localhost:1", "--max-request-bytes=65536"]
        ),
    }
    started: dict[str, Service] = {}
    try:
        for name, config in configs.items():
            process, port, log_path = launch(name, logs, config["service_args"], config.get("env"))
            started[name] = Service(name, port, process, log_path, config.get("ca_file"), config.get("token"))
        for service in started.values():
            try:
                wait_until_serving(service.address, service.process, START_TIMEOUT_SECS, service.ca_file)
            except Exception as e:
                raise RuntimeError(f"service {service.name} did not start: {e}\n{service.log()}") from None
        yield started
    finally:
        for service in started.values():
            if service.process.poll() is None:
                service.process.terminate()
        deadline = time.monotonic() + 60
        for service in started.values():
            try:
                service.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                service.process.kill()
                service.process.wait()


@pytest.fixture(scope="session")
def default_service(services) -> Service:
    return services["default"]


@pytest.fixture
def marker(tmp_path):
    """A file that must not appear."""
    return tmp_path / "marker"


@pytest.fixture(scope="session")
def good_model(layout) -> str:
    """A real (tiny) scikit-learn model in the default service's trusted root."""
    from sklearn.linear_model import LogisticRegression

    path = layout.trusted / "good.pkl"
    path.write_bytes(pickle.dumps(LogisticRegression().fit([[0.0, 0.0], [1.0, 1.0]], [0, 1])))
    return str(path)
