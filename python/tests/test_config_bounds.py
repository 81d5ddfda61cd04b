"""The bounds on every configuration value: each one at its limit and just over, and the error."""

import pickle
import time

import numpy as np
import pytest
from apache_beam.portability.api import beam_expansion_api_pb2

from inferbridge import Evaluate, Model, Step, bounds, steps
from inferbridge.request_checks import reduce_pipeline_options
from inferbridge.spec import InferenceSpec, ModelConfig, StepConfig

PRE = steps.PREPROCESS
MODEL = Model.sklearn("/models/m.pkl")


def spec(**overrides):
    fields = dict(key_field="id", feature_fields=("x",), models=(MODEL,))
    fields.update(overrides)
    return InferenceSpec(**fields)


def refused(build, *fragments):
    """The error of ``build()``; it names every fragment and stays short whatever the value."""
    with pytest.raises(ValueError) as error:
        build()
    message = str(error.value)
    for fragment in fragments:
        assert fragment in message, message
    assert len(message) < 1000, message[:2000]
    return message


def keyed_models(count, keys_each=1):
    return tuple(
        Model.sklearn(f"/models/{i}.pkl", model_id=f"m{i}", keys=[f"k{i}.{j}" for j in range(keys_each)])
        for i in range(count)
    )


NAME = "n" * bounds.MAX_NAME_CHARS
LONG_NAME = NAME + "n"


@pytest.mark.parametrize("field", ["key_field", "metrics_namespace"])
def test_names_at_and_over_their_length(field):
    spec(**{field: NAME})
    refused(lambda: spec(**{field: LONG_NAME}), f"{field}='nnnn", "(257 characters) is too long: at most 256")


@pytest.mark.parametrize("field", ["feature_fields", "passthrough_fields"])
def test_field_lists_hold_bounded_names(field):
    spec(**{field: (NAME,)})
    refused(lambda: spec(**{field: (LONG_NAME,)}), f"{field}[0]=", "at most 256 characters")


def test_variable_length_is_bounded_before_it_is_echoed():
    refused(lambda: spec(variable_length="x" * 5_000_000), "variable_length=", "(5000000 characters) is too long")


@pytest.mark.parametrize(
    "field, limit",
    [("feature_fields", bounds.MAX_FEATURE_FIELDS), ("passthrough_fields", bounds.MAX_PASSTHROUGH_FIELDS)],
)
def test_field_counts(field, limit):
    spec(**{field: tuple(f"f{i}" for i in range(limit))})
    refused(lambda: spec(**{field: tuple(f"f{i}" for i in range(limit + 1))}), f"{field} holds {limit + 1} fields; at most {limit}")


def test_model_count():
    spec(models=keyed_models(bounds.MAX_MODELS))
    refused(lambda: spec(models=keyed_models(bounds.MAX_MODELS + 1)), "models holds 1025 models; at most 1024")


def test_key_count_over_all_models():
    each = bounds.MAX_KEYS // 4
    spec(models=keyed_models(4, each))
    refused(lambda: spec(models=keyed_models(4, each) + (Model.sklearn("/x.pkl", keys=["extra"]),)),
            "the models hold 100001 keys together; at most 100000")


@pytest.mark.parametrize("stage", [steps.PREPROCESS, steps.POSTPROCESS])
def test_step_counts(stage):
    step = Step("scale", factor=2.0) if stage == PRE else Step.custom(abs)
    spec(**{stage: [step] * bounds.MAX_STEPS})
    refused(lambda: spec(**{stage: [step] * (bounds.MAX_STEPS + 1)}), f"{stage} holds 65 steps; at most 64")


@pytest.mark.parametrize(
    "field, limit, valid",
    [
        ("uri", bounds.MAX_URI_CHARS, lambda n: "/" + "u" * (n - 1)),
        ("model_id", bounds.MAX_ID_CHARS, lambda n: "i" * n),
        ("sha256", bounds.MAX_SHA256_CHARS, lambda n: "a" * n),
    ],
)
def test_model_strings(field, limit, valid):
    values = {"uri": "/models/m.pkl", field: valid(limit)}
    spec(models=Model.sklearn(**values))
    values[field] = valid(limit + 1)
    refused(lambda: spec(models=Model.sklearn(**values)), f"models[0].{field}=", f"at most {limit} characters")


def test_model_keys_and_kinds_are_bounded():
    spec(models=Model.sklearn("/m.pkl", keys=["k" * bounds.MAX_ID_CHARS]))
    refused(lambda: spec(models=Model.sklearn("/m.pkl", keys=["k" * 1025])), "models[0].keys[0]=", "at most 1024")
    for field in ("framework", "format", "output"):
        model = Model("/m.pkl", **{field: "z" * 257})
        refused(lambda: spec(models=model), f"models[0].{field}=", "at most 256 characters")


@pytest.mark.parametrize("field", ["min_batch_size", "max_batch_size"])
def test_batch_sizes(field):
    spec(**{field: bounds.MAX_BATCH_SIZE})
    refused(lambda: spec(**{field: bounds.MAX_BATCH_SIZE + 1}), f"{field}=1000001 is out of range; allowed: 1 to 1000000")


def test_durations_and_numbers():
    spec(max_batch_duration_secs=bounds.MAX_BATCH_DURATION_SECS)
    refused(lambda: spec(max_batch_duration_secs=3600.5), "max_batch_duration_secs=3600.5 is out of range; allowed: (0, 3600]")
    spec(watch_interval_secs=bounds.MIN_WATCH_INTERVAL_SECS)
    spec(watch_interval_secs=bounds.MAX_WATCH_INTERVAL_SECS)
    refused(lambda: spec(watch_interval_secs=0.009), "watch_interval_secs=0.009 is out of range; allowed: [0.01, 3.1536e+07]")
    refused(lambda: spec(watch_interval_secs=float("inf")), "watch_interval_secs must be a finite number, got inf")
    spec(pad_value=-1e308)
    refused(lambda: spec(pad_value=float("-inf")), "pad_value must be a finite number, got -inf")
    spec(max_models_per_worker=bounds.MAX_MODELS_PER_WORKER)
    refused(lambda: spec(max_models_per_worker=1025), "max_models_per_worker=1025 is out of range; allowed: 1 to 1024")


def test_min_ram_is_a_number_and_a_unit():
    for value in ("4GB", "4 GB", "512MiB", "1.5TiB", "100B", "1" * 30 + "GB"):
        spec(min_ram=value)
    for value in ("lots", "4", "GB", "1e9GB", "-4GB", "4 gb", "1" * 31 + "GB"):
        refused(lambda: spec(min_ram=value), "min_ram=", "is not a memory size: use a number and a unit", "at most 32")


@pytest.mark.parametrize("length", [17_000, 3_900_000])
def test_a_long_min_ram_is_refused_before_beam_parses_it(length):
    """Beam's parser takes time that grows with the square of the length (seconds at 17 KB)."""
    started = time.monotonic()
    refused(lambda: spec(min_ram="a" * length + "1"), f"({length + 1} characters) is not a memory size")
    assert time.monotonic() - started < 2


def test_accelerator_length():
    spec(accelerator="type:" + "a" * (bounds.MAX_ACCELERATOR_CHARS - 5))
    refused(lambda: spec(accelerator="a" * 257), "accelerator=", "at most 256 characters")


def wire_model(options):
    return ModelConfig(None, "sklearn", "pickle", "/m.pkl", "predict", [], options, None, None)


def nested(depth):
    return '{"a": ' * depth + "1" + "}" * depth


def test_model_options_json_size_and_depth():
    padding = bounds.MAX_OPTIONS_JSON_CHARS - len('{"x": ""}')
    Model.from_config("models[0]", wire_model('{"x": "' + "p" * padding + '"}'))
    refused(lambda: Model.from_config("models[0]", wire_model('{"x": "' + "p" * (padding + 1) + '"}')),
            "models[0].options=", "at most 65536 characters")
    Model.from_config("models[0]", wire_model(nested(bounds.MAX_JSON_DEPTH)))
    refused(lambda: Model.from_config("models[0]", wire_model(nested(33))), "models[0].options nests arrays and objects 33 deep; at most 32")


def test_step_params_json_size_depth_and_digits():
    Step.from_config("preprocess", StepConfig("scale", '{"factor": 2}'))
    over = '{"names": ["' + "x" * bounds.MAX_PARAMS_JSON_CHARS + '"]}'
    refused(lambda: Step.from_config("postprocess", StepConfig("labels", over)), "params=", "at most 1048576 characters")
    deep = "[" * 500_000 + "]" * 500_000
    refused(lambda: Step.from_config("preprocess", StepConfig("scale", deep)), "nests arrays and objects 500000 deep")
    # Brackets inside strings do not nest.
    Step.from_config("postprocess", StepConfig("labels", '{"names": ["' + "[" * 100 + '"]}'))
    refused(lambda: Step.from_config("preprocess", StepConfig("pad", '{"length": ' + "9" * 5000 + "}")),
            "preprocess step 'pad': params must be a JSON object")
    refused(lambda: Step.from_config("preprocess", StepConfig("x" * 300, "{}")), "preprocess step name=", "at most 256")


def check(name, **params):
    return steps.check_params(steps.lookup(PRE, name), params)


def test_pad_length_is_bounded_by_the_bytes_of_one_example():
    longest = bounds.MAX_STEP_ROW_BYTES // 8
    check("pad", length=longest)
    refused(lambda: check("pad", length=longest + 1),
            f"preprocess step 'pad': parameter 'length' must be at most {longest}", "got 2097153")
    refused(lambda: check("pad", length=800_000_000), "at most 2097152", "got 800000000")


def test_integer_and_shape_parameters():
    check("truncate", length=bounds.MAX_STEP_INT)
    refused(lambda: check("truncate", length=2**31), "parameter 'length' must be at most 2147483647, got 2147483648")
    check("reshape", shape=[1] * bounds.MAX_SHAPE_DIMS)
    refused(lambda: check("reshape", shape=[1] * 33), "parameter 'shape' must be at most 32 dimensions")
    refused(lambda: check("reshape", shape=[1] * 100_000), "got [1, 1, 1, 1, 1, 1, 1, 1, ...] (100000 items)")


def test_pad_refuses_an_example_over_the_bound_before_allocating():
    longest = bounds.MAX_STEP_ROW_BYTES // 8
    pad = steps.lookup(PRE, "pad").build(check("pad", length=longest))
    assert pad(np.ones((1, 1))).shape == (1, longest)
    with pytest.raises(steps.AllocationTooLarge, match=r"preprocess step 'pad' would make an example of 33554432 bytes; at most 16777216"):
        pad(np.ones((2, 1)))
    assert pad(np.ones((3, longest + 5))).shape == (3, longest + 5)  # nothing to pad: no allocation


def test_a_batch_over_the_bound_is_refused_before_allocating():
    definition = steps.lookup(PRE, "pad")
    params = check("pad", length=bounds.MAX_STEP_ROW_BYTES // 8)
    per_batch = bounds.MAX_STEP_BATCH_BYTES // bounds.MAX_STEP_ROW_BYTES
    steps.check_allocation(definition, params, np.ones((per_batch, 1)))
    with pytest.raises(steps.AllocationTooLarge, match=r"would make 17 examples of 16777216 bytes; at most 268435456 bytes are allowed per batch"):
        steps.check_allocation(definition, params, np.ones((per_batch + 1, 1)))
    with pytest.raises(steps.AllocationTooLarge, match="per example"):
        steps.check_allocation(definition, params, np.ones((1, 2, 1)))
    # Workers get pickled copies of the definitions: a copy is checked too.
    with pytest.raises(steps.AllocationTooLarge, match="per batch"):
        steps.check_allocation(pickle.loads(pickle.dumps(definition)), params, np.ones((per_batch + 1, 1)))
    # Steps whose results are no larger than their input are not checked.
    steps.check_allocation(steps.lookup(PRE, "scale"), {"factor": 2.0}, np.ones((10**6, 1)))


def test_evaluate_fields():
    Evaluate(NAME)
    refused(lambda: Evaluate(LONG_NAME), "label_field=", "at most 256 characters")
    refused(lambda: Evaluate("label", model_id_field="m" * 10**6), "model_id_field=", "(1000000 characters)")


def request_with(options):
    request = beam_expansion_api_pb2.ExpansionRequest()
    request.pipeline_options.update(options)
    return request


def test_client_pipeline_options_are_reduced_to_the_allowlist():
    kept = {
        "beam:option:streaming:v1": True,
        "beam:option:update_compatibility_version:v1": "2.60.0",
        "beam:option:resource_hints:v1": ["min_ram=4GB", "accelerator=type:nvidia-tesla-t4;count:1"],
    }
    dropped = {
        "beam:option:job_name:v1": "java-job",
        "beam:option:environment_type:v1": "PROCESS",
        "beam:option:runner:v1": "DataflowRunner",
        "beam:option:streaming:v2": True,
        "not an option": 1,
    }
    request = request_with({**kept, **dropped})
    assert dict(reduce_pipeline_options(request).pipeline_options) == dict(request_with(kept).pipeline_options)
    within = request_with(kept)
    assert reduce_pipeline_options(within) is within


@pytest.mark.parametrize(
    "option, value",
    [
        ("resource_hints", ["min_ram=" + "a" * 3_900_000 + "1"]),
        ("resource_hints", ["cpu_count=4"]),
        ("resource_hints", ["min_ram=1GB"] * 9),
        ("resource_hints", "min_ram=1GB"),
        ("update_compatibility_version", "2.60.0.0.0"),
        ("update_compatibility_version", "2" * 100),
    ],
)
def test_allowlisted_options_out_of_bounds_are_dropped(option, value):
    started = time.monotonic()
    reduced = reduce_pipeline_options(request_with({f"beam:option:{option}:v1": value, "beam:option:streaming:v1": False}))
    assert dict(reduced.pipeline_options) == {"beam:option:streaming:v1": False}
    assert time.monotonic() - started < 2
    assert dict(reduce_pipeline_options(request_with({"beam:option:streaming:v1": "yes"})).pipeline_options) == {}
