"""``inferbridge-expansion-service``: serves InferBridge composites to Java (and other) pipelines.

Unlike Beam's stock Python expansion service, it binds loopback by default, expands only
InferBridge's own URNs (a pickled transform or a payload carrying Python code is refused before
it is decoded), serves no local files through its artifact service, and fails at once when its
port is taken. It also hosts a worker pool, so the Python stages it expands run in this process
on portable runners without Docker (an EXTERNAL environment pointing back at the service).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from typing import Any, Iterable, Optional

import apache_beam
import grpc
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.portability.api import (
    beam_artifact_api_pb2_grpc,
    beam_expansion_api_pb2,
    beam_expansion_api_pb2_grpc,
    beam_fn_api_pb2_grpc,
)
from apache_beam.runners.portability import artifact_service, expansion_service
from apache_beam.runners.worker import worker_pool_main
from apache_beam.utils import thread_pool_executor

# Importing the composites registers their URNs with Beam.
from inferbridge import evaluate, inference  # noqa: F401
from inferbridge.policy import LoadPolicy
from inferbridge.spec import RUN_INFERENCE_URN

_LOGGER = logging.getLogger("inferbridge.expansion_service")

SERVED_URNS = frozenset({RUN_INFERENCE_URN, evaluate.EVALUATE_URN})
VERSION = "0.1.0"
_WILDCARD_HOSTS = {"0.0.0.0", "::", "[::]", ""}


class InferBridgeExpansionServicer(expansion_service.ExpansionServiceServicer):
    """Beam's expansion servicer, restricted to the URNs this service serves."""

    def __init__(self, options: PipelineOptions, served_urns: Iterable[str] = SERVED_URNS) -> None:
        super().__init__(options)
        self._served_urns = frozenset(served_urns)

    def Expand(self, request: Any, context: Any = None) -> Any:
        urn = request.transform.spec.urn
        if urn not in self._served_urns:
            _LOGGER.warning("Refused expansion of URN %r", urn)
            return beam_expansion_api_pb2.ExpansionResponse(
                error=(
                    f"URN {urn!r} is not served by the InferBridge expansion service; "
                    f"served URNs: {', '.join(sorted(self._served_urns))}"
                )
            )
        return super().Expand(request, context)


def _refuse_file_reads(path: str) -> Any:
    # Environments built here stage no artifacts, so nothing may be read through this service.
    raise ValueError(f"the InferBridge expansion service does not serve files ({path!r})")


class ExpansionServer:
    """The gRPC server: expansion, (empty) artifact retrieval and an in-process worker pool."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8097) -> None:
        self._server = grpc.server(
            thread_pool_executor.shared_unbounded_instance(),
            # Without this, Linux lets a second server bind the same port silently.
            options=[("grpc.so_reuseport", 0)],
        )
        address = f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"
        try:
            bound = self._server.add_insecure_port(address)
        except RuntimeError:
            bound = 0
        if not bound:
            raise OSError(
                f"cannot listen on {address}: the port is already in use or the address is not "
                "available on this machine; choose another --port (or stop the process using it)"
            )
        self.port = bound
        self.host = host
        # Workers the runner starts through this pool connect from the same machine.
        advertised_host = "localhost" if host in _WILDCARD_HOSTS else host
        self.worker_address = f"{advertised_host}:{bound}"
        options = PipelineOptions(
            [
                "--experiments=beam_fn_api",
                "--sdk_location=container",
                "--environment_type=EXTERNAL",
                f"--environment_config={self.worker_address}",
            ]
        )
        beam_expansion_api_pb2_grpc.add_ExpansionServiceServicer_to_server(
            InferBridgeExpansionServicer(options), self._server
        )
        beam_artifact_api_pb2_grpc.add_ArtifactRetrievalServiceServicer_to_server(
            artifact_service.ArtifactRetrievalService(_refuse_file_reads), self._server
        )
        beam_fn_api_pb2_grpc.add_BeamFnExternalWorkerPoolServicer_to_server(
            worker_pool_main.BeamFnExternalWorkerPoolServicer(), self._server
        )

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> None:
        self._server.start()

    def stop(self, grace_secs: Optional[float] = 10.0) -> None:
        self._server.stop(grace_secs).wait()


def _parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="inferbridge-expansion-service",
        description="Serve InferBridge inference composites to Beam pipelines in any language.",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="interface to bind (default: %(default)s, loopback only; use 0.0.0.0 inside a container)",
    )
    parser.add_argument(
        "--port", type=int, default=8097, help="port to listen on; 0 picks a free one (default: %(default)s)"
    )
    # What models expanded pipelines may load (see inferbridge.policy); defaults come from the
    # INFERBRIDGE_MODEL_ROOTS / _TRUSTED_MODEL_ROOTS / _ALLOWED_MODEL_CLASSES variables.
    env = LoadPolicy.from_env()
    parser.add_argument(
        "--model-root",
        action="append",
        default=list(env.model_roots),
        metavar="DIR_OR_URI",
        help="models must be under one of these (repeatable; default: anywhere)",
    )
    parser.add_argument(
        "--trusted-model-root",
        action="append",
        default=list(env.trusted_roots),
        metavar="DIR_OR_URI",
        help="pickle, joblib and TorchScript models, which run code when loaded, may be loaded "
        "from here (repeatable; default: nowhere)",
    )
    parser.add_argument(
        "--allow-model-class",
        action="append",
        default=list(env.allowed_model_classes),
        metavar="MODULE_PREFIX",
        help="PyTorch model classes may be imported from modules under this prefix (repeatable; "
        "default: none)",
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="(default: %(default)s)"
    )
    return parser.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = _parse_args(argv)
    # force: importing Beam may already have configured the root logger.
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    try:
        policy = LoadPolicy(
            model_roots=tuple(args.model_root),
            trusted_roots=tuple(args.trusted_model_root),
            allowed_model_classes=tuple(args.allow_model_class),
        )
    except ValueError as e:
        print(f"inferbridge-expansion-service: {e}", file=sys.stderr)
        return 2
    inference.configure_load_policy(policy)
    try:
        server = ExpansionServer(args.host, args.port)
    except OSError as e:
        print(f"inferbridge-expansion-service: {e}", file=sys.stderr)
        return 2
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    server.start()
    _LOGGER.info(
        "InferBridge expansion service %s (Apache Beam %s) listening on %s; serving %s",
        VERSION,
        apache_beam.__version__,
        server.address,
        ", ".join(sorted(SERVED_URNS)),
    )
    _LOGGER.info("Model policy: %s", policy)
    stopping.wait()
    _LOGGER.info("Shutting down: finishing in-flight requests")
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
