"""InferBridge pipelines on Apache Flink: Beam's portable Flink runner with an embedded cluster
at parallelism 2, the Java stages in the pipeline's JVM and the Python stages in the expansion
service's worker pool (EXTERNAL environments)."""

import json
import os
import re
import subprocess

import pytest

from digits_support import read_predictions, sklearn_predictions
from inferbridge.local_services import expansion_service

MAIN_CLASS = "dev.inferbridge.examples.DigitsClassification"


@pytest.fixture(scope="module")
def expansion(digits_dir):
    with expansion_service(service_args=[f"--trusted-model-root={digits_dir}"]) as address:
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
