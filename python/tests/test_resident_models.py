"""Resident models under a bound: thousands of reloads leave no thread, descriptor, listening
socket, child process or temporary file behind, on the row path and on the block path.

A soak test, bounded in size: three tiny scikit-learn models trained here, keyed, at most one
resident per worker, and batches that mix the three keys, so that nearly every batch reloads
models. It runs on the DirectRunner in this process, whose resources are read from /proc.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.util import assert_that, equal_to
from sklearn.linear_model import LogisticRegression

from inferbridge import BlockInference, Inference, Model
from inferbridge.policy import LoadPolicy

KEYS = ("a", "b", "c")
BATCHES = 1000  # of one row per model: about two reloads each
# Thread pools of the runner may keep a few more idle threads after a run than before it.
SLACK = 4


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    """Three models, each answering with classes of its own ({0, 1}, {2, 3}, {4, 5}), their
    load policy, and the features of the rows."""
    root = tmp_path_factory.mktemp("resident")
    rng = np.random.default_rng(7)
    features = rng.normal(size=(60, 4))
    models = []
    for i, key in enumerate(KEYS):
        labels = (features[:, i] > 0).astype(int) + 2 * i  # classes {2i, 2i + 1}: whose answer it is
        path = root / f"{key}.pkl"
        path.write_bytes(pickle.dumps(LogisticRegression().fit(features, labels)))
        models.append(Model.sklearn(str(path), model_id=key, keys=[key]))
    return models, LoadPolicy(trusted_roots=(str(root),)), features


def _resources(scratch: Path) -> dict[str, int]:
    """This process's threads, descriptors, listening TCP sockets and children; files in ``scratch``."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # the descriptor of the listing itself
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    listening = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            listening += fields[3] == "0A" and fields[9] in inodes
    children = Path(f"/proc/self/task/{os.getpid()}/children").read_text().split()
    return {
        "threads": len(os.listdir("/proc/self/task")),
        "descriptors": len(os.listdir("/proc/self/fd")),
        "listening sockets": listening,
        "child processes": len(children),
        "temporary files": sum(1 for _ in scratch.rglob("*")),
    }


def _rows(features):
    return [beam.Row(id=i, region=KEYS[i % 3], features=[float(v) for v in features[i % 60]]) for i in range(3 * BATCHES)]


def _blocks(features):
    return [
        pa.RecordBatch.from_pydict(
            {
                "id": list(range(3 * b, 3 * b + 3)),
                "region": list(KEYS),
                "features": [[float(v) for v in features[(3 * b + k) % 60]] for k in range(3)],
            }
        )
        for b in range(BATCHES)
    ]


def _run(transform_type, elements, keyed, check):
    models, policy, _ = keyed
    p = beam.Pipeline()
    result = p | beam.Create(elements, reshuffle=False) | transform_type(
        models,
        key_field="region",
        feature_fields="features",
        passthrough_fields=["id"],
        max_models_per_worker=1,
        min_batch_size=3,
        max_batch_size=3,
        metrics_namespace="soak",
        policy=policy,
    )
    check(result)
    run = p.run()
    run.wait_until_finish()
    loads = run.metrics().query(MetricsFilter().with_namespace("soak").with_name("model_loads"))["counters"]
    return sum(c.committed for c in loads)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("path", ["rows", "blocks"])
def test_thousands_of_reloads_leave_nothing_behind(keyed, tmp_path, monkeypatch, path):
    models, _, features = keyed
    answers = {m.id: pickle.loads(Path(m.uri).read_bytes()) for m in models}
    # Temporary files of the runs (and of anything they start) are made here, to be counted.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    if path == "rows":
        elements = _rows(features)

        def check(result):
            assert_that(
                result.inferences | beam.Map(lambda r: (r.id, r.model_id, int(r.inference))),
                equal_to([
                    (i, KEYS[i % 3], int(answers[KEYS[i % 3]].predict(features[i % 60 : i % 60 + 1])[0]))
                    for i in range(3 * BATCHES)
                ]),
            )

        transform_type = Inference
    else:
        elements = _blocks(features)

        def check(result):
            assert_that(
                result.inferences
                | beam.FlatMap(lambda b: zip(b.column("id").to_pylist(), b.column("model_id").to_pylist())),
                equal_to([(i, KEYS[i % 3]) for i in range(3 * BATCHES)]),
            )

        transform_type = BlockInference

    # A warm-up run of 10 batches: the runner's own pools start, and Beam's runner leaves its
    # staging directories of one run (a few, per pipeline run, whatever it does).
    first = _resources(tmp_path)
    _run(transform_type, elements[:30], keyed, lambda result: None)
    before = _resources(tmp_path)
    loads = _run(transform_type, elements, keyed, check)
    after = _resources(tmp_path)

    assert loads >= BATCHES, f"only {loads} model loads: the bound was not exercised"
    assert after["threads"] <= before["threads"] + SLACK, (before, after)
    for resource in ("descriptors", "listening sockets", "child processes"):
        assert after[resource] <= before[resource], (resource, before, after)
    per_run = before["temporary files"] - first["temporary files"]
    assert after["temporary files"] - before["temporary files"] <= per_run, (first, before, after)
    print(f"{path}: {loads} model loads; before {before}; after {after}")
