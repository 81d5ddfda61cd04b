"""``inferbridge-expansion-service``: serves InferBridge composites to Java (and other) pipelines.

Unlike Beam's stock Python expansion service, it binds loopback by default, expands only
InferBridge's own URNs plus those an operator allows (a pickled transform or a payload carrying
Python code is refused before it is decoded; see ``inferbridge.request_checks``), serves no local
files through its artifact service, limits request sizes and expansion time (expansions run in
processes of their own, killed at the deadline), can require TLS and a bearer token on every RPC,
answers gRPC health checks and ``DiscoverSchemaTransform``, and fails at once when its port is
taken.

By default it also hosts a worker pool on a second, loopback-only port, so the Python stages it
expands run in this process on portable runners without Docker (an EXTERNAL environment pointing
at that pool). The pool starts workers for whoever asks it, so it is never exposed beyond this
machine; clusters give the expanded transforms their own environment (``--environment-type``).

Beam's stock ``PythonExternalTransform`` requests (``beam:transforms:python:fully_qualified_named``)
are served for the constructors ``inferbridge.Inference`` and ``inferbridge.Evaluate`` only, by
translating them into the native request (see ``inferbridge.compat``).

Every flag can also be set by an environment variable, ``--some-flag`` by ``INFERBRIDGE_SOME_FLAG``
(lists comma-separated); ``--help`` names each one.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Optional, Sequence

import apache_beam
import grpc
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.portability.api import (
    beam_artifact_api_pb2,
    beam_artifact_api_pb2_grpc,
    beam_expansion_api_pb2,
    beam_expansion_api_pb2_grpc,
    beam_fn_api_pb2_grpc,
    external_transforms_pb2,
)
from apache_beam.runners.portability import expansion_service
from apache_beam.runners.worker import worker_pool_main
from apache_beam.transforms import ptransform
from apache_beam.typehints import schemas
from apache_beam.utils import thread_pool_executor
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

# Importing the composites registers their URNs with Beam.
from inferbridge import blocks, compat, evaluate, inference, spec  # noqa: F401
from inferbridge.compat import Refusal
from inferbridge.policy import MODEL_SOURCE_FLAGS, LoadPolicy, as_flags
from inferbridge.request_checks import (
    check_components,
    check_configuration,
    drop_unsafe_output_coder_requests,
    reduce_pipeline_options,
)
from inferbridge.service_security import CallAdmission, read_token, server_credentials

_LOGGER = logging.getLogger("inferbridge.expansion_service")

VERSION = "0.1.0"
SERVED_URNS = frozenset({spec.RUN_INFERENCE_URN, spec.RUN_INFERENCE_BLOCKS_URN, evaluate.EVALUATE_URN})
EXPANSION_SERVICE_NAME = "org.apache.beam.model.expansion.v1.ExpansionService"
_WILDCARD_HOSTS = {"0.0.0.0", "::", "[::]", ""}

# What discovery reports for each served URN: configuration, input and output names, description.
_CATALOG = {
    spec.RUN_INFERENCE_URN: (
        spec.RunInferenceConfig,
        [inference.ROWS_TAG, inference.MODEL_UPDATES_TAG],
        ["inferences", inference.FAILURES_TAG],
        "RunInference with preprocessing, one or many keyed models and postprocessing; every input "
        "row becomes one inference row or one failure row. model_updates is optional.",
    ),
    spec.RUN_INFERENCE_BLOCKS_URN: (
        spec.RunInferenceConfig,
        [inference.ROWS_TAG, inference.MODEL_UPDATES_TAG],
        ["inferences", inference.FAILURES_TAG],
        "The same composite on packed blocks of rows (key, features, feature_count, passthrough "
        "arrays), as the Java wrapper's withBlockSize sends them; every row of a block becomes "
        "one row of an output block or one failure row. model_updates is optional.",
    ),
    evaluate.EVALUATE_URN: (
        evaluate.EvaluateConfig,
        ["input"],
        ["output"],
        "Per window and model_id classification metrics (accuracy, precision, recall, confusion).",
    ),
}

class InferBridgeExpansionServicer(beam_expansion_api_pb2_grpc.ExpansionServiceServicer):
    """Expansion restricted to the URNs this service serves, with a deadline.

    Requests are checked here; Beam's expansion itself runs in an ``_ExpansionWorkers`` process,
    which is killed when the deadline passes.
    """

    def __init__(
        self,
        workers: "_ExpansionWorkers",
        allowed_urns: frozenset[str] = frozenset(),
        timeout_secs: float = 60.0,
    ) -> None:
        self._workers = workers
        self._served_urns = SERVED_URNS | allowed_urns
        self._allowed_urns = allowed_urns
        self._timeout_secs = timeout_secs

    def Expand(self, request: Any, context: Any = None) -> Any:
        urn = request.transform.spec.urn
        served = ", ".join(sorted(self._served_urns))
        fully_qualified_named = urn == compat.FULLY_QUALIFIED_NAMED_URN
        if not fully_qualified_named and urn not in self._served_urns:
            return self._refuse(
                urn,
                f"URN {urn!r} is not served by the InferBridge expansion service; served URNs: {served}; "
                f"and {compat.FULLY_QUALIFIED_NAMED_URN} for the constructors {compat.allowed_constructors()}",
            )
        try:
            request = drop_unsafe_output_coder_requests(request)
            check_components(request)
            request = reduce_pipeline_options(request)
            if fully_qualified_named:  # decoded and translated in the expansion process
                compat.check_fully_qualified_named(request)
            elif urn in SERVED_URNS or _is_configuration_payload(request):
                check_configuration(request)
        except Refusal as e:
            if fully_qualified_named:
                return self._refuse(
                    urn,
                    f"URN {urn!r} is not served by the InferBridge expansion service for this request: {e}. "
                    f"It is served only for the constructors {compat.allowed_constructors()}, with keyword "
                    f"arguments (kwargs), no positional arguments and no Python code; served URNs: {served}",
                )
            return self._refuse(urn, f"the InferBridge expansion service refuses this request for {urn}: {e}")
        return self._expand_within_deadline(urn, request, context)

    def _expand_within_deadline(self, urn: str, request: Any, context: Any) -> Any:
        timeout = self._timeout_secs
        remaining = context.time_remaining() if context is not None else None
        if remaining is not None:
            timeout = min(timeout, remaining)
        started = time.monotonic()
        try:
            response = beam_expansion_api_pb2.ExpansionResponse.FromString(
                self._workers.expand(request.SerializeToString(), timeout, self._timeout_secs)
            )
        except TimeoutError:
            if timeout < self._timeout_secs:
                return self._refuse(
                    urn,
                    f"the expansion of {urn} did not finish within the client's deadline ({timeout:.1f} s); "
                    f"it is stopped if it runs past the service's --expansion-timeout-secs ({self._timeout_secs:g} s)",
                )
            return self._refuse(
                urn,
                f"the expansion of {urn} did not finish within {timeout:.1f} s (the service's "
                f"--expansion-timeout-secs is {self._timeout_secs:g}); it was stopped",
            )
        except _WorkerLost as e:
            return self._refuse(urn, f"the expansion of {urn} failed: {e}")
        _LOGGER.info(
            "Expanded %s in %.0f ms%s",
            urn,
            (time.monotonic() - started) * 1000,
            " with an error" if response.error else "",
        )
        return response

    def DiscoverSchemaTransform(self, request: Any, context: Any = None) -> Any:
        """The transforms this service expands, with their configuration schemas."""
        response = beam_expansion_api_pb2.DiscoverSchemaTransformResponse()
        for urn, (config_type, inputs, outputs, description) in _CATALOG.items():
            response.schema_transform_configs[urn].CopyFrom(
                beam_expansion_api_pb2.SchemaTransformConfig(
                    config_schema=schemas.named_tuple_to_schema(config_type),
                    input_pcollection_names=inputs,
                    output_pcollection_names=outputs,
                    description=description,
                )
            )
        for urn in self._allowed_urns:
            response.schema_transform_configs[urn].description = "allowed by the service's operator (--allow-urn)"
        return response

    def shutdown(self) -> None:
        self._workers.close()

    @staticmethod
    def _refuse(urn: str, message: str) -> Any:
        _LOGGER.warning("Refused expansion of URN %r: %s", urn, message)
        return beam_expansion_api_pb2.ExpansionResponse(error=message)


def _is_configuration_payload(request: Any) -> bool:
    payload = external_transforms_pb2.ExternalConfigurationPayload()
    try:
        payload.ParseFromString(request.transform.spec.payload)
    except Exception:  # DecodeError, RecursionError: not this kind of payload
        return False
    return payload.HasField("schema")


class _WorkerLost(Exception):
    """An expansion process ended without answering (killed, or out of memory)."""


def _expansion_worker(conn: Any, options: list[str], policy: Optional[LoadPolicy], imports: tuple[str, ...], tempdir: str) -> None:
    """An expansion process: answers serialized ExpansionRequests on ``conn``, one at a time.

    Its temporary files (Beam's pipelines each make a directory) go to ``tempdir``, emptied after
    every expansion; the service removes it when the process ends.
    """
    os.environ["TMPDIR"] = tempfile.tempdir = tempdir
    for module in imports:
        importlib.import_module(module)
    inference.configure_load_policy(policy)
    servicer = expansion_service.ExpansionServiceServicer(PipelineOptions(options))
    conn.send_bytes(b"")  # ready
    while True:
        try:
            request = conn.recv_bytes()
        except EOFError:  # the service is gone
            return
        response = _expand(servicer, beam_expansion_api_pb2.ExpansionRequest.FromString(request))
        for entry in os.scandir(tempdir):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                os.unlink(entry.path)
        conn.send_bytes(response.SerializeToString())


def _expand(servicer: Any, request: Any) -> Any:
    """Beam's expansion of a request the service checked; a ``fully_qualified_named`` one is
    translated to InferBridge's own URN first."""
    if request.transform.spec.urn == compat.FULLY_QUALIFIED_NAMED_URN:
        try:
            request = compat.translate(request)
        except (compat.KwargsError, Refusal) as e:
            return beam_expansion_api_pb2.ExpansionResponse(error=str(e))
    return servicer.Expand(request)


class _Worker:
    def __init__(self, process: Any, conn: Any, tempdir: str) -> None:
        self.process, self.conn, self.tempdir = process, conn, tempdir
        self.expansions = 0
        self.replaced = False  # a fresh process took its place: it ends when it is released


# Expansions a process does before a fresh one takes its place: Beam keeps a type for every
# configuration schema it decodes (~25 KB for InferBridge's), for the life of the process.
EXPANSIONS_PER_PROCESS = 200


class _ExpansionWorkers:
    """``size`` processes that run Beam's expansions, one expansion each at a time.

    An expansion past its deadline is stopped by killing its process (SIGKILL): whatever it was
    doing, in Python or in native code, ends, and its memory and files are released; a fresh
    process is started at once to replace it. Clients' expansions never change the state of the
    service's own process (Beam's Pipeline sets process-wide options), and each process's
    temporary directory is emptied after every expansion. Processes are started with ``spawn``:
    a new interpreter talking to the service over an anonymous pipe, so nothing listens for them.
    """

    def __init__(
        self, options: list[str], policy: Optional[LoadPolicy], imports: tuple[str, ...], size: int,
        expansions_per_process: int = EXPANSIONS_PER_PROCESS,
    ) -> None:
        self._context = multiprocessing.get_context("spawn")
        self._args = (options, policy, imports)
        self._size = size
        self._expansions_per_process = expansions_per_process
        self._idle: list[_Worker] = []
        self._live: set[_Worker] = set()
        self._changed = threading.Condition()
        self._closed = False

    def start(self, timeout_secs: float = 300.0) -> None:
        """Starts every process and waits until each is ready, so that first requests find them."""
        for worker in [self._start() for _ in range(self._size)]:
            if not self._ready(worker, timeout_secs):
                raise OSError(f"an expansion process did not start within {timeout_secs:g} s:\n{worker.process}")

    def expand(self, request: bytes, answer_secs: float, stop_secs: float) -> bytes:
        """The serialized response; TimeoutError when there is none within ``answer_secs``
        (counting the wait for a free process). An expansion still running then goes on, its
        answer unread, until ``stop_secs`` after the request came: only then is its process
        killed. So a client's short deadline never costs the service a process (a fresh one is
        a new interpreter importing Beam), however often it comes."""
        now = time.monotonic()
        answer_by, stop_by = now + answer_secs, now + max(answer_secs, stop_secs)
        with self._changed:
            if not self._changed.wait_for(lambda: self._idle, timeout=max(0.0, answer_secs)):
                raise TimeoutError
            worker = self._idle.pop()
        try:
            worker.conn.send_bytes(request)
            if worker.conn.poll(max(0.0, answer_by - time.monotonic())):
                response = worker.conn.recv_bytes()
                self._release(worker)
                return response
        except (EOFError, ConnectionError):  # not TimeoutError, also an OSError
            exit_code = self._lost(worker)
            raise _WorkerLost(
                f"its process ended without an answer (exit code {exit_code}); it may have run out of memory"
            ) from None
        except BaseException:
            self._stop(worker)
            raise
        threading.Thread(target=self._finish, args=(worker, stop_by), name="inferbridge-expansion-finish", daemon=True).start()
        raise TimeoutError

    def _finish(self, worker: _Worker, stop_by: float) -> None:
        """Reads and drops the answer nobody waits for any more; stops the process at ``stop_by``."""
        try:
            if worker.conn.poll(max(0.0, stop_by - time.monotonic())):
                worker.conn.recv_bytes()
                self._release(worker)
                return
        except (EOFError, OSError):
            self._lost(worker)
            return
        _LOGGER.warning("An expansion ran past the service's --expansion-timeout-secs; its process was stopped")
        self._stop(worker)

    def _release(self, worker: _Worker) -> None:
        worker.expansions += 1
        with self._changed:
            replaced = worker.replaced
            if not replaced:
                self._idle.append(worker)
                self._changed.notify()
        if replaced:
            self._discard(worker)
        elif worker.expansions == self._expansions_per_process:
            threading.Thread(target=self._renew, args=(worker,), name="inferbridge-expansion-renew", daemon=True).start()

    def _renew(self, old: _Worker) -> None:
        """Starts a process to take the place of ``old``, which serves until the new one is ready."""
        if not self._replace():
            return
        with self._changed:
            idle = old in self._idle
            if idle:
                self._idle.remove(old)
            old.replaced = True
        if idle:
            self._discard(old)

    def _lost(self, worker: _Worker) -> Optional[int]:
        """Replaces a process that ended (or closed its end of the pipe); its exit code."""
        worker.process.join(timeout=5)
        exit_code = worker.process.exitcode
        self._stop(worker)
        return exit_code

    def _stop(self, worker: _Worker) -> None:
        """Kills the process (if it still runs) and starts a fresh one in its place."""
        self._discard(worker)
        threading.Thread(target=self._replace, name="inferbridge-expansion-start", daemon=True).start()

    def close(self) -> None:
        with self._changed:
            self._closed = True
            workers = list(self._live)
        for worker in workers:
            self._discard(worker)

    def _start(self) -> _Worker:
        tempdir = tempfile.mkdtemp(prefix="inferbridge-expansion-")
        ours, theirs = self._context.Pipe()
        process = self._context.Process(
            target=_expansion_worker, args=(theirs, *self._args, tempdir), name="inferbridge-expansion", daemon=True
        )
        worker = _Worker(process, ours, tempdir)
        with self._changed:  # not while close() runs: every live process is started
            if self._closed:
                shutil.rmtree(tempdir, ignore_errors=True)
                raise _WorkerLost("the service is shutting down")
            process.start()
            self._live.add(worker)
        theirs.close()
        return worker

    def _ready(self, worker: _Worker, timeout_secs: float) -> bool:
        """Waits for the process's ready message, then makes it available."""
        try:
            if not worker.conn.poll(timeout_secs):
                return False
            worker.conn.recv_bytes()
        except (EOFError, OSError):  # it ended, or close() discarded it meanwhile
            return False
        with self._changed:
            self._idle.append(worker)
            self._changed.notify()
        return True

    def _replace(self) -> bool:
        """Starts a fresh process and makes it available; whether it is."""
        try:
            worker = self._start()
        except _WorkerLost:  # shutting down
            return False
        if not self._ready(worker, 300.0):
            self._discard(worker)
            if not self._closed:
                _LOGGER.error("An expansion process did not start; %d remain", len(self._live))
            return False
        return True

    def _discard(self, worker: _Worker) -> None:
        with self._changed:  # once per process, whoever else tries
            if worker not in self._live:
                return
            self._live.discard(worker)
            if worker in self._idle:
                self._idle.remove(worker)
        if worker.process.is_alive():
            worker.process.kill()
        worker.process.join()
        worker.process.close()
        worker.conn.close()
        shutil.rmtree(worker.tempdir, ignore_errors=True)


class NoArtifactsServicer(beam_artifact_api_pb2_grpc.ArtifactRetrievalServiceServicer):
    """Artifact retrieval that serves nothing.

    The environments this service builds stage no artifacts, so there is nothing to retrieve;
    Beam's own retrieval service would read any local file or fetch any URL a client names.
    """

    def ResolveArtifacts(self, request: Any, context: Any = None) -> Any:
        return beam_artifact_api_pb2.ResolveArtifactsResponse(replacements=request.artifacts)

    def GetArtifact(self, request: Any, context: Any) -> Any:
        _LOGGER.warning("Refused GetArtifact for an artifact of type %r", request.artifact.type_urn)
        context.abort(
            grpc.StatusCode.NOT_FOUND,
            "the InferBridge expansion service serves no artifacts: the environments it returns stage none",
        )


@dataclasses.dataclass(frozen=True)
class ServiceConfig:
    """How the service listens, whom it serves, and where the transforms it expands run."""

    host: str = "127.0.0.1"
    port: int = 8097
    auth_token: Optional[str] = None
    tls: Optional[grpc.ServerCredentials] = None
    max_request_bytes: int = 4 * 1024 * 1024
    max_concurrent_requests: int = 256
    expansion_timeout_secs: float = 60.0
    # Processes that run expansions, one each at a time (each an interpreter with Beam loaded).
    expansion_processes: int = 2
    allowed_urns: frozenset[str] = frozenset()
    imports: tuple[str, ...] = ()  # modules registering the allowed URNs, imported by the processes
    policy: Optional[LoadPolicy] = None  # the models expanded pipelines may load
    # EMBEDDED: the worker pool below runs the Python stages; else Beam's environment type.
    environment_type: str = "EMBEDDED"
    environment_config: Optional[str] = None
    worker_pool_host: str = "127.0.0.1"
    worker_pool_port: int = 0


# A call's request must arrive within this long of its headers (4 MB at 140 KB/s).
REQUEST_ARRIVAL_SECS = 30.0


def _calls_per_peer(config: "ServiceConfig") -> int:
    """Calls one client address may have open: half the service's bound (at least 4), so that one
    client cannot take every slot (health checks' included)."""
    return max(4, config.max_concurrent_requests // 2)


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def _new_server(
    flag: str, host: str, port: int, credentials: Optional[grpc.ServerCredentials] = None, **kwargs: Any
) -> tuple[grpc.Server, int]:
    options = kwargs.pop("options", [])
    # Without grpc.so_reuseport=0, Linux lets a second server bind the same port silently.
    server = grpc.server(
        thread_pool_executor.shared_unbounded_instance(), options=[("grpc.so_reuseport", 0), *options], **kwargs
    )
    address = _address(host, port)
    try:
        bound = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    except RuntimeError:
        bound = 0
    if not bound:
        raise OSError(
            f"cannot listen on {address}: the port is already in use or the address is not "
            f"available on this machine; choose another {flag} (or stop the process using it)"
        )
    return server, bound


class ExpansionServer:
    """The gRPC servers: expansion, discovery, health and (empty) artifact retrieval on the
    service port; the worker pool, when embedded, on a loopback port of its own."""

    def __init__(self, config: ServiceConfig = ServiceConfig()) -> None:
        self.config = config
        self._server, self.port = _new_server(
            "--port",
            config.host,
            config.port,
            config.tls,
            interceptors=[CallAdmission(config.auth_token, _calls_per_peer(config), REQUEST_ARRIVAL_SECS)],
            maximum_concurrent_rpcs=config.max_concurrent_requests,
            options=[
                ("grpc.max_receive_message_length", config.max_request_bytes),
                ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ],
        )
        self._worker_pool: Optional[grpc.Server] = None
        if config.environment_type == "EMBEDDED":
            self._worker_pool, pool_port = _new_server("--worker-pool-port", config.worker_pool_host, config.worker_pool_port)
            beam_fn_api_pb2_grpc.add_BeamFnExternalWorkerPoolServicer_to_server(
                worker_pool_main.BeamFnExternalWorkerPoolServicer(), self._worker_pool
            )
            # Workers the runner starts through the pool connect from this machine.
            pool_host = "localhost" if config.worker_pool_host in _WILDCARD_HOSTS else config.worker_pool_host
            environment = ["--environment_type=EXTERNAL", f"--environment_config={_address(pool_host, pool_port)}"]
        else:
            environment = [f"--environment_type={config.environment_type}"]
            if config.environment_config:
                environment.append(f"--environment_config={config.environment_config}")
        self.environment = " ".join(environment)
        options = ["--experiments=beam_fn_api", "--sdk_location=container", *environment]
        self._workers = _ExpansionWorkers(options, config.policy, config.imports, config.expansion_processes)
        self._servicer = InferBridgeExpansionServicer(self._workers, config.allowed_urns, config.expansion_timeout_secs)
        beam_expansion_api_pb2_grpc.add_ExpansionServiceServicer_to_server(self._servicer, self._server)
        beam_artifact_api_pb2_grpc.add_ArtifactRetrievalServiceServicer_to_server(NoArtifactsServicer(), self._server)
        self._health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)

    @property
    def address(self) -> str:
        return _address(self.config.host, self.port)

    def start(self) -> None:
        self._workers.start()
        if self._worker_pool is not None:
            self._worker_pool.start()
        self._server.start()
        for service in ("", EXPANSION_SERVICE_NAME):
            self._health.set(service, health_pb2.HealthCheckResponse.SERVING)

    def stop(self, grace_secs: Optional[float] = 30.0) -> None:
        """Stops taking requests, lets in-flight ones finish (up to ``grace_secs``), then stops."""
        self._health.enter_graceful_shutdown()
        self._server.stop(grace_secs).wait()
        self._servicer.shutdown()
        if self._worker_pool is not None:
            self._worker_pool.stop(grace_secs).wait()


class _JsonFormatter(logging.Formatter):
    """One JSON object per line, for log collectors."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "service": "inferbridge-expansion-service",
            "version": VERSION,
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def _configure_logging(level: str, log_format: str) -> None:
    handler = logging.StreamHandler()
    if log_format == "json":
        _JsonFormatter.converter = time.gmtime
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    # force: importing Beam may already have configured the root logger.
    logging.basicConfig(level=level, handlers=[handler], force=True)


def _env_name(flag: str) -> str:
    return "INFERBRIDGE_" + flag.lstrip("-").replace("-", "_").upper()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="inferbridge-expansion-service",
        description="Serve InferBridge inference composites to Beam pipelines in any language. "
        "Every flag may also be given by the environment variable named after it.",
    )

    sections: list[Any] = [parser]  # flags go to the last section opened

    def section(title: str) -> None:
        sections.append(parser.add_argument_group(title))

    def flag(name: str, env: Optional[str] = None, parse: Callable[[str], Any] = str, **kwargs: Any) -> None:
        env = env or _env_name(name)
        if env in os.environ:
            raw = os.environ[env]
            if kwargs.get("action") == "append":
                kwargs["default"] = [p.strip() for p in raw.split(",") if p.strip()]
            else:
                try:
                    kwargs["default"] = parse(raw)
                except ValueError:
                    parser.error(f"${env}={raw!r} is not valid for {name}")
        kwargs["help"] = kwargs.get("help", "") + f" [env {env}]"
        sections[-1].add_argument(name, type=parse, **kwargs)

    section("listening")
    flag("--host", default="127.0.0.1", help="interface to bind (default: %(default)s, loopback only; "
         "0.0.0.0 inside a container)")
    flag("--port", parse=int, default=8097, help="port to listen on; 0 picks a free one (default: %(default)s)")
    flag("--max-request-bytes", parse=int, default=4 * 1024 * 1024,
         help="largest request accepted; larger ones get RESOURCE_EXHAUSTED (default: %(default)s)")
    flag("--max-concurrent-requests", parse=int, default=256,
         help="requests served at once; more get RESOURCE_EXHAUSTED (default: %(default)s)")
    flag("--expansion-timeout-secs", parse=float, default=60.0,
         help="an expansion taking longer is answered with an error (default: %(default)s)")
    flag("--expansion-processes", parse=int, default=2,
         help="processes that run expansions, each one at a time; each holds an interpreter with Beam "
         "loaded (about 650 MB) and is killed when its expansion passes the deadline (default: %(default)s)")
    flag("--shutdown-grace-secs", parse=float, default=30.0,
         help="on SIGTERM, how long in-flight requests may still take (default: %(default)s)")

    section("security")
    flag("--auth-token-file", metavar="FILE", help="require 'authorization: Bearer <token>' on every RPC "
         "(health checks aside), the token read from FILE; or set $INFERBRIDGE_AUTH_TOKEN itself")
    flag("--tls-cert-file", metavar="PEM", help="serve TLS with this certificate (chain)")
    flag("--tls-key-file", metavar="PEM", help="the private key of --tls-cert-file")
    flag("--tls-client-ca-file", metavar="PEM", help="also require client certificates signed by this CA")
    flag("--allow-urn", action="append", default=[], metavar="URN",
         help="also expand this URN (repeatable); only URNs registered by an --import module")
    flag("--python-path", env="INFERBRIDGE_PYTHON_PATH", action="append", default=[], metavar="DIR",
         help=MODEL_SOURCE_FLAGS["--python-path"])
    flag("--import", dest="imports", env="INFERBRIDGE_IMPORTS", action="append", default=[], metavar="MODULE",
         help="import this module at start-up, to register the transforms of --allow-urn (repeatable)")
    # What models expanded pipelines may load (see inferbridge.policy).
    env = LoadPolicy.from_env()
    flag("--model-root", env="INFERBRIDGE_MODEL_ROOTS", action="append", default=list(env.model_roots),
         metavar="DIR_OR_URI", help=MODEL_SOURCE_FLAGS["--model-root"])
    flag("--trusted-model-root", env="INFERBRIDGE_TRUSTED_MODEL_ROOTS", action="append",
         default=list(env.trusted_roots), metavar="DIR_OR_URI", help=MODEL_SOURCE_FLAGS["--trusted-model-root"])
    flag("--allow-model-class", env="INFERBRIDGE_ALLOWED_MODEL_CLASSES", action="append",
         default=list(env.allowed_model_classes), metavar="MODULE_PREFIX",
         help=MODEL_SOURCE_FLAGS["--allow-model-class"])
    flag("--allow-endpoint", env="INFERBRIDGE_ALLOWED_ENDPOINTS", action="append",
         default=list(env.allowed_endpoints), metavar="URL_PREFIX", help=MODEL_SOURCE_FLAGS["--allow-endpoint"])
    flag("--allow-registered-handler", env="INFERBRIDGE_ALLOWED_REGISTERED_HANDLERS", action="append",
         default=list(env.allowed_registered_handlers), metavar="NAME",
         help=MODEL_SOURCE_FLAGS["--allow-registered-handler"])

    section("where the expanded Python stages run")
    flag("--environment-type", default="EMBEDDED", choices=["EMBEDDED", "EXTERNAL", "DOCKER", "PROCESS"],
         help="EMBEDDED: this service's own worker pool (local runners); EXTERNAL: worker pools at "
         "--environment-config host:port (Flink worker-pool sidecars); DOCKER: the SDK worker image "
         "--environment-config; PROCESS: Beam's process environment (default: %(default)s)")
    flag("--environment-config", help="address, image or command for --environment-type")
    flag("--worker-pool-host", default="127.0.0.1",
         help="interface of the embedded worker pool; anyone reaching it can start workers, so keep "
         "it private (default: %(default)s)")
    flag("--worker-pool-port", parse=int, default=0, help="port of the embedded worker pool (default: a free one)")

    section("logging")
    flag("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="(default: %(default)s)")
    flag("--log-format", default="text", choices=["text", "json"],
         help="json: one JSON object per line (default: %(default)s)")
    return parser


def _service_config(args: argparse.Namespace, policy: LoadPolicy) -> ServiceConfig:
    """The configuration the flags describe; ValueError names the flag at fault."""
    # Only transforms the operator's own modules register may be allowed: Beam's own registered
    # transforms (ParDo, Combine, WriteToBigQuery, ...) unpickle their payloads.
    builtin = set(ptransform.PTransform._known_urns) | {compat.FULLY_QUALIFIED_NAMED_URN}
    for module in args.imports:
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise ValueError(f"--import={module!r} cannot be imported: {e}") from None
    for urn in args.allow_urn:
        if urn in builtin:
            raise ValueError(
                f"--allow-urn={urn!r} cannot be allowed: it is not registered by an --import module "
                "(Beam's own transforms may unpickle their payloads, running client code)"
            )
        if urn not in ptransform.PTransform._known_urns:
            raise ValueError(
                f"--allow-urn={urn!r} names no transform registered in this Python environment; "
                "register it from a module given with --import"
            )
    if args.environment_type != "EMBEDDED" and not args.environment_config and args.environment_type != "PROCESS":
        raise ValueError(f"--environment-type={args.environment_type} needs --environment-config")
    for name in ("max_request_bytes", "max_concurrent_requests", "expansion_timeout_secs", "expansion_processes"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')}={getattr(args, name)} must be positive")
    return ServiceConfig(
        host=args.host,
        port=args.port,
        auth_token=read_token(args.auth_token_file),
        tls=server_credentials(args.tls_cert_file, args.tls_key_file, args.tls_client_ca_file),
        max_request_bytes=args.max_request_bytes,
        max_concurrent_requests=args.max_concurrent_requests,
        expansion_timeout_secs=args.expansion_timeout_secs,
        expansion_processes=args.expansion_processes,
        allowed_urns=frozenset(args.allow_urn),
        imports=tuple(args.imports),
        policy=policy,
        environment_type=args.environment_type,
        environment_config=args.environment_config,
        worker_pool_host=args.worker_pool_host,
        worker_pool_port=args.worker_pool_port,
    )


def _extend_import_path(directories: Sequence[str]) -> None:
    """Puts ``directories`` first on this process's import path and, through $PYTHONPATH, on its
    children's (expansion processes, workers)."""
    resolved = []
    for directory in directories:
        if not os.path.isdir(directory):
            raise ValueError(f"--python-path={directory!r} is not a directory; allowed: directories of Python modules")
        resolved.append(os.path.abspath(directory))
    if not resolved:
        return
    sys.path[:0] = resolved
    inherited = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(resolved + ([inherited] if inherited else []))


class _StopSignals:
    """Waits for SIGTERM or SIGINT; set up in the main thread.

    The kernel may deliver a signal to any thread, and Python runs handlers in the main thread
    only when it next executes bytecode: a main thread asleep on a lock would never notice. It
    sleeps on a socket instead, to which Python writes a byte from whichever thread took the
    signal (the socket pair lives as long as this object: a closed wakeup fd's number is reused).
    """

    def __init__(self) -> None:
        self._received: list[int] = []
        self._reader, self._writer = socket.socketpair()
        self._writer.setblocking(False)
        signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, _: self._received.append(signum))

    def wait(self) -> None:
        while not self._received:
            self._reader.recv(64)


def main(argv: Optional[list[str]] = None) -> int:
    """Runs the service until SIGTERM or SIGINT; returns 2 for a bad flag, and exits 0 when stopped."""
    args = _parser().parse_args(argv)
    _configure_logging(args.log_level, args.log_format)
    try:
        _extend_import_path(args.python_path)
        policy = LoadPolicy(
            model_roots=tuple(args.model_root),
            trusted_roots=tuple(args.trusted_model_root),
            allowed_model_classes=tuple(args.allow_model_class),
            allowed_endpoints=tuple(args.allow_endpoint),
            allowed_registered_handlers=tuple(args.allow_registered_handler),
        )
        config = _service_config(args, policy)
    except ValueError as e:
        print(f"inferbridge-expansion-service: {as_flags(str(e))}", file=sys.stderr)
        return 2
    try:
        server = ExpansionServer(config)
    except OSError as e:
        print(f"inferbridge-expansion-service: {e}", file=sys.stderr)
        return 2
    stop_signals = _StopSignals()
    server.start()
    _LOGGER.info(
        "InferBridge expansion service %s (Apache Beam %s) listening on %s (%s%s); serving %s; "
        "Python stages run in: %s",
        VERSION,
        apache_beam.__version__,
        server.address,
        "TLS" if config.tls else "plaintext",
        ", bearer token required" if config.auth_token else "",
        ", ".join(sorted(SERVED_URNS | config.allowed_urns)),
        server.environment,
    )
    _LOGGER.info("Model policy: %s", policy)
    stop_signals.wait()
    _LOGGER.info("Shutting down: finishing in-flight requests (up to %g s)", args.shutdown_grace_secs)
    server.stop(args.shutdown_grace_secs)
    _LOGGER.info("Stopped")
    logging.shutdown()
    # Workers of the embedded pool are threads of this process that live as long as their runner
    # keeps them (runners may cache environments); a stopped service does not wait for them.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
