"""The Inference composite in Python pipelines, with a real model trained in the test."""

from types import SimpleNamespace

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.util import assert_that, equal_to

from inferbridge import Inference, Model, Step
from inferbridge.inference import output_row_type


@pytest.mark.parametrize("model_format", ["pickle", "joblib"])
def test_predictions_equal_scikit_learns(as_rows, model_format, model_files, digits_model, held_out):
    pixels, _ = held_out
    expected = digits_model.predict(pixels / 16)
    with beam.Pipeline() as p:
        out = (
            p
            | beam.Create(as_rows(pixels))
            | Inference(
                Model.sklearn(model_files[model_format], format=model_format),
                key_field="id",
                feature_field="pixels",
                preprocess=[Step("scale", factor=1 / 16)],
            )
        )
        assert_that(out | beam.Map(lambda r: (r.key, r.inference)), equal_to([(i, float(v)) for i, v in enumerate(expected)]))


def test_probabilities_argmax_and_labels(as_rows, model_files, digits_model, held_out):
    pixels, _ = held_out
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    expected = [names[i] for i in digits_model.predict_proba(pixels / 16).argmax(axis=1)]
    with beam.Pipeline() as p:
        out = (
            p
            | beam.Create(as_rows(pixels))
            | Inference(
                Model.sklearn(model_files["pickle"], output="predict_proba", model_id="digits-v1"),
                key_field="id",
                feature_field="pixels",
                preprocess=[Step("scale", factor=1 / 16)],
                postprocess=[Step("argmax"), Step("labels", names=names)],
            )
        )
        assert_that(
            out | beam.Map(lambda r: (r.key, r.inference, r.model_id)),
            equal_to([(i, label, "digits-v1") for i, label in enumerate(expected)]),
        )


def test_output_rows_carry_the_preprocessed_example_and_a_typed_schema(as_rows, model_files, held_out):
    pixels, _ = held_out
    transform = Inference(
        Model.sklearn(model_files["pickle"], output="predict_proba"),
        key_field="id",
        feature_field="pixels",
        preprocess=[Step("normalize", mean=8, std=4)],
        postprocess=[Step("softmax")],
    )
    with beam.Pipeline() as p:
        out = p | beam.Create(as_rows(pixels[:3])) | transform
        assert out.element_type == output_row_type(transform.spec, int)
        assert_that(
            out | beam.Map(lambda r: (r.key, r.example, round(sum(r.inference), 6), r.model_id)),
            equal_to([(i, list((pixels[i] - 8) / 4), 1.0, model_files["pickle"]) for i in range(3)]),
        )


def test_missing_feature_field_fails_at_construction(model_files):
    p = beam.Pipeline()
    rows = p | beam.Create([beam.Row(id=1, features=[1.0])])
    with pytest.raises(ValueError, match="feature_field='pixels' is not a field of the input schema; available fields: id, features"):
        rows | Inference(Model.sklearn(model_files["pickle"]), key_field="id", feature_field="pixels")


def test_scalar_feature_field_fails_at_construction(model_files):
    p = beam.Pipeline()
    rows = p | beam.Create([beam.Row(id=1, pixels=1.0)])
    with pytest.raises(ValueError, match="feature_field='pixels' has type float; allowed: an array of numbers"):
        rows | Inference(Model.sklearn(model_files["pickle"]), key_field="id", feature_field="pixels")


def test_missing_model_file_fails_at_construction(tmp_path):
    p = beam.Pipeline()
    rows = p | beam.Create([beam.Row(id=1, pixels=[1.0])])
    missing = str(tmp_path / "nope.pkl")
    with pytest.raises(ValueError, match=f"model_uri='{missing}' does not exist"):
        rows | Inference(Model.sklearn(missing), key_field="id", feature_field="pixels")


def test_transform_round_trips_through_its_urn_and_payload(model_files):
    transform = Inference(
        Model.sklearn(model_files["joblib"], format="joblib", output="predict_proba"),
        key_field="id",
        feature_field="pixels",
        postprocess=[Step("argmax")],
    )
    urn, payload = transform.to_runner_api_parameter(None)
    assert urn == "beam:transform:inferbridge:run_inference:v1"
    assert Inference.from_runner_api_parameter(None, payload, None).spec == transform.spec


def test_keys_without_a_known_schema_become_strings(model_files, digits_model, held_out):
    pixels, _ = held_out

    with beam.Pipeline() as p:
        out = (
            p
            | beam.Create([SimpleNamespace(id=i, pixels=list(pixels[i])) for i in range(5)]).with_output_types(object)
            | Inference(Model.sklearn(model_files["pickle"]), key_field="id", feature_field="pixels", preprocess=[Step("scale", factor=1 / 16)])
        )
        expected = digits_model.predict(np.asarray(pixels[:5]) / 16)
        assert_that(out | beam.Map(lambda r: (r.key, r.inference)), equal_to([(str(i), float(v)) for i, v in enumerate(expected)]))
