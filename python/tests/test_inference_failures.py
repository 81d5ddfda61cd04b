"""Nothing is lost: every input row leaves as one inference or one failure with its reason."""

import dataclasses
import json
import re
import typing

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pytest
from apache_beam.testing.util import assert_that, equal_to

from inferbridge import BlockInference, Inference, Model, Step

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def good(i, pixels):
    return beam.Row(id=i, pixels=[float(v) for v in pixels])


def test_conservation_with_every_kind_of_bad_row(model_files, digits_model, held_out, trusting):
    pixels, _ = held_out
    rows = [good(i, pixels[i]) for i in range(40)]
    bad = {
        100: (beam.Row(id=100, pixels=None), "input"),  # null features
        101: (beam.Row(id=101, pixels=[float(v) for v in pixels[1][:63]]), "inference"),  # wrong shape
        102: (beam.Row(id=102, pixels=[float("nan")] * 64), "inference"),  # NaN: the model raises
        103: (beam.Row(id=103, pixels=[1.0] * 70), "inference"),  # wrong shape again, its own bucket
    }
    rows += [row for row, _ in bad.values()]
    rows.append(beam.Row(id=None, pixels=[1.0] * 64))  # null key
    expected = digits_model.predict(pixels[:40] / 16)
    with beam.Pipeline() as p:
        result = p | beam.Create(rows) | Inference(
            Model.sklearn(model_files["pickle"], model_id="digits"),
            key_field="id",
            feature_fields="pixels",
            preprocess=[Step("scale", factor=1 / 16)],
            # One batch for everything: the bad rows must not take the good ones down with them.
            min_batch_size=len(rows),
            max_batch_size=len(rows),
            policy=trusting,
        )
        assert_that(
            result.inferences | beam.Map(lambda r: (r.key, r.inference)),
            equal_to([(i, float(v)) for i, v in enumerate(expected)]),
        )
        assert_that(
            result.failures | beam.Map(lambda f: (f.key, f.stage)),
            equal_to([(str(k), stage) for k, (_, stage) in bad.items()] + [(None, "input")]),
            label="FailureStages",
        )


def test_failure_rows_explain_what_went_wrong(model_files, held_out, trusting):
    pixels, _ = held_out
    with beam.Pipeline() as p:
        result = p | beam.Create([beam.Row(id=7, pixels=[float(v) for v in pixels[0][:10]])]) | Inference(
            Model.sklearn(model_files["pickle"], model_id="digits"), key_field="id", feature_fields="pixels", policy=trusting
        )

        def check(failures):
            (f,) = failures
            assert (f.stage, f.step, f.error_type, f.key, f.model_id) == ("inference", None, "ValueError", "7", "digits")
            assert "10 features" in f.message and "64" in f.message
            assert json.loads(f.element) == {"id": 7, "pixels": [float(v) for v in pixels[0][:10]]}

        assert_that(result.failures, check)


@dataclasses.dataclass
class Reading:
    id: int
    pixels: typing.List[float]
    note: str


def test_a_dataclass_element_is_described_by_its_fields(model_files, held_out, trusting):
    pixels, _ = held_out
    bad = Reading(2, [], "empty")
    with beam.Pipeline() as p:
        result = p | beam.Create([Reading(1, [float(v) for v in pixels[0]], "ok"), bad]).with_output_types(Reading) | Inference(
            Model.sklearn(model_files["pickle"], model_id="digits"), key_field="id", feature_fields="pixels",
            passthrough_fields=["note"], policy=trusting,
        )
        assert_that(result.inferences | beam.Map(lambda r: (r.key, r.note)), equal_to([(1, "ok")]))
        assert_that(
            result.failures | beam.Map(lambda f: (f.key, json.loads(f.element))),
            equal_to([("2", {"id": 2, "pixels": [], "note": "empty"})]),
            label="Failures",
        )


def strict_json(text):
    """``text`` parsed as RFC 8259 JSON: Python's own parser would accept NaN and Infinity."""

    def refuse(token):
        raise ValueError(f"not strict JSON: {token}")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("layout", ["rows", "arrow"])
def test_failure_elements_are_strict_json_with_non_finite_numbers_as_strings(model_files, held_out, trusting, layout):
    pixels, _ = held_out
    bad = [float(v) for v in pixels[0]]
    bad[:3] = [float("nan"), float("inf"), float("-inf")]
    rows = [beam.Row(id=1, pixels=bad, weight=float("nan"), blob=b"\x00\xff")]
    if layout == "rows":
        source, transform = beam.Create(rows), Inference
    else:
        batch = pa.RecordBatch.from_pylist([r.as_dict() for r in rows])
        source, transform = beam.Create([batch]), BlockInference
    with beam.Pipeline() as p:
        result = p | source | transform(
            Model.sklearn(model_files["pickle"]), key_field="id", feature_fields="pixels", policy=trusting
        )
        assert_that(
            result.failures | beam.Map(lambda f: (f.stage, strict_json(f.element))),
            equal_to([("inference", {"id": 1, "pixels": ["NaN", "Infinity", "-Infinity", *bad[3:]], "weight": "NaN", "blob": "00ff"})]),
        )


@pytest.mark.parametrize("layout", ["rows", "arrow"])
def test_nulls_inside_and_empty_feature_arrays_are_input_failures(model_files, digits_model, held_out, trusting, layout):
    pixels, _ = held_out
    good = [float(v) for v in pixels[0]]
    holed = list(good)
    holed[5] = None
    rows = [beam.Row(id=0, pixels=good), beam.Row(id=1, pixels=holed), beam.Row(id=2, pixels=[])]
    if layout == "rows":
        source, transform = beam.Create(rows), Inference
        served = beam.Map(lambda r: (r.key, r.inference))
    else:
        batch = pa.RecordBatch.from_pylist([r.as_dict() for r in rows], schema=pa.schema([("id", pa.int64()), ("pixels", pa.list_(pa.float64()))]))
        source, transform = beam.Create([batch]), BlockInference
        served = beam.FlatMap(lambda b: zip(b.column("key").to_pylist(), b.column("inference").to_pylist()))
    with beam.Pipeline() as p:
        result = p | source | transform(
            Model.sklearn(model_files["pickle"]), key_field="id", feature_fields="pixels", policy=trusting
        )
        assert_that(
            result.inferences | served,
            equal_to([(0, float(digits_model.predict(np.asarray([good]))[0]))]),
        )
        assert_that(
            result.failures | beam.Map(lambda f: (f.stage, f.key, f.message, strict_json(f.element)["pixels"])),
            equal_to(
                [
                    ("input", "1", "feature field 'pixels' holds a null at position 5; allowed: numbers", holed),
                    ("input", "2", "feature field 'pixels' is empty; allowed: at least one number", []),
                ]
            ),
            label="Failures",
        )


def test_a_null_inside_a_nested_array_is_named_by_its_index_path(model_files, trusting):
    rows = [beam.Row(id=1, grid=[[1.0, 2.0], [3.0, None]])]
    with beam.Pipeline() as p:
        result = p | beam.Create(rows) | Inference(Model.sklearn(model_files["pickle"]), key_field="id", feature_fields="grid", policy=trusting)
        assert_that(
            result.failures | beam.Map(lambda f: (f.stage, f.message)),
            equal_to([("input", "feature field 'grid' holds a null at position [1][1]; allowed: numbers")]),
        )


def test_a_failing_step_fails_only_its_element(model_files, digits_model, held_out, trusting):
    pixels, _ = held_out
    names = NAMES[:5]  # digits 5-9 have no name: 'labels' fails for them

    def reject_blank(x):
        if not x.any():
            raise ValueError("blank image")
        return x

    rows = [good(i, pixels[i]) for i in range(30)] + [beam.Row(id=500, pixels=[0.0] * 64)]
    predicted = digits_model.predict(pixels[:30] / 16).astype(int)
    with beam.Pipeline() as p:
        result = p | beam.Create(rows) | Inference(
            Model.sklearn(model_files["pickle"]),
            key_field="id",
            feature_fields="pixels",
            preprocess=[reject_blank, Step("scale", factor=1 / 16)],
            postprocess=[Step("round"), Step("labels", names=names)],
            policy=trusting,
        )
        assert_that(
            result.inferences | beam.Map(lambda r: (r.key, r.inference)),
            equal_to([(i, names[v]) for i, v in enumerate(predicted) if v < 5]),
        )
        assert_that(
            result.failures | beam.Map(lambda f: (f.key, f.stage, f.step)),
            equal_to([("500", "preprocess", "reject_blank")] + [(str(i), "postprocess", "labels") for i, v in enumerate(predicted) if v >= 5]),
            label="Failures",
        )


class _RaisesOnNegative:
    """A real scikit-learn-style model that fails any batch holding a negative value."""

    def __init__(self, model):
        self._model = model

    def predict(self, x):
        if (x < 0).any():
            raise ArithmeticError("negative pixel")
        return self._model.predict(x)


def test_a_model_failure_is_isolated_to_the_bad_examples(digits_model, held_out, tmp_path):
    import pickle

    from inferbridge.policy import LoadPolicy

    path = tmp_path / "picky.pkl"
    path.write_bytes(pickle.dumps(_RaisesOnNegative(digits_model)))
    pixels, _ = held_out
    rows = [good(i, pixels[i]) for i in range(64)]
    for i in (5, 6, 40):
        rows[i] = beam.Row(id=i, pixels=[-1.0] * 64)
    expected = digits_model.predict(pixels[:64] / 16)
    p = beam.Pipeline()
    result = p | beam.Create(rows) | Inference(
        Model.sklearn(str(path), model_id="picky"),
        key_field="id",
        feature_fields="pixels",
        preprocess=[Step("scale", factor=1 / 16)],
        min_batch_size=64,
        max_batch_size=64,
        policy=LoadPolicy(trusted_roots=(str(tmp_path),)),
    )
    assert_that(
        result.inferences | beam.Map(lambda r: (r.key, r.inference)),
        equal_to([(i, float(v)) for i, v in enumerate(expected) if i not in (5, 6, 40)]),
    )
    assert_that(
        result.failures | beam.Map(lambda f: (f.key, f.stage, f.error_type, f.message)),
        equal_to([(str(i), "inference", "ArithmeticError", "negative pixel") for i in (5, 6, 40)]),
        label="Failures",
    )
    run = p.run()
    run.wait_until_finish()
    counters = {c.key.metric.name: c.committed for c in run.metrics().query()["counters"] if c.key.metric.namespace == "InferBridge"}
    assert counters["model_picky_failed_examples"] == 3
    assert counters["model_picky_batch_splits"] >= 3


@pytest.mark.parametrize("layout", ["rows", "blocks"])
def test_a_model_file_that_does_not_load_fails_its_rows_and_the_other_model_serves(
    model_files, digits_model, held_out, tmp_path, layout
):
    """A joblib file given as a pickle, and a pickle of something that is no model: their rows
    are failures naming the file, the format and what failed; the good model serves its rows,
    and each broken file is read once, not once per batch."""
    import pickle
    import shutil

    from inferbridge.policy import LoadPolicy

    shutil.copy(model_files["joblib"], tmp_path / "saved-with-joblib.pkl")
    (tmp_path / "not-a-model.pkl").write_bytes(pickle.dumps({"weights": [1, 2]}))
    shutil.copy(model_files["pickle"], tmp_path / "good.pkl")
    models = [
        Model.sklearn(str(tmp_path / "good.pkl"), model_id="good", keys=["good"]),
        Model.sklearn(str(tmp_path / "saved-with-joblib.pkl"), model_id="joblib", keys=["joblib"]),
        Model.sklearn(str(tmp_path / "not-a-model.pkl"), model_id="dict", keys=["dict"]),
    ]
    pixels, _ = held_out
    variants = ["good", "joblib", "dict"]
    rows = [beam.Row(id=i, variant=variants[i % 3], pixels=[float(v) for v in pixels[i]]) for i in range(60)]
    if layout == "blocks":
        elements = [pa.RecordBatch.from_pylist([r.as_dict() for r in rows[i : i + 10]]) for i in range(0, 60, 10)]
        composite = BlockInference
    else:
        elements, composite = rows, Inference
    expected = digits_model.predict(pixels[:60] / 16)
    p = beam.Pipeline()
    result = p | beam.Create(elements) | composite(
        models,
        key_field="variant",
        feature_fields="pixels",
        passthrough_fields=["id"],
        preprocess=[Step("scale", factor=1 / 16)],
        max_batch_size=6,  # several batches: a broken file is not read again for each
        policy=LoadPolicy(trusted_roots=(str(tmp_path),)),
    )
    served = result.inferences
    if layout == "blocks":
        served = served | beam.FlatMap(lambda b: b.to_pylist()) | beam.Map(lambda d: beam.Row(**d))
    assert_that(
        served | beam.Map(lambda r: (r.id, r.model_id, r.inference)),
        equal_to([(i, "good", float(expected[i])) for i in range(0, 60, 3)]),
    )
    assert_that(
        # (the byte pickle stops at is pickle's own business)
        result.failures
        | beam.Map(lambda f: (f.key, f.stage, f.model_id, f.error_type, re.sub(r"load key, '.*?'", "load key", f.message))),
        equal_to(
            [
                (
                    "joblib", "inference", "joblib", "ModelLoadError",
                    f"models[1].uri={str(tmp_path / 'saved-with-joblib.pkl')!r} could not be loaded as sklearn "
                    f"format 'pickle': UnpicklingError: invalid load key.; a file saved with "
                    "joblib.dump needs format 'joblib' (Java: SklearnModel.joblib)",
                )
            ] * 20
            + [
                (
                    "dict", "inference", "dict", "ModelLoadError",
                    f"models[2].uri={str(tmp_path / 'not-a-model.pkl')!r} could not be loaded as sklearn format "
                    "'pickle': TypeError: the file holds a builtins.dict, which has no predict() method; allowed: "
                    "a scikit-learn model (or any object) with predict()",
                )
            ] * 20
        ),
        label="Failures",
    )
    run = p.run()
    run.wait_until_finish()
    counters = {c.key.metric.name: c.committed for c in run.metrics().query()["counters"] if c.key.metric.namespace == "InferBridge"}
    assert counters["model_load_failures"] == 2
    assert counters["model_joblib_failed_examples"] == counters["model_dict_failed_examples"] == 20
    assert counters["model_good_examples"] == 20


def test_a_classifier_with_text_classes_says_how_to_get_its_labels_and_that_way_works(digits, held_out, tmp_path):
    """output='predict' is a number: a classifier whose classes are text fails its rows saying
    what to use instead, and what it says gives the classifier's own labels."""
    import pickle

    from sklearn.linear_model import LogisticRegression

    from inferbridge.policy import LoadPolicy

    pixels, labels = digits
    named = LogisticRegression(max_iter=3000).fit(pixels[:600] / 16, np.array(NAMES)[labels[:600]])
    path = tmp_path / "named.pkl"
    path.write_bytes(pickle.dumps(named))
    test_pixels, _ = held_out
    rows = [good(i, test_pixels[i]) for i in range(5)]
    policy = LoadPolicy(trusted_roots=(str(tmp_path),))
    common = dict(key_field="id", feature_fields="pixels", preprocess=[Step("scale", factor=1 / 16)], policy=policy)
    with beam.Pipeline() as p:
        created = p | beam.Create(rows)
        wrong = created | "Predict" >> Inference(Model.sklearn(str(path)), **common)
        right = created | "Labels" >> Inference(
            Model.sklearn(str(path), output="predict_proba"),
            postprocess=[Step("argmax"), Step("labels", names=[str(c) for c in named.classes_])],
            **common,
        )
        assert_that(wrong.inferences, equal_to([]), label="NoNumbers")
        assert_that(
            wrong.failures | beam.Map(lambda f: (f.stage, f.message.split("could not be loaded as sklearn format 'pickle': ")[1])),
            equal_to(
                [
                    (
                        "inference",
                        "TypeError: the classifier's classes are not numbers, and output='predict' gives a number; "
                        "allowed: output='predict_proba' with postprocess=[Step('argmax'), Step('labels', names="
                        f"{[str(c) for c in named.classes_]!r})], which gives the labels",
                    )
                ]
                * 5
            ),
            label="SaysHow",
        )
        assert_that(
            right.inferences | beam.Map(lambda r: (r.key, r.inference)),
            equal_to([(i, str(v)) for i, v in enumerate(named.predict(test_pixels[:5] / 16))]),
            label="Labels",
        )


def test_misbehaving_steps_fail_their_elements_instead_of_the_bundle(model_files, digits_model, held_out, trusting):
    pixels, _ = held_out
    rows = [good(i, pixels[i]) for i in range(6)]
    predicted = digits_model.predict_proba(pixels[:6] / 16).argmax(axis=1)

    def scale_to_list(x):
        return [v / 16 for v in x]  # a list, not an array: still fine

    cases = {
        "scalar": Step.custom(lambda v: np.argmax(v), produces="integer", batched=True),
        "short": Step.custom(lambda v: np.argmax(v, axis=-1)[:-1], produces="integer", batched=True),
    }
    with beam.Pipeline() as p:
        created = p | beam.Create(rows)
        for name, step in cases.items():
            result = created | name >> Inference(
                Model.sklearn(model_files["pickle"], output="predict_proba"),
                key_field="id",
                feature_fields="pixels",
                preprocess=[scale_to_list],
                postprocess=[step],
                policy=trusting,
            )
            assert_that(result.inferences, equal_to([]), label=f"{name}NoInferences")
            assert_that(
                result.failures | f"{name}Stages" >> beam.Map(lambda f: (f.key, f.stage, f.step)),
                equal_to([(str(i), "postprocess", "<lambda>") for i in range(6)]),
                label=f"{name}Failures",
            )
        fine = created | "fine" >> Inference(
            Model.sklearn(model_files["pickle"], output="predict_proba"),
            key_field="id",
            feature_fields="pixels",
            preprocess=[scale_to_list],
            postprocess=[Step("argmax")],
            policy=trusting,
        )
        assert_that(fine.inferences | "FineValues" >> beam.Map(lambda r: (r.key, r.inference)), equal_to(list(enumerate(predicted.tolist()))), label="Fine")


class Digit(typing.NamedTuple):
    id: typing.Optional[str]
    pixels: typing.Sequence[float]
    tags: typing.Mapping[bytes, int]


def test_nullable_key_fields_from_typing_optional(model_files, digits_model, held_out, trusting):
    pixels, _ = held_out
    rows = [Digit(str(i), [float(v) for v in pixels[i]], {b"k": 1}) for i in range(3)] + [Digit(None, [0.0] * 64, {b"k": 1})]
    with beam.Pipeline() as p:
        result = p | beam.Create(rows).with_output_types(Digit) | Inference(
            Model.sklearn(model_files["pickle"]),
            key_field="id",
            feature_fields="pixels",
            preprocess=[Step("scale", factor=1 / 16)],
            policy=trusting,
        )
        expected = digits_model.predict(pixels[:3] / 16)
        assert_that(result.inferences | beam.Map(lambda r: (r.key, r.inference)), equal_to([(str(i), float(v)) for i, v in enumerate(expected)]))
        assert_that(
            result.failures | beam.Map(lambda f: (f.stage, f.message, strict_json(f.element)["tags"])),
            equal_to([("input", "key_field 'id' is null", {"6b": 1})]),
            label="NullKey",
        )


def test_rows_decoded_by_beam_are_read_by_field_and_a_bad_one_fails_alone(model_files, digits_model, held_out, trusting):
    # Rows after a reshuffle are the NamedTuple type Beam makes for their schema (as are Rows from
    # Java); the resource hint makes the runner move blocks between stages, pickled. 300 rows:
    # more than one part of gathered rows; row 150 holds no number where a pixel should be.
    pixels, _ = held_out
    schema = beam.typehints.row_type.RowTypeConstraint.from_fields(
        [("id", int), ("pixels", typing.Sequence[typing.Optional[float]]), ("site", str)]
    )
    rows = [beam.Row(id=i, pixels=[float(v) for v in pixels[i % len(pixels)]], site=f"site-{i % 3}") for i in range(300)]
    rows[150] = beam.Row(id=150, pixels=[None] * 64, site="site-0")
    served = [i for i in range(300) if i != 150]
    expected = digits_model.predict(np.stack([pixels[i % len(pixels)] for i in served]) / 16)
    with beam.Pipeline() as p:
        decoded = p | beam.Create(rows).with_output_types(schema) | beam.Reshuffle()
        result = decoded | Inference(
            Model.sklearn(model_files["pickle"]),
            key_field="id",
            feature_fields="pixels",
            passthrough_fields=["site"],
            preprocess=[Step("scale", factor=1 / 16)],
            max_batch_size=200,
            min_ram="1GB",
            policy=trusting,
        )
        assert_that(
            result.inferences | beam.Map(lambda r: (r.key, r.inference, r.site)),
            equal_to([(i, float(v), f"site-{i % 3}") for i, v in zip(served, expected)]),
        )
        assert_that(
            result.failures | beam.Map(lambda f: (f.stage, f.key, strict_json(f.element)["site"], f.message)),
            equal_to([("input", "150", "site-0", "feature field 'pixels' holds a null at position 0; allowed: numbers")]),
            label="Failures",
        )
