"""Rows and blocks run one engine: the same failures, the same batch bound, the same metrics.

Each test runs the same rows through ``Inference`` (one Row per element) and ``BlockInference``
(Arrow record batches) on the DirectRunner, with a tiny model trained here whose output names
its row: a linear regression that sums the features.
"""

from __future__ import annotations

import pickle

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pytest
from apache_beam.metrics.metric import MetricsFilter
from inferbridge import BlockInference, Inference, Model, Step
from inferbridge.policy import LoadPolicy
from sklearn.linear_model import LinearRegression

NAMESPACE = "OneEngine"


@pytest.fixture(scope="module")
def summing(tmp_path_factory):
    """A model that answers the sum of its two features, and a policy that trusts it."""
    root = tmp_path_factory.mktemp("summing")
    model = LinearRegression().fit(np.eye(2), np.ones(2))
    model.coef_, model.intercept_ = np.ones(2), 0.0
    path = root / "sum.pkl"
    path.write_bytes(pickle.dumps(model))
    return str(path), LoadPolicy(trusted_roots=(str(root),))


def _rows(count: int) -> list[beam.Row]:
    return [beam.Row(id=i, x=[float(i), 0.0]) for i in range(count)]


def _block(rows: list[beam.Row]) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays(
        [pa.array([r.id for r in rows]), pa.array([r.x for r in rows], type=pa.list_(pa.float64()))], names=["id", "x"]
    )


# What the pipelines under test emitted; the DirectRunner runs in this process, and the
# collecting function is found by name, so its writes land here.
_COLLECTED: dict = {}


def _collect(values, name):
    _COLLECTED[name] = values


def _pairs(block):
    return zip(block.column("key").to_pylist(), block.column("inference").to_pylist())


def _run(as_blocks: bool, rows: list[beam.Row], transform_args: dict):
    """Runs ``rows`` (as Rows, or as one record batch) and returns (served (key, inference)
    pairs, failures as (stage, step, key, message), counters by name, distributions by name)."""
    _COLLECTED.clear()
    with beam.Pipeline() as p:
        composite = BlockInference if as_blocks else Inference
        elements = p | beam.Create([_block(rows)] if as_blocks else rows, reshuffle=False)
        result = elements | composite(key_field="id", feature_fields="x", metrics_namespace=NAMESPACE, **transform_args)
        if as_blocks:
            pairs = result.inferences | "Pairs" >> beam.FlatMap(_pairs)
        else:
            pairs = result.inferences | "Pairs" >> beam.Map(lambda r: (r.key, r.inference))
        pairs | "Served" >> beam.combiners.ToList() | "KeepServed" >> beam.Map(_collect, "served")
        (
            result.failures
            | "Described" >> beam.Map(lambda f: (f.stage, f.step, f.key, f.message))
            | "Failures" >> beam.combiners.ToList()
            | "KeepFailures" >> beam.Map(_collect, "failures")
        )
    metrics = p.result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))
    counters = {c.key.metric.name: c.committed for c in metrics["counters"]}
    _COLLECTED["beam_counters"] = {
        c.key.metric.name: c.committed for c in p.result.metrics().query(MetricsFilter().with_namespace(f"{NAMESPACE}_beam"))["counters"]
    }
    sizes = {d.key.metric.name: d.committed for d in metrics["distributions"]}
    return sorted(_COLLECTED["served"]), sorted(_COLLECTED["failures"]), counters, sizes


def _picky(value: float):
    """A postprocess step that fails on 3, answers text for 4, and keeps every other number."""
    if value == 3.0:
        raise ValueError("three is refused")
    return "four" if value == 4.0 else value


@pytest.mark.parametrize("as_blocks", [False, True], ids=["rows", "blocks"])
def test_a_failing_step_and_a_wrong_kind_in_one_batch_fail_only_their_rows(summing, as_blocks):
    path, policy = summing
    served, failures, _, _ = _run(
        as_blocks,
        _rows(10),
        dict(models=Model.sklearn(path), postprocess=[Step.custom(_picky, produces="number")], policy=policy),
    )
    assert served == [(i, float(i)) for i in range(10) if i not in (3, 4)]
    assert [(stage, step, key) for stage, step, key, _ in failures] == [("output", None, "4"), ("postprocess", "_picky", "3")]
    assert "three is refused" in failures[1][3]
    assert "'four'" in failures[0][3] and "number" in failures[0][3]


@pytest.mark.parametrize("as_blocks", [False, True], ids=["rows", "blocks"])
def test_max_batch_size_bounds_every_model_call(summing, as_blocks):
    path, policy = summing
    served, failures, counters, sizes = _run(
        as_blocks, _rows(100), dict(models=Model.sklearn(path, model_id="sum"), max_batch_size=25, policy=policy)
    )
    assert len(served) == 100 and failures == []
    calls = sizes["model_sum_batch_size_examples"]
    assert calls.max <= 25 and calls.sum == 100 and calls.count >= 4


def test_rows_and_blocks_report_the_same_metrics(summing):
    path, policy = summing
    rows = [*_rows(20), beam.Row(id=99, x=[1.0, float("nan")]), beam.Row(id=98, x=[])]
    args = dict(
        models=[Model.sklearn(path, model_id="sum", keys=[str(i) for i in range(20)])],
        preprocess=[Step.custom(lambda x: x if x[0] != 5.0 else "five")],
        postprocess=[Step.custom(_picky, produces="number")],
        policy=policy,
    )
    by_rows = _run(False, rows, args)
    by_blocks = _run(True, rows, args)
    assert by_rows[0] == by_blocks[0]
    assert [f[:3] for f in by_rows[1]] == [f[:3] for f in by_blocks[1]]
    counters = by_rows[2]
    assert counters == by_blocks[2]
    # 22 rows in: 17 served; failures: the empty row (input), 99 unmapped (routing), 5 (preprocess),
    # 3 (postprocess), 4 (output).
    assert counters["rows_in"] == 22 and counters["inferences_out"] == 17
    assert counters["input_failures"] == 1 and counters["routing_failures"] == 1
    assert counters["preprocess_failures"] == 1 and counters["postprocess_failures"] == 1
    assert counters["output_failures"] == 1
    # The model's own counts: the rows it predicted; step failures are not the model's.
    assert counters["model_sum_examples"] == 19 and counters.get("model_sum_failed_examples", 0) == 0
    assert counters["model_loads"] >= 1


@pytest.mark.parametrize("as_blocks", [False, True], ids=["rows", "blocks"])
def test_every_counter_is_reported_and_unnamed_models_are_named_by_position(summing, as_blocks):
    path, policy = summing
    _, failures, counters, sizes = _run(as_blocks, _rows(10), dict(models=Model.sklearn(path), policy=policy))
    assert failures == []
    # Nothing failed: every counter is there, at 0; the model without an id is model 0.
    assert counters == {
        "rows_in": 10, "inferences_out": 10, "model_0_examples": 10, "model_loads": counters["model_loads"],
        **{f"{stage}_failures": 0 for stage in ("input", "routing", "preprocess", "inference", "postprocess", "output")},
        "model_0_failed_examples": 0, "model_0_batch_splits": 0, "model_load_failures": 0, "model_reload_failures": 0,
        "model_watch_reloads": 0,
    }
    assert counters["model_loads"] >= 1
    assert sizes["model_0_batch_size_examples"].sum == 10
    # Beam's own RunInference metrics count batches of blocks: they have a namespace of their own.
    assert "num_inferences" in _COLLECTED["beam_counters"]
