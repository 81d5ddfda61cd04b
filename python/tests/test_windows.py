"""Windowed input: every row is served, or fails, exactly once in each of its windows, with its
own timestamp, on rows and on blocks, whatever the batch sizes."""

import apache_beam as beam
import pyarrow as pa
import pytest
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import window

from inferbridge import BlockInference, Inference, Model, Step
from inferbridge.engine import BlockModels, default_batch_rows
from inferbridge.spec import InferenceSpec

# Rows that fail: no pixels (read in the composite's first step), NaN (refused by the model).
_NO_PIXELS, _NAN = 7, 18
_STAGES = {_NO_PIXELS: "input", _NAN: "inference"}


def _sliding_starts(timestamp, size=10, period=5):
    """The starts of the sliding windows (size, period) that hold ``timestamp``."""
    return list(range(timestamp - timestamp % period - size + period, timestamp + 1, period))


def _config(model_files, trusting, batching):
    return dict(
        models=Model.sklearn(model_files["pickle"]),
        key_field="id",
        feature_fields="pixels",
        preprocess=[Step("scale", factor=1 / 16)],
        policy=trusting,
        **batching,
    )


class _InWindow(beam.DoFn):
    """(window start, window end, timestamp, *item) for each item ``items`` finds in an element."""

    def __init__(self, items):
        self._items = items

    def process(self, element, w=beam.DoFn.WindowParam, ts=beam.DoFn.TimestampParam):
        for item in self._items(element):
            yield (int(w.start), int(w.end), int(ts), *item)


def _inference(row):
    return [(row.key, row.inference)]


def _block_inferences(block):
    return zip(block.column("key").to_pylist(), block.column("inference").to_pylist())


def _failure(failure):
    return [(failure.key, failure.stage)]


def _rows(pixels):
    """Rows of (id, pixels); with a row without pixels their schema is unknown: keys are strings."""
    rows = [beam.Row(id=i, pixels=[float(v) for v in pixels[i]]) for i in range(len(pixels))]
    rows[_NO_PIXELS] = beam.Row(id=_NO_PIXELS, pixels=None)
    rows[_NAN] = beam.Row(id=_NAN, pixels=[float("nan")] * 64)
    return rows


@pytest.mark.parametrize(
    "batching",
    [{"max_batch_size": 4}, {"min_batch_size": 4, "max_batch_size": 4}, {"min_batch_size": 1, "max_batch_size": 4}, {}],
    ids=["max", "fixed", "range", "default"],
)
def test_rows_in_sliding_windows_are_served_once_per_window(model_files, digits_model, held_out, trusting, batching):
    pixels, _ = held_out
    pixels = pixels[:30]
    expected = digits_model.predict(pixels / 16)
    with beam.Pipeline() as p:
        result = (
            p
            | beam.Create(_rows(pixels))
            | beam.Map(lambda r: window.TimestampedValue(r, r.id))
            | beam.WindowInto(window.SlidingWindows(10, 5))
            | Inference(**_config(model_files, trusting, batching))
        )
        assert_that(
            result.inferences | "Served" >> beam.ParDo(_InWindow(_inference)),
            equal_to(
                [
                    (start, start + 10, i, str(i), float(expected[i]))
                    for i in range(30)
                    if i not in _STAGES
                    for start in _sliding_starts(i)
                ]
            ),
        )
        assert_that(
            result.failures | "Failed" >> beam.ParDo(_InWindow(_failure)),
            equal_to([(start, start + 10, i, str(i), stage) for i, stage in _STAGES.items() for start in _sliding_starts(i)]),
            label="Failures",
        )


def test_rows_in_many_fixed_windows_with_only_max_batch_size(model_files, digits_model, held_out, trusting):
    """One block per window and more: Beam's adaptive batching used to fail on such input."""
    pixels, _ = held_out
    expected = digits_model.predict(pixels / 16)
    with beam.Pipeline() as p:
        result = (
            p
            | beam.Create(_rows(pixels))
            | beam.Map(lambda r: window.TimestampedValue(r, r.id))
            | beam.WindowInto(window.FixedWindows(5))
            | Inference(**_config(model_files, trusting, {"max_batch_size": 4}))
        )
        assert_that(
            result.inferences | "Served" >> beam.ParDo(_InWindow(_inference)),
            equal_to([(i - i % 5, i - i % 5 + 5, i, str(i), float(expected[i])) for i in range(len(pixels)) if i not in _STAGES]),
        )
        assert_that(
            result.failures | "Failed" >> beam.ParDo(_InWindow(_failure)),
            equal_to([(i - i % 5, i - i % 5 + 5, i, str(i), stage) for i, stage in _STAGES.items()]),
            label="Failures",
        )


def _record_batch(ids, pixels):
    features = [None if i == _NO_PIXELS else [float(v) for v in pixels[i]] for i in ids]
    if _NAN in ids:
        features[ids.index(_NAN)] = [float("nan")] * 64
    return pa.RecordBatch.from_arrays([pa.array(ids), pa.array(features, type=pa.list_(pa.float64()))], names=["id", "pixels"])


@pytest.mark.parametrize(
    "batching", [{"max_batch_size": 4}, {"min_batch_size": 1, "max_batch_size": 8}, {}], ids=["max", "range", "default"]
)
def test_blocks_in_sliding_windows_are_served_once_per_window(model_files, digits_model, held_out, trusting, batching):
    """Blocks of 5 rows, block k at time 5k + 2: each in two windows, served in both."""
    pixels, _ = held_out
    pixels = pixels[:30]
    expected = digits_model.predict(pixels / 16)
    blocks = [(5 * k + 2, _record_batch(list(range(5 * k, 5 * k + 5)), pixels)) for k in range(6)]

    def time_of(i):
        return i - i % 5 + 2

    with beam.Pipeline() as p:
        result = (
            p
            | beam.Create(blocks, reshuffle=False)
            | beam.Map(lambda b: window.TimestampedValue(b[1], b[0]))
            | beam.WindowInto(window.SlidingWindows(10, 5))
            | BlockInference(**_config(model_files, trusting, batching))
        )
        assert_that(
            result.inferences | "Served" >> beam.ParDo(_InWindow(_block_inferences)),
            equal_to(
                [
                    (start, start + 10, time_of(i), i, float(expected[i]))
                    for i in range(30)
                    if i not in _STAGES
                    for start in _sliding_starts(time_of(i))
                ]
            ),
        )
        assert_that(
            result.failures | "Failed" >> beam.ParDo(_InWindow(_failure)),
            equal_to(
                [(start, start + 10, time_of(i), str(i), stage) for i, stage in _STAGES.items() for start in _sliding_starts(time_of(i))]
            ),
            label="Failures",
        )


@pytest.mark.parametrize(
    "batching, rows",
    [
        ({"max_batch_size": 4}, 4),
        ({"min_batch_size": 2, "max_batch_size": 8}, 8),
        ({"min_batch_size": 5000}, 5000),
        ({"min_batch_size": 2}, None),
        ({}, None),
    ],
)
def test_batches_hold_a_fixed_number_of_rows(model_files, trusting, batching, rows):
    """Beam's adaptive sizing takes no block bigger than its aim: batch sizes are fixed."""
    spec = InferenceSpec(key_field="id", feature_fields="x", models=Model.sklearn(model_files["pickle"]), **batching)
    rows = rows or default_batch_rows(spec)
    kwargs = BlockModels(spec, trusting).batch_elements_kwargs()
    assert (kwargs["min_batch_size"], kwargs["max_batch_size"]) == (rows, rows)

