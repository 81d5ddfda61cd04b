"""Operating the expansion service: health, discovery, limits, shutdown, logs, flags, load and fuzzing.

Every test talks to the real service in a child process over gRPC.
"""

import ctypes
import json
import os
import platform
import signal
import subprocess
import sys
import time
from concurrent import futures
from pathlib import Path

import apache_beam as beam
import grpc
import pytest
from apache_beam.coders import RowCoder
from apache_beam.portability.api import (
    beam_expansion_api_pb2,
    beam_expansion_api_pb2_grpc,
    external_transforms_pb2,
    schema_pb2,
)
from apache_beam.transforms.external import ExternalTransform
from apache_beam.typehints import schemas
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inferbridge import Inference, Model, Step, healthcheck
from inferbridge.evaluate import EVALUATE_URN
from inferbridge.local_services import expansion_service, free_port, wait_until_serving
from inferbridge.spec import RUN_INFERENCE_BLOCKS_URN, RUN_INFERENCE_URN, RunInferenceConfig, describe_schema
from slow_expansion import SLOW_URN, SlowIdentity

TESTS_DIR = Path(__file__).resolve().parent
GOLDEN = TESTS_DIR.parents[1] / "tests/golden"


class _Recorder:
    """An expansion service client that keeps the requests Beam's ExternalTransform sends."""

    def __init__(self, address):
        self._channel = grpc.insecure_channel(address)
        self._stub = beam_expansion_api_pb2_grpc.ExpansionServiceStub(self._channel)
        self.requests = []

    def Expand(self, request, *args, **kwargs):
        self.requests.append(request)
        return self._stub.Expand(request)


def _recorded_request(address, transform, inputs):
    """The ExpansionRequest Beam's Python client sends for ``transform`` applied to ``inputs``."""
    urn, payload = transform.to_runner_api_parameter(None)
    payload = payload.SerializeToString() if hasattr(payload, "SerializeToString") else payload
    recorder = _Recorder(address)
    p = beam.Pipeline()  # never run: the request is all that is needed
    p | beam.Create(inputs) | ExternalTransform(urn, payload, recorder)
    return recorder.requests[0]


def _expand(address, request, timeout=None):
    with grpc.insecure_channel(address) as channel:
        return beam_expansion_api_pb2_grpc.ExpansionServiceStub(channel).Expand(request, timeout=timeout)


def _start(*args, env=None):
    environ = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(
        [sys.executable, "-m", "inferbridge.expansion_service", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**environ, **(env or {})},
    )


def _serving(*args, env=None):
    """Starts the service with ``args`` on a free port; returns (process, address)."""
    port = free_port()
    process = _start("--port", str(port), *args, env=env)
    address = f"localhost:{port}"
    wait_until_serving(address, process, timeout_secs=180)
    return process, address


def _stop(process):
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=90)
    return output


@pytest.fixture(scope="module")
def service(model_files):
    models_dir = os.path.dirname(model_files["pickle"])
    with expansion_service(service_args=[f"--trusted-model-root={models_dir}"]) as address:
        yield address


@pytest.fixture(scope="module")
def inference_request(service, model_files, as_rows):
    transform = Inference(
        Model.sklearn(model_files["pickle"], output="predict_proba"),
        key_field="id",
        feature_fields="pixels",
        postprocess=[Step("argmax")],
    )
    return _recorded_request(service, transform, as_rows([[0.0] * 64]))


def test_answers_grpc_health_checks(service):
    assert healthcheck.check(service) == "SERVING"
    assert healthcheck.main(["--address", service]) == 0


def test_discovery_lists_the_composites_with_their_configuration_schemas(service):
    with grpc.insecure_channel(service) as channel:
        response = beam_expansion_api_pb2_grpc.ExpansionServiceStub(channel).DiscoverSchemaTransform(
            beam_expansion_api_pb2.DiscoverSchemaTransformRequest()
        )
    configs = response.schema_transform_configs
    assert set(configs) == {RUN_INFERENCE_URN, RUN_INFERENCE_BLOCKS_URN, EVALUATE_URN}
    goldens = (
        (RUN_INFERENCE_URN, "run_inference_v1.schema"),
        (RUN_INFERENCE_BLOCKS_URN, "run_inference_v1.schema"),
        (EVALUATE_URN, "evaluate_v1.schema"),
    )
    for urn, golden in goldens:
        described = describe_schema(configs[urn].config_schema)
        expected = [line for line in (GOLDEN / golden).read_text().splitlines() if line and not line.startswith("#")]
        assert described == expected, urn
        assert configs[urn].description
    assert list(configs[RUN_INFERENCE_URN].input_pcollection_names) == ["rows", "model_updates"]
    assert list(configs[RUN_INFERENCE_URN].output_pcollection_names) == ["inferences", "failures"]


def test_a_hundred_concurrent_expansions_all_succeed(service, inference_request):
    started = time.monotonic()
    with futures.ThreadPoolExecutor(max_workers=100) as pool:
        responses = list(pool.map(lambda _: _expand(service, inference_request, timeout=120), range(100)))
    elapsed = time.monotonic() - started
    errors = [r.error for r in responses if r.error]
    assert not errors, errors[0]
    assert all(r.transform.spec.urn for r in responses)
    assert healthcheck.check(service) == "SERVING"
    print(f"100 concurrent expansions in {elapsed:.2f} s")


_CONFIG_SCHEMA = schemas.named_tuple_to_schema(RunInferenceConfig)
_CONFIG_CODER = RowCoder(_CONFIG_SCHEMA)

_ATOMIC = {
    schema_pb2.STRING: st.text(max_size=40),
    schema_pb2.INT64: st.integers(min_value=-(2**63), max_value=2**63 - 1),
    schema_pb2.INT32: st.integers(min_value=-(2**31), max_value=2**31 - 1),
    schema_pb2.DOUBLE: st.floats(allow_nan=True),
    schema_pb2.FLOAT: st.floats(allow_nan=True, width=32),
    schema_pb2.BOOLEAN: st.booleans(),
}


def _values(field_type):
    """Any value of a schema field type (None too where it is nullable)."""
    kind = field_type.WhichOneof("type_info")
    if kind == "atomic_type":
        values = _ATOMIC[field_type.atomic_type]
    elif kind == "array_type":
        values = st.lists(_values(field_type.array_type.element_type), max_size=3)
    else:
        row_type = schemas.named_tuple_from_schema(field_type.row_type.schema)
        fields = field_type.row_type.schema.fields
        values = st.fixed_dictionaries({f.name: _values(f.type) for f in fields}).map(lambda d: row_type(**d))
    return st.none() | values if field_type.nullable else values


def _fuzzed_config(valid):
    """Configurations that differ from ``valid`` in one to three fields, drawn from their types."""
    types = {f.name: f.type for f in _CONFIG_SCHEMA.fields}
    names = st.lists(st.sampled_from(list(types)), min_size=1, max_size=3, unique=True)
    return names.flatmap(
        lambda chosen: st.fixed_dictionaries({n: _values(types[n]) for n in chosen}).map(lambda c: valid._replace(**c))
    )


def _with_payload(request, payload):
    fuzzed = beam_expansion_api_pb2.ExpansionRequest()
    fuzzed.CopyFrom(request)
    fuzzed.transform.spec.payload = payload
    return fuzzed


def _valid_config(request):
    payload = external_transforms_pb2.ExternalConfigurationPayload.FromString(request.transform.spec.payload)
    row = RowCoder(payload.schema).decode(payload.payload)
    return RunInferenceConfig(**{name: getattr(row, name) for name in RunInferenceConfig._fields})


@pytest.fixture(scope="module")
def fuzz_target(service, inference_request):
    valid = _valid_config(inference_request)
    assert not _expand(service, inference_request).error
    return service, inference_request, valid


def _assert_clear_refusal_or_success(response):
    if response.error:
        last = response.error.strip().splitlines()[-1]
        # Beam's error is the traceback; its last line is the exception, which must say something.
        assert ":" in last and len(last.split(":", 1)[1].strip()) > 3, response.error[-2000:]


@pytest.mark.timeout(900)
def test_fuzzed_configurations_get_errors_and_never_kill_the_service(fuzz_target):
    service, request, valid = fuzz_target
    outcomes = {"expanded": 0, "refused": 0}

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None, derandomize=True)
    @given(config=_fuzzed_config(valid))
    def expand_fuzzed(config):
        payload = external_transforms_pb2.ExternalConfigurationPayload(
            schema=_CONFIG_SCHEMA, payload=_CONFIG_CODER.encode(config)
        )
        response = _expand(service, _with_payload(request, payload.SerializeToString()), timeout=120)
        _assert_clear_refusal_or_success(response)
        outcomes["refused" if response.error else "expanded"] += 1

    expand_fuzzed()
    assert healthcheck.check(service) == "SERVING"
    assert outcomes["refused"] > 0
    print(f"fuzzed configurations: {outcomes}")


@pytest.mark.timeout(600)
def test_fuzzed_payload_bytes_get_errors_and_never_kill_the_service(fuzz_target):
    service, request, _ = fuzz_target

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None, derandomize=True)
    @given(payload=st.binary(max_size=2000) | st.just(request.transform.spec.payload).map(lambda p: p[: len(p) // 2]))
    def expand_fuzzed(payload):
        response = _expand(service, _with_payload(request, payload), timeout=120)
        assert response.error

    expand_fuzzed()
    assert healthcheck.check(service) == "SERVING"


def test_operator_allowed_urns_expand_and_slow_expansions_hit_the_deadline(as_rows):
    # A deadline a first expansion meets on a busy machine (it imports the composites).
    process, address = _serving(
        "--import", "slow_expansion", "--allow-urn", SLOW_URN, "--expansion-timeout-secs", "15"
    )
    try:
        quick = _expand(address, _recorded_request(address, SlowIdentity(0.0), [1, 2]))
        assert not quick.error, quick.error
        slow = _expand(address, _with_payload(_recorded_request(address, SlowIdentity(0.0), [1]), b"sleep=60"))
    finally:
        output = _stop(process)
    assert f"the expansion of {SLOW_URN} did not finish within 15.0 s" in slow.error, output


_TGKILL = {"x86_64": 234, "aarch64": 131}  # Linux syscall numbers


@pytest.mark.skipif(platform.machine() not in _TGKILL, reason="sends a signal to one thread with Linux's tgkill")
def test_sigterm_taken_by_any_thread_stops_the_service():
    # The kernel may hand a process's signal to any of its threads; the service must still stop.
    process, _ = _serving()
    threads = [int(tid) for tid in os.listdir(f"/proc/{process.pid}/task") if int(tid) != process.pid]
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.syscall(_TGKILL[platform.machine()], process.pid, threads[-1], signal.SIGTERM) == 0, ctypes.get_errno()
    output, _ = process.communicate(timeout=90)
    assert process.returncode == 0, output
    assert "Stopped" in output


def test_sigterm_lets_in_flight_expansions_finish(as_rows):
    process, address = _serving("--import", "slow_expansion", "--allow-urn", SLOW_URN)
    slow_request = _with_payload(_recorded_request(address, SlowIdentity(0.0), [1]), b"sleep=3")
    with futures.ThreadPoolExecutor(max_workers=5) as pool:
        in_flight = [pool.submit(_expand, address, slow_request, 60) for _ in range(5)]
        time.sleep(1)
        process.send_signal(signal.SIGTERM)
        responses = [f.result() for f in in_flight]
    output, _ = process.communicate(timeout=60)
    assert [r.error for r in responses] == [""] * 5
    assert process.returncode == 0, output
    assert "Shutting down: finishing in-flight requests" in output and "Stopped" in output


def test_requests_over_the_size_limit_are_refused(inference_request):
    process, address = _serving("--max-request-bytes", "1024")
    try:
        with pytest.raises(grpc.RpcError) as refused:
            _expand(address, _with_payload(inference_request, b"x" * 4096))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert healthcheck.check(address) == "SERVING"
    finally:
        _stop(process)


def test_json_logs_carry_the_version_and_the_address():
    process, address = _serving("--log-format", "json")
    output = _stop(process)
    entries = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    listening = [e for e in entries if "listening on" in e["message"]]
    assert len(listening) == 1, output
    assert listening[0]["version"] and listening[0]["level"] == "INFO"
    assert address.split(":")[1] in listening[0]["message"]
    assert entries[-1]["message"] == "Stopped"


def test_flags_can_be_set_by_environment_variables():
    port = free_port()
    process = _start(env={"INFERBRIDGE_PORT": str(port), "INFERBRIDGE_LOG_FORMAT": "json"})
    wait_until_serving(f"localhost:{port}", process, timeout_secs=180)
    output = _stop(process)
    assert f"listening on 127.0.0.1:{port}" in output
    assert output.lstrip().startswith("{") or '{"time"' in output


def test_bad_flag_values_from_the_environment_are_named():
    process = _start(env={"INFERBRIDGE_PORT": "eighty"})
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 2
    assert "$INFERBRIDGE_PORT='eighty' is not valid for --port" in output


def test_a_bad_model_source_flag_is_named_as_the_flag():
    process = _start("--allow-endpoint=http://user:pw@models.internal/v1/")
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 2
    assert (
        "--allow-endpoint ($INFERBRIDGE_ALLOWED_ENDPOINTS) holds 'http://user:pw@models.internal/v1/', which holds "
        "user information" in output
    )


def test_python_path_must_be_a_directory(tmp_path):
    process = _start(f"--python-path={tmp_path / 'missing'}")
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 2
    assert f"--python-path='{tmp_path / 'missing'}' is not a directory; allowed: directories of Python modules" in output


def test_python_path_modules_can_be_imported_at_start(tmp_path):
    (tmp_path / "operator_steps.py").write_text("")
    process, _ = _serving(f"--python-path={tmp_path}", "--import=operator_steps")
    _stop(process)
    assert process.returncode == 0


def test_help_documents_every_flag_and_its_environment_variable():
    process = _start("--help")
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 0
    flags = [
        "--host", "--port", "--max-request-bytes", "--max-concurrent-requests", "--expansion-timeout-secs",
        "--shutdown-grace-secs", "--auth-token-file", "--tls-cert-file", "--tls-key-file", "--tls-client-ca-file",
        "--allow-urn", "--python-path", "--import", "--model-root", "--trusted-model-root", "--allow-model-class",
        "--environment-type", "--environment-config", "--worker-pool-host", "--worker-pool-port", "--log-level",
        "--log-format",
    ]
    for flag in flags:
        assert flag in output, flag
    for env in ("INFERBRIDGE_PORT", "INFERBRIDGE_AUTH_TOKEN_FILE", "INFERBRIDGE_TRUSTED_MODEL_ROOTS"):
        assert env in output, env


def test_other_environments_start_no_worker_pool_and_are_given_to_the_expanded_stages(inference_request, model_files):
    process, address = _serving(
        "--environment-type", "EXTERNAL", "--environment-config", "workers.example:50000",
        "--trusted-model-root", os.path.dirname(model_files["pickle"]),
    )
    try:
        response = _expand(address, inference_request)
    finally:
        output = _stop(process)
    assert not response.error, response.error
    payloads = [env.payload for env in response.components.environments.values()]
    assert any(b"workers.example:50000" in p for p in payloads), output
    assert "Python stages run in: --environment_type=EXTERNAL --environment_config=workers.example:50000" in output


def test_the_local_job_service_sends_a_large_stage_input_in_messages_while_the_bundle_runs():
    """80 MB crosses from one stage to the next (a resource hint ends a stage), most of it held
    in the job service's spill file. The job service sends it in messages of about 10 MB while
    the bundle runs, more messages than a worker takes before its bundle starts; nothing may be
    lost, and nothing may wait forever. (Beam's runner flushed from a thread every second,
    clearing what it wrote meanwhile: whole messages of a large stage input were lost with no
    error; its flush thread is off.)"""
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.portability.fn_api_runner import worker_handlers
    from apache_beam.testing.util import assert_that, equal_to

    from inferbridge.local_runner import job_service

    with job_service() as address:
        assert worker_handlers.DATA_BUFFER_TIME_LIMIT_MS == 0
        options = PipelineOptions(["--runner=PortableRunner", f"--job_endpoint={address}", "--environment_type=LOOPBACK"])
        with beam.Pipeline(options=options) as p:
            chunks = p | beam.Create(range(80)) | beam.FlatMap(lambda i: [(i, bytes([i]) * 100_000)] * 10)
            intact = chunks | beam.Map(lambda kv: (kv[0], kv[1] == bytes([kv[0]]) * 100_000)).with_resource_hints(min_ram="1GB")
            assert_that(intact | beam.combiners.Count.PerElement(), equal_to([((i, True), 10) for i in range(80)]))
    # Other runners in this process get Beam's own runner back.
    from apache_beam.runners.portability.fn_api_runner import execution, fn_runner

    from inferbridge import local_runner

    assert execution.ListBuffer is fn_runner.ListBuffer is not local_runner._SpillingBuffer
    assert fn_runner.BundleManager._send_input_to_worker is local_runner._BEAMS_SEND_INPUT
    assert worker_handlers.DATA_BUFFER_TIME_LIMIT_MS > 0


def test_a_stage_input_that_cannot_be_read_back_fails_the_job_instead_of_hanging(monkeypatch):
    """If a spilled message cannot be read back while a stage's input is sent, the job fails
    (its worker would otherwise wait for the rest of its input forever)."""
    from apache_beam.options.pipeline_options import PipelineOptions

    from inferbridge import local_runner

    def unreadable(self):
        raise OSError("the spill file is gone")

    monkeypatch.setattr(local_runner._Spilled, "__bytes__", unreadable)
    with local_runner.job_service() as address:
        options = PipelineOptions(["--runner=PortableRunner", f"--job_endpoint={address}", "--environment_type=LOOPBACK"])
        p = beam.Pipeline(options=options)
        chunks = p | beam.Create(range(40)) | beam.FlatMap(lambda i: [bytes([i]) * 100_000] * 10)
        _ = chunks | beam.Map(len).with_resource_hints(min_ram="1GB") | beam.combiners.Count.Globally()
        with pytest.raises(Exception, match="Channel closed prematurely"):
            p.run().wait_until_finish()


def test_the_local_job_service_keeps_a_large_stage_output_in_a_file_it_leaves_nowhere(tmp_path, monkeypatch):
    """What a stage writes past 16 MB goes to a spill file; it reads back byte for byte, in
    order, as the buffer is iterated, partitioned, copied and sent, and the file has no name
    from the start."""
    import tempfile

    from apache_beam.coders import BytesCoder
    from apache_beam.coders.coder_impl import create_InputStream

    from inferbridge.local_runner import _IN_MEMORY_BYTES, _Spilled, _SpillingBuffer

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    coder = BytesCoder().get_impl()
    elements = [bytes([i]) * (1 << 20) for i in range(40)]
    messages = [coder.encode_nested(e) for e in elements]  # one element each
    buffer = _SpillingBuffer(coder)
    for message in messages:
        buffer.append(message)
    held = buffer.messages()
    assert sum(isinstance(m, _Spilled) for m in held) == 40 - _IN_MEMORY_BYTES // len(messages[0])
    assert list(os.scandir(tmp_path)) == []  # unlinked as made
    assert list(buffer) == messages
    assert [bytes(m) for m in held] == messages
    first, second = buffer.partition(2)
    assert [bytes(m) for m in first] == messages[0::2] and [bytes(m) for m in second] == messages[1::2]
    assert list(buffer.copy()) == messages
    merged = _SpillingBuffer(coder)
    merged.extend(buffer)  # what it holds in memory counts: the next message goes to its file
    merged.append(messages[0])
    assert isinstance(merged.messages()[-1], _Spilled) and list(merged) == messages + messages[:1]

    # Fewer messages than workers: Beam's runner re-encodes them element by element.
    few = buffer.copy()
    parts = few.partition(50)
    decoded = []
    for part in parts:
        for stream in part:
            stream = create_InputStream(bytes(stream))
            while stream.size() > 0:
                decoded.append(coder.decode_from_stream(stream, True))
    assert sorted(decoded) == sorted(elements)

    buffer.clear()
    with pytest.raises(RuntimeError, match="cleared"):
        buffer.messages()


@pytest.mark.parametrize("given", [None, "4"])
def test_inferbridge_local_gives_the_command_both_addresses_and_two_malloc_arenas_unless_set(given):
    """The command runs with both services' addresses; it and the services get
    MALLOC_ARENA_MAX=2 (glibc's default of eight arenas per core kept 70-100 MB more in each
    process at 10M rows), and a value the user set is kept."""
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    if given:
        env["MALLOC_ARENA_MAX"] = given
    show = "import os; print(os.environ['MALLOC_ARENA_MAX'], os.environ['INFERBRIDGE_EXPANSION_SERVICE'], os.environ['INFERBRIDGE_JOB_ENDPOINT'])"
    local = os.path.join(os.path.dirname(sys.executable), "inferbridge-local")
    done = subprocess.run([local, "--", sys.executable, "-c", show], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    arenas, expansion, jobs = done.stdout.split()
    assert arenas == (given or "2")
    assert expansion.startswith("localhost:") and jobs.startswith("127.0.0.1:")
