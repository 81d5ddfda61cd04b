"""``inferbridge-local``: run a command with the services a local cross-language pipeline needs.

A Java pipeline that uses InferBridge needs two services on this machine, and no Docker:

- the InferBridge expansion service, whose worker pool runs the Python stages, and
- a portable job service that runs the pipeline (Beam's Python local job service).

``inferbridge-local -- java -cp ... MyPipeline`` starts both on free loopback ports, runs the
command with ``INFERBRIDGE_EXPANSION_SERVICE`` and ``INFERBRIDGE_JOB_ENDPOINT`` set to their
addresses, stops both afterwards, and exits with the command's status.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from typing import Iterator, Optional, Sequence

import grpc
from apache_beam.runners.portability import local_job_service
from apache_beam.runners.portability.fn_api_runner import fn_runner, worker_handlers
from apache_beam.runners.worker import data_plane

from inferbridge import healthcheck
from inferbridge.policy import MODEL_SOURCE_FLAGS

EXPANSION_SERVICE_ENV = "INFERBRIDGE_EXPANSION_SERVICE"
JOB_ENDPOINT_ENV = "INFERBRIDGE_JOB_ENDPOINT"

_LOGGER = logging.getLogger(__name__)


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


class _LoopbackJobServicer(local_job_service.LocalJobServicer):
    """Beam's local job service on 127.0.0.1 only. On "localhost" with a free port, gRPC binds
    the port on one address family and only tries the same port on the other; when that one is
    taken there, clients that resolve localhost to it reach another socket and wait forever."""

    def get_service_address(self) -> str:
        return "127.0.0.1"


_BEAMS_SEND_INPUT = fn_runner.BundleManager._send_input_to_worker
# A stream that, with what a flush leaves behind (under 10 MB), could pass protobuf's 2 GiB.
_LARGEST_STREAM = (2 << 30) - (64 << 20)


def _send_input_in_messages(self, process_bundle_id: str, read_transform_id: str, byte_streams) -> None:
    """``BundleManager._send_input_to_worker``, sending a stage's input to a worker over gRPC in
    messages of about 10 MB, from a thread of its own, while the bundle runs.

    Beam's writes the whole input, then sends it as one message, before it asks the worker to
    run the bundle: the job service and the worker each held a stage's whole input at once (and
    protobuf bounds a message at 2 GiB). In smaller messages the input could not be sent ahead:
    the worker takes a few messages of a bundle it does not run yet, then holds off the sender.

    Each byte stream ends where an element does (a message some worker sent, or what the runner
    encoded element by element: a grouped input is one stream, and so still one message), as an
    SDK harness reading each message on its own expects. The streams are made here, in the
    runner's thread, so that what fails in making them (a grouped input's triggers) fails the
    job as before. Beam's way is kept for a worker embedded in the runner's process (it reads its
    input from a list, once, when the bundle starts) and for a stream too large for one message
    (Beam's error names it)."""
    streams = list(byte_streams or ())
    if isinstance(self._worker_handler.data_conn, data_plane.InMemoryDataChannel) or any(
        len(stream) > _LARGEST_STREAM for stream in streams
    ):
        _BEAMS_SEND_INPUT(self, process_bundle_id, read_transform_id, streams)
        return
    data_out = self._worker_handler.data_conn.output_stream(process_bundle_id, read_transform_id)

    def send() -> None:
        try:
            for stream in streams:
                data_out.write(stream)
                data_out.maybe_flush()
            data_out.close()
        except Exception:  # noqa: BLE001 - a broken connection: the bundle fails on the worker's side
            _LOGGER.exception("sending the input of %s to %s failed", process_bundle_id, read_transform_id)

    threading.Thread(target=send, name=f"input-{process_bundle_id}", daemon=True).start()


@contextlib.contextmanager
def job_service(port: int = 0) -> Iterator[str]:
    """Runs Beam's local (portable, batch) job service in this process; yields its address."""
    # Beam's runner (FnApiRunner) sends a stage's input to a worker through a stream that a thread
    # flushes every DATA_BUFFER_TIME_LIMIT_MS (1000): the flush sends what it holds, then clears
    # the buffer without holding off the runner's writes, so what the runner wrote meanwhile is
    # lost unsent (data_plane.TimeBasedBufferingClosableOutputStream): a 1M-row Java pipeline lost
    # whole messages of its blocks, with no error. At 0 no thread flushes; a stage's input is
    # sent by _send_input_in_messages.
    worker_handlers.DATA_BUFFER_TIME_LIMIT_MS = 0
    fn_runner.BundleManager._send_input_to_worker = _send_input_in_messages
    servicer = _LoopbackJobServicer()
    bound = servicer.start_grpc_server(port)
    try:
        yield f"127.0.0.1:{bound}"
    finally:
        servicer.stop()


@contextlib.contextmanager
def local_services(
    expansion_port: int = 0,
    job_port: int = 0,
    log_level: str = "WARNING",
    service_args: Sequence[str] = (),
    job_endpoint: Optional[str] = None,
) -> Iterator[dict[str, str]]:
    """Both services; yields the environment variables that point a pipeline at them.

    ``job_endpoint``: a running job service (e.g. a Flink job server) to use instead of starting one.
    """
    with expansion_service(expansion_port, log_level, service_args=service_args) as expansion:
        if job_endpoint:
            yield {EXPANSION_SERVICE_ENV: expansion, JOB_ENDPOINT_ENV: job_endpoint}
            return
        with job_service(job_port) as jobs:
            yield {EXPANSION_SERVICE_ENV: expansion, JOB_ENDPOINT_ENV: jobs}


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
