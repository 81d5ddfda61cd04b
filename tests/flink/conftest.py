"""A Flink job server with an embedded local cluster (scripts/flink-job-server) for the tests."""

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_SECS = 600  # the first start resolves the job server from Maven Central
PARALLELISM = 2


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="session")
def flink(tmp_path_factory):
    """The job endpoint of a running Flink job server, and its log file."""
    port = _free_port()
    log = tmp_path_factory.mktemp("flink") / "job-server.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [str(ROOT / "scripts/flink-job-server"), "--job-port", str(port), "--parallelism", str(PARALLELISM)],
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
        yield f"localhost:{port}", log
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
