"""Set-up of the container tests: a running engine, the image, model folders the container can read.

Nothing here skips: without an engine or an image the tests fail, with the reason.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# testcontainers' reaper (Ryuk) is an image from a registry; containers here are removed by the tests.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")


def _run_script(name: str, *args: str, timeout: float) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(ROOT / "scripts" / name), *args], check=False, capture_output=True, text=True, timeout=timeout
    )
    if result.returncode != 0:
        pytest.fail(
            f"scripts/{name} {' '.join(args)} failed with status {result.returncode}:\n"
            f"{result.stderr[-4000:]}{result.stdout[-2000:]}",
            pytrace=False,
        )
    return result


@pytest.fixture(scope="session")
def docker_engine():
    """A working container engine; DOCKER_HOST is set for the tests (and testcontainers)."""
    started = time.monotonic()
    result = _run_script("container-engine", timeout=600)
    match = re.search(r"^export DOCKER_HOST=(\S+)$", result.stdout, re.MULTILINE)
    previous = os.environ.get("DOCKER_HOST")
    if match:
        os.environ["DOCKER_HOST"] = match.group(1)
    print(f"\ncontainer engine ready in {time.monotonic() - started:.1f}s ({os.environ.get('DOCKER_HOST', 'default')})")
    yield os.environ.get("DOCKER_HOST")
    if "starting dockerd" in result.stderr:
        _run_script("container-engine", "stop", timeout=120)
    if previous is None:
        os.environ.pop("DOCKER_HOST", None)
    else:
        os.environ["DOCKER_HOST"] = previous


@pytest.fixture(scope="session")
def image(docker_engine):
    """The expansion service image, built by scripts/build-image (the engine's cache keeps reruns short)."""
    started = time.monotonic()
    result = _run_script("build-image", timeout=3000)
    tag = result.stdout.strip().splitlines()[-1]
    print(f"\nimage {tag} built in {time.monotonic() - started:.1f}s")
    return tag


@pytest.fixture(scope="session")
def docker_client(docker_engine):
    import docker

    client = docker.from_env()
    yield client
    client.close()


def _readable_copy(source: Path, prefix: str) -> Path:
    """A copy of ``source`` that the image's user (uid 10001) can read: pytest's own temporary
    folders are private to this user."""
    target = Path(tempfile.mkdtemp(prefix=prefix))
    shutil.copytree(source, target, dirs_exist_ok=True)
    for path in [target, *target.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return target


@pytest.fixture(scope="session")
def shared_digits_dir(digits_dir):
    """The trained digits model and rows, readable from inside the container at the same path."""
    path = _readable_copy(digits_dir, "inferbridge-digits-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def shared_output_dir():
    """An empty folder the container's user may write to, at the same path inside and out."""
    path = Path(tempfile.mkdtemp(prefix="inferbridge-out-"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)
