"""The expansion service image (expansion-service/Dockerfile), built and run for real.

The image is built by scripts/build-image in a container engine started by
scripts/container-engine when none runs. Containers use the host's network, as on machines where
the engine has no bridge network; every service listens on a free loopback port.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from digits_support import run_python_pipeline, sklearn_predictions

from inferbridge.local_services import free_port

ROOT = Path(__file__).resolve().parents[2]

# The first test builds the image (several minutes on a cold engine).
pytestmark = pytest.mark.timeout(3600)

DIGITS_MAIN = "dev.inferbridge.examples.DigitsClassification"
RUN_TIMEOUT_SECS = 300
START_TIMEOUT_SECS = 180


@contextlib.contextmanager
def running(image: str, *command: str, env: dict[str, str], volumes: dict[Path, str] | None = None) -> Iterator:
    """A container of ``image`` on the host's network, removed afterwards; its logs are printed
    when the test fails. The image's health check runs every 2 s instead of every 30 s."""
    from testcontainers.core.container import DockerContainer

    # Fields left out (the command, timeout, retries) keep the image's values.
    container = DockerContainer(image).with_kwargs(network_mode="host", healthcheck={"interval": 2_000_000_000})
    if command:
        container = container.with_command(list(command))
    for name, value in env.items():
        container = container.with_env(name, value)
    for path, mode in (volumes or {}).items():
        container = container.with_volume_mapping(str(path), str(path), mode)
    container.start()
    try:
        yield container
    finally:
        stdout, stderr = container.get_logs()
        print(f"--- logs of {image} {' '.join(command)}\n{stdout.decode()}{stderr.decode()}")
        container.stop()


def logs(container) -> str:
    stdout, stderr = container.get_logs()
    return stdout.decode() + stderr.decode()


def state(container) -> dict:
    wrapped = container.get_wrapped_container()
    wrapped.reload()
    return wrapped.attrs["State"]


def wait_healthy(container, timeout_secs: float = START_TIMEOUT_SECS) -> None:
    """Waits until the image's own HEALTHCHECK (inferbridge-healthcheck) reports healthy."""
    deadline = time.monotonic() + timeout_secs
    while time.monotonic() < deadline:
        current = state(container)
        if current["Status"] != "running":
            pytest.fail(f"the container stopped ({current['Status']}, exit {current['ExitCode']}):\n{logs(container)}")
        health = current.get("Health", {})
        if health.get("Status") == "healthy":
            return
        if health.get("Status") == "unhealthy":
            pytest.fail(f"the container became unhealthy: {health.get('Log')}\n{logs(container)}")
        time.sleep(1)
    pytest.fail(f"the container was not healthy after {timeout_secs}s: {state(container).get('Health')}\n{logs(container)}")


def wait_grpc_ready(address: str, container, timeout_secs: float = START_TIMEOUT_SECS) -> None:
    deadline = time.monotonic() + timeout_secs
    while time.monotonic() < deadline:
        if state(container)["Status"] != "running":
            pytest.fail(f"the container stopped:\n{logs(container)}")
        with grpc.insecure_channel(address) as channel:
            try:
                grpc.channel_ready_future(channel).result(timeout=1)
                return
            except grpc.FutureTimeoutError:
                pass
    pytest.fail(f"nothing answered on {address} after {timeout_secs}s:\n{logs(container)}")


def exec_in(container, command: str) -> tuple[int, str]:
    code, output = container.get_wrapped_container().exec_run(["sh", "-c", command])
    return code, output.decode().strip()


def service_env(port: int, **extra: str) -> dict[str, str]:
    # The host's network: bind loopback only (the image's default, 0.0.0.0, is for published ports).
    return {"INFERBRIDGE_HOST": "127.0.0.1", "INFERBRIDGE_PORT": str(port), **extra}


def test_image_runs_the_service_as_a_non_root_user_and_becomes_healthy(image, docker_client):
    config = docker_client.api.inspect_image(image)["Config"]
    assert config["User"] == "10001:10001"
    assert config["Healthcheck"]["Test"] == ["CMD", "inferbridge-healthcheck"]
    assert config["ExposedPorts"] == {"8097/tcp": {}}
    port = free_port()
    with running(image, env=service_env(port)) as container:
        wait_healthy(container)
        assert exec_in(container, "id -u; id -un") == (0, "10001\ninferbridge")
        # PID 1 is the service itself (the entrypoint execs it), as the image's user.
        code, status = exec_in(container, "cat /proc/1/cmdline | tr '\\0' ' '; grep '^Uid:' /proc/1/status")
        assert code == 0 and "inferbridge-expansion-service" in status, status
        assert status.split("Uid:")[1].split() == ["10001"] * 4
        # The user cannot change the installed code.
        assert exec_in(container, "touch /opt/inferbridge/bin/x")[0] != 0
        code, output = exec_in(container, "inferbridge-healthcheck")
        assert (code, output.splitlines()[-1]) == (0, f"127.0.0.1:{port}: SERVING"), output
        # JSON logs (INFERBRIDGE_LOG_FORMAT=json in the image); models confined to /models.
        entries = [json.loads(line) for line in logs(container).splitlines() if line.startswith("{")]
        assert any(f"listening on 127.0.0.1:{port}" in e["message"] for e in entries), entries
        assert any("model_roots=('/models',)" in e["message"] for e in entries), entries
        # SIGTERM: the service finishes and exits 0.
        container.get_wrapped_container().stop(timeout=60)
        assert state(container)["ExitCode"] == 0, logs(container)


def test_help_lists_the_flags_and_their_environment_variables(image, docker_client):
    output = docker_client.containers.run(image, ["--help"], network_mode="host", remove=True).decode()
    output = " ".join(output.split())  # argparse wraps lines to the terminal's width
    for flag, env in (
        ("--host", "INFERBRIDGE_HOST"),
        ("--port", "INFERBRIDGE_PORT"),
        ("--trusted-model-root", "INFERBRIDGE_TRUSTED_MODEL_ROOTS"),
        ("--model-root", "INFERBRIDGE_MODEL_ROOTS"),
        ("--worker-pool-port", "INFERBRIDGE_WORKER_POOL_PORT"),
        ("--worker-pool-host", "INFERBRIDGE_WORKER_POOL_HOST"),
        ("--environment-type", "INFERBRIDGE_ENVIRONMENT_TYPE"),
        ("--log-format", "INFERBRIDGE_LOG_FORMAT"),
    ):
        assert flag in output and f"[env {env}]" in output, (flag, output)
    assert output.startswith("usage: inferbridge-expansion-service")


def test_java_pipeline_expanded_by_the_container_matches_scikit_learn(
    image, java_classpath, shared_digits_dir, tmp_path
):
    """The Java digits example with its Python stage expanded by the container, and run by the
    worker pool embedded in it (an EXTERNAL environment on the container's loopback port)."""
    from inferbridge.local_runner import job_service

    port = free_port()
    env = service_env(
        port,
        INFERBRIDGE_MODEL_ROOTS=str(shared_digits_dir),
        INFERBRIDGE_TRUSTED_MODEL_ROOTS=str(shared_digits_dir),
        INFERBRIDGE_LOG_LEVEL="INFO",
    )
    with running(image, env=env, volumes={shared_digits_dir: "ro"}) as container, job_service() as jobs:
        wait_healthy(container)
        predictions = tmp_path / "predictions.csv"
        failures = tmp_path / "failures.jsonl"
        result = subprocess.run(
            [
                "java", "-cp", java_classpath, DIGITS_MAIN,
                f"--modelDir={shared_digits_dir}",
                f"--predictionsFile={predictions}",
                f"--failuresFile={failures}",
            ],
            env={**os.environ, "INFERBRIDGE_EXPANSION_SERVICE": f"localhost:{port}", "INFERBRIDGE_JOB_ENDPOINT": jobs},
            check=False,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_SECS,
        )
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
        service_logs = logs(container)
    expected = json.loads((shared_digits_dir / "expected.json").read_text())
    lines = result.stdout.strip().splitlines()
    assert lines[-1] == f"accuracy={expected['score']!r} expected={expected['score']!r} rows={expected['rows']}"
    assert "failures=0" in lines
    assert failures.read_text() == ""
    predicted = {int(k): int(v) for k, v in (line.split(",") for line in predictions.read_text().split())}
    assert predicted == sklearn_predictions(shared_digits_dir)
    # The container expanded the transform, and the SDK harness of its embedded worker pool ran
    # the Python stage over every row.
    entries = [json.loads(line) for line in service_logs.splitlines() if line.startswith("{")]
    messages = {(e["logger"], e["message"].split(" in ")[0]) for e in entries}
    assert ("inferbridge.expansion_service", "Expanded beam:transform:inferbridge:run_inference:v1") in messages
    assert ("apache_beam.runners.worker.sdk_worker", "Control channel established.") in messages
    assert any(f"element_count={expected['rows']} " in e["message"] for e in entries), service_logs[-3000:]


def test_worker_pool_role_runs_a_python_pipelines_workers(
    image, shared_digits_dir, shared_output_dir, digits_ab_expected_output
):
    """`IMAGE worker-pool`: Beam's worker pool, as a Flink worker-pool sidecar runs it. A Python
    pipeline on a portable job service gets its SDK workers from the container (EXTERNAL)."""
    from inferbridge.local_runner import job_service

    pool_port = free_port()
    with running(
        image,
        "worker-pool",
        env={"INFERBRIDGE_WORKER_POOL_PORT": str(pool_port)},
        volumes={shared_digits_dir: "ro", shared_output_dir: "rw"},
    ) as container, job_service() as jobs:
        wait_grpc_ready(f"localhost:{pool_port}", container)
        result = run_python_pipeline(
            ROOT / "examples/python/digits_ab.py", [shared_digits_dir, shared_output_dir],
            jobs, "EXTERNAL", f"localhost:{pool_port}",
        )
        pool_logs = logs(container)
    # The workers ran in the container, as its user (they wrote the outputs).
    assert "Starting worker with command" in pool_logs, pool_logs[-2000:]
    assert (shared_output_dir / "evaluation").stat().st_uid == 10001
    lines = result.stdout.strip().splitlines()
    expected = digits_ab_expected_output(shared_digits_dir)
    assert [line for line in lines if line.startswith("model=")] == expected[:-1]
    assert lines[-1] == expected[-1]


def test_image_is_a_python_sdk_container_for_docker_environments(image, docker_client):
    """Beam's boot launcher (/opt/apache/beam/boot) is the image's SDK-container role: a runner
    starts the image as a DOCKER environment, as Dataflow starts custom containers."""
    from inferbridge.local_runner import job_service

    before = {c.id for c in docker_client.containers.list(all=True)}
    try:
        with job_service() as jobs:
            result = run_python_pipeline(
                Path(__file__).with_name("sdk_container_pipeline.py"),
                # what the workers must report: their uid, Python, and the package they import
                ["10001,/opt/inferbridge/bin/python,inferbridge"],
                jobs, "DOCKER", image,
            )
        assert result.stdout.strip().splitlines()[-1] == "pipeline done"
        workers = [c for c in docker_client.containers.list(all=True, filters={"ancestor": image}) if c.id not in before]
        assert workers, "the runner started no container of the image"
        assert workers[0].attrs["Path"] == "inferbridge-entrypoint"
        assert any(arg.startswith("--provision_endpoint=") for arg in workers[0].attrs["Args"])
    finally:
        # Beam's runner stops its worker containers but leaves them behind.
        for container in docker_client.containers.list(all=True, filters={"ancestor": image}):
            if container.id not in before:
                container.remove(force=True)
