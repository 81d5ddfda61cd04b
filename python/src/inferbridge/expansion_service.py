"""``inferbridge-expansion-service``: serves InferBridge composites to Java (and other) pipelines.

Unlike Beam's stock Python expansion service, it binds loopback by default, expands only
InferBridge's own URNs (a pickled transform or a payload carrying Python code is refused before
it is decoded), serves no local files through its artifact service, and fails at once when its
port is taken. It also hosts a worker pool, so the Python stages it expands run in this process
on portable runners without Docker (an EXTERNAL environment pointing back at the service).

Beam's stock ``PythonExternalTransform`` requests (``beam:transforms:python:fully_qualified_named``)
are served for the constructors ``inferbridge.Inference`` and ``inferbridge.Evaluate`` only, by
translating them into the native request (see ``inferbridge.compat``). Every request is checked
before Beam decodes any part of it: the components it carries (the inputs' placeholder producers,
coders, windowing strategies) and its configuration Row may hold nothing that Beam's Python SDK
would unpickle or evaluate.
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
from apache_beam.portability import common_urns, python_urns
from apache_beam.portability.api import (
    beam_artifact_api_pb2_grpc,
    beam_expansion_api_pb2,
    beam_expansion_api_pb2_grpc,
    beam_fn_api_pb2_grpc,
    external_transforms_pb2,
    schema_pb2,
)
from apache_beam.runners.portability import artifact_service, expansion_service
from apache_beam.runners.worker import worker_pool_main
from apache_beam.utils import thread_pool_executor

# Importing the composites registers their URNs with Beam.
from inferbridge import compat, evaluate, inference  # noqa: F401
from inferbridge.compat import Refusal
from inferbridge.policy import LoadPolicy
from inferbridge.spec import RUN_INFERENCE_URN

_LOGGER = logging.getLogger("inferbridge.expansion_service")

SERVED_URNS = frozenset({RUN_INFERENCE_URN, evaluate.EVALUATE_URN})
VERSION = "0.1.0"
_WILDCARD_HOSTS = {"0.0.0.0", "::", "[::]", ""}

# URNs whose payload Beam's Python SDK unpickles when it meets them in a request's components.
_PICKLED_URNS = frozenset(
    value for name, value in vars(python_urns).items() if name.startswith("PICKLED_") and isinstance(value, str)
)
# What a client may send as the producer of an input: Beam's clients send a placeholder Impulse.
_PLACEHOLDER_URNS = frozenset({"", common_urns.primitives.IMPULSE.urn})
_ROW_CODER_URN = common_urns.coders.ROW.urn


def check_components(request: beam_expansion_api_pb2.ExpansionRequest) -> None:
    """Refuses components that Beam would unpickle or evaluate while reading them.

    Beam's servicer rebuilds every transform the request carries, every PCollection they and the
    expanded transform use, and those PCollections' coders and windowing strategies. A transform
    with a pickled (or any non-placeholder) payload, a pickled coder or window function, a coder
    id that names no coder (Beam unpickles the id itself) or a Row coder whose schema holds Python
    code would each run code in this process. Components that nothing refers to are never read
    (Beam's Python client sends a spare pickled coder), so they are left alone.
    """
    components = request.components
    for transform_id, transform in components.transforms.items():
        if transform.spec.urn not in _PLACEHOLDER_URNS or transform.inputs or transform.subtransforms:
            raise Refusal(
                f"components.transforms[{transform_id!r}] is a {transform.spec.urn or 'composite'} transform; "
                "a request may carry only the placeholder producers of its inputs "
                f"({common_urns.primitives.IMPULSE.urn} without inputs), as Beam's clients send them"
            )
    for tag, pcoll_id in request.transform.inputs.items():
        if pcoll_id not in components.pcollections:
            raise Refusal(f"input {tag!r} names a PCollection the request does not carry")
    roots = []
    for pcoll_id, pcoll in components.pcollections.items():
        roots.append((f"components.pcollections[{pcoll_id!r}]", pcoll.coder_id))
        strategy = components.windowing_strategies.get(pcoll.windowing_strategy_id)
        if strategy is None:
            raise Refusal(
                f"components.pcollections[{pcoll_id!r}] names a windowing strategy the request does not carry"
            )
        where = f"components.windowing_strategies[{pcoll.windowing_strategy_id!r}]"
        if strategy.window_fn.urn in _PICKLED_URNS:
            raise Refusal(f"{where} has a pickled Python window function ({strategy.window_fn.urn})")
        roots.append((where, strategy.window_coder_id))
    roots.extend((f"output_coder_requests[{tag!r}]", coder_id) for tag, coder_id in request.output_coder_requests.items())
    seen: set[str] = set()
    for referrer, coder_id in roots:
        _check_coders(components, referrer, coder_id, seen)


def _check_coders(components: Any, referrer: str, coder_id: str, seen: set[str]) -> None:
    """Refuses the coder ``coder_id`` and its component coders if Beam would run code to build them."""
    pending = [(referrer, coder_id)]
    while pending:
        referrer, coder_id = pending.pop()
        if coder_id in seen:
            continue
        if coder_id not in components.coders:
            raise Refusal(f"{referrer} names a coder the request does not carry")
        seen.add(coder_id)
        coder = components.coders[coder_id]
        where = f"components.coders[{coder_id!r}]"
        if coder.spec.urn in _PICKLED_URNS:
            raise Refusal(f"{where}, used by {referrer}, is a pickled Python coder ({coder.spec.urn})")
        if coder.spec.urn == _ROW_CODER_URN:
            schema = schema_pb2.Schema()
            try:
                schema.ParseFromString(coder.spec.payload)
            except Exception:  # DecodeError, RecursionError
                raise Refusal(f"{where} is a Row coder without a valid schema") from None
            code = [(path, urn) for path, urn in compat.logical_types(schema) if urn in compat.CODE_LOGICAL_TYPES]
            if code:
                raise Refusal(f"{where}: {compat.describe_logical_types(code)}")
        pending.extend((where, component) for component in coder.component_coder_ids)


def drop_unsafe_output_coder_requests(
    request: beam_expansion_api_pb2.ExpansionRequest,
) -> beam_expansion_api_pb2.ExpansionRequest:
    """The request without output coder requests whose coders Beam would have to unpickle.

    Beam's Python client asks for a pickled ``FastPrimitivesCoder`` output coder whenever it knows
    no output type; honouring it means unpickling client bytes. The composites type their outputs
    themselves, so such a request is dropped rather than refused.
    """
    unsafe = []
    for tag, coder_id in request.output_coder_requests.items():
        try:
            _check_coders(request.components, f"output_coder_requests[{tag!r}]", coder_id, set())
        except Refusal as e:
            unsafe.append(tag)
            _LOGGER.debug("Ignoring output coder request: %s", e)
    if not unsafe:
        return request
    cleaned = beam_expansion_api_pb2.ExpansionRequest()
    cleaned.CopyFrom(request)
    for tag in unsafe:
        del cleaned.output_coder_requests[tag]
    return cleaned


def check_configuration(request: beam_expansion_api_pb2.ExpansionRequest) -> None:
    """Refuses a configuration payload whose schema holds logical types (Python code among them)."""
    payload = external_transforms_pb2.ExternalConfigurationPayload()
    try:
        payload.ParseFromString(request.transform.spec.payload)
    except Exception:  # DecodeError, RecursionError
        raise Refusal("the payload is not an ExternalConfigurationPayload") from None
    found = compat.logical_types(payload.schema)
    if found:
        raise Refusal(compat.describe_logical_types(found))


class InferBridgeExpansionServicer(expansion_service.ExpansionServiceServicer):
    """Beam's expansion servicer, restricted to the URNs this service serves."""

    def __init__(self, options: PipelineOptions, served_urns: Iterable[str] = SERVED_URNS) -> None:
        super().__init__(options)
        self._served_urns = frozenset(served_urns)

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
            if fully_qualified_named:
                request = compat.translate(request)
                _LOGGER.info("Expanding %s as %s", urn, request.transform.spec.urn)
            else:
                check_configuration(request)
        except compat.KwargsError as e:
            return self._refuse(urn, str(e))
        except Refusal as e:
            if fully_qualified_named:
                return self._refuse(
                    urn,
                    f"URN {urn!r} is not served by the InferBridge expansion service for this request: {e}. "
                    f"It is served only for the constructors {compat.allowed_constructors()}, with keyword "
                    f"arguments (kwargs), no positional arguments and no Python code; served URNs: {served}",
                )
            return self._refuse(urn, f"the InferBridge expansion service refuses this request for {urn}: {e}")
        return super().Expand(request, context)

    @staticmethod
    def _refuse(urn: str, message: str) -> Any:
        _LOGGER.warning("Refused expansion of URN %r: %s", urn, message)
        return beam_expansion_api_pb2.ExpansionResponse(error=message)


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
