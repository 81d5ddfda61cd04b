"""The Evaluate composite: classification quality per model and window, in real pipelines."""

import decimal
import pickle
import typing
from pathlib import Path
from types import SimpleNamespace

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
from apache_beam.ml.inference.sklearn_inference import SklearnModelHandlerNumpy
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.portability.api import beam_runner_api_pb2
from apache_beam.runners.pipeline_context import PipelineContext
from apache_beam.testing import test_stream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.external import ExternalTransform
from apache_beam.transforms.window import FixedWindows, TimestampedValue
from apache_beam.typehints.row_type import RowTypeConstraint
from sklearn.metrics import accuracy_score, confusion_matrix, precision_score, recall_score
from sklearn.tree import DecisionTreeClassifier
from sklearn.utils.multiclass import unique_labels

from inferbridge.evaluate import (
    EVALUATE_URN,
    ConfusionCountsFn,
    Evaluate,
    EvaluateConfig,
    EvaluationResult,
    class_name,
    evaluation_result,
    output_row_type,
    output_schema_description,
    schema_description,
)
from inferbridge.local_services import expansion_service

GOLDEN = Path(__file__).resolve().parents[2] / "tests" / "golden" / "evaluate_v1.schema"


def row(label, inference, model_id="a"):
    return beam.Row(label=label, inference=inference, model_id=model_id)


# (label, prediction) pairs of model "a" whose confusion matrix is known by hand:
#            predicted: bird cat dog
#   actual bird          0    1   0
#   actual cat           0    3   1
#   actual dog           0    1   2
# plus one row without a label and one without a prediction.
HAND_MADE = [("cat", "cat")] * 3 + [("cat", "dog"), ("dog", "dog"), ("dog", "dog"), ("dog", "cat"), ("bird", "cat")]
HAND_MADE_RESULT = EvaluationResult(
    model_id="a",
    count=8,
    correct=5,
    accuracy=5 / 8,
    classes=["bird", "cat", "dog"],
    precision=[0.0, 3 / 5, 2 / 3],  # nothing was predicted as bird: 0.0
    recall=[0.0, 3 / 4, 2 / 3],
    macro_precision=(3 / 5 + 2 / 3) / 3,
    macro_recall=(3 / 4 + 2 / 3) / 3,
    confusion=[("bird", "cat", 1), ("cat", "cat", 3), ("cat", "dog", 1), ("dog", "cat", 1), ("dog", "dog", 2)],
    unlabeled=2,
)


def hand_made_rows(model_id="a"):
    return [row(l, p, model_id) for l, p in HAND_MADE] + [row(None, "cat", model_id), row("dog", None, model_id)]


def rounded(result):
    """The result as a plain tuple, macro averages rounded (they are means of several ratios)."""
    return result._replace(
        macro_precision=round(result.macro_precision, 12),
        macro_recall=round(result.macro_recall, 12),
        classes=list(result.classes),
        precision=list(result.precision),
        recall=list(result.recall),
        confusion=[tuple(c) for c in result.confusion],
    )


def test_config_schema_matches_the_golden_file():
    golden = [line for line in GOLDEN.read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert schema_description() == golden


def test_output_schema_is_a_fixed_typed_row():
    assert output_schema_description() == [
        "model_id: STRING NULLABLE",
        "count: INT64",
        "correct: INT64",
        "accuracy: DOUBLE",
        "classes: ARRAY<STRING>",
        "precision: ARRAY<DOUBLE>",
        "recall: ARRAY<DOUBLE>",
        "macro_precision: DOUBLE",
        "macro_recall: DOUBLE",
        "confusion: ARRAY<ROW<actual: STRING, predicted: STRING, count: INT64>>",
        "unlabeled: INT64",
    ]
    p = beam.Pipeline()
    out = p | beam.Create(hand_made_rows()) | Evaluate("label")
    assert out.element_type == output_row_type()


def test_a_hand_made_set_gives_the_known_confusion_matrix():
    with beam.Pipeline() as p:
        out = p | beam.Create(hand_made_rows()) | Evaluate("label")
        assert_that(out | beam.Map(rounded), equal_to([rounded(HAND_MADE_RESULT)]))


def test_two_models_are_compared_in_one_pipeline():
    # Model "b" gets every labelled row right but has no unlabeled rows.
    b_rows = [row(l, l, "b") for l, _ in HAND_MADE]
    expected_b = EvaluationResult(
        model_id="b",
        count=8,
        correct=8,
        accuracy=1.0,
        classes=["bird", "cat", "dog"],
        precision=[1.0, 1.0, 1.0],
        recall=[1.0, 1.0, 1.0],
        macro_precision=1.0,
        macro_recall=1.0,
        confusion=[("bird", "bird", 1), ("cat", "cat", 4), ("dog", "dog", 3)],
        unlabeled=0,
    )
    with beam.Pipeline() as p:
        out = p | beam.Create(hand_made_rows("a") + b_rows) | Evaluate("label")
        assert_that(out | beam.Map(rounded), equal_to([rounded(HAND_MADE_RESULT), rounded(expected_b)]))


class Scored(typing.NamedTuple):
    truth: str
    guess: str
    variant: int


def test_fields_are_configurable_and_namedtuple_input_works():
    rows = [Scored("x", "x", 1), Scored("x", "y", 1), Scored("y", "y", 2)]
    with beam.Pipeline() as p:
        out = (
            p
            | beam.Create(rows).with_output_types(Scored)
            | Evaluate("truth", prediction_field="guess", model_id_field="variant")
        )
        assert_that(
            out | beam.Map(lambda r: (r.model_id, r.count, r.correct, list(r.classes))),
            equal_to([("1", 2, 1, ["x", "y"]), ("2", 1, 1, ["y"])]),
        )


def window_start(result, w=beam.DoFn.WindowParam):
    return (int(w.start), result.model_id, result.count, result.correct, result.unlabeled)


def test_results_are_per_window():
    events = [
        (10, row(1, 1.0)),
        (20, row(1, 2.0)),
        (30, row(None, 2.0)),
        (70, row(2, 2.0)),
        (80, row(2, 2.0, "b")),
        (130, row(3, 1.0)),
    ]
    with beam.Pipeline() as p:
        out = (
            p
            | beam.Create(events)
            | beam.MapTuple(lambda t, r: TimestampedValue(r, t))
            | beam.WindowInto(FixedWindows(60))
            | Evaluate("label")
        )
        assert_that(
            out | beam.Map(window_start),
            equal_to([(0, "a", 2, 1, 1), (60, "a", 1, 1, 0), (60, "b", 1, 1, 0), (120, "a", 1, 0, 0)]),
        )


def test_results_are_per_window_in_streaming():
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    stream = (
        test_stream.TestStream()
        .add_elements([TimestampedValue(("1", 1), 5), TimestampedValue(("2", 1), 15)])
        .advance_watermark_to(60)
        .add_elements([TimestampedValue(("3", 3), 65), TimestampedValue((None, 3), 70)])
        .advance_watermark_to(130)
        .add_elements([TimestampedValue(("4", 4.0), 125)])
        .advance_watermark_to_infinity()
    )
    with beam.Pipeline(options=options) as p:
        out = (
            p
            | stream
            | beam.MapTuple(lambda label, prediction: row(label, prediction))
            | beam.WindowInto(FixedWindows(60))
            | Evaluate("label")
        )
        assert_that(
            out | beam.Map(window_start),
            equal_to([(0, "a", 2, 1, 0), (60, "a", 1, 1, 1), (120, "a", 1, 1, 0)]),
        )


def test_null_and_nan_labels_or_predictions_are_counted_as_unlabeled():
    rows = [row(None, 1), row(float("nan"), 1), row(1, None), row(None, None), row(1, np.nan, "b"), row(2, 2.0, "b")]
    with beam.Pipeline() as p:
        out = p | beam.Create(rows) | Evaluate("label")
        assert_that(
            out | beam.Map(rounded),
            equal_to(
                [
                    # Only unlabeled rows: no classes, and every ratio without a denominator is 0.0.
                    rounded(EvaluationResult("a", 0, 0, 0.0, [], [], [], 0.0, 0.0, [], 4)),
                    rounded(EvaluationResult("b", 1, 1, 1.0, ["2"], [1.0], [1.0], 1.0, 1.0, [("2", "2", 1)], 1)),
                ]
            ),
        )


def test_rows_without_a_model_id_are_evaluated_under_a_null_model_id():
    with beam.Pipeline() as p:
        schema = RowTypeConstraint.from_fields([("label", str), ("inference", str), ("model_id", typing.Optional[str])])
        rows = p | beam.Create([("x", "x"), ("x", "y")]) | beam.MapTuple(lambda l, i: row(l, i, None)).with_output_types(schema)
        out = rows | Evaluate("label")
        assert_that(out | beam.Map(lambda r: (r.model_id, r.count, r.correct)), equal_to([(None, 2, 1)]))


@pytest.mark.parametrize(
    "value, name",
    [
        (3, "3"),
        ("3", "3"),
        (3.0, "3"),
        (-0.0, "0"),
        (np.int64(3), "3"),
        (np.float32(3.0), "3"),
        (decimal.Decimal("3.00"), "3"),
        (np.array(3.0), "3"),
        (0.5, "0.5"),
        (np.float32(0.1), "0.1"),
        ("3.0", "3.0"),
        (" 3", " 3"),
        (True, "True"),
        (b"cat", "cat"),
        (float("inf"), "inf"),
        (None, None),
        (float("nan"), None),
        (np.float64("nan"), None),
    ],
)
def test_class_names(value, name):
    assert class_name(value) == name


def test_a_vector_is_not_a_class():
    with pytest.raises(TypeError, match=r"\[0.2, 0.8\] is a list, not a class label"):
        class_name([0.2, 0.8])


def test_integers_floats_and_strings_of_the_same_class_match_in_a_pipeline():
    rows = [row(3, 3.0), row("3", np.int64(3)), row(10, "10"), row(2, 2.5)]
    with beam.Pipeline() as p:
        out = p | beam.Create(rows) | Evaluate("label")
        assert_that(
            out | beam.Map(lambda r: (r.count, r.correct, list(r.classes), [tuple(c) for c in r.confusion])),
            equal_to([(4, 3, ["2", "2.5", "3", "10"], [("2", "2.5", 1), ("3", "3", 2), ("10", "10", 1)])]),
        )


def test_schemaless_input_works_and_names_a_missing_field_at_run_time():
    with beam.Pipeline() as p:
        rows = p | beam.Create([SimpleNamespace(label=1, inference=1, model_id="m")])
        assert_that(rows | Evaluate("label") | beam.Map(lambda r: (r.model_id, r.correct)), equal_to([("m", 1)]))
    with pytest.raises(Exception, match="label_field='truth' is not a field of the input row; available fields: label, inference, model_id"):
        with beam.Pipeline() as p:
            _ = p | beam.Create([SimpleNamespace(label=1, inference=1, model_id="m")]) | Evaluate("truth")


def test_accumulators_merge_to_the_same_counts_in_any_split():
    fn = ConfusionCountsFn()
    pairs = [(l, p) for l, p in HAND_MADE] + [(None, "cat"), ("dog", None)]
    whole = fn.add_inputs(fn.create_accumulator(), pairs)
    parts = [fn.add_inputs(fn.create_accumulator(), pairs[i::3]) for i in range(3)]
    merged = fn.merge_accumulators([fn.merge_accumulators(parts[:2]), parts[2], fn.create_accumulator()])
    assert merged == whole
    assert rounded(evaluation_result("a", fn.extract_output(merged))) == rounded(HAND_MADE_RESULT)


def test_in_pipeline_metrics_equal_scikit_learns_for_two_real_models(digits, digits_model, model_files, tmp_path):
    pixels, labels = digits
    tree = DecisionTreeClassifier(max_depth=6, random_state=0).fit(pixels[:600] / 16, labels[:600])
    tree_path = tmp_path / "tree.pkl"
    tree_path.write_bytes(pickle.dumps(tree))
    models = {"logreg": (digits_model, model_files["pickle"]), "tree": (tree, str(tree_path))}
    examples = pixels[600:] / 16
    truth = labels[600:]

    expected = []
    for model_id, (model, _) in models.items():
        predicted = model.predict(examples)
        classes = unique_labels(truth, predicted)
        matrix = confusion_matrix(truth, predicted, labels=classes)
        expected.append(
            (
                model_id,
                len(truth),
                int(np.sum(truth == predicted)),
                accuracy_score(truth, predicted),
                [str(c) for c in classes],
                precision_score(truth, predicted, average=None, zero_division=0).tolist(),
                recall_score(truth, predicted, average=None, zero_division=0).tolist(),
                round(precision_score(truth, predicted, average="macro", zero_division=0), 12),
                round(recall_score(truth, predicted, average="macro", zero_division=0), 12),
                [(str(a), str(p), int(matrix[i, j])) for i, a in enumerate(classes) for j, p in enumerate(classes) if matrix[i, j]],
            )
        )
    # Two models fail on different rows, so the comparison is not trivial.
    assert expected[0][2] != expected[1][2]

    # Rows as the Inference composite emits them (a DOUBLE inference from predict), with an
    # INT64 label joined on: 3.0 and 3 are the same class.
    scored = RowTypeConstraint.from_fields([("model_id", str), ("inference", float), ("label", int)])
    with beam.Pipeline() as p:
        keyed = p | beam.Create(list(enumerate(examples)))
        branches = []
        for model_id, (_, path) in models.items():
            branches.append(
                keyed
                | f"Run {model_id}" >> RunInference(KeyedModelHandler(SklearnModelHandlerNumpy(path)))
                | f"Label {model_id}"
                >> beam.MapTuple(
                    lambda key, result, model_id=model_id: beam.Row(
                        model_id=model_id, inference=float(result.inference), label=int(truth[key])
                    )
                ).with_output_types(scored)
            )
        out = branches | beam.Flatten() | Evaluate("label")
        assert_that(
            out
            | beam.Map(
                lambda r: (
                    r.model_id,
                    r.count,
                    r.correct,
                    r.accuracy,
                    list(r.classes),
                    list(r.precision),
                    list(r.recall),
                    round(r.macro_precision, 12),
                    round(r.macro_recall, 12),
                    [tuple(c) for c in r.confusion],
                )
            ),
            equal_to(expected),
        )


def test_urn_round_trip_gives_an_equivalent_transform():
    original = Evaluate("truth", prediction_field="guess", model_id_field="variant")
    urn, payload = original.to_runner_api_parameter(None)
    assert urn == EVALUATE_URN
    restored = Evaluate.from_runner_api_parameter(None, payload, None)
    assert isinstance(restored, Evaluate) and restored.config == original.config

    # Through Beam's registry, as an expansion service decodes it.
    proto = beam_runner_api_pb2.PTransform(
        unique_name="evaluate", spec=beam_runner_api_pb2.FunctionSpec(urn=urn, payload=payload.SerializeToString())
    )
    decoded = beam.PTransform.from_runner_api(proto, PipelineContext())
    assert isinstance(decoded, Evaluate) and decoded.config == EvaluateConfig("truth", "guess", "variant")


@pytest.mark.parametrize(
    "args, kwargs, message",
    [
        (("",), {}, "label_field must be a non-empty string, got ''"),
        ((None,), {}, "label_field must be a non-empty string, got None"),
        (("label",), {"prediction_field": " "}, "prediction_field must be a non-empty string, got ' '"),
        (("label",), {"model_id_field": ""}, "model_id_field must be a non-empty string, got ''"),
        (("inference",), {}, "label_field and prediction_field are both 'inference'"),
    ],
)
def test_invalid_configuration_fails_at_construction(args, kwargs, message):
    with pytest.raises(ValueError) as error:
        Evaluate(*args, **kwargs)
    assert message in str(error.value)


def test_from_config_names_missing_and_unknown_fields():
    class Partial:
        _fields = ("label_field", "colour")

    with pytest.raises(ValueError, match=r"missing fields \['model_id_field', 'prediction_field'\], unknown fields \['colour'\]"):
        Evaluate.from_config(Partial())


@pytest.mark.parametrize(
    "transform, message",
    [
        (Evaluate("truth"), "label_field='truth' is not a field of the input schema; available fields: label, inference, scores, model_id"),
        (Evaluate("label", prediction_field="pred"), "prediction_field='pred' is not a field of the input schema"),
        (Evaluate("label", model_id_field="model"), "model_id_field='model' is not a field of the input schema"),
        (Evaluate("label", prediction_field="scores"), "prediction_field='scores' has type typing.Sequence[float]; allowed: a string, integer, float or boolean field"),
    ],
)
def test_input_schema_is_checked_at_construction(transform, message):
    schema = RowTypeConstraint.from_fields(
        [("label", int), ("inference", float), ("scores", typing.Sequence[float]), ("model_id", str)]
    )
    p = beam.Pipeline()
    rows = p | beam.Create([beam.Row(label=1, inference=1.0, scores=[1.0], model_id="m")]).with_output_types(schema)
    with pytest.raises(ValueError) as error:
        rows | transform
    assert message in str(error.value)


@pytest.fixture(scope="module")
def service():
    with expansion_service() as address:
        yield address


def test_the_expansion_service_serves_evaluate(service):
    urn, payload = Evaluate("label").to_runner_api_parameter(None)
    with beam.Pipeline() as p:
        out = p | beam.Create(hand_made_rows()) | ExternalTransform(urn, payload.SerializeToString(), service)
        assert_that(out | beam.Map(rounded), equal_to([rounded(HAND_MADE_RESULT)]))

    bad_urn, bad_payload = Evaluate("truth").to_runner_api_parameter(None)
    p = beam.Pipeline()
    rows = p | beam.Create(hand_made_rows())
    with pytest.raises(RuntimeError, match="label_field='truth' is not a field of the input schema; available fields: label, inference, model_id"):
        rows | ExternalTransform(bad_urn, bad_payload.SerializeToString(), service)


def test_output_schema_matches_the_golden_description_shared_with_java():
    golden = GOLDEN.with_name("evaluate_v1_output.schema")
    lines = [line for line in golden.read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert output_schema_description() == lines
