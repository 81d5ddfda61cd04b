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

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_SECS = 600  # the first start resolves the job server from Maven Central
PARALLELISM = 2
CHECKPOINTING_INTERVAL_MS = 2000


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def _job_server(log, *flags):
    """A running Flink job server (scripts/flink-job-server FLAGS); yields its job endpoint."""
    port = _free_port()
    with open(log, "w") as out:
        process = subprocess.Popen(
            [
                str(ROOT / "scripts/flink-job-server"), "--job-port", str(port), "--parallelism", str(PARALLELISM),
                *flags,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_SECS
        while not _listening(port):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the Flink job server did not start; its log:\n{log.read_text()[-4000:]}", pytrace=False)
            time.sleep(0.5)
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
    port = _free_port()
    log = tmp_path / "worker-pool.log"
    # The pool starts each worker as `python ...`: the test's interpreter first on the PATH.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main", f"--service_port={port}"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while not _listening(port):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the worker pool did not start; its log:\n{log.read_text()[-4000:]}", pytrace=False)
            time.sleep(0.2)
        yield port, process, log
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
