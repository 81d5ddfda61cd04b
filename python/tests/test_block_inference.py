"""BlockInference: the composite on Arrow record batches and on packed block Rows (the fast path)."""

import json
import pickle

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pytest
import torch
from apache_beam.testing.util import assert_that, equal_to
from sklearn.linear_model import LogisticRegression

import tiny_torch
from inferbridge import BlockInference, Inference, Model, Step
from inferbridge.policy import LoadPolicy


def record_batch(ids, pixels, **columns):
    """A RecordBatch of (id, pixels as fixed-size lists, *columns)."""
    pixels = np.asarray(pixels, dtype=np.float64)
    arrays = [pa.array(ids), pa.FixedSizeListArray.from_arrays(pa.array(pixels.ravel()), pixels.shape[1])]
    arrays += [pa.array(v) for v in columns.values()]
    return pa.RecordBatch.from_arrays(arrays, names=["id", "pixels", *columns])


def rows_of(batches):
    """Output blocks as sorted (key, inference, model_id, *passthrough) tuples."""
    rows = []
    for batch in batches:
        rows += [tuple(r.values()) for r in batch.to_pylist()]
    return sorted(rows, key=lambda r: (str(r[2]), r[0]))


def failures_of(failures):
    return sorted((f.stage, f.key, f.error_type) for f in failures)


# What the pipelines under test emitted; the DirectRunner runs in this process, and the
# collecting function is found by name, so its writes land here.
_COLLECTED: dict = {}


def _collect(values, name):
    _COLLECTED[name] = values


def collected(result):
    """Adds steps to gather ``result``'s outputs; call ``taken()`` after the pipeline ran."""
    _COLLECTED.clear()
    result.inferences | "Blocks" >> beam.combiners.ToList() | "KeepBlocks" >> beam.Map(_collect, "blocks")
    result.failures | "Failures" >> beam.combiners.ToList() | "KeepFailures" >> beam.Map(_collect, "failures")


def taken():
    return _COLLECTED["blocks"], _COLLECTED["failures"]


def run(blocks, transform):
    """Runs the blocks through ``transform``; returns (output blocks, failure Rows)."""
    with beam.Pipeline() as p:
        collected(p | beam.Create(blocks, reshuffle=False) | transform)
    return taken()


def test_blocks_give_the_models_own_predictions_with_passthrough(model_files, digits_model, held_out, trusting):
    pixels, labels = held_out
    blocks = [record_batch(list(range(0, 60)), pixels[:60], label=labels[:60].tolist())]
    blocks.append(pa.Table.from_batches([record_batch(list(range(60, 100)), pixels[60:], label=labels[60:].tolist())]))
    outputs, failures = run(
        blocks,
        BlockInference(
            Model.sklearn(model_files["pickle"]),
            key_field="id",
            feature_fields="pixels",
            passthrough_fields=["label"],
            preprocess=[Step("scale", factor=1 / 16)],
            policy=trusting,
        ),
    )
    assert failures == []
    assert outputs[0].schema.names == ["key", "inference", "model_id", "label"]
    assert outputs[0].schema.field("inference").type == pa.float64()
    expected = digits_model.predict(pixels / 16)
    model_id = Model.sklearn(model_files["pickle"]).id
    assert rows_of(outputs) == [(i, float(expected[i]), model_id, int(labels[i])) for i in range(100)]


def test_blocks_and_rows_agree_on_keyed_models_and_unmapped_keys(digits, held_out, tmp_path, as_rows):
    pixels, labels = digits
    paths = {}
    for name, rows in (("even", slice(0, 600, 2)), ("odd", slice(1, 600, 2))):
        paths[name] = str(tmp_path / f"{name}.pkl")
        with open(paths[name], "wb") as f:
            pickle.dump(LogisticRegression(max_iter=3000).fit(pixels[rows] / 16, labels[rows]), f)
    policy = LoadPolicy(trusted_roots=(str(tmp_path),))
    test_pixels, _ = held_out
    regions = ["north", "south", "east", "nowhere"] * 25
    config = dict(
        key_field="region",
        feature_fields="pixels",
        passthrough_fields=["id"],
        preprocess=[Step("scale", factor=1 / 16)],
        postprocess=[Step("argmax")],
        policy=policy,
    )
    models = [
        Model.sklearn(paths["even"], model_id="even", keys=["north", "south"], output="predict_proba"),
        Model.sklearn(paths["odd"], model_id="odd", keys=["east"], output="predict_proba"),
    ]
    block = pa.RecordBatch.from_arrays(
        [pa.array(regions), pa.array(test_pixels.tolist(), type=pa.list_(pa.float64())), pa.array(range(100))],
        names=["region", "pixels", "id"],
    )
    outputs, failures = run([block], BlockInference(models, max_models_per_worker=1, **config))
    rows = [beam.Row(id=i, region=regions[i], pixels=[float(v) for v in test_pixels[i]]) for i in range(100)]
    with beam.Pipeline() as p:
        result = p | beam.Create(rows) | Inference(models, max_models_per_worker=1, **config)
        assert_that(
            result.inferences | beam.Map(lambda r: (r.key, r.inference, r.model_id, r.id)),
            equal_to([r for r in rows_of(outputs)]),
        )
    assert {r[2] for r in rows_of(outputs)} == {"even", "odd"}
    assert len(rows_of(outputs)) == 75
    assert failures_of(failures) == [("routing", "nowhere", "UnmappedKey")] * 25
    assert "no model serves key 'nowhere'" in failures[0].message
    assert json.loads(failures[0].element)["region"] == "nowhere"


def test_every_bad_row_becomes_one_failure_and_the_rest_are_served(model_files, digits_model, held_out, trusting):
    pixels, _ = held_out
    poisoned = pixels[:10].copy()
    poisoned[3, 5] = np.nan  # scikit-learn refuses NaN: only this row may fail
    good = record_batch(list(range(10)), poisoned)
    holes = pa.RecordBatch.from_arrays(
        [
            pa.array([20, None, 22, 23]),
            pa.array([list(pixels[0]), list(pixels[1]), None, [1.0] * 63 + [None]], type=pa.list_(pa.float64())),
        ],
        names=["id", "pixels"],
    )
    missing = pa.RecordBatch.from_arrays([pa.array([30, 31])], names=["id"])
    outputs, failures = run(
        [good, holes, missing, "not a block"],
        BlockInference(
            Model.sklearn(model_files["pickle"]),
            key_field="id",
            feature_fields="pixels",
            preprocess=[Step("scale", factor=1 / 16)],
            policy=trusting,
        ),
    )
    served = rows_of(outputs)
    assert [r[0] for r in served] == [0, 1, 2, 4, 5, 6, 7, 8, 9, 20]
    expected = digits_model.predict(np.vstack([pixels[[0, 1, 2, 4, 5, 6, 7, 8, 9]], pixels[[0]]]) / 16)
    assert [r[1] for r in served] == expected.tolist()
    stages = sorted((f.stage, f.key or "-", f.message.split(";")[0].split(".")[0]) for f in failures)
    assert stages == [
        ("inference", "3", stages[0][2]),
        ("input", "-", "BlockInference takes pyarrow RecordBatch or Table elements"),
        ("input", "-", "key_field 'id' is null"),
        ("input", "22", "feature field 'pixels' is null"),
        ("input", "23", "feature field 'pixels' holds a null at position 63"),
        ("input", "30", "the block has no column 'pixels'"),
        ("input", "31", "the block has no column 'pixels'"),
    ]
    assert "NaN" in stages[0][2]
    # 10 + 4 + 2 rows and one element that is no block: every one accounted for once.
    assert len(served) + len(failures) == 17


@pytest.mark.parametrize("variable_length", ["bucket", "pad"])
def test_rows_of_different_lengths_are_bucketed_or_padded(tmp_path, variable_length):
    # A "model" that sums its inputs: padding with 100 shows in the result, bucketing does not.
    from sklearn.linear_model import LinearRegression

    path = tmp_path / "sum.pkl"
    with open(path, "wb") as f:
        model = LinearRegression().fit(np.eye(3), np.ones(3))
        model.coef_, model.intercept_ = np.ones(3), 0.0
        pickle.dump(model, f)
    models = [Model.sklearn(str(path))]
    if variable_length == "bucket":
        path2 = tmp_path / "sum2.pkl"
        model2 = LinearRegression().fit(np.eye(2), np.ones(2))
        model2.coef_, model2.intercept_ = np.ones(2), 0.0
        with open(path2, "wb") as f:
            pickle.dump(model2, f)
        # One model per length, chosen by key.
        models = [Model.sklearn(str(path), model_id="three", keys=["3"]), Model.sklearn(str(path2), model_id="two", keys=["2"])]
    block = pa.RecordBatch.from_arrays(
        [pa.array(["3", "2", "3"]), pa.array([[1.0, 2.0, 3.0], [4.0, 5.0], [6.0, 7.0, 8.0]])], names=["k", "x"]
    )
    outputs, failures = run(
        [block],
        BlockInference(
            models, key_field="k", feature_fields="x", variable_length=variable_length, pad_value=100.0,
            policy=LoadPolicy(trusted_roots=(str(tmp_path),)),
        ),
    )
    assert failures == []
    sums = sorted((r[0], round(r[1], 6)) for r in rows_of(outputs))
    assert sums == ([("2", 9.0), ("3", 6.0), ("3", 21.0)] if variable_length == "bucket" else [("2", 109.0), ("3", 6.0), ("3", 21.0)])


def test_numeric_columns_make_the_features(model_files, digits_model, held_out, trusting):
    pixels, _ = held_out
    columns = {f"p{j}": pixels[:20, j].tolist() for j in range(64)}
    block = pa.RecordBatch.from_arrays([pa.array(range(20)), *[pa.array(v) for v in columns.values()]], names=["id", *columns])
    outputs, failures = run(
        [block],
        BlockInference(
            Model.sklearn(model_files["pickle"]), key_field="id", feature_fields=list(columns),
            preprocess=[Step("scale", factor=1 / 16)], policy=trusting,
        ),
    )
    assert failures == []
    assert [r[1] for r in rows_of(outputs)] == digits_model.predict(pixels[:20] / 16).tolist()


def test_a_pytorch_network_gives_vectors(tmp_path, digits, held_out):
    pixels, labels = digits
    net = tiny_torch.train(pixels[:500] / 16, labels[:500])
    torch.save(net.state_dict(), tmp_path / "net.pt")
    test_pixels, _ = held_out
    outputs, failures = run(
        [record_batch(list(range(100)), test_pixels)],
        BlockInference(
            Model.pytorch(str(tmp_path / "net.pt"), model_class="tiny_torch:TinyNet"),
            key_field="id", feature_fields="pixels", preprocess=[Step("scale", factor=1 / 16)],
            postprocess=[Step("softmax")],
            policy=LoadPolicy(model_roots=(str(tmp_path),), allowed_model_classes=("tiny_torch",)),
        ),
    )
    assert failures == []
    assert outputs[0].schema.field("inference").type == pa.list_(pa.float64(), 10)
    with torch.no_grad():
        expected = torch.softmax(net(torch.tensor(test_pixels / 16, dtype=torch.float32)), dim=1).numpy()
    got = np.array([r[1] for r in rows_of(outputs)])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def packed(keys, matrix, **passthrough):
    matrix = np.asarray(matrix, dtype="<f8")
    return beam.Row(key=keys, features=matrix.tobytes(), feature_count=np.int32(matrix.shape[1]), **passthrough)


PACKED_TYPE = beam.typehints.row_type.RowTypeConstraint.from_fields(
    [("key", list[int]), ("features", bytes), ("feature_count", np.int32), ("label", list[str])]
)


def test_packed_block_rows_as_the_java_wrapper_sends_them(model_files, digits_model, held_out, trusting):
    pixels, labels = held_out
    blocks = [
        packed(list(range(50)), pixels[:50], label=[str(v) for v in labels[:50]]),
        packed(list(range(50, 100)), pixels[50:], label=[str(v) for v in labels[50:]]),
        beam.Row(key=[200, 201], features=b"\x00" * 24, feature_count=np.int32(64), label=["a", "b"]),
    ]
    with beam.Pipeline() as p:
        collected(
            p | beam.Create(blocks).with_output_types(PACKED_TYPE)
            | BlockInference(
                Model.sklearn(model_files["pickle"], output="predict_proba"),
                key_field="id", feature_fields="pixels", passthrough_fields=["label"],
                preprocess=[Step("scale", factor=1 / 16)], postprocess=[Step("argmax")], policy=trusting,
            )
        )
    outputs, failures = taken()
    keys, inferences, passthrough = [], [], []
    for block in outputs:
        assert block.inference_width == 1 and block.model_id
        keys += block.key
        inferences += np.frombuffer(block.inference, dtype="<i8").tolist()
        passthrough += block.label
    order = np.argsort(keys)
    assert np.array(keys)[order].tolist() == list(range(100))
    assert np.array(inferences)[order].tolist() == digits_model.predict(pixels / 16).tolist()
    assert np.array(passthrough)[order].tolist() == [str(v) for v in labels]
    assert sorted(f.key for f in failures) == ["200", "201"]
    assert "holds 24 feature bytes for 2 rows of feature_count=64" in failures[0].message


def test_packed_blocks_cannot_carry_maps(model_files, trusting):
    with pytest.raises(ValueError, match="the inference is a map after the postprocess steps, which packed blocks cannot carry"):
        with beam.Pipeline() as p:
            p | beam.Create([]).with_output_types(PACKED_TYPE) | BlockInference(
                Model.sklearn(model_files["pickle"], output="predict_proba"),
                key_field="id", feature_fields="pixels", passthrough_fields=["label"],
                postprocess=[Step("top_k", k=3)], policy=trusting,
            )
