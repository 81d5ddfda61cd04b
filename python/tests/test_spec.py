"""The inference spec: validation, wire form, and the golden schema shared with Java."""

from pathlib import Path

import pytest
from apache_beam.coders import RowCoder
from apache_beam.typehints import schemas

from inferbridge import InferenceSpec, Model, Step
from inferbridge.spec import RunInferenceConfig, StepConfig, schema_description

GOLDEN = Path(__file__).resolve().parents[2] / "tests" / "golden" / "run_inference_v1.schema"


def spec(**overrides):
    fields = dict(key_field="id", feature_field="pixels", model=Model.sklearn("/m.pkl"))
    fields.update(overrides)
    return InferenceSpec(**fields)


def test_schema_matches_the_golden_description_shared_with_java():
    golden = [line for line in GOLDEN.read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert schema_description() == golden


def test_config_round_trips_through_the_row_coder():
    original = spec(
        model=Model.sklearn("/m.joblib", format="joblib", output="predict_proba", model_id="m1"),
        preprocess=[Step("normalize", mean=1.5, std=2)],
        postprocess=[Step("argmax"), Step("labels", names=["a", "b"])],
    )
    coder = RowCoder(schemas.named_tuple_to_schema(RunInferenceConfig))
    decoded = coder.decode(coder.encode(original.to_config()))
    assert InferenceSpec.from_config(decoded) == original


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(model=Model.sklearn("/m.onnx", format="onnx")), "model_format='onnx' is not supported; allowed: joblib, pickle"),
        (dict(model=Model.sklearn("/m.pkl", output="transform")), "model_output='transform' is not supported; allowed: predict, predict_proba"),
        (dict(model=Model("/m.pkl", framework="tensorflow")), "model_framework='tensorflow' is not supported; allowed: sklearn"),
        (dict(key_field=""), "key_field must be a non-empty string, got ''"),
        (dict(model=Model.sklearn(" ")), "model_uri must be a non-empty string, got ' '"),
        (dict(preprocess=[Step("blur")]), "preprocess step 'blur' is not registered; available: normalize, scale"),
        (dict(preprocess=[Step("argmax")]), "preprocess step 'argmax' is not registered; available: normalize, scale"),
        (dict(preprocess=[Step("scale")]), "preprocess step 'scale': parameter 'factor' is required"),
        (dict(preprocess=[Step("scale", factor="2")]), "preprocess step 'scale': parameter 'factor' must be a number, got '2'"),
        (dict(preprocess=[Step("scale", factor=2, offset=1)]), "preprocess step 'scale': unknown parameter(s) 'offset'; allowed: factor"),
        (dict(postprocess=[Step("labels", names=[])]), "postprocess step 'labels': parameter 'names' must not be empty"),
        (
            dict(postprocess=[Step("argmax")]),
            "postprocess step 'argmax' takes a vector but receives a number here (model_output='predict')",
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

    with pytest.raises(ValueError, match=r"missing fields \[.*'feature_field'.*\], unknown fields \['colour'\]"):
        InferenceSpec.from_config(Partial())


def test_step_params_must_be_a_json_object():
    config = RunInferenceConfig(
        "id", "pixels", "sklearn", "pickle", "/m.pkl", None, "predict", [StepConfig("scale", "[1]")], []
    )
    with pytest.raises(ValueError, match=r"preprocess step 'scale': params must be a JSON object, got '\[1\]'"):
        InferenceSpec.from_config(config)


def test_inference_kind_follows_the_postprocessing():
    proba = Model.sklearn("/m.pkl", output="predict_proba")
    assert spec().inference_kind == "number"
    assert spec(model=proba).inference_kind == "vector"
    assert spec(model=proba, postprocess=[Step("argmax")]).inference_kind == "integer"
    assert spec(model=proba, postprocess=[Step("argmax"), Step("labels", names=["x"])]).inference_kind == "label"
    assert spec(postprocess=[Step("round")]).inference_kind == "integer"
