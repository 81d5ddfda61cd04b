"""The Inference composite in Python pipelines, with real models trained in the tests."""

import typing
from types import SimpleNamespace

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.util import assert_that, equal_to

from inferbridge import Inference, InferenceSpec, Model, Step
from inferbridge.engine import BlockModels
from inferbridge.inference import FAILURE_ROW, output_row_type
from inferbridge.policy import LoadPolicy

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@pytest.mark.parametrize("model_format", ["pickle", "joblib"])
def test_predictions_equal_scikit_learns(as_rows, model_format, model_files, digits_model, held_out, trusting):
    pixels, _ = held_out
    expected = digits_model.predict(pixels / 16)
    with beam.Pipeline() as p:
        result = p | beam.Create(as_rows(pixels)) | Inference(
            Model.sklearn(model_files[model_format], format=model_format),
            key_field="id",
            feature_fields="pixels",
            preprocess=[Step("scale", factor=1 / 16)],
            policy=trusting,
        )
        assert_that(
            result.inferences | beam.Map(lambda r: (r.key, r.inference)),
            equal_to([(i, float(v)) for i, v in enumerate(expected)]),
        )
        assert_that(result.failures, equal_to([]), label="NoFailures")


def test_probabilities_argmax_and_labels(as_rows, model_files, digits_model, held_out, trusting):
    pixels, _ = held_out
    expected = [NAMES[i] for i in digits_model.predict_proba(pixels / 16).argmax(axis=1)]
    with beam.Pipeline() as p:
        result = p | beam.Create(as_rows(pixels)) | Inference(
            Model.sklearn(model_files["pickle"], output="predict_proba", model_id="digits-v1"),
            key_field="id",
            feature_fields="pixels",
            preprocess=[Step("scale", factor=1 / 16)],
            postprocess=[Step("argmax"), Step("labels", names=NAMES)],
            policy=trusting,
        )
        assert_that(
            result.inferences | beam.Map(lambda r: (r.key, r.inference, r.model_id)),
            equal_to([(i, label, "digits-v1") for i, label in enumerate(expected)]),
        )


@pytest.mark.parametrize(
    "postprocess, field_type",
    [
        ([], typing.Sequence[float]),
        ([Step("argmax")], int),
        ([Step("argmax"), Step("labels", names=NAMES)], str),
        ([Step("top_k", k=2, names=NAMES)], typing.Mapping[str, float]),
    ],
)
def test_the_inference_field_is_typed_by_the_postprocessing(as_rows, model_files, held_out, trusting, postprocess, field_type):
    pixels, _ = held_out
    with beam.Pipeline() as p:
        result = p | beam.Create(as_rows(pixels[:4])) | Inference(
            Model.sklearn(model_files["pickle"], output="predict_proba"),
            key_field="id",
            feature_fields="pixels",
            postprocess=postprocess,
            policy=trusting,
        )
        assert dict(result.inferences.element_type._fields)["inference"] == field_type
        assert result.failures.element_type == FAILURE_ROW
        assert_that(
            result.inferences | beam.Map(lambda r: type(r.inference).__name__),
            equal_to([{typing.Sequence[float]: "list", int: "int", str: "str"}.get(field_type, "dict")] * 4),
        )


def test_top_k_gives_the_highest_scores_by_name(as_rows, model_files, digits_model, held_out, trusting):
    pixels, _ = held_out
    probabilities = digits_model.predict_proba(pixels[:5] / 16)
    expected = []
    for i, row in enumerate(probabilities):
        best = np.argsort(row)[::-1][:2]
        expected.append((i, {NAMES[j]: pytest.approx(float(row[j])) for j in best}))
    with beam.Pipeline() as p:
        result = p | beam.Create(as_rows(pixels[:5])) | Inference(
            Model.sklearn(model_files["pickle"], output="predict_proba"),
            key_field="id",
            feature_fields="pixels",
            preprocess=[Step("scale", factor=1 / 16)],
            postprocess=[Step("top_k", k=2, names=NAMES)],
            policy=trusting,
        )
        assert_that(result.inferences | beam.Map(lambda r: (r.key, r.inference)), equal_to(expected))


def test_rows_carry_the_preprocessed_example_and_passthrough_fields(model_files, held_out, trusting):
    pixels, labels = held_out
    rows = [beam.Row(id=i, pixels=[float(v) for v in pixels[i]], label=int(labels[i]), note=f"n{i}") for i in range(3)]
    transform = Inference(
        Model.sklearn(model_files["pickle"], output="predict_proba"),
        key_field="id",
        feature_fields="pixels",
        passthrough_fields=["label", "note"],
        preprocess=[Step("normalize", mean=8, std=4)],
        postprocess=[Step("softmax")],
        policy=trusting,
    )
    with beam.Pipeline() as p:
        result = p | beam.Create(rows) | transform
        assert result.inferences.element_type == output_row_type(transform.spec, int, [("label", int), ("note", str)])
        assert_that(
            result.inferences | beam.Map(lambda r: (r.key, r.example, round(sum(r.inference), 6), r.label, r.note)),
            equal_to([(i, list((pixels[i] - 8) / 4), 1.0, int(labels[i]), f"n{i}") for i in range(3)]),
        )


def test_one_passthrough_field_may_be_given_as_a_string_like_one_feature_field(model_files, held_out, trusting):
    pixels, labels = held_out
    rows = [beam.Row(id=i, pixels=[float(v) for v in pixels[i]], label=int(labels[i])) for i in range(3)]
    transform = Inference(
        Model.sklearn(model_files["pickle"]), key_field="id", feature_fields="pixels", passthrough_fields="label",
        preprocess=[Step("scale", factor=1 / 16)], policy=trusting,
    )
    assert transform.spec.passthrough_fields == ("label",)
    with beam.Pipeline() as p:
        result = p | beam.Create(rows) | transform
        assert_that(result.inferences | beam.Map(lambda r: (r.key, r.label)), equal_to([(i, int(labels[i])) for i in range(3)]))


@pytest.mark.parametrize("with_a_bad_row", [False, True], ids=["all-good", "one-null-row"])
def test_rows_of_numpy_arrays_get_their_examples_as_numpy_arrays(model_files, digits_model, held_out, trusting, with_a_bad_row):
    # A Row's features as a numpy array (as a Beam user's numpy rows are) come back as a float64
    # array: the example after the steps, not a list of 64 Python floats made per row. A block
    # with an unreadable row is read row by row; its other rows get arrays all the same.
    pixels, _ = held_out
    rows = [beam.Row(id=i, pixels=pixels[i].astype(np.int64 if i % 2 else np.float64)) for i in range(6)]
    if with_a_bad_row:
        rows[3] = beam.Row(id=3, pixels=None)
    served = [i for i in range(6) if not (with_a_bad_row and i == 3)]
    expected = digits_model.predict(pixels[served] / 16)
    with beam.Pipeline() as p:
        result = p | beam.Create(rows, reshuffle=False) | Inference(
            Model.sklearn(model_files["pickle"]),
            key_field="id",
            feature_fields="pixels",
            preprocess=[Step("scale", factor=1 / 16)],
            policy=trusting,
        )
        assert_that(
            result.inferences | beam.Map(lambda r: (r.key, type(r.example).__name__, str(r.example.dtype), list(r.example), r.inference)),
            equal_to([(i, "ndarray", "float64", list(pixels[i] / 16), float(v)) for i, v in zip(served, expected)]),
        )
        # Encoded by the output's RowCoder (a reshuffle), the array becomes the schema's list.
        assert_that(
            result.inferences | beam.Reshuffle() | beam.Map(lambda r: (r.key, r.example)),
            equal_to([(i, list(pixels[i] / 16)) for i in served]),
            label="encoded",
        )
        assert_that(result.failures | beam.Map(lambda f: (f.key, f.stage)), equal_to([("3", "input")] if with_a_bad_row else []), label="failures")


def test_several_numeric_fields_are_concatenated_into_the_features(model_files, digits_model, held_out, trusting):
    pixels, _ = held_out
    rows = [beam.Row(id=i, top=[float(v) for v in pixels[i][:32]], bottom=[float(v) for v in pixels[i][32:]]) for i in range(5)]
    with beam.Pipeline() as p:
        result = p | beam.Create(rows) | Inference(
            Model.sklearn(model_files["pickle"]),
            key_field="id",
            feature_fields=["top", "bottom"],
            preprocess=[Step("scale", factor=1 / 16)],
            policy=trusting,
        )
        expected = digits_model.predict(pixels[:5] / 16)
        assert_that(result.inferences | beam.Map(lambda r: (r.key, r.inference)), equal_to([(i, float(v)) for i, v in enumerate(expected)]))


def test_batched_steps_run_once_per_batch(model_files, digits_model, held_out, trusting, tmp_path):
    pixels, _ = held_out
    calls = tmp_path / "calls"

    def scale_batch(x):
        with open(calls, "a") as f:
            f.write(f"{x.shape[0]}\n")
        return x / 16

    rows = [beam.Row(id=i, pixels=[float(v) for v in pixels[i]]) for i in range(100)]
    with beam.Pipeline() as p:
        result = p | beam.Create(rows) | Inference(
            Model.sklearn(model_files["pickle"]),
            key_field="id",
            feature_fields="pixels",
            preprocess=[Step.custom(scale_batch, batched=True)],
            min_batch_size=50,
            max_batch_size=50,
            policy=trusting,
        )
        expected = digits_model.predict(pixels / 16)
        assert_that(result.inferences | beam.Map(lambda r: (r.key, r.inference)), equal_to([(i, float(v)) for i, v in enumerate(expected)]))
    sizes = [int(line) for line in calls.read_text().split()]
    assert sum(sizes) == 100 and len(sizes) < 100, sizes


def test_plain_callables_as_steps(model_files, digits_model, held_out, trusting):
    pixels, _ = held_out
    with beam.Pipeline() as p:
        result = p | beam.Create([beam.Row(id=i, pixels=[float(v) for v in pixels[i]]) for i in range(5)]) | Inference(
            Model.sklearn(model_files["pickle"]),
            key_field="id",
            feature_fields="pixels",
            preprocess=[lambda x: x / 16],
            postprocess=[Step.custom(lambda v: f"digit {int(v)}", produces="label")],
            policy=trusting,
        )
        expected = digits_model.predict(pixels[:5] / 16)
        assert_that(result.inferences | beam.Map(lambda r: (r.key, r.inference)), equal_to([(i, f"digit {int(v)}") for i, v in enumerate(expected)]))


def test_missing_field_fails_at_construction(model_files, trusting):
    p = beam.Pipeline()
    rows = p | beam.Create([beam.Row(id=1, features=[1.0])])
    with pytest.raises(ValueError, match="feature_fields\\[0\\]='pixels' is not a field of the input schema; available fields: id, features"):
        rows | Inference(Model.sklearn(model_files["pickle"]), key_field="id", feature_fields="pixels", policy=trusting)


def test_string_feature_field_fails_at_construction(model_files, trusting):
    p = beam.Pipeline()
    rows = p | beam.Create([beam.Row(id=1, pixels="1,2")])
    with pytest.raises(ValueError, match="feature_fields\\[0\\]='pixels' has type str; allowed: an array of numbers"):
        rows | Inference(Model.sklearn(model_files["pickle"]), key_field="id", feature_fields="pixels", policy=trusting)


def test_missing_model_file_fails_at_construction(tmp_path):
    p = beam.Pipeline()
    rows = p | beam.Create([beam.Row(id=1, pixels=[1.0])])
    missing = str(tmp_path / "nope.pkl")
    with pytest.raises(ValueError, match=f"models\\[0\\].uri='{missing}' does not exist"):
        rows | Inference(Model.sklearn(missing), key_field="id", feature_fields="pixels", policy=LoadPolicy(trusted_roots=(str(tmp_path),)))


def test_pickles_outside_trusted_roots_are_refused_at_construction(model_files):
    p = beam.Pipeline()
    rows = p | beam.Create([beam.Row(id=1, pixels=[1.0])])
    with pytest.raises(ValueError, match="models\\[0\\]") as error:
        rows | Inference(Model.sklearn(model_files["pickle"]), key_field="id", feature_fields="pixels", policy=LoadPolicy())
    assert "trusted" in str(error.value)


def test_transform_round_trips_through_its_urn_and_payload(model_files):
    transform = Inference(
        [Model.sklearn(model_files["joblib"], format="joblib", output="predict_proba", keys=["1"]), Model.sklearn(model_files["pickle"], output="predict_proba")],
        key_field="id",
        feature_fields="pixels",
        postprocess=[Step("argmax")],
        max_batch_size=32,
    )
    urn, payload = transform.to_runner_api_parameter(None)
    assert urn == "beam:transform:inferbridge:run_inference:v1"
    assert Inference.from_runner_api_parameter(None, payload, None).spec == transform.spec


def test_keys_without_a_known_schema_become_strings(model_files, digits_model, held_out, trusting):
    pixels, _ = held_out
    with beam.Pipeline() as p:
        result = (
            p
            | beam.Create([SimpleNamespace(id=i, pixels=list(pixels[i])) for i in range(5)]).with_output_types(object)
            | Inference(Model.sklearn(model_files["pickle"]), key_field="id", feature_fields="pixels", preprocess=[Step("scale", factor=1 / 16)], policy=trusting)
        )
        expected = digits_model.predict(np.asarray(pixels[:5]) / 16)
        assert_that(result.inferences | beam.Map(lambda r: (r.key, r.inference)), equal_to([(str(i), float(v)) for i, v in enumerate(expected)]))


def test_resource_hints_reach_the_inference_step(model_files, trusting):
    p = beam.Pipeline()
    _ = p | beam.Create([beam.Row(id=1, pixels=[1.0] * 64)]) | Inference(
        Model.sklearn(model_files["pickle"]), key_field="id", feature_fields="pixels", min_ram="3GB", policy=trusting
    )
    proto = p.to_runner_api()
    hinted = [
        name
        for name, env in proto.components.environments.items()
        if env.resource_hints.get("beam:resources:min_ram_bytes:v1") == b"3000000000"
    ]
    assert hinted, "no environment carries the min_ram hint"


def test_metrics_count_rows_per_stage_and_model(model_files, held_out, trusting):
    pixels, _ = held_out
    rows = [beam.Row(id=i, pixels=[float(v) for v in pixels[i]]) for i in range(20)]
    rows.append(beam.Row(id=99, pixels=None))
    p = beam.Pipeline()
    _ = p | beam.Create(rows) | Inference(
        Model.sklearn(model_files["pickle"], model_id="digits"), key_field="id", feature_fields="pixels", metrics_namespace="test_ns", policy=trusting
    )
    result = p.run()
    result.wait_until_finish()
    counters = {c.key.metric.name: c.committed for c in result.metrics().query()["counters"] if c.key.metric.namespace == "test_ns"}
    distributions = {d.key.metric.name: d.committed for d in result.metrics().query()["distributions"] if d.key.metric.namespace == "test_ns"}
    assert counters["rows_in"] == 21
    assert counters["inferences_out"] == 20
    assert counters["input_failures"] == 1
    assert counters["model_digits_examples"] == 20
    assert distributions["model_digits_batch_size_examples"].sum == 20
    assert distributions["model_digits_batch_latency_micros"].count >= 1


@pytest.mark.parametrize(
    "batching",
    [
        pytest.param({"max_batch_size": 8, "max_batch_duration_secs": 0.5}, id="max_and_duration"),
        pytest.param({"min_batch_size": 8, "max_batch_size": 8, "max_batch_duration_secs": 0.5}, id="fixed_and_duration"),
        pytest.param({"max_batch_duration_secs": 0.5}, id="duration_only"),
    ],
)
def test_a_batch_duration_on_bounded_input_serves_every_row(model_files, digits_model, held_out, trusting, batching):
    """On bounded input the duration is not passed to Beam: its stateful batching, on Beam's
    bundle-based DirectRunner, lost every row (none served, or the run failed)."""
    pixels, _ = held_out
    rows = [beam.Row(id=i, pixels=[float(v) for v in pixels[i]]) for i in range(20)]
    p = beam.Pipeline()
    result = p | beam.Create(rows) | Inference(
        Model.sklearn(model_files["pickle"], model_id="digits"),
        key_field="id",
        feature_fields="pixels",
        preprocess=[Step("scale", factor=1 / 16)],
        policy=trusting,
        **batching,
    )
    expected = digits_model.predict(pixels[:20] / 16)
    assert_that(result.inferences | beam.Map(lambda r: (r.key, r.inference)), equal_to([(i, float(v)) for i, v in enumerate(expected)]))
    run = p.run()
    run.wait_until_finish()
    sizes = [d.committed for d in run.metrics().query()["distributions"] if d.key.metric.name == "model_digits_batch_size_examples"]
    assert sizes and sum(s.sum for s in sizes) == 20
    assert max(s.max for s in sizes) <= batching.get("max_batch_size", 1024)


def test_a_batch_duration_reaches_beams_batching_on_unbounded_input_only(model_files, trusting):
    spec = InferenceSpec(
        key_field="id", feature_fields="x", models=Model.sklearn(model_files["pickle"]), max_batch_size=8, max_batch_duration_secs=0.5
    )
    assert BlockModels(spec, trusting).batch_elements_kwargs()["max_batch_duration_secs"] == 0.5
    assert "max_batch_duration_secs" not in BlockModels(spec, trusting, bounded=True).batch_elements_kwargs()


def test_steps_run_in_the_order_given(model_files, trusting):
    """Preprocess first to last (not Beam's last-applied-first), then postprocess first to last."""
    with beam.Pipeline() as p:
        result = p | beam.Create([beam.Row(id=0, pixels=[float(v) for v in range(64)])]) | Inference(
            Model.sklearn(model_files["pickle"], output="predict_proba"),
            key_field="id",
            feature_fields="pixels",
            preprocess=[Step("scale", factor=2), Step("normalize", mean=1, std=4)],
            postprocess=[Step("argmax"), Step("label_map", mapping={str(i): f"d{i}" for i in range(10)})],
            policy=trusting,
        )
        assert_that(
            result.inferences | beam.Map(lambda r: (r.example, r.inference.startswith("d"))),
            equal_to([([(2 * v - 1) / 4 for v in range(64)], True)]),
        )
