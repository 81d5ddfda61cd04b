"""Security suite: each known attack on a Python expansion service, against the real InferBridge
service (a child process, over gRPC).

Every test sends the attack, checks that it was refused, and checks that it had no effect: the
payloads write a marker file when they run (a pickle whose unpickling opens the file for writing,
Python source that does the same, a shell command that touches it), so a marker that does not
exist afterwards proves the payload was never decoded; and the service still answers its health
check. Where it is cheap, the test then shows that the same payload is a real attack: Beam's stock
expansion servicer (run in this test process), or Beam's own decoding of the payload, writes the
marker.

Each docstring says what the attack does on Beam's stock Python expansion service
(``apache_beam.runners.portability.expansion_service_main``).
"""

from __future__ import annotations

import collections
import dataclasses
import fcntl
import ipaddress
import json
import os
import pickle
import re
import socket
import struct
import threading
import time
import typing
import uuid
from pathlib import Path

import apache_beam as beam
import grpc
import pytest
from apache_beam.coders import RowCoder
from apache_beam.internal import pickler
from apache_beam.portability.api import (
    beam_artifact_api_pb2,
    beam_artifact_api_pb2_grpc,
    beam_expansion_api_pb2,
    beam_expansion_api_pb2_grpc,
    beam_fn_api_pb2,
    beam_fn_api_pb2_grpc,
    beam_runner_api_pb2,
    endpoints_pb2,
    external_transforms_pb2,
    schema_pb2,
)
from apache_beam.runners.portability import expansion_service as beam_expansion_service
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.external import ExternalTransform
from apache_beam.transforms.fully_qualified_named_transform import FullyQualifiedNamedTransform
from apache_beam.typehints import schemas
from google.protobuf import wrappers_pb2

from attack_support import (
    START_TIMEOUT_SECS,
    Service,
    WritesMarker,
    assert_healthy,
    channel_to,
    expand,
    expansion_request,
    launch,
    native_payload,
    native_request,
    self_signed_certificate,
    stop,
)
from inferbridge import Inference, Model, healthcheck
from inferbridge.spec import RUN_INFERENCE_URN

PICKLED_TRANSFORM = "beam:transform:pickled_python:v1"
FULLY_QUALIFIED_NAMED = "beam:transforms:python:fully_qualified_named"
PYTHON_CALLABLE = "beam:logical_type:python_callable:v1"
PYTHON_ANY = "beam:logical:pythonsdk_any:v1"
EXPAND_METHOD = "/org.apache.beam.model.expansion.v1.ExpansionService/Expand"
STRING = schema_pb2.FieldType(atomic_type=schema_pb2.STRING)


# --- payloads that leave a trace --------------------------------------------------------------


class Listener:
    """A TCP port that records whether anything connected to it: an attacker's endpoint. It
    accepts and at once closes every connection, so a client of it fails fast."""

    def __init__(self):
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(8)
        self._socket.settimeout(0.1)
        self.address = "127.0.0.1:%d" % self._socket.getsockname()[1]
        self._hit = threading.Event()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self):
        while not self._closed.is_set():
            try:
                connection, _ = self._socket.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self._hit.set()
            connection.close()

    def contacted(self, wait_secs: float) -> bool:
        return self._hit.wait(wait_secs)

    def close(self):
        self._closed.set()
        self._thread.join()
        self._socket.close()


@pytest.fixture
def listener():
    endpoint = Listener()
    yield endpoint
    endpoint.close()


# --- requests ---------------------------------------------------------------------------------


def stock_expand(request, glob=None):
    """Beam's stock expansion servicer, in this process, on ``request`` (the control experiment).
    ``glob``: its --fully_qualified_name_glob (Beam's Java auto-start passes '*')."""
    servicer = beam_expansion_service.ExpansionServiceServicer()
    if glob is None:
        return servicer.Expand(request)
    with FullyQualifiedNamedTransform.with_filter(glob):
        return servicer.Expand(request)


def _with_ids(schema: schema_pb2.Schema) -> schema_pb2.Schema:
    """Gives a schema and its nested Row schemas fresh ids (Beam caches types by schema id)."""
    schema.id = str(uuid.uuid4())
    for field in schema.fields:
        if field.type.WhichOneof("type_info") == "row_type":
            _with_ids(field.type.row_type.schema)
    return schema


def _representation(schema: schema_pb2.Schema) -> schema_pb2.Schema:
    """A copy with python_callable fields as their STRING representation: what an attacker
    encodes the values with, so that building the attack runs no code."""
    copy = schema_pb2.Schema()
    copy.CopyFrom(schema)
    copy.id = str(uuid.uuid4())
    for field in copy.fields:
        kind = field.type.WhichOneof("type_info")
        if kind == "logical_type" and field.type.logical_type.urn == PYTHON_CALLABLE:
            field.type.CopyFrom(STRING)
        elif kind == "row_type":
            field.type.row_type.schema.CopyFrom(_representation(field.type.row_type.schema))
    return copy


def _python_callable():
    return schema_pb2.FieldType(logical_type=schema_pb2.LogicalType(urn=PYTHON_CALLABLE, representation=STRING))


def _row_type(fields):
    """A ROW field type of (name, type) fields."""
    schema = schema_pb2.Schema(fields=[schema_pb2.Field(name=name, type=field_type) for name, field_type in fields])
    return schema_pb2.FieldType(row_type=schema_pb2.RowType(schema=schema))


def _payload_schema(*, args=None, kwargs=()):
    """The schema of a stock PythonExternalTransform payload: constructor, [args], kwargs."""
    fields = [schema_pb2.Field(name="constructor", type=STRING)]
    if args is not None:
        fields.append(schema_pb2.Field(name="args", type=_row_type(args)))
    fields.append(schema_pb2.Field(name="kwargs", type=_row_type(kwargs)))
    return schema_pb2.Schema(fields=fields)


def _source(marker):
    """Python source that writes the marker when evaluated."""
    return f"open({str(marker)!r}, 'w')"


def fully_qualified_named_payload(schema: schema_pb2.Schema, values: beam.Row) -> bytes:
    """A stock PythonExternalTransform payload: Row {constructor, [args], kwargs}."""
    schema = _with_ids(schema)
    data = RowCoder(_representation(schema)).encode(values)
    return external_transforms_pb2.ExternalConfigurationPayload(schema=schema, payload=data).SerializeToString()


def refused_by_urn(response, urn):
    assert f"URN {urn!r} is not served by the InferBridge expansion service" in response.error, response.error


# --- 1. pickled transforms ----------------------------------------------------------------------


def test_pickled_python_transform_is_refused(default_service, marker):
    """Stock service: ``beam:transform:pickled_python:v1`` is always registered, and its payload
    (any client's pickle) is unpickled in the service's process: remote code execution."""
    request = expansion_request(PICKLED_TRANSFORM, pickler.dumps(WritesMarker(marker)))
    response = expand(default_service, request)
    refused_by_urn(response, PICKLED_TRANSFORM)
    assert not marker.exists()
    assert_healthy(default_service)

    stock_expand(request)  # the attack is real
    assert marker.exists()


# --- 2. fully_qualified_named with any constructor ---------------------------------------------


def _os_system(marker):
    schema = _payload_schema(kwargs=[("command", STRING)])
    return schema, beam.Row(constructor="os.system", kwargs=beam.Row(command=f"touch {marker}"))


def _subprocess_popen(marker):
    schema = _payload_schema(kwargs=[("args", schema_pb2.FieldType(array_type=schema_pb2.ArrayType(element_type=STRING)))])
    return schema, beam.Row(constructor="subprocess.Popen", kwargs=beam.Row(args=["touch", str(marker)]))


def _builtins_eval(marker):
    # eval takes no keyword arguments: the source goes in args (Beam's withArgs).
    schema = _payload_schema(args=[("arg0", STRING)])
    return schema, beam.Row(constructor="builtins.eval", args=beam.Row(arg0=_source(marker)), kwargs=beam.Row())


def _builtins_open(marker):
    schema = _payload_schema(kwargs=[("file", STRING), ("mode", STRING)])
    return schema, beam.Row(constructor="builtins.open", kwargs=beam.Row(file=str(marker), mode="w"))


@pytest.mark.parametrize(
    "attack",
    [_os_system, _subprocess_popen, _builtins_eval, _builtins_open],
    ids=["os.system", "subprocess.Popen", "builtins.eval", "builtins.open"],
)
def test_fully_qualified_named_constructor_outside_the_allowlist_is_refused(default_service, marker, attack):
    """Stock service: ``beam:transforms:python:fully_qualified_named`` imports and calls whatever
    ``constructor`` names with the client's args/kwargs; with ``--fully_qualified_name_glob='*'``
    (what Beam's Java auto-start passes) ``os.system`` runs the client's shell command."""
    schema, values = attack(marker)
    request = expansion_request(FULLY_QUALIFIED_NAMED, fully_qualified_named_payload(schema, values))
    response = expand(default_service, request)
    served = f"URN '{FULLY_QUALIFIED_NAMED}' is not served by the InferBridge expansion service for this request"
    assert served in response.error, response.error
    reason = rf"constructor '{re.escape(values.constructor)}' is not allowed|positional arguments are not accepted"
    assert re.search(reason, response.error), response.error
    time.sleep(0.2)  # a command run in the background (Popen) would have created the marker by now
    assert not marker.exists()
    assert_healthy(default_service)

    stock_expand(request, glob="*")  # the attack is real
    deadline = time.monotonic() + 5
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists()


# --- 3. python_callable values in a fully_qualified_named payload ------------------------------


def _callable_in_kwargs(marker):
    schema = _payload_schema(kwargs=[("key_field", STRING), ("extra", _python_callable())])
    return schema, beam.Row(constructor="inferbridge.Inference", kwargs=beam.Row(key_field="id", extra=_source(marker)))


def _callable_in_args(marker):
    schema = _payload_schema(args=[("arg0", _python_callable())], kwargs=[("key_field", STRING)])
    return schema, beam.Row(constructor="inferbridge.Inference", args=beam.Row(arg0=_source(marker)), kwargs=beam.Row(key_field="id"))


def _callable_in_nested_row(marker):
    model = _row_type([("uri", STRING), ("extra", _python_callable())])
    schema = _payload_schema(kwargs=[("model", model)])
    values = beam.Row(constructor="inferbridge.Inference", kwargs=beam.Row(model=beam.Row(uri="/m.pkl", extra=_source(marker))))
    return schema, values


@pytest.mark.parametrize(
    "attack, where",
    [(_callable_in_kwargs, "kwargs.extra"), (_callable_in_args, "args.arg0"), (_callable_in_nested_row, "kwargs.model.extra")],
    ids=["kwargs", "args", "nested_row"],
)
def test_fully_qualified_named_python_callable_is_refused_before_decoding(default_service, marker, attack, where):
    """Stock service: a field of logical type ``beam:logical_type:python_callable:v1`` is Python
    source that Beam evaluates while it decodes the payload Row, before any constructor check,
    even for an allowed constructor: remote code execution with any glob."""
    schema, values = attack(marker)
    payload = fully_qualified_named_payload(schema, values)
    response = expand(default_service, expansion_request(FULLY_QUALIFIED_NAMED, payload))
    assert f"field {where} has logical type {PYTHON_CALLABLE}" in response.error, response.error
    assert not marker.exists()
    assert_healthy(default_service)

    parsed = external_transforms_pb2.ExternalConfigurationPayload.FromString(payload)
    RowCoder(parsed.schema).decode(parsed.payload)  # Beam's decoding runs the code: the attack is real
    assert marker.exists()


# --- 4. pythonsdk_any values in the native configuration Row -----------------------------------


def test_pythonsdk_any_in_the_native_configuration_row_is_refused(default_service, good_model, marker):
    """Stock service (with the composite's URN registered): the configuration Row is decoded with
    the schema the client sent; a field of logical type ``beam:logical:pythonsdk_any:v1`` is a
    pickle, unpickled while the Row is decoded."""
    _, config_payload = Inference(Model.sklearn(good_model), key_field="id", feature_fields="pixels").to_runner_api_parameter(None)
    config = RowCoder(config_payload.schema).decode(config_payload.payload)
    schema = schema_pb2.Schema()
    schema.CopyFrom(config_payload.schema)
    schema.id = str(uuid.uuid4())
    schema.fields.add(name="pickled", type=schemas.typing_to_runner_api(typing.Any))
    assert schema.fields[-1].type.logical_type.urn == PYTHON_ANY
    data = RowCoder(schema).encode(beam.Row(**config._asdict(), pickled=WritesMarker(marker)))
    payload = external_transforms_pb2.ExternalConfigurationPayload(schema=schema, payload=data)
    response = expand(default_service, expansion_request(RUN_INFERENCE_URN, payload.SerializeToString()))
    reason = f"refuses this request for {RUN_INFERENCE_URN}: field pickled has logical type {PYTHON_ANY}"
    assert reason in response.error, response.error
    assert not marker.exists()
    assert_healthy(default_service)

    RowCoder(schema).decode(data)  # Beam's decoding unpickles it: the attack is real
    assert marker.exists()


# --- 5. code in the request's components --------------------------------------------------------


def _pickled(marker):
    return pickler.dumps(WritesMarker(marker))


def _pickled_bytes_value(marker):
    return wrappers_pb2.BytesValue(value=_pickled(marker)).SerializeToString()


def _replace_input_producer(request, urn, payload):
    request.components.transforms["impulse_input"].spec.CopyFrom(beam_runner_api_pb2.FunctionSpec(urn=urn, payload=payload))


def _pickled_transform_component(request, marker):
    _replace_input_producer(request, PICKLED_TRANSFORM, _pickled(marker))


def _pardo_with_pickled_dofn(request, marker):
    do_fn = beam_runner_api_pb2.FunctionSpec(urn="beam:dofn:pickled_python_info:v1", payload=_pickled(marker))
    _replace_input_producer(request, "beam:transform:pardo:v1", beam_runner_api_pb2.ParDoPayload(do_fn=do_fn).SerializeToString())


def _combine_with_pickled_combine_fn(request, marker):
    combine_fn = beam_runner_api_pb2.FunctionSpec(urn="beam:combinefn:pickled_python:v1", payload=_pickled_bytes_value(marker))
    combine = beam_runner_api_pb2.CombinePayload(combine_fn=combine_fn, accumulator_coder_id="row_coder")
    _replace_input_producer(request, "beam:transform:combine_per_key:v1", combine.SerializeToString())


def _pickled_coder(request, marker):
    value = b"Coder$" + pickler.dumps(WritesMarker(marker), use_zlib=True)
    request.components.coders["row_coder"].spec.CopyFrom(
        beam_runner_api_pb2.FunctionSpec(
            urn="beam:coder:pickled_python:v1", payload=wrappers_pb2.BytesValue(value=value).SerializeToString()
        )
    )


def _pickled_coder_id(request, marker):
    # A coder id that names no coder: Beam unpickles the id itself.
    request.components.pcollections["rows"].coder_id = _pickled(marker).decode()


def _pickled_window_fn(request, marker):
    request.components.windowing_strategies["global"].window_fn.CopyFrom(
        beam_runner_api_pb2.FunctionSpec(urn="beam:window_fn:pickled_python:v1", payload=_pickled_bytes_value(marker))
    )


_PRODUCER = "components.transforms['impulse_input'] is a {} transform"
COMPONENT_ATTACKS = {
    "pickled_transform": (_pickled_transform_component, _PRODUCER.format(PICKLED_TRANSFORM)),
    "pardo_pickled_dofn": (_pardo_with_pickled_dofn, _PRODUCER.format("beam:transform:pardo:v1")),
    "combine_pickled_combinefn": (_combine_with_pickled_combine_fn, _PRODUCER.format("beam:transform:combine_per_key:v1")),
    "pickled_coder": (
        _pickled_coder,
        "components.coders['row_coder'], used by components.pcollections['rows'], is a pickled Python coder",
    ),
    "pickled_coder_id": (_pickled_coder_id, "components.pcollections['rows'] names a coder the request does not carry"),
    "pickled_window_fn": (_pickled_window_fn, "components.windowing_strategies['global'] has a pickled Python window function"),
}


@pytest.mark.parametrize("urn", [RUN_INFERENCE_URN, FULLY_QUALIFIED_NAMED], ids=["native", "fully_qualified_named"])
@pytest.mark.parametrize("attack", list(COMPONENT_ATTACKS))
def test_code_in_request_components_is_refused(default_service, good_model, marker, attack, urn):
    """Stock service: before expanding anything Beam rebuilds every transform the request
    carries (a ParDo unpickles its DoFn, a Combine its CombineFn, a pickled transform itself) and
    the coders and windowing strategies of the inputs (a pickled coder, a pickled window fn, even
    a coder id naming no coder is unpickled): code runs whatever the transform's URN."""
    modify, reason = COMPONENT_ATTACKS[attack]
    if urn == RUN_INFERENCE_URN:
        request = native_request(Model.sklearn(good_model))
    else:
        values = beam.Row(constructor="inferbridge.Inference", kwargs=beam.Row(key_field="id"))
        request = expansion_request(urn, fully_qualified_named_payload(_payload_schema(kwargs=[("key_field", STRING)]), values))
    modify(request, marker)
    response = expand(default_service, request)
    assert reason in response.error, response.error
    assert not marker.exists()
    assert_healthy(default_service)

    stock_expand(request)  # the attack is real
    assert marker.exists()


# --- 6. artifact retrieval ------------------------------------------------------------------------


@pytest.fixture
def secret_file(tmp_path):
    path = tmp_path / "secret.txt"
    path.write_text("inferbridge-secret-" + uuid.uuid4().hex)
    return path


def _file_artifact(path):
    return beam_runner_api_pb2.ArtifactInformation(
        type_urn="beam:artifact:type:file:v1", type_payload=beam_runner_api_pb2.ArtifactFilePayload(path=str(path)).SerializeToString()
    )


def _url_artifact(url):
    return beam_runner_api_pb2.ArtifactInformation(
        type_urn="beam:artifact:type:url:v1", type_payload=beam_runner_api_pb2.ArtifactUrlPayload(url=url).SerializeToString()
    )


def _get_artifact(service: Service, artifact, metadata=None):
    """The bytes GetArtifact returns, or the gRPC error."""
    with channel_to(service) as channel:
        stub = beam_artifact_api_pb2_grpc.ArtifactRetrievalServiceStub(channel)
        try:
            request = beam_artifact_api_pb2.GetArtifactRequest(artifact=artifact)
            return b"".join(r.data for r in stub.GetArtifact(request, metadata=metadata, timeout=30))
        except grpc.RpcError as e:
            return e


ARTIFACTS = {
    "file:/etc/passwd": lambda secret: (_file_artifact("/etc/passwd"), Path("/etc/passwd").read_bytes()),
    "file:secret": lambda secret: (_file_artifact(secret), secret.read_bytes()),
    "url:file:///etc/passwd": lambda secret: (_url_artifact("file:///etc/passwd"), Path("/etc/passwd").read_bytes()),
    "url:file://secret": lambda secret: (_url_artifact(secret.as_uri()), secret.read_bytes()),
}


@pytest.mark.parametrize("artifact", list(ARTIFACTS))
def test_artifact_retrieval_serves_no_local_files(default_service, secret_file, artifact):
    """Stock service: the ArtifactRetrievalService on the expansion port is backed by the whole
    local filesystem: ``GetArtifact`` returns any file the service can read (/etc/passwd, keys,
    model files), as a FILE artifact (a path) or a URL artifact (``file://``, read with urlopen)."""
    info, content = ARTIFACTS[artifact](secret_file)
    result = _get_artifact(default_service, info)
    assert isinstance(result, grpc.RpcError), f"GetArtifact returned {len(result)} bytes: {result[:80]!r}"
    assert content.decode(errors="replace")[:20] not in (result.details() or "")
    with channel_to(default_service) as channel:
        resolved = beam_artifact_api_pb2_grpc.ArtifactRetrievalServiceStub(channel).ResolveArtifacts(
            beam_artifact_api_pb2.ResolveArtifactsRequest(artifacts=[info]), timeout=30
        )
    # ResolveArtifacts may only echo what was sent: no file content comes back.
    assert content[:20] not in resolved.SerializeToString()
    assert_healthy(default_service)


def test_artifact_retrieval_fetches_no_urls(default_service, listener):
    """Stock service: a URL artifact is opened with urlopen in the service's process: the client
    makes the service connect anywhere it can reach (server-side request forgery: cloud metadata
    endpoints, internal services)."""
    result = _get_artifact(default_service, _url_artifact(f"http://{listener.address}/internal"))
    contacted = listener.contacted(wait_secs=1.0)
    assert not contacted, "the service connected to the URL the client named"
    assert isinstance(result, grpc.RpcError)
    assert_healthy(default_service)


# --- 7. the worker pool -------------------------------------------------------------------------


def _start_worker(address, control_endpoint, credentials=None):
    channel = grpc.secure_channel(address, credentials) if credentials else grpc.insecure_channel(address)
    with channel:
        stub = beam_fn_api_pb2_grpc.BeamFnExternalWorkerPoolStub(channel)
        return stub.StartWorker(
            beam_fn_api_pb2.StartWorkerRequest(
                worker_id="attack", control_endpoint=endpoints_pb2.ApiServiceDescriptor(url=control_endpoint)
            ),
            timeout=30,
        )


def _listening_sockets(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket process ``pid`` listens on, from /proc."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[len("socket:[") : -1])
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in inodes:  # 0A: LISTEN
                continue
            address_hex, port_hex = local.split(":")
            raw = bytes.fromhex(address_hex)
            # /proc prints each 32-bit word of the address in host (little-endian) order.
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            address = ipaddress.ip_address(raw)
            # gRPC binds 127.0.0.1 as an IPv6 socket on ::ffff:127.0.0.1 (accepting IPv4 only there).
            address = getattr(address, "ipv4_mapped", None) or address
            found.add((str(address), int(port_hex, 16)))
    return found


def _non_loopback_ipv4() -> list[str]:
    """This machine's IPv4 addresses other than loopback (SIOCGIFADDR on each interface)."""
    addresses = []
    for _, name in socket.if_nameindex():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                packed = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name[:15].encode()))
            except OSError:
                continue
        address = socket.inet_ntoa(packed[20:24])
        if not ipaddress.ip_address(address).is_loopback:
            addresses.append(address)
    return addresses


def _refuses_connections(host, port) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return False
    except OSError:
        return True


def _pool_port(service: Service) -> int:
    match = re.search(r"Python stages run in: --environment_type=EXTERNAL --environment_config=127\.0\.0\.1:(\d+)", service.log())
    assert match, service.log()
    return int(match.group(1))


def test_worker_pool_is_not_served_on_the_public_port(default_service, listener):
    """Stock service (``--serve_loopback_worker``): the worker pool shares the service's port, bound
    to all interfaces; ``BeamFnExternalWorkerPool/StartWorker`` starts a Python SDK worker that
    connects to a control endpoint the client names and runs whatever it is sent."""
    with pytest.raises(grpc.RpcError) as error:
        _start_worker(default_service.address, listener.address)
    assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert not listener.contacted(wait_secs=1.0), "a worker connected to the attacker's endpoint"
    assert_healthy(default_service)


def test_embedded_worker_pool_listens_on_loopback_only(default_service):
    """Stock service: the loopback worker pool is reachable wherever the service is. Here the
    embedded pool has a port of its own bound to 127.0.0.1 (--worker-pool-host)."""
    pool_port = _pool_port(default_service)
    listening = _listening_sockets(default_service.process.pid)
    assert {("127.0.0.1", default_service.port), ("127.0.0.1", pool_port)} <= listening, listening
    assert all(address == "127.0.0.1" for address, _ in listening), listening
    for address in _non_loopback_ipv4():
        assert _refuses_connections(address, pool_port), f"the worker pool is reachable on {address}:{pool_port}"


def test_worker_pool_stays_on_loopback_when_the_service_is_exposed(services):
    """A service exposed on all interfaces (--host=0.0.0.0, as in a container) still binds its
    worker pool to 127.0.0.1: from another address of this machine the service port answers
    (the check can see an exposed port) and the pool port refuses."""
    service = services["token_env"]
    assert f"listening on 0.0.0.0:{service.port}" in service.log()
    pool_port = _pool_port(service)
    listening = _listening_sockets(service.process.pid)
    assert ("127.0.0.1", pool_port) in listening, listening
    assert [a for a, port in listening if port == pool_port] == ["127.0.0.1"], listening
    others = _non_loopback_ipv4()
    if not others:
        pytest.skip("this machine has no address but loopback")
    for address in others:
        assert not _refuses_connections(address, service.port), f"the exposed service is not reachable on {address}"
        assert _refuses_connections(address, pool_port), f"the worker pool is reachable on {address}:{pool_port}"


def test_external_environment_starts_no_worker_pool(services, listener):
    """With --environment-type=EXTERNAL the expanded stages run in worker pools elsewhere: the
    service starts none, so nothing on this machine starts workers for a client."""
    service = services["external_limited"]
    assert "Python stages run in: --environment_type=EXTERNAL --environment_config=localhost:1" in service.log()
    assert _listening_sockets(service.process.pid) == {("127.0.0.1", service.port)}
    with pytest.raises(grpc.RpcError) as error:
        _start_worker(service.address, listener.address)
    assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert not listener.contacted(wait_secs=0.5)
    assert_healthy(service)


# --- 8. bearer token ----------------------------------------------------------------------------

# How a client presents the token: None sends no authorization metadata.
CREDENTIALS = {
    "none": lambda token: None,
    "empty": lambda token: "",
    "wrong": lambda token: "Bearer " + "x" * len(token),
    "no_prefix": lambda token: token,
    "lowercase_prefix": lambda token: "bearer " + token,
    "other_scheme": lambda token: "Basic " + token,
    "double_space": lambda token: "Bearer  " + token,
    "token_uppercased": lambda token: "Bearer " + token.upper(),
    "token_prefix": lambda token: "Bearer " + token[:-1],
    "token_extended": lambda token: "Bearer " + token + "x",
}


def _metadata(value):
    return None if value is None else [("authorization", value)]


def _call(rpc, service: Service, metadata, request=None):
    with channel_to(service) as channel:
        if rpc == "Expand":
            return beam_expansion_api_pb2_grpc.ExpansionServiceStub(channel).Expand(request, metadata=metadata, timeout=30)
        if rpc == "DiscoverSchemaTransform":
            return beam_expansion_api_pb2_grpc.ExpansionServiceStub(channel).DiscoverSchemaTransform(
                beam_expansion_api_pb2.DiscoverSchemaTransformRequest(), metadata=metadata, timeout=30
            )
        artifacts = beam_artifact_api_pb2_grpc.ArtifactRetrievalServiceStub(channel)
        if rpc == "ResolveArtifacts":
            request = beam_artifact_api_pb2.ResolveArtifactsRequest(artifacts=[_file_artifact("/etc/passwd")])
            return artifacts.ResolveArtifacts(request, metadata=metadata, timeout=30)
        if rpc == "GetArtifact":
            request = beam_artifact_api_pb2.GetArtifactRequest(
                artifact=beam_runner_api_pb2.ArtifactInformation(
                    type_urn="beam:artifact:type:embedded:v1",
                    type_payload=beam_runner_api_pb2.EmbeddedFilePayload(data=b"echo").SerializeToString(),
                )
            )
            return list(artifacts.GetArtifact(request, metadata=metadata, timeout=30))
    raise AssertionError(rpc)


@pytest.mark.parametrize("credential", list(CREDENTIALS))
@pytest.mark.parametrize("rpc", ["Expand", "DiscoverSchemaTransform", "ResolveArtifacts", "GetArtifact"])
def test_rpcs_without_the_right_bearer_token_are_unauthenticated(services, good_model, marker, rpc, credential):
    """Stock service: no authentication at all; anyone who reaches the port can expand (and so
    run code, see above), list transforms and read artifacts. Here every RPC but health checks
    needs ``authorization: Bearer <token>``, compared exactly."""
    service = services["token_env"]
    request = expansion_request(PICKLED_TRANSFORM, pickler.dumps(WritesMarker(marker))) if rpc == "Expand" else None
    with pytest.raises(grpc.RpcError) as error:
        _call(rpc, service, _metadata(CREDENTIALS[credential](service.token)), request)
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED, error.value
    assert not marker.exists()
    assert_healthy(service)  # health checks need no token


def test_unauthenticated_pickle_never_reaches_the_refusal_logic(services, marker):
    """A pickled_python request without a token is answered UNAUTHENTICATED by the interceptor,
    before the expansion servicer sees it (no refusal is logged for it), and nothing is decoded."""
    service = services["token_env"]
    namespace = "unauthenticated-" + uuid.uuid4().hex
    request = expansion_request(PICKLED_TRANSFORM, pickler.dumps(WritesMarker(marker)))
    request.namespace = namespace
    before = service.log()
    with pytest.raises(grpc.RpcError) as error:
        _call("Expand", service, None, request)
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "no bearer token was sent" in error.value.details()
    assert not marker.exists()
    time.sleep(0.2)
    added = service.log()[len(before) :]
    assert f"Refused {EXPAND_METHOD}: no bearer token was sent" in added, added
    assert "Refused expansion of URN" not in added, added


def _open_calls_that_never_send(service: Service, count: int, release: threading.Event, metadata=None):
    """``count`` Expand calls whose request never comes (until ``release``): each holds a slot of
    the service's concurrent-call bound from its headers on."""
    def never():
        release.wait()
        return
        yield

    channels = [channel_to(service) for _ in range(4)]
    calls = [
        channels[i % 4]
        .stream_unary(EXPAND_METHOD, request_serializer=lambda b: b, response_deserializer=lambda b: b)
        .future(never(), metadata=metadata, timeout=120)
        for i in range(count)
    ]
    return calls, channels


def test_calls_without_a_token_that_never_send_a_request_hold_nothing(services):
    """300 calls with headers only and no token (256 slots): each is refused UNAUTHENTICATED as it
    arrives, so health checks and authorised clients are served meanwhile. Before, each waited
    for its request, the bound was full, and health checks got "Concurrent RPC limit exceeded"."""
    service = services["token_env"]
    release = threading.Event()
    calls, channels = _open_calls_that_never_send(service, 300, release)
    try:
        codes = collections.Counter()
        for call in calls:
            with pytest.raises(grpc.RpcError) as refused:
                call.result(timeout=60)
            codes[refused.value.code()] += 1
        assert codes == {grpc.StatusCode.UNAUTHENTICATED: 300}
        assert_healthy(service)
    finally:
        release.set()
        for channel in channels:
            channel.close()


def test_one_address_holds_at_most_half_of_the_service_bound(default_service):
    """Calls that never send their request, from one address: half the bound (128 of 256) are
    held, the rest refused RESOURCE_EXHAUSTED at once, so another address keeps the other half;
    when they go, the service serves this address again."""
    release = threading.Event()
    calls, channels = _open_calls_that_never_send(default_service, 140, release)
    try:
        deadline = time.monotonic() + 60
        while sum(call.done() for call in calls) < 12 and time.monotonic() < deadline:
            time.sleep(0.1)
        refused = [call for call in calls if call.done()]
        assert len(refused) == 12
        for call in refused:
            assert call.exception().code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "this client address has 128 calls open; allowed: at most 128 at a time" in call.exception().details()
    finally:
        release.set()  # the held calls end (no request: refused), and free their slots
        for channel in channels:
            channel.close()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            assert_healthy(default_service)
            break
        except (AssertionError, grpc.RpcError):
            time.sleep(0.5)
    assert_healthy(default_service)


@pytest.mark.parametrize("name", ["token_env", "tls"], ids=["token_from_env", "token_from_file_over_tls"])
def test_the_right_bearer_token_is_served(services, good_model, marker, name):
    """The service's own token (from $INFERBRIDGE_AUTH_TOKEN, or --auth-token-file on the TLS
    service) is accepted: expansion and discovery work; a pickled_python request is then refused
    by the servicer. The other service's token is not accepted."""
    service = services[name]
    metadata = [("authorization", f"Bearer {service.token}")]
    response = expand(service, native_request(Model.sklearn(good_model)), metadata=metadata)
    assert response.error == "", response.error
    assert response.transform.spec.urn == RUN_INFERENCE_URN
    discovered = _call("DiscoverSchemaTransform", service, metadata)
    assert RUN_INFERENCE_URN in discovered.schema_transform_configs
    refused = expand(service, expansion_request(PICKLED_TRANSFORM, pickler.dumps(WritesMarker(marker))), metadata=metadata)
    refused_by_urn(refused, PICKLED_TRANSFORM)
    assert not marker.exists()
    other = services["tls" if name == "token_env" else "token_env"]
    for wrong in (None, [("authorization", f"Bearer {other.token}")]):  # none, or the other service's
        with pytest.raises(grpc.RpcError) as error:
            expand(service, native_request(Model.sklearn(good_model)), metadata=wrong)
        assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert_healthy(service)


# --- 9. TLS -------------------------------------------------------------------------------------


def test_tls_service_refuses_plaintext_clients(services, marker):
    """Stock service: plaintext only, so requests (and a token, if any) cross the network in the
    clear. With --tls-cert-file a plaintext client cannot talk to the service at all."""
    service = services["tls"]
    with pytest.raises(grpc.RpcError) as error:
        healthcheck.check(service.address, timeout_secs=5)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    with grpc.insecure_channel(service.address) as channel, pytest.raises(grpc.RpcError) as error:
        beam_expansion_api_pb2_grpc.ExpansionServiceStub(channel).Expand(
            expansion_request(PICKLED_TRANSFORM, pickler.dumps(WritesMarker(marker))), timeout=10
        )
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    assert not marker.exists()
    assert_healthy(service)


def test_tls_service_serves_clients_that_trust_its_certificate(services, good_model, layout):
    """A TLS client trusting the service's certificate gets health and expansion (with the
    service's token); one trusting another certificate (an impostor's view) cannot connect."""
    service = services["tls"]
    assert healthcheck.check(service.address, ca_file=service.ca_file) == "SERVING"
    response = expand(service, native_request(Model.sklearn(good_model)), metadata=[("authorization", f"Bearer {service.token}")])
    assert response.error == "", response.error
    assert response.transform.spec.urn == RUN_INFERENCE_URN
    other_cert, _ = self_signed_certificate(layout.certs, "other")
    with pytest.raises(grpc.RpcError) as error:
        healthcheck.check(service.address, timeout_secs=5, ca_file=str(other_cert))
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE


# --- 10. request size ---------------------------------------------------------------------------


def _padded(request, size):
    """``request`` with an unused component coder that brings it to about ``size`` bytes."""
    request.components.coders["padding"].spec.CopyFrom(
        beam_runner_api_pb2.FunctionSpec(urn="beam:coder:bytes:v1", payload=b"\0" * max(0, size - request.ByteSize()))
    )
    return request


def test_oversized_expand_request_is_refused(services, marker):
    """Stock service: gRPC's default 4 MB limit only; here --max-request-bytes (65536 on this
    service) answers a larger request RESOURCE_EXHAUSTED before it is parsed, and nothing in it
    is decoded."""
    service = services["external_limited"]
    big = _padded(expansion_request(PICKLED_TRANSFORM, pickler.dumps(WritesMarker(marker))), 100_000)
    assert big.ByteSize() >= 100_000
    with pytest.raises(grpc.RpcError) as error:
        expand(service, big)
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.value
    assert not marker.exists()
    assert_healthy(service)
    # Under the limit, the same request reaches the servicer (and is refused for its URN).
    small = _padded(expansion_request(PICKLED_TRANSFORM, pickler.dumps(WritesMarker(marker))), 60_000)
    refused_by_urn(expand(service, small), PICKLED_TRANSFORM)
    assert not marker.exists()


# --- 11. models -----------------------------------------------------------------------------------


@pytest.fixture
def evil_pickle(layout, marker):
    """A "model" outside every root whose loading writes the marker."""
    path = layout.outside / f"evil-{uuid.uuid4().hex}.pkl"
    path.write_bytes(pickle.dumps(WritesMarker(marker)))
    return path


def _model_case(case, layout, evil):
    """(Model, expected error text) of each way to point a model at a file outside the roots."""
    name = evil.name
    if case == "pickle_outside_trusted_roots":
        return Model.sklearn(str(evil)), "runs code when loaded, so it is loaded only from trusted roots"
    if case == "joblib_outside_trusted_roots":
        return Model.sklearn(str(evil), format="joblib"), "runs code when loaded, so it is loaded only from trusted roots"
    if case == "beam_handler_outside_trusted_roots":
        return Model.handler("sklearn_numpy", str(evil)), "runs code when loaded, so it is loaded only from trusted roots"
    # Where a path leads is never named: only the configured value.
    if case == "dotdot_out_of_trusted_root":
        return Model.sklearn(f"{layout.trusted}/../outside/{name}"), "is loaded only from trusted roots"
    if case == "file_uri_dotdot_out_of_trusted_root":
        return Model.sklearn(f"file://{layout.trusted}/../outside/{name}"), "is loaded only from trusted roots"
    if case == "symlink_in_trusted_root":
        link = layout.trusted / f"link-{name}"
        link.symlink_to(evil)
        return Model.sklearn(str(link)), "is loaded only from trusted roots"
    if case == "skops_dotdot_out_of_model_root":
        target = layout.outside / f"model-{uuid.uuid4().hex}.skops"
        target.write_bytes(b"not really skops")
        return Model.sklearn(f"{layout.models}/../outside/{target.name}", format="skops"), "is outside the allowed model roots"
    if case == "pytorch_model_class_outside_allowlist":
        weights = layout.models / f"weights-{uuid.uuid4().hex}.pt"
        weights.write_bytes(b"")
        return Model.pytorch(str(weights), model_class="os:system"), "is not under an allowed model class prefix"
    raise AssertionError(case)


MODEL_CASES = [
    "pickle_outside_trusted_roots",
    "joblib_outside_trusted_roots",
    "beam_handler_outside_trusted_roots",
    "dotdot_out_of_trusted_root",
    "file_uri_dotdot_out_of_trusted_root",
    "symlink_in_trusted_root",
    "skops_dotdot_out_of_model_root",
    "pytorch_model_class_outside_allowlist",
]


@pytest.mark.parametrize("case", MODEL_CASES)
def test_models_outside_the_roots_are_refused_at_expansion(default_service, layout, evil_pickle, marker, case):
    """Stock service: RunInference's model handler is Python the client supplies, so any file
    is loaded (a pickle runs code when loaded). Here a model that runs code on load (pickle,
    joblib, a Beam sklearn handler) loads only from --trusted-model-root, every model only from
    --model-root, both compared after resolving '..' and symbolic links, and a PyTorch
    model_class only from --allow-model-class prefixes: refused when the transform is expanded,
    naming the configured value, never where it leads."""
    model, expected = _model_case(case, layout, evil_pickle)
    response = expand(default_service, native_request(model))
    assert expected in response.error, response.error
    if case != "pytorch_model_class_outside_allowlist":
        assert f"models[0].uri={model.uri!r}" in response.error
    if os.path.realpath(evil_pickle) not in model.uri:
        assert os.path.realpath(evil_pickle) not in response.error, response.error
    assert not marker.exists()
    assert_healthy(default_service)

    if case == "pickle_outside_trusted_roots":
        # Control: the same file inside the trusted root is accepted (expansion does not load it)...
        inside = layout.trusted / evil_pickle.name
        inside.write_bytes(evil_pickle.read_bytes())
        assert expand(default_service, native_request(Model.sklearn(str(inside)))).error == ""
        assert not marker.exists()
        # ...and loading it is a real attack.
        pickle.loads(evil_pickle.read_bytes())
        assert marker.exists()


def test_model_swapped_after_expansion_is_refused_when_loaded(default_service, layout, good_model, marker, evil_pickle):
    """A symlink in the trusted root points at a good model when the pipeline is expanded, and at
    an attacker's pickle outside the roots when the worker loads it: the load re-checks the
    resolved path, so the pickle is never loaded, and every row fails saying why."""
    link = layout.trusted / f"swap-{uuid.uuid4().hex}.pkl"
    link.symlink_to(good_model)
    rows = [beam.Row(id=i, pixels=[float(i % 2), float(i % 2)]) for i in range(4)]
    pipeline = beam.Pipeline()
    outputs = (
        pipeline
        | beam.Create(rows)
        | ExternalTransform(RUN_INFERENCE_URN, native_payload(Model.sklearn(str(link))), default_service.address)
    )
    assert_that(outputs["inferences"], equal_to([]), label="NoInferences")
    assert_that(
        outputs["failures"] | beam.Map(lambda f: (f.key, f.stage, "loaded only from trusted roots" in f.message)),
        equal_to([(str(i), "inference", True) for i in range(4)]),
        label="Failures",
    )
    link.unlink()
    link.symlink_to(evil_pickle)
    pipeline.run().wait_until_finish()
    assert not marker.exists()
    assert_healthy(default_service)


# --- 12. --allow-urn ------------------------------------------------------------------------------

BIG_QUERY_URN = "beam:transform:write_to_big_query:v0"
CODE_URNS = [
    "beam:transform:pardo:v1",
    "beam:transform:pickled_python:v1",
    "beam:transforms:python:fully_qualified_named",
    "beam:transform:window_into:v1",
    # Registered by Beam's BigQuery module; its payload is a pickle (WriteToBigQuery.from_runner_api).
    BIG_QUERY_URN,
    # Registered by Beam's DirectRunner; its payload names a windowing strategy.
    "direct_runner:streaming_gabw:v0.1",
]


@dataclasses.dataclass
class Start:
    """How a service started with a code URN allowed ended: its exit status (None: it serves)."""

    status: typing.Optional[int]
    log_path: Path
    service: typing.Optional[Service]

    def output(self) -> str:
        return self.log_path.read_text()


def _exit_or_serving(process, address, deadline) -> typing.Optional[int]:
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return process.returncode
        try:
            if healthcheck.check(address, timeout_secs=1) == "SERVING":
                return None
        except grpc.RpcError:
            time.sleep(0.2)
    raise TimeoutError(f"{address}: neither exited nor served")


@pytest.fixture(scope="session")
def allow_urn_starts(layout):
    """For each code URN, a service started with --allow-urn=URN (all started together): how it
    ended; one that serves instead is kept running for the tests, then stopped."""
    logs = layout.base / "logs"
    runs = {urn: launch(f"allow-urn-{i}", logs, [f"--allow-urn={urn}"]) for i, urn in enumerate(CODE_URNS)}
    runs["env:INFERBRIDGE_ALLOW_URN"] = launch("allow-urn-env", logs, [], env={"INFERBRIDGE_ALLOW_URN": "beam:transform:pardo:v1"})
    try:
        deadline = time.monotonic() + START_TIMEOUT_SECS
        starts = {}
        for key, (process, port, log_path) in runs.items():
            status = _exit_or_serving(process, f"localhost:{port}", deadline)
            service = Service(key, port, process, log_path) if status is None else None
            starts[key] = Start(status, log_path, service)
        yield starts
    finally:
        for process, _, _ in runs.values():
            stop(process)


@pytest.mark.parametrize("urn", CODE_URNS)
def test_allow_urn_refuses_beams_own_transforms_at_start_up(allow_urn_starts, urn):
    """Stock service: every registered URN is expanded, including ones whose payload is a pickle.
    Here --allow-urn may add only URNs that the operator's own --import modules register, never
    one of Beam's (several unpickle their payloads): the service does not start (exit status 2)
    and says why."""
    start = allow_urn_starts[urn]
    status, output = start.status, start.output()
    assert status == 2, f"the service started with --allow-urn={urn} (status {status}):\n{output[-2000:]}"
    reason = f"--allow-urn={urn!r} cannot be allowed: it is not registered by an --import module"
    assert f"inferbridge-expansion-service: {reason}" in output, output[-2000:]
    assert "listening on" not in output


def test_allow_urn_from_the_environment_is_checked_too(allow_urn_starts):
    """$INFERBRIDGE_ALLOW_URN sets --allow-urn: a code URN there is refused the same way."""
    start = allow_urn_starts["env:INFERBRIDGE_ALLOW_URN"]
    assert start.status == 2, start.output()[-2000:]
    assert "--allow-urn='beam:transform:pardo:v1' cannot be allowed" in start.output()


# --- 13. binding ----------------------------------------------------------------------------------


def test_service_listens_on_loopback_only_by_default(default_service):
    """Stock service: binds 0.0.0.0, so anyone on the network can expand (and run code). Here the
    default --host is 127.0.0.1: the log says so, the process listens on nothing else, and the
    machine's other addresses refuse connections to the port."""
    listening_lines = [line for line in default_service.log().splitlines() if "listening on" in line]
    assert len(listening_lines) == 1, default_service.log()
    assert f"listening on 127.0.0.1:{default_service.port} (plaintext)" in listening_lines[0]
    listening = _listening_sockets(default_service.process.pid)
    assert listening and all(address == "127.0.0.1" for address, _ in listening), listening
    others = _non_loopback_ipv4()
    for address in others:
        assert _refuses_connections(address, default_service.port), f"reachable on {address}:{default_service.port}"
    assert _refuses_connections("::1", default_service.port)
    assert_healthy(default_service)


# --- more: what a client's pipeline options can change ---------------------------------------


def test_client_pipeline_options_cannot_change_the_environment(default_service, good_model, marker):
    """Beam's servicer merges the request's pipeline_options into its own. An environment in them
    (PROCESS with a command) must not become the environment of the expanded stages: they run
    in the service's own environment (its embedded worker pool)."""
    request = native_request(Model.sklearn(good_model))
    request.pipeline_options.update(
        {
            "beam:option:environment_type:v1": "PROCESS",
            "beam:option:environment_config:v1": json.dumps({"command": f"/usr/bin/touch {marker}"}),
        }
    )
    response = expand(default_service, request)
    assert response.error == "", response.error
    environments = {e.urn for e in response.components.environments.values()}
    assert environments == {"beam:env:external:v1"}, environments
    pool = f"127.0.0.1:{_pool_port(default_service)}".encode()
    assert all(pool in e.payload for e in response.components.environments.values())
    assert not marker.exists()
