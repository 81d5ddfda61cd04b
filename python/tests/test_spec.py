"""The inference spec: validation, wire form, and the golden schema shared with Java."""

import dataclasses
from pathlib import Path

import pytest
from apache_beam.coders import RowCoder
from apache_beam.typehints import schemas

from inferbridge import InferenceSpec, Model, Step, compat
from inferbridge.spec import OPTIONS, RunInferenceConfig, schema_description

GOLDEN = Path(__file__).resolve().parents[2] / "tests" / "golden" / "run_inference_v1.schema"


def spec(**overrides):
    fields = dict(key_field="id", feature_fields="pixels", models=Model.sklearn("/m.pkl"))
    fields.update(overrides)
    return InferenceSpec(**fields)


def test_schema_matches_the_golden_description_shared_with_java():
    golden = [line for line in GOLDEN.read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert schema_description() == golden


def test_config_round_trips_through_the_row_coder():
    original = spec(
        models=[
            Model.sklearn("/a.joblib", format="joblib", output="predict_proba", model_id="a", keys=["1", "2"]),
            Model.sklearn("/b.skops", format="skops", output="predict_proba", model_id="b", keys=["3"], sha256="ab" * 32),
            Model.onnx("/c.onnx", model_id="c", options={"output_name": "probabilities"}, watch_pattern="/c*.onnx"),
        ],
        feature_fields=["x", "y"],
        passthrough_fields=["label"],
        preprocess=[Step("normalize", mean=1.5, std=2)],
        postprocess=[Step("argmax"), Step("labels", names=["a", "b"])],
        min_batch_size=2,
        max_batch_size=64,
        max_batch_duration_secs=0.5,
        variable_length="pad",
        pad_value=-1.0,
        max_models_per_worker=2,
        watch_interval_secs=5.0,
        min_ram="2GB",
        accelerator="type:nvidia-tesla-t4;count:1",
        metrics_namespace="digits",
    )
    coder = RowCoder(schemas.named_tuple_to_schema(RunInferenceConfig))
    decoded = coder.decode(coder.encode(original.to_config()))
    assert InferenceSpec.from_config(decoded) == original


def test_the_wire_form_and_the_stock_translation_derive_from_the_spec_fields():
    assert list(RunInferenceConfig._fields) == [f.name for f, _ in OPTIONS]
    assert {f.name for f, _ in OPTIONS} == {f.name for f in dataclasses.fields(InferenceSpec) if f.init}
    # A stock request with only the required options gives the defaults of every other one.
    required = spec().to_config()
    kwargs = {name: getattr(required, name) for name in compat.INFERENCE_REQUIRED}
    assert compat.inference_config(kwargs) == required
    assert compat.INFERENCE_REQUIRED == ("key_field", "feature_fields", "models")


def test_options_are_keyword_only_after_the_essentials():
    model = Model.sklearn("/m.pkl")
    assert InferenceSpec("id", "pixels", model) == spec()
    with pytest.raises(TypeError):
        InferenceSpec("id", "pixels", model, ())


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(key_field=""), "key_field must be a non-empty string, got ''"),
        (dict(feature_fields=[]), "feature_fields must name at least one input field"),
        (dict(passthrough_fields=["inference"]), "passthrough_fields[0]='inference' clashes with an output field"),
        (dict(models=[]), "models must hold at least one model"),
        (dict(models=Model.sklearn(" ")), "models[0].uri must be a non-empty string, got ' '"),
        (
            dict(models=[Model.sklearn("/a.pkl", model_id="m"), Model.sklearn("/b.pkl", model_id="m", keys=["x"])]),
            "models[1] has model_id 'm', already used by models[0]",
        ),
        (
            dict(models=[Model.sklearn("/a.pkl", keys=["k"]), Model.sklearn("/b.pkl", keys=["k"])]),
            "key 'k' is mapped to models[0] and models[1]",
        ),
        (
            dict(models=[Model.sklearn("/a.pkl"), Model.sklearn("/b.pkl")]),
            "models [0, 1] have no keys, so each would be the default model",
        ),
        (
            dict(models=[Model.sklearn("/a.pkl", keys=["k"]), Model.sklearn("/b.pkl", output="predict_proba")]),
            "all models must give the same kind of output so the output schema is fixed: "
            "models[0] gives a number, models[1] gives a vector",
        ),
        (dict(min_batch_size=0), "min_batch_size must be a positive integer, got 0"),
        (dict(min_batch_size=8, max_batch_size=4), "min_batch_size=8 is larger than max_batch_size=4"),
        (dict(max_batch_duration_secs=0), "max_batch_duration_secs=0 must be positive"),
        (dict(variable_length="crop"), "variable_length='crop' is not supported; allowed: bucket, pad"),
        (dict(max_models_per_worker=-1), "max_models_per_worker must be a positive integer, got -1"),
        (dict(min_ram="lots"), "min_ram='lots' is not a memory size"),
        (dict(accelerator="gpu\r\x80"), "accelerator='gpu\\r\\x80' must be printable ASCII"),
        (dict(accelerator="gpu"), "accelerator='gpu' is not an accelerator hint; allowed: 'type:TYPE' then"),
        (dict(accelerator="type:nvidia-l4;count:0"), "accelerator='type:nvidia-l4;count:0' is not an accelerator hint"),
        (dict(accelerator="type:t4;count:0;count:1"), "accelerator='type:t4;count:0;count:1' is not an accelerator hint; allowed: 'type:TYPE' then ';'-separated options, each once"),
        (dict(accelerator="type:t4;type:a100"), "accelerator='type:t4;type:a100' is not an accelerator hint"),
        (dict(accelerator="type:t4;count:2147483648"), "'count:N' (1 <= N <= 2147483647)"),
        (dict(preprocess=[Step("blur")]), "preprocess step 'blur' is not registered; available:"),
        (dict(preprocess=[Step("scale")]), "preprocess step 'scale': parameter 'factor' is required"),
        (dict(preprocess=[Step("scale", factor="2")]), "preprocess step 'scale': parameter 'factor' must be a number, got '2'"),
        (
            dict(postprocess=[Step("argmax")]),
            "postprocess step 'argmax' takes a vector but receives a number here (model output 'predict')",
        ),
    ],
)
def test_invalid_specs_name_the_field_the_value_and_what_is_allowed(overrides, message):
    with pytest.raises(ValueError) as error:
        spec(**overrides)
    assert message in str(error.value)


def test_from_config_names_missing_and_unknown_fields():
    class Partial:
        _fields = ("key_field", "colour")

    with pytest.raises(ValueError, match=r"missing fields \[.*'feature_fields'.*\], unknown fields \['colour'\]"):
        InferenceSpec.from_config(Partial())


def test_step_params_and_model_options_must_be_json_objects():
    config = spec(preprocess=[Step("scale", factor=2)]).to_config()
    bad_step = config._replace(preprocess=[config.preprocess[0]._replace(params="[1]")])
    with pytest.raises(ValueError, match=r"preprocess step 'scale': params must be a JSON object, got '\[1\]'"):
        InferenceSpec.from_config(bad_step)
    bad_options = config._replace(models=[config.models[0]._replace(options="nope")])
    with pytest.raises(ValueError, match=r"models\[0\].options must be a JSON object, got 'nope'"):
        InferenceSpec.from_config(bad_options)


def test_inference_kind_follows_the_model_output_and_the_postprocessing():
    proba = Model.sklearn("/m.pkl", output="predict_proba")
    assert spec().inference_kind == "number"
    assert spec(models=proba).inference_kind == "vector"
    assert spec(models=proba, postprocess=[Step("argmax")]).inference_kind == "integer"
    assert spec(models=proba, postprocess=[Step("argmax"), Step("labels", names=["x"])]).inference_kind == "label"
    assert spec(models=proba, postprocess=[Step("top_k", k=2)]).inference_kind == "map"
    assert spec(postprocess=[Step("round")]).inference_kind == "integer"
    assert spec(postprocess=[lambda v: v]).inference_kind == "any"
    assert spec(postprocess=[Step.custom(lambda v: str(v), produces="label")]).inference_kind == "label"


def test_callables_cannot_cross_languages():
    with pytest.raises(ValueError, match="postprocess step 'double' is a Python callable and cannot be sent"):

        def double(v):
            return 2 * v

        spec(postprocess=[double]).to_config()


def test_keys_route_to_models_with_a_default_for_the_rest():
    a = Model.sklearn("/a.pkl", model_id="a", keys=["1", "2"])
    default = Model.sklearn("/d.pkl", model_id="d")
    routed = spec(models=[a, default])
    assert [routed.model_for_key(k).id for k in ("1", "2", "3")] == ["a", "a", "d"]
    assert spec(models=[a]).model_for_key("3") is None
