"""Configuration as data with bounds: values that would freeze the service or exhaust a worker.

Each attack goes to the running service through its legitimate URN, from a thread, while the
test polls the service's health: every health check must answer SERVING within
``HEALTH_SECS`` (generous for a busy machine; before the bounds, a 17 KB ``min_ram`` held the
service's GIL for seconds and a 3.9 MB one for days). The memory bound of steps fires at run
time: it is checked through real DirectRunner pipelines, on rows and on blocks.
"""

from __future__ import annotations

import pickle
import threading
import time

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.transforms.external import NamedTupleBasedPayloadBuilder

from attack_support import expand, expansion_request, native_request
from inferbridge import BlockInference, Inference, Model, Step, bounds, healthcheck, steps
from inferbridge.policy import LoadPolicy
from inferbridge.spec import RUN_INFERENCE_URN, StepConfig

# Each health check during and after an attack must answer within this many seconds.
HEALTH_SECS = 5.0
# An attack's answer must come within this many seconds (the client's deadline is 60 s).
ANSWER_SECS = 30.0


def payload_with(model: Model, **fields) -> bytes:
    """The native configuration payload of a valid spec with ``fields`` replaced, unchecked:
    what a client that skips InferBridge's own checks sends."""
    config = Inference(model, key_field="id", feature_fields="pixels").spec.to_config()._replace(**fields)
    return NamedTupleBasedPayloadBuilder(config).build().SerializeToString()


def attack_while_polling_health(service, request):
    """Sends ``request`` from a thread, checks health until it is answered, then once more;
    returns the response and how long it took."""
    outcome: dict = {}

    def send():
        started = time.monotonic()
        try:
            outcome["response"] = expand(service, request)
        except Exception as e:  # noqa: BLE001 - reported below
            outcome["error"] = e
        outcome["secs"] = time.monotonic() - started

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    checks = 0
    while True:
        done = not sender.is_alive()
        started = time.monotonic()
        assert healthcheck.check(service.address, timeout_secs=HEALTH_SECS) == "SERVING"
        assert time.monotonic() - started < HEALTH_SECS
        checks += 1
        if done:
            break
    sender.join()
    assert "error" not in outcome, outcome.get("error")
    assert service.process.poll() is None, service.log()
    assert outcome["secs"] < ANSWER_SECS, outcome["secs"]
    return outcome["response"], checks


def assert_refused(response, *fragments):
    assert response.error, "the attack was expanded"
    for fragment in fragments:
        assert fragment in response.error, response.error[:2000]
    # The error names the value shortened: never megabytes echoed back.
    assert len(response.error) < 10_000, len(response.error)


@pytest.mark.parametrize("length", [17_000, 3_900_000])
def test_a_long_min_ram_in_the_configuration_is_refused_without_freezing(default_service, good_model, length):
    request = expansion_request(RUN_INFERENCE_URN, payload_with(Model.sklearn(good_model), min_ram="a" * length + "1"))
    response, _ = attack_while_polling_health(default_service, request)
    assert_refused(response, "min_ram=", f"({length + 1} characters) is not a memory size", "at most 32 characters")


@pytest.mark.parametrize("length", [17_000, 3_900_000])
def test_a_long_min_ram_in_the_pipeline_options_is_dropped(default_service, good_model, length):
    request = native_request(Model.sklearn(good_model))
    request.pipeline_options.update({"beam:option:resource_hints:v1": ["min_ram=" + "a" * length + "1"]})
    response, _ = attack_while_polling_health(default_service, request)
    assert response.error == "", response.error[:2000]
    assert "min_ram=" in default_service.log()  # the warning that says it was ignored


def test_allowlisted_pipeline_options_still_apply(default_service, good_model):
    """A valid min_ram hint among a Java client's options reaches the expanded transforms."""
    request = native_request(Model.sklearn(good_model))
    request.pipeline_options.update(
        {"beam:option:resource_hints:v1": ["min_ram=3GB"], "beam:option:job_name:v1": "java", "beam:option:app_name:v1": "x"}
    )
    response = expand(default_service, request)
    assert response.error == "", response.error
    hints = [
        value
        for env in response.components.environments.values()
        for value in env.resource_hints.values()
    ]
    assert b"3000000000" in hints, hints


def test_a_huge_pad_length_is_refused(default_service, good_model):
    pad = StepConfig("pad", '{"length": 800000000}')
    request = expansion_request(RUN_INFERENCE_URN, payload_with(Model.sklearn(good_model), preprocess=[pad]))
    response, _ = attack_while_polling_health(default_service, request)
    longest = bounds.MAX_STEP_ROW_BYTES // 8
    assert_refused(response, f"preprocess step 'pad': parameter 'length' must be at most {longest}", "got 800000000")


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


@pytest.mark.parametrize("urn", ["beam:transforms:python:fully_qualified_named", RUN_INFERENCE_URN])
def test_a_configuration_row_of_very_many_fields_is_refused_before_it_is_decoded(default_service, urn):
    """150,000 nullable fields, every one null: 2.4 MB that Beam's RowCoder took minutes of the
    service's CPU to decode (time grows with the square of the fields), keeping the memory."""
    import uuid

    from apache_beam.portability.api import external_transforms_pb2, schema_pb2

    count = 150_000
    string = schema_pb2.FieldType(atomic_type=schema_pb2.STRING)
    wide = schema_pb2.Schema(
        id=str(uuid.uuid4()),
        fields=[schema_pb2.Field(name=f"f{i}", type=schema_pb2.FieldType(atomic_type=schema_pb2.STRING, nullable=True)) for i in range(count)],
    )
    nulls = _varint(count) + _varint((count + 7) // 8) + b"\xff" * ((count + 7) // 8)
    if urn == RUN_INFERENCE_URN:
        schema, data = wide, nulls
    else:
        schema = schema_pb2.Schema(
            id=str(uuid.uuid4()),
            fields=[
                schema_pb2.Field(name="constructor", type=string),
                schema_pb2.Field(name="kwargs", type=schema_pb2.FieldType(row_type=schema_pb2.RowType(schema=wide))),
            ],
        )
        name = b"inferbridge.Inference"
        data = _varint(2) + _varint(0) + _varint(len(name)) + name + nulls
    payload = external_transforms_pb2.ExternalConfigurationPayload(schema=schema, payload=data).SerializeToString()
    response, _ = attack_while_polling_health(default_service, expansion_request(urn, payload))
    assert_refused(response, f"has more than {bounds.MAX_SCHEMA_FIELDS} fields (nested rows included)")


def test_huge_counts_are_refused(default_service, good_model):
    config = Inference(Model.sklearn(good_model), key_field="id", feature_fields="pixels").spec.to_config()
    model = config.models[0]
    attacks = {
        "the models hold 200000 keys together; at most 100000": dict(
            models=[model._replace(keys=[str(i) for i in range(200_000)])]
        ),
        "models holds 1100 models; at most 1024": dict(
            models=[model._replace(model_id=f"m{i}", keys=[str(i)]) for i in range(1100)]
        ),
        "feature_fields holds 20000 fields; at most 10000": dict(feature_fields=[f"f{i}" for i in range(20_000)]),
        "preprocess holds 5000 steps; at most 64": dict(preprocess=[StepConfig("scale", '{"factor": 2}')] * 5000),
    }
    for message, fields in attacks.items():
        request = expansion_request(RUN_INFERENCE_URN, NamedTupleBasedPayloadBuilder(config._replace(**fields)).build().SerializeToString())
        response, _ = attack_while_polling_health(default_service, request)
        assert_refused(response, message)


@pytest.mark.parametrize("where", ["options", "params"])
def test_deeply_nested_json_is_refused_before_it_is_parsed(default_service, good_model, where):
    deep = "[" * 500_000 + "]" * 500_000 if where == "params" else '{"a": ' * 5000 + "1" + "}" * 5000
    if where == "params":
        fields = dict(preprocess=[StepConfig("scale", deep)])
        expected = "preprocess step 'scale': params nests arrays and objects 500000 deep; at most 32"
    else:
        model = Inference(Model.sklearn(good_model), key_field="id", feature_fields="pixels").spec.to_config().models[0]
        fields = dict(models=[model._replace(options=deep)])
        expected = "models[0].options nests arrays and objects 5000 deep; at most 32"
    request = expansion_request(RUN_INFERENCE_URN, payload_with(Model.sklearn(good_model), **fields))
    response, _ = attack_while_polling_health(default_service, request)
    assert_refused(response, expected)


# --- the memory a step may allocate, at run time -------------------------------------------------

# A pad to this length makes 2 MiB per padded row of the example: a width-2 example becomes
# 4 MiB (served), a width-9 one 18 MiB, over the per-example bound (failed).
PAD = 262_144
SERVED_WIDTH, OVER_WIDTH = 2, 9
STEPS = [
    Step("reshape", shape=[-1, 1]),  # (width,) -> (width, 1): each feature a row of its own
    Step("pad", length=PAD),
    Step("truncate", length=2),
    Step("reshape", shape=[-1]),  # (width, 2) -> (2 * width,): the model's 4 features
]


def model_input(example):
    """What the steps make of ``example``: each feature followed by a zero."""
    return np.stack([np.asarray(example), np.zeros(len(example))], axis=1).ravel()


@pytest.fixture(scope="module")
def padded_model(tmp_path_factory):
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(7)
    examples = rng.normal(size=(200, SERVED_WIDTH))
    labels = (examples.sum(axis=1) > 0).astype(int)
    model = LogisticRegression().fit([model_input(e) for e in examples], labels)
    root = tmp_path_factory.mktemp("bounds_models")
    path = root / "padded.pkl"
    path.write_bytes(pickle.dumps(model))
    return model, str(path), LoadPolicy(trusted_roots=(str(root),))


_OUT: dict = {}


def _keep(values, name):
    _OUT[name] = values


def run_pipeline(elements, transform):
    """Runs ``elements`` through ``transform`` on the DirectRunner: (inferences, failures, metrics)."""
    _OUT.clear()
    pipeline = beam.Pipeline()
    result = pipeline | beam.Create(elements, reshuffle=False) | transform
    result.inferences | "Inferences" >> beam.combiners.ToList() | "KeepInferences" >> beam.Map(_keep, "inferences")
    result.failures | "Failures" >> beam.combiners.ToList() | "KeepFailures" >> beam.Map(_keep, "failures")
    run = pipeline.run()
    run.wait_until_finish()
    return _OUT["inferences"], _OUT["failures"], run.metrics()


def assert_only_over_bound_rows_failed(failures, over_keys):
    assert sorted(f.key for f in failures) == sorted(str(k) for k in over_keys), failures
    for failure in failures:
        assert (failure.stage, failure.step, failure.error_type) == ("preprocess", "pad", steps.AllocationTooLarge.__name__)
        assert f"at most {bounds.MAX_STEP_ROW_BYTES} bytes are allowed per example" in failure.message


def test_rows_over_the_per_example_bound_fail_alone(padded_model):
    """Row path: pad runs per example, so only the examples it would make too big fail."""
    model, path, policy = padded_model
    rng = np.random.default_rng(1)
    served = {i: rng.normal(size=SERVED_WIDTH) for i in range(8)}
    over = {100 + i: rng.normal(size=OVER_WIDTH) for i in range(2)}
    rows = [beam.Row(id=k, pixels=[float(v) for v in x]) for k, x in {**served, **over}.items()]
    inferences, failures, _ = run_pipeline(
        rows, Inference(Model.sklearn(path), key_field="id", feature_fields="pixels", preprocess=STEPS, policy=policy)
    )
    expected = {k: int(model.predict([model_input(x)])[0]) for k, x in served.items()}
    assert {r.key: r.inference for r in inferences} == expected
    assert_only_over_bound_rows_failed(failures, over)


def block(ids, examples):
    examples = np.asarray(examples, dtype=np.float64)
    features = pa.FixedSizeListArray.from_arrays(pa.array(examples.ravel()), examples.shape[1])
    return pa.RecordBatch.from_arrays([pa.array(ids), features], names=["id", "pixels"])


def test_a_batch_over_the_per_batch_bound_is_split_and_served(padded_model):
    """Block path: pad runs over the whole batch, row by row. A batch whose padded rows would
    exceed the per-batch bound is refused before any is made, halved and served; only the
    examples over the per-example bound fail."""
    model, path, policy = padded_model
    per_batch = bounds.MAX_STEP_BATCH_BYTES // (SERVED_WIDTH * PAD * 8)
    rng = np.random.default_rng(2)
    served = rng.normal(size=(per_batch + 6, SERVED_WIDTH))
    over = rng.normal(size=(2, OVER_WIDTH))
    over_ids = [1000, 1001]
    transform = BlockInference(
        Model.sklearn(path, model_id="padded"), key_field="id", feature_fields="pixels", preprocess=STEPS, policy=policy
    )
    outputs, failures, metrics = run_pipeline([block(list(range(len(served))), served), block(over_ids, over)], transform)
    got = {}
    for out in outputs:
        for row in out.to_pylist():
            got[row["key"]] = row["inference"]
    assert got == {i: int(p) for i, p in enumerate(model.predict([model_input(x) for x in served]))}
    assert_only_over_bound_rows_failed(failures, over_ids)
    # One halving of the served rows (over the per-batch bound), one of the two rows over the
    # per-example bound (then each fails alone).
    splits = metrics.query(MetricsFilter().with_name("model_padded_batch_splits"))["counters"]
    assert sum(c.committed for c in splits) == 2, splits
