"""A Flink job server with an embedded local cluster (scripts/flink-job-server) for the tests."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from inferbridge.local_services import free_port

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_SECS = 600  # the first start resolves the job server from Maven Central
PARALLELISM = 2
CHECKPOINTING_INTERVAL_MS = 2000


def _listening(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _start(command, port, log, what, timeout, **popen):
    """``command`` in a new session, its output in ``log``, once it listens on ``port``."""
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **popen)
    deadline = time.monotonic() + timeout
    while not _listening(port):
        if process.poll() is not None or time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            pytest.fail(f"{what} did not start; its log:\n{log.read_text()[-4000:]}", pytrace=False)
        time.sleep(0.5)
    return process


@contextlib.contextmanager
def _job_server(log, *flags):
    """A running Flink job server (scripts/flink-job-server FLAGS); yields its job endpoint."""
    port = free_port()
    command = [str(ROOT / "scripts/flink-job-server"), "--job-port", str(port), "--parallelism", str(PARALLELISM), *flags]
    process = _start(command, port, log, "the Flink job server", START_TIMEOUT_SECS)
    try:
        yield f"localhost:{port}"
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="session")
def flink(tmp_path_factory):
    """The job endpoint of a running Flink job server, and its log file."""
    log = tmp_path_factory.mktemp("flink") / "job-server.log"
    with _job_server(log) as endpoint:
        yield endpoint, log


@pytest.fixture(scope="session")
def flink_checkpointing(tmp_path_factory):
    """Like ``flink``, with streaming jobs checkpointing every 2 s and restarted when a task fails."""
    log = tmp_path_factory.mktemp("flink-checkpointing") / "job-server.log"
    with _job_server(log, "--checkpointing-interval", str(CHECKPOINTING_INTERVAL_MS)) as endpoint:
        yield endpoint, log


@pytest.fixture
def worker_pool(tmp_path):
    """Beam's Python worker pool in its own process, each worker a child process of it (as in the
    image's worker-pool role): its port, the pool process, and its log file."""
    port = free_port()
    log = tmp_path / "worker-pool.log"
    # The pool starts each worker as `python ...`: the test's interpreter first on the PATH.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    command = [sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main", f"--service_port={port}"]
    process = _start(command, port, log, "the worker pool", 60, env=env)
    try:
        yield port, process, log
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
