"""Streaming: windows and late data pass through, and models are replaced mid-stream."""

import os
import pickle
import shutil
import time

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing import test_stream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import window
from sklearn.dummy import DummyClassifier

from inferbridge import Inference, Model, Step
from inferbridge.policy import LoadPolicy


def streaming_pipeline():
    options = PipelineOptions(flags=[])  # not the test runner's command line
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


def updates_then_rows(p, updates, rows):
    """The model updates (event time 0), then the rows once the updates' watermark has passed."""
    stream = (
        test_stream.TestStream()
        .add_elements([window.TimestampedValue(u, 0) for u in updates], tag="updates")
        .advance_watermark_to(1, tag="updates")
        .advance_processing_time(10)
        .add_elements([window.TimestampedValue(r, 1) for r in rows], tag="rows")
        .advance_processing_time(10)
        .advance_watermark_to_infinity(tag="rows")
        .advance_watermark_to_infinity(tag="updates")
    )
    return p | stream


def two_models(composite, streams, paths, policy):
    """``composite`` (Inference or BlockInference) with models "a" and "b" (both v1) for the
    groups "a" and "b", refreshed by the "updates" stream."""
    return streams["rows"] | composite(
        [Model.sklearn(paths["v1"], model_id="a", keys=["a"]), Model.sklearn(paths["v1"], model_id="b", keys=["b"])],
        key_field="group",
        feature_fields="pixels",
        passthrough_fields=["id"],
        preprocess=[Step("scale", factor=1 / 16)],
        model_updates=streams["updates"],
        policy=policy,
    )


def _update_b_then(p, composite, elements, paths, policy):
    """``two_models`` over ``elements`` that arrive after an update replaces model "b" with v2."""
    streams = updates_then_rows(p, [beam.Row(model_id="b", uri=paths["v2"])], elements)
    return two_models(composite, streams, paths, policy)


def test_an_update_replaces_one_of_several_keyed_models(versions, held_out):
    v1, paths, policy = versions
    pixels, _ = held_out
    rows = [beam.Row(id=i, group="ab"[i % 2], pixels=[float(v) for v in pixels[i]]) for i in range(10)]
    with streaming_pipeline() as p:
        result = _update_b_then(p, Inference, rows, paths, policy)
        before = v1.predict(pixels[:10] / 16)
        assert_that(
            result.inferences | beam.Map(lambda r: (r.id, r.model_id, r.inference)),
            equal_to([(i, "ab"[i % 2], float(before[i]) if i % 2 == 0 else 7.0) for i in range(10)]),
        )


class _PublishAt(beam.DoFn):
    """Passes rows through; before row ``at`` it publishes a new model file into the watched folder."""

    def __init__(self, at, source, target):
        self._at, self._source, self._target = at, source, target

    def process(self, element):
        if _row_id(element) == self._at:
            shutil.copyfile(self._source, self._target)
            later = os.stat(self._source).st_mtime + 60  # newer than every file already there
            os.utime(self._target, (later, later))
            time.sleep(0.05)  # longer than the watch interval
        yield element


def _row_id(element):
    return element.column("id")[0].as_py() if hasattr(element, "column") else element.id


def _watched_folder(paths, tmp_path):
    folder = tmp_path / "watched"
    folder.mkdir()
    shutil.copyfile(paths["v1"], folder / "model-1.pkl")
    return folder


def _watched_run(p, composite, elements, at, published, folder):
    """``composite`` (Inference or BlockInference) over ``elements``, one per batch, watching
    ``folder``; before element ``at`` passes, ``published`` becomes the folder's newest file."""
    return (
        p
        | beam.Create([elements])
        | beam.FlatMap(lambda all_elements: all_elements)
        | beam.ParDo(_PublishAt(at, published, folder / "model-2.pkl"))
        | composite(
            Model.sklearn(str(folder / "model-1.pkl"), model_id="digits", watch_pattern=str(folder / "model-*.pkl")),
            key_field="id",
            feature_fields="pixels",
            preprocess=[Step("scale", factor=1 / 16)],
            watch_interval_secs=0.01,
            min_batch_size=1,
            max_batch_size=1,
            policy=LoadPolicy(trusted_roots=(str(folder),)),
        )
    )


def test_a_newer_file_of_the_watch_pattern_replaces_the_model_mid_run(versions, held_out, tmp_path):
    """Each worker checks the pattern itself (no side input): rows before the new file get v1, rows after it v2."""
    v1, paths, _ = versions
    pixels, _ = held_out
    folder = _watched_folder(paths, tmp_path)
    with beam.Pipeline() as p:
        result = _watched_run(p, Inference, [row(i, pixels[i]) for i in range(10)], 5, paths["v2"], folder)
        served = result.inferences | beam.Map(lambda r: (r.key, r.inference))
        # Beam's BatchElements sends a batch when the next row arrives, so row 4 may meet either model.
        before = v1.predict(pixels[:4] / 16)
        assert_that(
            served | beam.Filter(lambda kv: kv[0] != 4),
            equal_to([(i, float(before[i])) for i in range(4)] + [(i, 7.0) for i in range(5, 10)]),
        )
        assert_that(
            served | beam.Filter(lambda kv: kv[0] == 4) | beam.Map(lambda kv: kv[1] in (float(v1.predict(pixels[4:5] / 16)[0]), 7.0)),
            equal_to([True]),
            label="Row4",
        )


def test_a_watched_file_that_fails_to_load_keeps_the_model(versions, held_out, tmp_path):
    v1, paths, _ = versions
    pixels, _ = held_out
    folder = _watched_folder(paths, tmp_path)
    with beam.Pipeline() as p:
        result = _watched_run(p, Inference, [row(i, pixels[i]) for i in range(6)], 3, paths["broken"], folder)
        expected = v1.predict(pixels[:6] / 16)
        assert_that(result.inferences | beam.Map(lambda r: (r.key, r.inference)), equal_to([(i, float(expected[i])) for i in range(6)]))
        assert_that(result.failures, equal_to([]), label="NoFailures")
    reloads = p.result.metrics().query(MetricsFilter().with_name("model_reload_failures"))["counters"]
    assert sum(c.committed for c in reloads) == 1


def test_a_newer_watched_file_replaces_the_model_in_blocks(versions, held_out, tmp_path):
    import pyarrow as pa

    from inferbridge import BlockInference

    v1, paths, _ = versions
    pixels, _ = held_out
    folder = _watched_folder(paths, tmp_path)
    blocks = [
        pa.record_batch({"id": [i], "pixels": [[float(v) for v in pixels[i]]]}) for i in range(6)
    ]
    with beam.Pipeline() as p:
        result = _watched_run(p, BlockInference, blocks, 3, paths["v2"], folder)
        before = v1.predict(pixels[:2] / 16)
        served = result.inferences | beam.FlatMap(lambda b: [(r["key"], r["inference"]) for r in b.to_pylist()])
        # As with rows, block 2 is sent when block 3 arrives, and may meet either model.
        assert_that(
            served | beam.Filter(lambda kv: kv[0] != 2),
            equal_to([(i, int(before[i])) for i in range(2)] + [(i, 7) for i in range(3, 6)]),
        )


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
    with streaming_pipeline() as p:
        result = _update_b_then(p, BlockInference, [block], paths, policy)
        before = v1.predict(pixels[:10] / 16)
        assert_that(
            result.inferences | beam.FlatMap(_block_rows),
            equal_to([(i, "ab"[i % 2], float(before[i]) if i % 2 == 0 else 7.0) for i in range(10)]),
        )
