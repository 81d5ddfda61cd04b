"""``model_updates`` in Beam's forms: ``ModelMetadata`` (what ``WatchFilePattern`` emits) and
``(model_id, ModelMetadata or uri)`` pairs, beside InferBridge's ``Row(model_id, uri)``; and a
normal keyed, refreshed pipeline that logs no warning.

Python's DirectRunner keeps every pane of a global-window side input, so each pipeline here
applies one update (see ``test_inference_streaming.refresh_stream``); its streaming mode reports
no metrics of the RunInference step (``model_reload_failures``), so the reload checks run batch.
"""

import hashlib
import logging
import os
import pathlib
import pickle
import shutil
import time
import typing
import warnings

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.ml.inference.base import ModelMetadata
from apache_beam.ml.inference.utils import WatchFilePattern  # before any model file is written
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.utils.timestamp import Timestamp
from sklearn.dummy import DummyClassifier
from sklearn.linear_model import LogisticRegression

from inferbridge import Inference, Model, Step
from inferbridge.policy import LoadPolicy
from test_inference_streaming import streaming_pipeline, two_models, updates_then_rows


class UriFirst(typing.NamedTuple):
    uri: str
    model_id: str


@pytest.fixture(scope="module")
def versions(digits, tmp_path_factory):
    """v1: a digits model; v2: always 7; elsewhere: v2 outside the policy's roots."""
    pixels, labels = digits
    root = tmp_path_factory.mktemp("updates")
    v1 = LogisticRegression(max_iter=3000).fit(pixels[:600] / 16, labels[:600])
    v2 = DummyClassifier(strategy="constant", constant=7).fit(pixels[:10], labels[:10])
    (root / "trusted").mkdir()
    paths = {"v1": root / "trusted" / "v1.pkl", "v2": root / "trusted" / "v2.pkl", "elsewhere": root / "v2.pkl"}
    for name, model in (("v1", v1), ("v2", v2), ("elsewhere", v2)):
        paths[name].write_bytes(pickle.dumps(model))
    return v1, {k: str(v) for k, v in paths.items()}, LoadPolicy(trusted_roots=(str(root / "trusted"),))


def _rows(pixels, n=10):
    return [beam.Row(id=i, group="ab"[i % 2], pixels=[float(v) for v in pixels[i]]) for i in range(n)]


def _one_model(paths, policy, streams, **model):
    return streams["rows"] | Inference(
        Model.sklearn(paths["v1"], model_id="digits", **model),
        key_field="id",
        feature_fields="pixels",
        preprocess=[Step("scale", factor=1 / 16)],
        model_updates=streams["updates"],
        policy=policy,
    )


def _counter(result, name):
    counters = result.metrics().query(MetricsFilter().with_name(name))["counters"]
    return sum(c.committed for c in counters)


@pytest.mark.parametrize(
    "updates",
    [
        pytest.param(lambda paths: [ModelMetadata(model_id=paths["v2"], model_name="v2")], id="model_metadata"),
        # WatchFilePattern's "no newer file" (an empty model_id) is skipped, not rejected.
        pytest.param(
            lambda paths: [ModelMetadata(model_id="", model_name=""), ModelMetadata(model_id=paths["v2"], model_name="v2")],
            id="no_newer_file_then_model_metadata",
        ),
        pytest.param(lambda paths: [("digits", ModelMetadata(model_id=paths["v2"], model_name="v2"))], id="keyed_model_metadata"),
    ],
)
def test_a_model_metadata_update_replaces_the_only_model(versions, held_out, updates):
    v1, paths, policy = versions
    pixels, _ = held_out
    assert sorted(set(v1.predict(pixels[:10] / 16))) != [7]
    with streaming_pipeline() as p:
        result = _one_model(paths, policy, updates_then_rows(p, updates(paths), _rows(pixels)))
        assert_that(
            result.inferences | beam.Map(lambda r: (int(r.key), r.inference, r.model_id)),
            equal_to([(i, 7.0, "digits") for i in range(10)]),
        )
        assert_that(result.failures, equal_to([]), label="NoFailures")
    assert _counter(p.result, "model_updates_rejected") == 0


@pytest.mark.parametrize(
    "update",
    [
        pytest.param(lambda paths: ("b", ModelMetadata(model_id=paths["v2"], model_name="v2")), id="keyed_model_metadata"),
        pytest.param(lambda paths: ("b", paths["v2"]), id="keyed_uri"),
        # A Row whose fields come in another order (as a cross-language Row may) is read by name.
        pytest.param(lambda paths: UriFirst(uri=paths["v2"], model_id="b"), id="row_with_uri_first"),
        # Among several models, a bare ModelMetadata names its model by model_name.
        pytest.param(lambda paths: ModelMetadata(model_id=paths["v2"], model_name="b"), id="model_metadata_named_b"),
    ],
)
def test_a_keyed_update_replaces_one_of_two_models(versions, held_out, update):
    v1, paths, policy = versions
    pixels, _ = held_out
    before = v1.predict(pixels[:10] / 16)
    with streaming_pipeline() as p:
        result = two_models(Inference, updates_then_rows(p, [update(paths)], _rows(pixels)), paths, policy)
        assert_that(
            result.inferences | beam.Map(lambda r: (r.id, r.model_id, r.inference)),
            equal_to([(i, "ab"[i % 2], float(before[i]) if i % 2 == 0 else 7.0) for i in range(10)]),
        )
    assert _counter(p.result, "model_updates_rejected") == 0


@pytest.mark.parametrize(
    "updates, message",
    [
        # Two models, and a ModelMetadata whose model_name is neither: ambiguous, logged once.
        pytest.param(
            lambda paths: [ModelMetadata(model_id=paths["v2"], model_name="v2"), ModelMetadata(model_id=paths["v2"], model_name="v3")],
            "a bare ModelMetadata names no model",
            id="ambiguous_model_metadata",
        ),
        pytest.param(lambda paths: [("c", ModelMetadata(model_id=paths["v2"], model_name="v2"))], "as its first item", id="unknown_model_id"),
        pytest.param(lambda paths: [("b", "")], "must be a non-empty string", id="empty_uri"),
        pytest.param(lambda paths: [("b", 7)], "must be a non-empty string", id="not_a_uri"),
    ],
)
def test_a_rejected_update_is_counted_and_the_old_models_serve(versions, held_out, caplog, updates, message):
    v1, paths, policy = versions
    pixels, _ = held_out
    rejected = updates(paths)
    before = v1.predict(pixels[:10] / 16)
    with streaming_pipeline() as p:
        result = two_models(Inference, updates_then_rows(p, rejected, _rows(pixels)), paths, policy)
        assert_that(
            result.inferences | beam.Map(lambda r: (r.id, r.inference)),
            equal_to([(i, float(before[i])) for i in range(10)]),
        )
    assert _counter(p.result, "model_updates_rejected") == len(rejected)
    logged = [r for r in caplog.records if r.name == "inferbridge.model_slots" and "rejected" in r.getMessage()]
    assert len(logged) == 1 and message in logged[0].getMessage(), [r.getMessage() for r in logged]


def test_a_model_metadata_update_is_checked_like_every_update(versions, held_out, caplog):
    """A file outside the policy's roots, or that fails the model's sha256 pin, is refused when it
    loads, as a Row update's file is: counted as a reload failure, and the old model serves."""
    v1, paths, policy = versions
    pixels, _ = held_out
    expected = v1.predict(pixels[:10] / 16)
    pin = hashlib.sha256(pathlib.Path(paths["v1"]).read_bytes()).hexdigest()
    for update, model in (
        (ModelMetadata(model_id=paths["elsewhere"], model_name="v2"), {}),
        (ModelMetadata(model_id=paths["v2"], model_name="v2"), {"sha256": pin}),
    ):
        caplog.clear()
        # A batch pipeline: the streaming DirectRunner reports no metrics of the RunInference step.
        with beam.Pipeline() as p:
            streams = {"rows": p | "Rows" >> beam.Create(_rows(pixels)), "updates": p | "Updates" >> beam.Create([update])}
            result = _one_model(paths, policy, streams, **model)
            assert_that(
                result.inferences | beam.Map(lambda r: (int(r.key), r.inference)),
                equal_to([(i, float(expected[i])) for i in range(10)]),
            )
        assert _counter(p.result, "model_reload_failures") == 1
        assert _counter(p.result, "model_updates_rejected") == 0
        assert any("loading the update" in r.getMessage() and update.model_id in r.getMessage() for r in caplog.records)


def test_watch_file_pattern_replaces_the_model(versions, held_out, tmp_path):
    """Beam's own WatchFilePattern, bounded by its stop_timestamp, in a batch DirectRunner pipeline.

    WatchFilePattern emits the files changed since Beam's inference utilities were imported:
    the file published here, as ``ModelMetadata(model_id=path, model_name=stem)``; an older file
    in the folder becomes its "no newer file" ``ModelMetadata('', '')``, skipped.

    One poll: the DirectRunner gives the side input one copy of each value per poll (Beam's own
    RunInference then fails the same way: "PCollection of size N with more than one element
    accessed as a singleton view"). WatchFilePattern polls from MatchContinuously's default
    start_timestamp, the time ``apache_beam.io.fileio`` was imported (a default argument), so an
    interval shorter than the test session so far would poll once per interval since then.
    """
    v1, paths, _ = versions
    pixels, _ = held_out
    folder = tmp_path / "watched"
    folder.mkdir()
    old = folder / "model-0.pkl"
    shutil.copyfile(paths["v1"], old)
    os.utime(old, (time.time() - 3600,) * 2)
    shutil.copyfile(paths["v2"], folder / "model-1.pkl")
    policy = LoadPolicy(trusted_roots=(os.path.dirname(paths["v1"]), str(folder)))
    with beam.Pipeline() as p:
        updates = p | WatchFilePattern(str(folder / "model-*.pkl"), interval=24 * 3600, stop_timestamp=Timestamp.now() + 0.5)
        result = p | beam.Create(_rows(pixels)) | Inference(
            Model.sklearn(paths["v1"], model_id="digits"),
            key_field="id",
            feature_fields="pixels",
            preprocess=[Step("scale", factor=1 / 16)],
            model_updates=updates,
            policy=policy,
        )
        assert_that(result.inferences | beam.Map(lambda r: (int(r.key), r.inference)), equal_to([(i, 7.0) for i in range(10)]))
    assert _counter(p.result, "model_updates_rejected") == 0


# The one warning a normal run may log, Beam's own: BatchElements with max_batch_duration_secs
# keys its stateful batching with a per-process string it gives no type hint, and Beam's ParDo
# then warns that the key coder of that stateful DoFn "may not be deterministic" (Beam's
# RunInference logs it for any handler with max_batch_duration_secs; InferBridge cannot type a
# step inside Beam's BatchElements).
_BEAM_BATCH_DURATION_WARNING = (
    "Key coder FastPrimitivesCoder for transform <ParDo(PTransform) label=[ParDo(_StatefulBatchElementsDoFn)]> "
    "with stateful DoFn may not be deterministic."
)


@pytest.mark.parametrize(
    "batching, allowed",
    [
        pytest.param({"min_batch_size": 2, "max_batch_size": 8}, (), id="batch_sizes"),
        pytest.param({"max_batch_size": 8, "max_batch_duration_secs": 0.5}, (_BEAM_BATCH_DURATION_WARNING,), id="batch_duration"),
    ],
)
def test_a_keyed_refreshed_pipeline_logs_no_warning(versions, held_out, caplog, batching, allowed):
    """Several keyed models, batching options, a default model and a model update: no log record
    at WARNING or above and no Python warning, from InferBridge or Beam, building or running
    (but for ``allowed``, Beam's own)."""
    v1, paths, policy = versions
    pixels, _ = held_out
    before = v1.predict(pixels[:12] / 16)
    rows = [beam.Row(id=i, group="abc"[i % 3], pixels=[float(v) for v in pixels[i]]) for i in range(12)]
    caplog.set_level(logging.INFO)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with streaming_pipeline() as p:
            streams = updates_then_rows(p, [("b", ModelMetadata(model_id=paths["v2"], model_name="v2"))], rows)
            result = streams["rows"] | Inference(
                [
                    Model.sklearn(paths["v1"], model_id="a", keys=["a"]),
                    Model.sklearn(paths["v1"], model_id="b", keys=["b"]),
                    Model.sklearn(paths["v1"], model_id="rest"),
                ],
                key_field="group",
                feature_fields="pixels",
                passthrough_fields=["id"],
                preprocess=[Step("scale", factor=1 / 16)],
                max_models_per_worker=2,
                **batching,
                model_updates=streams["updates"],
                policy=policy,
            )
            assert_that(
                result.inferences | beam.Map(lambda r: (r.id, r.model_id, r.inference)),
                equal_to([(i, {"a": "a", "b": "b", "c": "rest"}["abc"[i % 3]], 7.0 if i % 3 == 1 else float(before[i])) for i in range(12)]),
            )
    loud = [
        f"{r.levelname} {r.name}: {r.getMessage()}"
        for r in caplog.records
        if r.levelno >= logging.WARNING and not r.getMessage().startswith(allowed)
    ]
    assert loud == []
    assert [f"{w.category.__name__} {w.filename}:{w.lineno}: {w.message}" for w in caught] == []
