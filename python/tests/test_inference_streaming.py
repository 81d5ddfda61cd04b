"""Streaming: windows and late data pass through, and models are replaced mid-stream."""

import pickle

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing import test_stream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import window
from sklearn.dummy import DummyClassifier

from inferbridge import Inference, Model, Step
from inferbridge.policy import LoadPolicy


def streaming_pipeline():
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    return beam.Pipeline(options=options)


def row(i, pixels):
    return beam.Row(id=i, pixels=[float(v) for v in pixels])


class _WithWindow(beam.DoFn):
    def process(self, r, w=beam.DoFn.WindowParam, ts=beam.DoFn.TimestampParam):
        yield int(r.key), int(w.start), int(w.end), int(ts), r.inference


def test_windows_timestamps_and_late_rows_are_kept(model_files, digits_model, held_out, trusting):
    pixels, _ = held_out
    stream = (
        test_stream.TestStream()
        .add_elements([window.TimestampedValue(row(i, pixels[i]), i) for i in range(5)])
        .advance_watermark_to(15)
        .add_elements([window.TimestampedValue(row(i, pixels[i]), i) for i in range(10, 15)])
        .advance_watermark_to(30)
        # Late: its window [0, 10) closed when the watermark passed 10.
        .add_elements([window.TimestampedValue(row(99, pixels[99]), 7)])
        .advance_watermark_to_infinity()
    )
    expected = digits_model.predict(pixels / 16)
    with streaming_pipeline() as p:
        result = (
            p
            | stream
            | beam.WindowInto(window.FixedWindows(10), allowed_lateness=3600)
            | Inference(
                Model.sklearn(model_files["pickle"]),
                key_field="id",
                feature_fields="pixels",
                preprocess=[Step("scale", factor=1 / 16)],
                policy=trusting,
            )
        )
        ids = list(range(5)) + list(range(10, 15)) + [99]
        starts = {i: 0 if i < 10 or i == 99 else 10 for i in ids}
        stamps = {**{i: i for i in ids}, 99: 7}
        assert_that(
            result.inferences | beam.ParDo(_WithWindow()),
            equal_to([(i, starts[i], starts[i] + 10, stamps[i], float(expected[i])) for i in ids]),
        )


def test_stateful_batching_by_duration_in_streaming(model_files, digits_model, held_out, trusting, tmp_path):
    """Every row comes out of Beam's stateful batching, including the partial last batch.

    (Rows are collected by a side-effect sink: the last batch is flushed by the end-of-window
    timer, after the watermark has passed where assert_that would still accept it.)
    """
    pixels, _ = held_out
    stream = (
        test_stream.TestStream()
        .add_elements([window.TimestampedValue(row(i, pixels[i]), i) for i in range(20)])
        .advance_watermark_to(100)
        .advance_processing_time(5)
        .advance_processing_time(5)
        .advance_watermark_to_infinity()
    )
    seen = tmp_path / "seen"

    def record(r):
        with open(seen, "a") as f:
            f.write(f"{r.key} {r.inference}\n")

    with streaming_pipeline() as p:
        result = p | stream | Inference(
            Model.sklearn(model_files["pickle"]),
            key_field="id",
            feature_fields="pixels",
            preprocess=[Step("scale", factor=1 / 16)],
            max_batch_size=8,
            max_batch_duration_secs=0.5,
            policy=trusting,
        )
        _ = result.inferences | beam.Map(record)
    expected = digits_model.predict(pixels[:20] / 16)
    got = sorted((int(k), float(v)) for k, v in (line.split() for line in seen.read_text().splitlines()))
    assert got == [(i, float(v)) for i, v in enumerate(expected)]


@pytest.fixture(scope="module")
def versions(digits, tmp_path_factory):
    """v1: the digits model; v2: always 7; broken: not a model at all."""
    pixels, labels = digits
    root = tmp_path_factory.mktemp("versions")
    from sklearn.linear_model import LogisticRegression

    v1 = LogisticRegression(max_iter=3000).fit(pixels[:600] / 16, labels[:600])
    v2 = DummyClassifier(strategy="constant", constant=7).fit(pixels[:10], labels[:10])
    paths = {"v1": root / "v1.pkl", "v2": root / "v2.pkl", "broken": root / "broken.pkl"}
    paths["v1"].write_bytes(pickle.dumps(v1))
    paths["v2"].write_bytes(pickle.dumps(v2))
    paths["broken"].write_bytes(b"not a pickle")
    return v1, {k: str(v) for k, v in paths.items()}, LoadPolicy(trusted_roots=(str(root),))


def refresh_stream(pixels, update_uri):
    """Rows 0-4, then one model update, then rows 10-14.

    Python's DirectRunner holds rows back until the model-update side input has its first
    value, and it keeps every pane of a global-window side input instead of the latest, so a
    test pipeline sees exactly one update (real runners replace it on every update).
    """
    return (
        test_stream.TestStream()
        .add_elements([window.TimestampedValue(row(i, pixels[i]), 1) for i in range(5)], tag="rows")
        .advance_processing_time(10)
        .advance_watermark_to(5, tag="rows")
        .add_elements([window.TimestampedValue(beam.Row(model_id="digits", uri=update_uri), 6)], tag="updates")
        .advance_watermark_to(10, tag="updates")
        .advance_processing_time(10)
        .add_elements([window.TimestampedValue(row(i, pixels[i]), 11) for i in range(10, 15)], tag="rows")
        .advance_processing_time(10)
        .advance_watermark_to_infinity(tag="rows")
        .advance_watermark_to_infinity(tag="updates")
    )


def test_a_model_update_replaces_the_model_mid_stream(versions, held_out):
    v1, paths, policy = versions
    pixels, _ = held_out
    with streaming_pipeline() as p:
        streams = p | refresh_stream(pixels, paths["v2"])
        result = streams["rows"] | Inference(
            Model.sklearn(paths["v1"], model_id="digits"),
            key_field="id",
            feature_fields="pixels",
            preprocess=[Step("scale", factor=1 / 16)],
            model_updates=streams["updates"],
            policy=policy,
        )
        # v1 would predict these digits; the update (always 7) serves every row instead.
        assert sorted(set(v1.predict(pixels[:15] / 16))) != [7]
        assert_that(
            result.inferences | beam.Map(lambda r: (int(r.key), r.inference, r.model_id)),
            equal_to([(i, 7.0, "digits") for i in list(range(5)) + list(range(10, 15))]),
        )


def test_a_failed_reload_keeps_serving_the_previous_model(versions, held_out, caplog):
    v1, paths, policy = versions
    pixels, _ = held_out
    with streaming_pipeline() as p:
        streams = p | refresh_stream(pixels, paths["broken"])
        result = streams["rows"] | Inference(
            Model.sklearn(paths["v1"], model_id="digits"),
            key_field="id",
            feature_fields="pixels",
            preprocess=[Step("scale", factor=1 / 16)],
            model_updates=streams["updates"],
            policy=policy,
        )
        ids = list(range(5)) + list(range(10, 15))
        expected = v1.predict(pixels[ids] / 16)
        assert_that(
            result.inferences | beam.Map(lambda r: (int(r.key), r.inference)),
            equal_to([(i, float(v)) for i, v in zip(ids, expected)]),
        )
        assert_that(result.failures, equal_to([]), label="NoFailures")
    assert any("loading the update" in r.getMessage() and paths["broken"] in r.getMessage() for r in caplog.records)


def test_an_update_replaces_one_of_several_keyed_models(versions, held_out):
    v1, paths, policy = versions
    pixels, _ = held_out
    stream = (
        test_stream.TestStream()
        .add_elements([window.TimestampedValue(beam.Row(model_id="b", uri=paths["v2"]), 0)], tag="updates")
        .advance_watermark_to(1, tag="updates")
        .advance_processing_time(10)
        .add_elements([window.TimestampedValue(beam.Row(id=i, group="ab"[i % 2], pixels=[float(v) for v in pixels[i]]), 1) for i in range(10)], tag="rows")
        .advance_processing_time(10)
        .advance_watermark_to_infinity(tag="rows")
        .advance_watermark_to_infinity(tag="updates")
    )
    with streaming_pipeline() as p:
        streams = p | stream
        result = streams["rows"] | Inference(
            [Model.sklearn(paths["v1"], model_id="a", keys=["a"]), Model.sklearn(paths["v1"], model_id="b", keys=["b"])],
            key_field="group",
            feature_fields="pixels",
            passthrough_fields=["id"],
            preprocess=[Step("scale", factor=1 / 16)],
            model_updates=streams["updates"],
            policy=policy,
        )
        before = v1.predict(pixels[:10] / 16)
        assert_that(
            result.inferences | beam.Map(lambda r: (r.id, r.model_id, r.inference)),
            equal_to([(i, "ab"[i % 2], float(before[i]) if i % 2 == 0 else 7.0) for i in range(10)]),
        )


def test_a_watched_pattern_feeds_the_model_updates(versions):
    """The watch runs until the pipeline stops, so this checks the wiring, not a live swap."""
    _, paths, policy = versions
    p = streaming_pipeline()
    rows = p | beam.Create([row(0, [0.0] * 64)])
    _ = rows | Inference(
        Model.sklearn(paths["v1"], model_id="digits", watch_pattern=paths["v1"].replace("v1", "v*")),
        key_field="id",
        feature_fields="pixels",
        watch_interval_secs=5,
        policy=policy,
    )
    names = [t.unique_name for t in p.to_runner_api().components.transforms.values()]
    assert any(name.endswith("Watch0") for name in names)
    assert any(name.endswith("LatestModelPaths") for name in names)


def _block_rows(batch):
    return [(r["id"], r["model_id"], r["inference"]) for r in batch.to_pylist()]


def test_an_update_replaces_one_of_several_keyed_models_in_blocks(versions, held_out):
    import pyarrow as pa

    from inferbridge import BlockInference

    v1, paths, policy = versions
    pixels, _ = held_out
    block = pa.RecordBatch.from_arrays(
        [pa.array(range(10)), pa.array(["ab"[i % 2] for i in range(10)]), pa.array((pixels[:10]).tolist())],
        names=["id", "group", "pixels"],
    )
    stream = (
        test_stream.TestStream()
        .add_elements([window.TimestampedValue(beam.Row(model_id="b", uri=paths["v2"]), 0)], tag="updates")
        .advance_watermark_to(1, tag="updates")
        .advance_processing_time(10)
        .add_elements([window.TimestampedValue(block, 1)], tag="rows")
        .advance_processing_time(10)
        .advance_watermark_to_infinity(tag="rows")
        .advance_watermark_to_infinity(tag="updates")
    )
    with streaming_pipeline() as p:
        streams = p | stream
        result = streams["rows"] | BlockInference(
            [Model.sklearn(paths["v1"], model_id="a", keys=["a"]), Model.sklearn(paths["v1"], model_id="b", keys=["b"])],
            key_field="group",
            feature_fields="pixels",
            passthrough_fields=["id"],
            preprocess=[Step("scale", factor=1 / 16)],
            model_updates=streams["updates"],
            policy=policy,
        )
        before = v1.predict(pixels[:10] / 16)
        assert_that(
            result.inferences | beam.FlatMap(_block_rows),
            equal_to([(i, "ab"[i % 2], float(before[i]) if i % 2 == 0 else 7.0) for i in range(10)]),
        )
