"""InferBridge pipelines on Apache Flink: Beam's portable Flink runner with an embedded cluster
at parallelism 2, the Java stages in the pipeline's JVM and the Python stages in the expansion
service's worker pool (EXTERNAL environments)."""

import csv
import json
import os
import pickle
import re
import subprocess

import numpy as np
import pytest

from digits_support import read_predictions, sklearn_predictions
from inferbridge.local_services import expansion_service

MAIN_CLASS = "dev.inferbridge.examples.DigitsClassification"


@pytest.fixture(scope="module")
def expansion(digits_examples_dir):
    with expansion_service(service_args=[f"--trusted-model-root={digits_examples_dir}"]) as address:
        yield address


def test_digits_example_on_flink_matches_scikit_learn(java_classpath, digits_dir, expansion, flink, tmp_path):
    job_endpoint, log = flink
    predictions = tmp_path / "predictions.csv"
    result = subprocess.run(
        [
            "java", "-cp", java_classpath, MAIN_CLASS,
            f"--modelDir={digits_dir}", f"--predictionsFile={predictions}",
        ],
        env={**os.environ, "INFERBRIDGE_EXPANSION_SERVICE": expansion, "INFERBRIDGE_JOB_ENDPOINT": job_endpoint},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    expected = json.loads((digits_dir / "expected.json").read_text())
    last_line = result.stdout.strip().splitlines()[-1]
    assert last_line == f"accuracy={expected['score']!r} expected={expected['score']!r} rows={expected['rows']}"
    assert read_predictions(predictions) == sklearn_predictions(digits_dir)
    # Flink ran the stages as two parallel subtasks.
    assert set(re.findall(r"\((\d+)/2\)", log.read_text())) == {"1", "2"}


def test_a_model_published_mid_stream_takes_over_without_losing_or_repeating_a_row(
    java_classpath, digits_examples_dir, expansion, flink, tmp_path
):
    """StreamingModelUpdate on Flink: 64 ticks of 20 rows from an unbounded source, windows of 8
    ticks; after rows of tick 24 are classified the pipeline publishes digits_b.pkl into the
    watched folder. Every window holds exactly its 160 rows, once each; every row is answered by
    one of the two models; the first windows by the first, the last windows by the second."""
    job_endpoint, _ = flink
    result = subprocess.run(
        [
            "java", "-cp", java_classpath, "dev.inferbridge.examples.StreamingModelUpdate",
            f"--dataDir={digits_examples_dir}", f"--outputDir={tmp_path}",
        ],
        env={**os.environ, "INFERBRIDGE_EXPANSION_SERVICE": expansion, "INFERBRIDGE_JOB_ENDPOINT": job_endpoint},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.strip().splitlines()[-1] == "windows=8 rows=1280 failures=0"

    with open(digits_examples_dir / "test_rows.csv") as f:
        pixels = np.array([[float(v) for v in r[2:]] for r in list(csv.reader(f))[1:]]) / 16
    first, second = (
        pickle.loads((digits_examples_dir / name).read_bytes()).predict_proba(pixels).argmax(1)
        for name in ("digits.pkl", "digits_b.pkl")
    )
    windows = sorted((tmp_path / "windows").glob("*.csv"), key=lambda f: int(f.stem))
    served_by = []
    for w, file in enumerate(windows):
        rows = [(int(i), int(p)) for i, p in csv.reader(file.open())]
        assert sorted(i for i, _ in rows) == list(range(160 * w, 160 * (w + 1))), file.name
        ids = np.array([i for i, _ in rows]) % len(pixels)
        predictions = np.array([p for _, p in rows])
        assert np.all((predictions == first[ids]) | (predictions == second[ids])), file.name
        served_by.append(
            "first" if np.array_equal(predictions, first[ids])
            else "second" if np.array_equal(predictions, second[ids])
            else "both"
        )
    # The update lands in window 3 (ticks 24-31); each worker switches at its next check.
    assert served_by[:2] == ["first", "first"], served_by
    assert served_by[5:] == ["second"] * 3, served_by
    assert served_by.index("second") <= 5, served_by
