"""A Java pipeline that starts its own expansion service from a Python environment.

No ``INFERBRIDGE_EXPANSION_SERVICE`` here: the JVM finds ``INFERBRIDGE_PYTHON`` (this test's own
Python, which has inferbridge installed), starts ``python -m inferbridge.expansion_service`` on a
free port for its lifetime, and stops it when it exits. Only the job service runs in this process.
"""

import json
import os
import re
import subprocess
import sys
import time

import pytest

MAIN_CLASS = "dev.inferbridge.examples.DigitsClassification"
TIMEOUT_SECS = 300
LOG_LEVEL_PROPERTY = "org.slf4j.simpleLogger.log.dev.inferbridge.LocalExpansionService"
STARTED = re.compile(r"Started the local InferBridge expansion service \(pid (\d+)\) at (127\.0\.0\.1:\d+) from (.*);")


@pytest.fixture(scope="module")
def job_endpoint():
    from inferbridge.local_runner import job_service

    with job_service() as address:
        yield address


def java_env(job_endpoint, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERBRIDGE_")}
    env.update(INFERBRIDGE_JOB_ENDPOINT=job_endpoint, **extra)
    return env


def run_java(classpath, env, *args):
    return subprocess.run(
        # The examples log warnings only; the service's start-up line is INFO.
        ["java", f"-D{LOG_LEVEL_PROPERTY}=info", "-cp", classpath, MAIN_CLASS, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_SECS,
    )


def alive(pid):
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_pipeline_starts_the_service_from_the_python_environment_and_stops_it(java_classpath, digits_dir, job_endpoint, tmp_path):
    predictions = tmp_path / "predictions.csv"
    env = java_env(
        job_endpoint,
        INFERBRIDGE_PYTHON=sys.executable,
        # Read by the auto-started service, which inherits the JVM's environment.
        INFERBRIDGE_TRUSTED_MODEL_ROOTS=str(digits_dir),
    )
    result = run_java(java_classpath, env, f"--modelDir={digits_dir}", f"--predictionsFile={predictions}")
    assert result.returncode == 0, result.stderr[-4000:]
    expected = json.loads((digits_dir / "expected.json").read_text())
    last_line = result.stdout.strip().splitlines()[-1]
    assert last_line == f"accuracy={expected['score']!r} expected={expected['score']!r} rows={expected['rows']}"
    assert "failures=0" in result.stdout.splitlines()
    assert len(predictions.read_text().split()) == expected["rows"]

    started = STARTED.findall(result.stderr)
    assert len(started) == 1, result.stderr[-4000:]  # one service for the whole pipeline
    pid, address, origin = started[0]
    assert origin == f"$INFERBRIDGE_PYTHON={sys.executable}"
    # Its own log line, forwarded by the JVM, gives the same address.
    assert f"listening on {address} (plaintext)" in result.stderr
    # Stopped by the JVM's shutdown hook (SIGTERM: it exits with status 0), and gone with the JVM.
    assert f"Stopped the local InferBridge expansion service (pid {pid}): exit status 0" in result.stderr
    deadline = time.monotonic() + 10
    while alive(int(pid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(int(pid)), f"the expansion service (pid {pid}) outlived the JVM"


def test_a_missing_python_fails_the_pipeline_with_how_to_fix_it(java_classpath, digits_dir, job_endpoint, tmp_path):
    missing = tmp_path / "no-venv" / "bin" / "python"
    result = run_java(java_classpath, java_env(job_endpoint, INFERBRIDGE_PYTHON=str(missing)), f"--modelDir={digits_dir}")
    assert result.returncode != 0
    assert f"{missing} does not exist; pass a Python with inferbridge installed" in result.stderr, result.stderr[-4000:]
    assert "pip install inferbridge" in result.stderr
    assert "scripts/bootstrap" in result.stderr


def test_a_python_without_inferbridge_fails_with_the_install_command(java_classpath, digits_dir, job_endpoint, tmp_path):
    bare = tmp_path / "bare-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    python = bare / "bin" / "python"
    result = run_java(java_classpath, java_env(job_endpoint, INFERBRIDGE_PYTHON=str(bare)), f"--modelDir={digits_dir}")
    assert result.returncode != 0
    assert f"the inferbridge package is not installed in {python}" in result.stderr, result.stderr[-4000:]
    assert f"{python} -m pip install inferbridge" in result.stderr
