"""``inferbridge-local``: run a command with the services a local cross-language pipeline needs.

A Java pipeline that uses InferBridge needs two services on this machine, and no Docker:

- the InferBridge expansion service, whose worker pool runs the Python stages, and
- a portable job service that runs the pipeline (Beam's Python local job service).

``inferbridge-local -- java -cp ... MyPipeline`` starts both on free loopback ports, runs the
command with ``INFERBRIDGE_EXPANSION_SERVICE`` and ``INFERBRIDGE_JOB_ENDPOINT`` set to their
addresses, stops both afterwards, and exits with the command's status. The processes it starts
(the expansion service, the command) get ``MALLOC_ARENA_MAX=2`` unless it is set.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import socket
import subprocess
import sys
import time
from typing import Iterator, Optional, Sequence

import grpc

from inferbridge import healthcheck
from inferbridge.policy import MODEL_SOURCE_FLAGS

EXPANSION_SERVICE_ENV = "INFERBRIDGE_EXPANSION_SERVICE"
JOB_ENDPOINT_ENV = "INFERBRIDGE_JOB_ENDPOINT"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_serving(
    address: str, process: subprocess.Popen, timeout_secs: float, tls_ca_file: Optional[str] = None
) -> None:
    """Waits until the service at ``address`` answers its health check with SERVING."""
    deadline = time.monotonic() + timeout_secs
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"the expansion service exited with status {process.returncode} before serving "
                f"on {address}; its log is above"
            )
        try:
            if healthcheck.check(address, timeout_secs=1, ca_file=tls_ca_file) == "SERVING":
                return
        except grpc.RpcError:
            time.sleep(0.2)
    raise TimeoutError(f"the expansion service did not start serving on {address} in {timeout_secs}s")


@contextlib.contextmanager
def expansion_service(
    port: int = 0,
    log_level: str = "WARNING",
    timeout_secs: float = 180,
    service_args: Sequence[str] = (),
    tls_ca_file: Optional[str] = None,
) -> Iterator[str]:
    """Runs ``inferbridge-expansion-service [service_args]`` in a child process; yields its address.

    ``tls_ca_file``: the certificate to trust when ``service_args`` turn TLS on.
    """
    port = port or free_port()
    address = f"localhost:{port}"
    process = subprocess.Popen(
        [
            sys.executable, "-m", "inferbridge.expansion_service",
            "--port", str(port), "--log-level", log_level, *service_args,
        ]
    )
    try:
        wait_until_serving(address, process, timeout_secs, tls_ca_file)
        yield address
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def local_services(
    expansion_port: int = 0,
    job_port: int = 0,
    log_level: str = "WARNING",
    service_args: Sequence[str] = (),
    job_endpoint: Optional[str] = None,
) -> Iterator[dict[str, str]]:
    """Both services; yields the environment variables that point a pipeline at them.

    The expansion service keeps one expansion process (the service's default is two, for
    concurrent clients): a local pipeline expands its transforms one at a time, and each idle
    process holds ~200 MB.

    ``job_endpoint``: a running job service (e.g. a Flink job server) to use instead of starting one.
    """
    service_args = ["--expansion-processes=1", *service_args]
    with expansion_service(expansion_port, log_level, service_args=service_args) as expansion:
        if job_endpoint:
            yield {EXPANSION_SERVICE_ENV: expansion, JOB_ENDPOINT_ENV: job_endpoint}
            return
        from inferbridge.local_runner import job_service  # Beam's runner: imported only to run it

        with job_service(job_port) as jobs:
            yield {EXPANSION_SERVICE_ENV: expansion, JOB_ENDPOINT_ENV: jobs}


# glibc's mallopt parameter for the most malloc arenas (malloc.h).
_M_ARENA_MAX = -8


def _fewer_malloc_arenas() -> None:
    """At most two malloc arenas in this process and the ones it starts (unless
    ``MALLOC_ARENA_MAX`` is set). glibc gives threads that contend for malloc arenas of their
    own, up to eight per core, and memory freed in one is reused by it alone: at 10M rows the job
    service's gRPC threads, the expansion service's worker threads and the JVM each kept
    70-100 MB more. Not glibc: nothing to change."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return
    os.environ["MALLOC_ARENA_MAX"] = "2"
    try:
        ctypes.CDLL(None).mallopt(_M_ARENA_MAX, 2)
    except (AttributeError, OSError):
        pass


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="inferbridge-local",
        description=(
            "Run COMMAND with a local InferBridge expansion service and a portable job service; "
            f"their addresses are passed in ${EXPANSION_SERVICE_ENV} and ${JOB_ENDPOINT_ENV}."
        ),
    )
    parser.add_argument("--expansion-port", type=int, default=0, help="default: a free port")
    parser.add_argument("--job-port", type=int, default=0, help="default: a free port")
    parser.add_argument(
        "--job-endpoint", help="host:port of a running job service (e.g. a Flink job server) to use instead of starting one"
    )
    parser.add_argument("--log-level", default="WARNING", help="log level of the expansion service")
    for flag, meaning in MODEL_SOURCE_FLAGS.items():
        parser.add_argument(flag, action="append", default=[], help=f"{meaning}; passed to the expansion service")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command to run, after --")
    args = parser.parse_args(argv)
    _fewer_malloc_arenas()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after --, e.g. inferbridge-local -- java -cp ... Main")
    service_args = [
        f"{flag}={value}" for flag in MODEL_SOURCE_FLAGS for value in getattr(args, flag[2:].replace("-", "_"))
    ]
    with local_services(args.expansion_port, args.job_port, args.log_level, service_args, args.job_endpoint) as env:
        print(
            f"inferbridge-local: expansion service {env[EXPANSION_SERVICE_ENV]}, "
            f"job service {env[JOB_ENDPOINT_ENV]}",
            file=sys.stderr,
            flush=True,
        )
        return subprocess.call(command, env={**os.environ, **env})


if __name__ == "__main__":
    sys.exit(main())
