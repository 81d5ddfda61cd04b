"""Rows gathered into blocks: what the rows path keeps of each row is enough to read it as numpy
reads it, and to describe it, exactly, when it fails after its block was read."""

import json
import pickle

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import window
from sklearn.dummy import DummyRegressor

from inferbridge import Inference, Model
from inferbridge.engine import describe_element
from inferbridge.policy import LoadPolicy
from test_inference_failures import _RaisesOnNegative


def _picky_model(tmp_path, width=4):
    path = tmp_path / "picky.pkl"
    path.write_bytes(pickle.dumps(_RaisesOnNegative(DummyRegressor(constant=1.0, strategy="constant").fit(np.zeros((1, width)), [0.0]))))
    return Model.sklearn(str(path)), LoadPolicy(trusted_roots=(str(tmp_path),))


# Failing rows whose JSON is not that of their features as floats (integers, numpy scalars, a
# numeric string), rows that cannot be read, and (in several_fields) rows with their fields in
# another order, a field the composite does not read, or without the features.
_BAD = [
    (beam.Row(id=100, x=[-1, 2, 3, 4]), "inference"),
    (beam.Row(id=101, x=[np.float64(-1.5), np.float32(2.0), np.int64(3), True]), "inference"),
    (beam.Row(id=102, x=["-1.5", 2.0, 3.0, 4.0]), "inference"),
    (beam.Row(id=103, x=None), "input"),
    (beam.Row(id=104, x=[1.0, None, 3.0, 4.0]), "input"),
]
_OTHER_FIELDS = [
    (beam.Row(x=[1.0, -2.0, 3.0, 4.0], id=105), "inference"),
    (beam.Row(id=106, x=[-1.0, 2.0, 3.0, 4.0], note={"a": [1, 2]}), "inference"),
    (beam.Row(id=107), "input"),
]


@pytest.mark.parametrize("several_fields", [False, True])
def test_rows_failing_after_their_block_was_read_are_described_as_they_came(tmp_path, several_fields):
    model, policy = _picky_model(tmp_path)
    # Enough rows for the rows path to keep some of them by field before the block is full.
    good = [beam.Row(id=i, x=[1.0, 2.0, 3.0, float(i)]) for i in range(600)]
    bad = _BAD + (_OTHER_FIELDS if several_fields else [])
    block = list(good)
    for n, (row, _) in enumerate(bad):
        block.insert(n * 70, row)
    with beam.Pipeline() as p:
        # One bundle, one block.
        result = p | beam.Create([block]) | beam.FlatMap(lambda b: b) | Inference(
            model, key_field="id", feature_fields="x", policy=policy
        )
        assert_that(
            result.failures | beam.Map(lambda f: (f.key, f.stage, f.element)),
            equal_to([(str(row.id), stage, describe_element(row)) for row, stage in bad]),
        )
        assert_that(
            result.inferences | beam.Map(lambda r: (str(r.key), r.example)),
            equal_to([(str(r.id), r.x) for r in good]),
            label="Served",
        )


_FEATURES = [
    [1, 2, 3],
    [True, False, 2.5],
    ["1.5", "1_000", " 2 "],
    [np.float64(0.1), np.float32(0.1), np.int64(7)],
]


@pytest.mark.parametrize("features", [_FEATURES, [*_FEATURES, (4.0, 5.0, 6.0), np.array([7.0, 8.0, 9.0])]], ids=["lists", "sequences"])
def test_features_are_read_as_numpy_reads_them(tmp_path, features):
    model, policy = _picky_model(tmp_path, width=3)
    rows = [beam.Row(id=i, x=x) for i, x in enumerate(features)]
    with beam.Pipeline() as p:
        result = p | beam.Create([rows]) | beam.FlatMap(lambda b: b) | Inference(
            model, key_field="id", feature_fields="x", policy=policy
        )
        assert_that(
            result.inferences | beam.Map(lambda r: (str(r.key), r.example)),
            equal_to([(str(i), np.asarray(x, dtype=np.float64).tolist()) for i, x in enumerate(features)]),
        )


class _SumsRows:
    def predict(self, x):
        return x.reshape(len(x), -1).sum(axis=1)


def test_rows_of_nested_lists_are_read_whole(tmp_path):
    path = tmp_path / "sum.pkl"
    path.write_bytes(pickle.dumps(_SumsRows()))
    rows = [beam.Row(id=i, grid=[[float(i), 1.0], [2.0, 3.0]]) for i in range(3)]
    with beam.Pipeline() as p:
        result = p | beam.Create(rows) | Inference(
            Model.sklearn(str(path)), key_field="id", feature_fields="grid", policy=LoadPolicy(trusted_roots=(str(tmp_path),))
        )
        assert_that(
            result.inferences | beam.Map(lambda r: (r.key, r.example, r.inference)),
            equal_to([(i, [float(i), 1.0, 2.0, 3.0], float(i) + 6.0) for i in range(3)]),
        )


def test_rows_in_several_windows_fail_with_their_description_in_each(tmp_path):
    model, policy = _picky_model(tmp_path)
    rows = [beam.Row(id=i, x=[1.0, 2.0, 3.0, -4.0 if i == 3 else 4.0]) for i in range(6)]

    class _Where(beam.DoFn):
        def process(self, f, w=beam.DoFn.WindowParam, ts=beam.DoFn.TimestampParam):
            yield f.key, f.stage, json.loads(f.element)["id"], int(w.start), int(ts)

    with beam.Pipeline() as p:
        result = (
            p
            | beam.Create(rows)
            | beam.Map(lambda r: window.TimestampedValue(r, r.id))
            | beam.WindowInto(window.SlidingWindows(10, 5))
            | Inference(model, key_field="id", feature_fields="x", policy=policy)
        )
        assert_that(result.failures | beam.ParDo(_Where()), equal_to([("3", "inference", 3, -5, 3), ("3", "inference", 3, 0, 3)]))
        assert_that(result.inferences | beam.Map(lambda r: str(r.key)), equal_to([str(i) for i in range(6) if i != 3] * 2), label="Served")
