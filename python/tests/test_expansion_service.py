"""The expansion service, run for real as a child process and called over gRPC."""

import os
import pickle
import signal
import subprocess
import sys
import typing
import uuid

import apache_beam as beam
import grpc
import pytest
from apache_beam.coders import RowCoder
from apache_beam.portability.api import (
    beam_expansion_api_pb2,
    beam_expansion_api_pb2_grpc,
    beam_runner_api_pb2,
    external_transforms_pb2,
    schema_pb2,
)
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.external import ExternalTransform
from apache_beam.typehints import native_type_compatibility, schemas, trivial_inference

from inferbridge import Evaluate, Inference, Model, Step
from inferbridge.evaluate import EVALUATE_URN, EvaluateConfig
from inferbridge.local_services import expansion_service, free_port, wait_until_serving
from inferbridge.spec import RUN_INFERENCE_URN
from inferbridge.testing import expansion_request


@pytest.fixture(scope="module")
def service(model_files):
    models_dir = os.path.dirname(model_files["pickle"])
    with expansion_service(service_args=[f"--trusted-model-root={models_dir}"]) as address:
        yield address


def test_python_pipeline_runs_the_composite_through_the_service(as_rows, service, model_files, digits_model, held_out):
    pixels, _ = held_out
    transform = Inference(
        Model.sklearn(model_files["pickle"], output="predict_proba"),
        key_field="id",
        feature_fields="pixels",
        preprocess=[Step("scale", factor=1 / 16)],
        postprocess=[Step("argmax")],
    )
    urn, payload = transform.to_runner_api_parameter(None)
    expected = digits_model.predict_proba(pixels / 16).argmax(axis=1)
    with beam.Pipeline() as p:
        result = p | beam.Create(as_rows(pixels)) | ExternalTransform(urn, payload.SerializeToString(), service)
        assert_that(result["inferences"] | beam.Map(lambda r: (r.key, r.inference)), equal_to(list(enumerate(expected.tolist()))))
        assert_that(result["failures"], equal_to([]), label="NoFailures")


def test_configuration_errors_name_the_field_and_value(as_rows, service, model_files):
    bad = Inference(Model.sklearn(model_files["pickle"]), key_field="id", feature_fields="pixel")
    urn, payload = bad.to_runner_api_parameter(None)
    p = beam.Pipeline()
    rows = p | beam.Create(as_rows([[0.0] * 64]))
    with pytest.raises(RuntimeError, match="feature_fields\\[0\\]='pixel' is not a field of the input schema; available fields: id, pixels"):
        rows | ExternalTransform(urn, payload.SerializeToString(), service)


class _WritesMarker:
    """Unpickling this creates a file: proof that a payload was decoded."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("urn", ["beam:transform:pickled_python:v1", "beam:transforms:python:fully_qualified_named"])
def test_foreign_urns_are_refused_before_their_payload_is_decoded(service, tmp_path, urn):
    marker = tmp_path / "marker"
    request = beam_expansion_api_pb2.ExpansionRequest(
        transform=beam_runner_api_pb2.PTransform(
            unique_name="attack",
            spec=beam_runner_api_pb2.FunctionSpec(urn=urn, payload=pickle.dumps(_WritesMarker(str(marker)))),
        ),
        namespace="attack",
    )
    with grpc.insecure_channel(service) as channel:
        response = beam_expansion_api_pb2_grpc.ExpansionServiceStub(channel).Expand(request)
    assert f"URN '{urn}' is not served by the InferBridge expansion service" in response.error
    assert not marker.exists()


def _start_service(*args):
    return subprocess.Popen(
        [sys.executable, "-m", "inferbridge.expansion_service", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_a_taken_port_fails_fast_with_a_clear_message(service):
    port = service.rsplit(":", 1)[1]
    process = _start_service("--port", port)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}: the port is already in use" in output


def test_logs_its_address_once_and_stops_cleanly_on_sigterm():
    port = free_port()
    process = _start_service("--port", str(port))
    try:
        wait_until_serving(f"localhost:{port}", process, timeout_secs=180)
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0
    listening = [line for line in output.splitlines() if "listening on" in line]
    assert len(listening) == 1, output
    assert f"listening on 127.0.0.1:{port}" in listening[0]
    assert "Apache Beam 2.77.0" in listening[0]


def test_pickles_outside_the_trusted_roots_are_refused(as_rows, service, digits_model, tmp_path):
    untrusted = tmp_path / "elsewhere.pkl"
    untrusted.write_bytes(pickle.dumps(digits_model))
    urn, payload = Inference(Model.sklearn(str(untrusted)), key_field="id", feature_fields="pixels").to_runner_api_parameter(None)
    p = beam.Pipeline()
    rows = p | beam.Create(as_rows([[0.0] * 64]))
    with pytest.raises(RuntimeError, match="--trusted-model-root"):
        rows | ExternalTransform(urn, payload.SerializeToString(), service)


# --- Beam's stock PythonExternalTransform (beam:transforms:python:fully_qualified_named) ---------

FULLY_QUALIFIED_NAMED = "beam:transforms:python:fully_qualified_named"
PYTHON_CALLABLE = "beam:logical_type:python_callable:v1"
PYTHON_ANY = "beam:logical:pythonsdk_any:v1"
ALLOWED = "inferbridge.Inference, inferbridge.inference.Inference, inferbridge.Evaluate, inferbridge.evaluate.Evaluate"
STRING = schema_pb2.FieldType(atomic_type=schema_pb2.STRING)


def _fresh_ids(schema):
    """Gives a schema and every nested one a random id and encoding positions, as Java does."""

    def number(row_schema):
        row_schema.id = str(uuid.uuid4())
        row_schema.encoding_positions_set = True
        for position, field in enumerate(row_schema.fields):
            field.encoding_position = position

    number(schema)
    for field in schema.fields:
        _visit_types(field.type, lambda t: number(t.row_type.schema) if t.WhichOneof("type_info") == "row_type" else None)
    return schema


def _visit_types(field_type, visit):
    """Calls ``visit`` on a type and on every type inside it (elements, map entries, row fields)."""
    visit(field_type)
    kind = field_type.WhichOneof("type_info")
    if kind in ("array_type", "iterable_type"):
        _visit_types(getattr(field_type, kind).element_type, visit)
    elif kind == "map_type":
        _visit_types(field_type.map_type.key_type, visit)
        _visit_types(field_type.map_type.value_type, visit)
    elif kind == "row_type":
        for field in field_type.row_type.schema.fields:
            _visit_types(field.type, visit)


def _schema_of(value):
    """The Row schema Beam infers for a NamedTuple or beam.Row value."""
    hint = native_type_compatibility.convert_to_python_type(trivial_inference.instance_to_type(value))
    schema = schema_pb2.Schema()
    schema.CopyFrom(schemas.typing_to_runner_api(hint).row_type.schema)
    return schema


def _row_field(name, schema):
    return schema_pb2.Field(name=name, type=schema_pb2.FieldType(row_type=schema_pb2.RowType(schema=schema)))


def _field(schema, path):
    """The field at ``path`` ("kwargs.models[].uri") of a schema."""
    *parents, name = path.split(".")
    for parent in parents:
        field_type = next(f for f in schema.fields if f.name == parent.removesuffix("[]")).type
        schema = (field_type.array_type.element_type if parent.endswith("[]") else field_type).row_type.schema
    return next(f for f in schema.fields if f.name == name)


def _as_representation(schema):
    """A copy of the schema with every python_callable type replaced by its representation
    (STRING): what an attacker encodes the values with, so building the attack runs no code."""
    copy = schema_pb2.Schema()
    copy.CopyFrom(schema)

    def visit(field_type):
        if field_type.WhichOneof("type_info") == "logical_type" and field_type.logical_type.urn == PYTHON_CALLABLE:
            field_type.CopyFrom(field_type.logical_type.representation)

    for field in copy.fields:
        _visit_types(field.type, visit)
    return copy


def stock_payload_parts(constructor, kwargs=None, *, kwargs_schema=None, args=None, args_schema=None, python_style=False):
    """(schema, bytes) of the payload Beam's Java ``PythonExternalTransform.from(constructor)
    .withKwargs(row)`` sends: a Row {constructor: STRING, kwargs: ROW}, plus args: ROW after
    ``withArgs``. Beam's Python FullyQualifiedNamedTransform (``python_style``) always sends args,
    empty or not. A schema given for kwargs or args is sent as is (an attacker's: python_callable
    fields are encoded as their STRING representation, which runs no code here)."""
    fields, values = [schema_pb2.Field(name="constructor", type=STRING)], {"constructor": constructor}
    if python_style and args is None:
        args = beam.Row()
    for name, value, schema in (("args", args, args_schema), ("kwargs", kwargs, kwargs_schema)):
        if value is not None:
            fields.append(_row_field(name, schema if schema is not None else _schema_of(value)))
            values[name] = value
    schema = _fresh_ids(schema_pb2.Schema(fields=fields))
    return schema, RowCoder(_as_representation(schema)).encode(beam.Row(**values))


def stock_payload(constructor, kwargs=None, **options):
    schema, data = stock_payload_parts(constructor, kwargs, **options)
    return external_transforms_pb2.ExternalConfigurationPayload(schema=schema, payload=data).SerializeToString()


def _digits_inference(model_files, **options):
    return Inference(
        Model.sklearn(model_files["pickle"], output="predict_proba"),
        key_field="id",
        feature_fields="pixels",
        preprocess=[Step("scale", factor=1 / 16)],
        postprocess=[Step("argmax")],
        **options,
    )


@pytest.mark.parametrize("constructor", ["inferbridge.Inference", "inferbridge.inference.Inference"])
@pytest.mark.parametrize("python_style", [False, True], ids=["java_payload", "python_payload"])
def test_stock_python_external_transform_runs_inference_like_the_native_urn(
    as_rows, service, model_files, digits_model, held_out, constructor, python_style
):
    # kwargs: the configuration Row the InferBridge Java wrapper builds (RunInferenceConfig).
    transform = _digits_inference(model_files)
    native_urn, native_payload = transform.to_runner_api_parameter(None)
    stock = stock_payload(constructor, transform.spec.to_config(), python_style=python_style)
    pixels, _ = held_out
    expected = list(enumerate(digits_model.predict_proba(pixels / 16).argmax(axis=1).tolist()))
    with beam.Pipeline() as p:
        rows = p | beam.Create(as_rows(pixels))
        via_stock = rows | "Stock" >> ExternalTransform(FULLY_QUALIFIED_NAMED, stock, service)
        via_native = rows | "Native" >> ExternalTransform(native_urn, native_payload.SerializeToString(), service)
        assert set(via_stock) == set(via_native) == {"inferences", "failures"}
        for label, result in (("Stock", via_stock), ("Native", via_native)):
            pairs = result["inferences"] | f"{label}Pairs" >> beam.Map(lambda r: (r.key, r.inference))
            assert_that(pairs, equal_to(expected), label=f"{label}Inferences")
            assert_that(result["failures"], equal_to([]), label=f"{label}NoFailures")


def _expand(service, request):
    with grpc.insecure_channel(service) as channel:
        return beam_expansion_api_pb2_grpc.ExpansionServiceStub(channel).Expand(request)


def _config_of(transform_proto):
    payload = external_transforms_pb2.ExternalConfigurationPayload.FromString(transform_proto.spec.payload)
    return RowCoder(payload.schema).decode(payload.payload)


def test_omitted_kwargs_take_the_defaults_and_the_expansion_equals_the_native_one(service, model_files):
    # Only the required fields, and a model row with only uri and output: the rest are defaults.
    kwargs = beam.Row(
        key_field="id",
        feature_fields=["pixels"],
        models=[beam.Row(uri=model_files["pickle"], output="predict_proba")],
        postprocess=[beam.Row(name="argmax", params="{}")],
    )
    native = Inference(
        Model.sklearn(model_files["pickle"], output="predict_proba"),
        key_field="id",
        feature_fields="pixels",
        postprocess=[Step("argmax")],
    )
    native_urn, native_payload = native.to_runner_api_parameter(None)
    via_stock = _expand(service, expansion_request(FULLY_QUALIFIED_NAMED, stock_payload("inferbridge.Inference", kwargs)))
    via_native = _expand(service, expansion_request(native_urn, native_payload.SerializeToString()))
    assert via_stock.error == via_native.error == ""
    assert via_stock.transform.spec.urn == RUN_INFERENCE_URN
    assert _config_of(via_stock.transform) == _config_of(via_native.transform) == native.spec.to_config()
    assert via_stock.transform == via_native.transform
    assert sorted(t.unique_name for t in via_stock.components.transforms.values()) == sorted(
        t.unique_name for t in via_native.components.transforms.values()
    )


def test_kwargs_errors_name_the_field(service, model_files):
    missing = stock_payload("inferbridge.Inference", beam.Row(key_field="id", feature_fields=["pixels"]))
    assert (
        "inferbridge.Inference: kwargs lacks the required fields ['models'] (required: key_field, feature_fields, models)"
        in _expand(service, expansion_request(FULLY_QUALIFIED_NAMED, missing)).error
    )
    unknown = stock_payload("inferbridge.Evaluate", beam.Row(label_field="label", prediction="inference"))
    assert (
        "inferbridge.Evaluate: kwargs has unknown fields ['prediction']; allowed: label_field, prediction_field, model_id_field"
        in _expand(service, expansion_request(FULLY_QUALIFIED_NAMED, unknown)).error
    )
    mistyped = stock_payload(
        "inferbridge.Inference",
        beam.Row(key_field="id", feature_fields=["pixels"], models=[beam.Row(uri="/m.pkl")], min_batch_size=2.5),
    )
    assert (
        "inferbridge.Inference: min_batch_size must be an integer (INT64), got 2.5"
        in _expand(service, expansion_request(FULLY_QUALIFIED_NAMED, mistyped)).error
    )
    # Errors in the configuration itself come from the composite, as on the native URN.
    config = _digits_inference(model_files).spec.to_config()._replace(feature_fields=["pixel"])
    response = _expand(service, expansion_request(FULLY_QUALIFIED_NAMED, stock_payload("inferbridge.Inference", config)))
    assert "feature_fields[0]='pixel' is not a field of the input schema; available fields: id, pixels" in response.error


@pytest.mark.parametrize("constructor", ["inferbridge.Evaluate", "inferbridge.evaluate.Evaluate"])
def test_stock_python_external_transform_runs_evaluate(service, constructor):
    rows = [
        beam.Row(label="cat", inference="cat", model_id="a"),
        beam.Row(label="cat", inference="dog", model_id="a"),
        beam.Row(label="dog", inference="dog", model_id="a"),
        beam.Row(label="dog", inference="dog", model_id="b"),
    ]
    # As Java's PythonExternalTransform.from(...).withKwarg("label_field", "label") sends it; the
    # other two fields take Evaluate's defaults (inference, model_id).
    stock = stock_payload(constructor, beam.Row(label_field="label"))
    native_urn, native_payload = Evaluate("label").to_runner_api_parameter(None)
    expected = [("a", 3, 2, 2 / 3), ("b", 1, 1, 1.0)]
    with beam.Pipeline() as p:
        inputs = p | beam.Create(rows)
        for label, urn, payload in (
            ("Stock", FULLY_QUALIFIED_NAMED, stock),
            ("Native", native_urn, native_payload.SerializeToString()),
        ):
            out = inputs | label >> ExternalTransform(urn, payload, service)
            metrics = out | f"{label}Metrics" >> beam.Map(lambda r: (r.model_id, r.count, r.correct, r.accuracy))
            assert_that(metrics, equal_to(expected), label=f"{label}Results")
    response = _expand(service, expansion_request(FULLY_QUALIFIED_NAMED, stock, row_schema=_schema_of(rows[0])))
    assert response.error == ""
    assert response.transform.spec.urn == EVALUATE_URN
    assert _config_of(response.transform) == EvaluateConfig("label", "inference", "model_id")


def _assert_refused(response, reason):
    assert (
        f"URN '{FULLY_QUALIFIED_NAMED}' is not served by the InferBridge expansion service for this request: {reason}"
        in response.error
    ), response.error
    assert f"It is served only for the constructors {ALLOWED}" in response.error


@pytest.mark.parametrize(
    "constructor, kwargs",
    [
        ("os.system", lambda marker: beam.Row(command=f"touch {marker}")),
        ("builtins.open", lambda marker: beam.Row(file=str(marker), mode="w")),
        ("__constructor__", lambda marker: beam.Row(source=f"lambda: open({str(marker)!r}, 'w')")),
        ("__callable__", lambda marker: beam.Row(source=f"lambda pcoll: open({str(marker)!r}, 'w')")),
        ("inferbridge.inference._Prepare", lambda marker: beam.Row(spec=str(marker))),
    ],
)
def test_constructors_outside_the_allowlist_are_refused(service, tmp_path, constructor, kwargs):
    marker = tmp_path / "marker"
    response = _expand(service, expansion_request(FULLY_QUALIFIED_NAMED, stock_payload(constructor, kwargs(marker))))
    _assert_refused(response, f"constructor {constructor!r} is not allowed")
    assert not marker.exists()


def test_the_kwargs_of_a_refused_constructor_are_not_decoded(service):
    # The constructor, then a kwargs Row cut short (one field: a string of 100 bytes, 3 of them
    # there): decoding the kwargs fails.
    schema, data = stock_payload_parts("os.system", beam.Row(command="true"))
    garbage = data[: data.index(b"os.system") + len("os.system")] + b"\x01\x00\x64abc"
    with pytest.raises(Exception):
        RowCoder(schema).decode(garbage)
    payload = external_transforms_pb2.ExternalConfigurationPayload(schema=schema, payload=garbage)
    response = _expand(service, expansion_request(FULLY_QUALIFIED_NAMED, payload.SerializeToString()))
    _assert_refused(response, "constructor 'os.system' is not allowed")


def _python_code_payload(model_files, marker, where):
    """A stock payload for inferbridge.Inference with the digits configuration and a field at
    ``where`` whose value writes ``marker`` when Beam decodes it: Python source of logical type
    python_callable, or (kwargs.pickled) a pickle of logical type pythonsdk_any."""
    config = _digits_inference(model_files).spec.to_config()
    source = f"open({str(marker)!r}, 'w')"
    schema = _schema_of(config)
    kwargs, args, args_schema = config, None, None
    if where == "kwargs.extra":
        kwargs = beam.Row(**config._asdict(), extra=source)
        schema.fields.add(name="extra", type=_python_callable())
    elif where == "kwargs.key_field":
        kwargs = config._replace(key_field=source)
        _field(schema, "key_field").type.CopyFrom(_python_callable())
    elif where == "kwargs.models[].extra":
        kwargs = config._replace(models=[beam.Row(**config.models[0]._asdict(), extra=source)])
        _field(schema, "models").type.array_type.element_type.row_type.schema.fields.add(name="extra", type=_python_callable())
    elif where == "kwargs.extra<value>":
        kwargs = beam.Row(**config._asdict(), extra={"x": source})
        schema.fields.add(name="extra", type=schema_pb2.FieldType(map_type=schema_pb2.MapType(key_type=STRING, value_type=_python_callable())))
    elif where == "args.arg0":
        args = beam.Row(arg0=source)
        args_schema = schema_pb2.Schema(fields=[schema_pb2.Field(name="arg0", type=_python_callable())])
    elif where == "kwargs.pickled":
        kwargs = beam.Row(**config._asdict(), pickled=_WritesMarker(str(marker)))
        schema.fields.add(name="pickled", type=schemas.typing_to_runner_api(typing.Any))  # Beam's type for any object
    return stock_payload_parts("inferbridge.Inference", kwargs, kwargs_schema=schema, args=args, args_schema=args_schema)


def _python_callable():
    return schema_pb2.FieldType(logical_type=schema_pb2.LogicalType(urn=PYTHON_CALLABLE, representation=STRING))


CODE_FIELDS = ["kwargs.extra", "kwargs.key_field", "kwargs.models[].extra", "kwargs.extra<value>", "args.arg0", "kwargs.pickled"]


@pytest.mark.parametrize("where", CODE_FIELDS)
def test_python_code_in_the_payload_is_refused_before_it_is_decoded(service, model_files, tmp_path, where):
    marker = tmp_path / "marker"
    schema, data = _python_code_payload(model_files, marker, where)
    payload = external_transforms_pb2.ExternalConfigurationPayload(schema=schema, payload=data)
    response = _expand(service, expansion_request(FULLY_QUALIFIED_NAMED, payload.SerializeToString()))
    urn = PYTHON_ANY if where == "kwargs.pickled" else PYTHON_CALLABLE
    _assert_refused(response, f"field {where} has logical type {urn}")
    assert "allowed field types are STRING, BOOLEAN" in response.error
    assert not marker.exists()

    # The attack is real: Beam's own decoding of the same payload writes the marker.
    RowCoder(schema).decode(data)
    assert marker.exists()


def test_positional_args_are_refused(service, model_files, tmp_path):
    marker = tmp_path / "marker"
    config = _digits_inference(model_files).spec.to_config()
    for python_style in (False, True):
        stock = stock_payload("inferbridge.Inference", config, args=beam.Row(arg0=str(marker)), python_style=python_style)
        response = _expand(service, expansion_request(FULLY_QUALIFIED_NAMED, stock))
        _assert_refused(response, "positional arguments are not accepted (args holds arg0)")
    assert not marker.exists()


# --- what else a request carries ------------------------------------------------------------------
# Pickled components (transforms, coders, coder ids, window functions) are refused: see
# tests/security/test_attacks.py::test_code_in_request_components_is_refused.


_NATIVE = Inference(Model.sklearn("/models/m.pkl"), key_field="id", feature_fields="pixels")


@pytest.mark.parametrize("urn", [RUN_INFERENCE_URN, EVALUATE_URN])
def test_python_code_in_a_native_configuration_row_is_refused(service, tmp_path, urn):
    marker = tmp_path / "marker"
    config = _NATIVE.spec.to_config() if urn == RUN_INFERENCE_URN else EvaluateConfig("label", "inference", "model_id")
    schema = schema_pb2.Schema()
    schema.CopyFrom(schemas.named_tuple_to_schema(type(config)))
    schema.id = str(uuid.uuid4())
    schema.fields.add(name="extra", type=_python_callable())
    data = RowCoder(_as_representation(schema)).encode(beam.Row(**config._asdict(), extra=f"open({str(marker)!r}, 'w')"))
    payload = external_transforms_pb2.ExternalConfigurationPayload(schema=schema, payload=data)
    response = _expand(service, expansion_request(urn, payload.SerializeToString()))
    assert (
        f"the InferBridge expansion service refuses this request for {urn}: field extra has logical type "
        f"{PYTHON_CALLABLE} (Python source code, which Beam evaluates while decoding it)"
    ) in response.error, response.error
    assert not marker.exists()
    RowCoder(schema).decode(data)  # Beam's own decoding runs the code
    assert marker.exists()


def test_an_expansion_process_is_renewed_after_its_share_of_expansions():
    """Beam keeps a type per configuration schema a process decodes: after its share of
    expansions a process makes way for a fresh one, which is started first (the old one serves
    meanwhile), so that expansions never wait for it."""
    import time

    from inferbridge.expansion_service import _ExpansionWorkers

    workers = _ExpansionWorkers(["--environment_type=LOOPBACK"], None, (), size=1, expansions_per_process=3)
    workers.start()
    try:
        first = {w.process.pid for w in workers._live}
        request = expansion_request(RUN_INFERENCE_URN, b"not a configuration").SerializeToString()
        for _ in range(3):
            assert beam_expansion_api_pb2.ExpansionResponse.FromString(workers.expand(request, 60, 60)).error
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and {w.process.pid for w in workers._live} & first:
            assert beam_expansion_api_pb2.ExpansionResponse.FromString(workers.expand(request, 60, 60)).error
            time.sleep(0.2)
        renewed = {w.process.pid for w in workers._live}
        assert len(renewed) == 1 and not renewed & first, (first, renewed)
    finally:
        workers.close()
