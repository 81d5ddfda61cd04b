"""Java pipelines that run the Python composite through a live expansion service.

Each test runs a real JVM with the digits example pipeline on Beam's portable local job
service, with the Python stages in the expansion service's worker pool.
"""

import csv
import json
import os
import pickle
import shutil
import subprocess
import sys

import joblib
import pytest
from digits_support import read_predictions, sklearn_predictions


MAIN_CLASS = "dev.inferbridge.examples.DigitsClassification"
TIMEOUT_SECS = 300


def run_java(classpath, env, *args):
    return subprocess.run(
        ["java", "-cp", classpath, MAIN_CLASS, *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=TIMEOUT_SECS,
    )


def test_example_under_inferbridge_local_matches_scikit_learn(java_classpath, digits_dir, tmp_path):
    java_tmp = tmp_path / "java-tmp"
    java_tmp.mkdir()
    predictions = tmp_path / "predictions.csv"
    failures = tmp_path / "failures.jsonl"
    result = subprocess.run(
        [
            os.path.join(os.path.dirname(sys.executable), "inferbridge-local"),
            f"--trusted-model-root={digits_dir}",
            "--",
            "java", f"-Djava.io.tmpdir={java_tmp}", "-cp", java_classpath, MAIN_CLASS,
            f"--modelDir={digits_dir}",
            f"--predictionsFile={predictions}",
            f"--failuresFile={failures}",
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_SECS,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "SEVERE" not in result.stderr and "Exception" not in result.stderr, result.stderr[-4000:]  # a quiet success
    assert list(java_tmp.iterdir()) == []  # nothing staged, nothing left behind
    expected = json.loads((digits_dir / "expected.json").read_text())
    last_line = result.stdout.strip().splitlines()[-1]
    assert last_line == f"accuracy={expected['score']!r} expected={expected['score']!r} rows={expected['rows']}"
    assert "failures=0" in result.stdout.splitlines()
    assert failures.read_text() == ""
    with open(digits_dir / "digits.pkl", "rb") as f:
        model = pickle.load(f)
    assert read_predictions(predictions) == sklearn_predictions(digits_dir, model)
    # PipelineResult.metrics() in Java: every counter, those at zero too; the model has no id: model 0.
    counters = dict(item.split("=") for line in result.stdout.splitlines() if line.startswith("counters: ") for item in line.split()[1:])
    rows = str(expected["rows"])
    assert {k: counters.get(k) for k in ("rows_in", "inferences_out", "model_0_examples")} == dict.fromkeys(("rows_in", "inferences_out", "model_0_examples"), rows)
    for zero in ("input_failures", "routing_failures", "inference_failures", "output_failures", "model_0_failed_examples"):
        assert counters.get(zero) == "0", (zero, counters)


def test_joblib_model_predictions_equal_scikit_learns(java_classpath, digits_dir, services, tmp_path):
    predictions = tmp_path / "predictions.csv"
    result = run_java(
        java_classpath, services, f"--modelDir={digits_dir}", "--modelFormat=joblib", f"--predictionsFile={predictions}"
    )
    assert result.returncode == 0, result.stderr[-4000:]
    model = joblib.load(digits_dir / "digits.joblib")
    assert read_predictions(predictions) == sklearn_predictions(digits_dir, model)


def test_missing_model_file_fails_at_construction_naming_the_uri(java_classpath, digits_dir, services, tmp_path):
    no_model = tmp_path / "no-model"
    no_model.mkdir()
    for name in ("test_rows.csv", "expected.json"):
        shutil.copy(digits_dir / name, no_model / name)
    result = run_java(java_classpath, services, f"--modelDir={no_model}")
    assert result.returncode != 0
    missing = no_model / "digits.pkl"
    assert (
        f"rejected the configuration: ValueError: models[0].uri='{missing}' does not exist or is not readable"
        in result.stderr
    ), result.stderr[-4000:]


def test_a_wrong_sha256_fails_at_construction_in_one_line(java_classpath, digits_dir, services, tmp_path):
    import hashlib

    model = digits_dir / "digits.pkl"
    actual = hashlib.sha256(model.read_bytes()).hexdigest()
    wrong = "0" * 64
    predictions = tmp_path / "predictions.csv"
    result = run_java(java_classpath, services, f"--modelDir={digits_dir}", f"--modelSha256={wrong}", f"--predictionsFile={predictions}")
    assert result.returncode != 0
    lines = result.stderr.splitlines()
    thrown = next(i for i, line in enumerate(lines) if "ExpansionRejectedException" in line)
    assert lines[thrown].endswith(
        f"rejected the configuration: ValueError: models[0].sha256 does not match '{model}': expected {wrong}, "
        f"actual {actual}; the file changed, or the pin is wrong"
    ), result.stderr[-4000:]
    # One line: the Java frames follow it; the Python traceback only under "Caused by".
    assert lines[thrown + 1].startswith("\tat "), result.stderr[-4000:]
    assert not predictions.exists()  # refused before the job ran
    # The right pin runs.
    result = run_java(java_classpath, services, f"--modelDir={digits_dir}", f"--modelSha256={actual}", f"--predictionsFile={predictions}")
    assert result.returncode == 0, result.stderr[-4000:]


def data_with_a_short_first_row(digits_dir, tmp_path):
    """A copy of the digits data whose first row keeps 10 pixels: (folder, first row, the rest)."""
    data = tmp_path / "data"
    shutil.copytree(digits_dir, data)
    with open(digits_dir / "test_rows.csv") as f:
        rows = list(csv.reader(f))
    header, first, rest = rows[0], rows[1], rows[2:]
    with open(data / "test_rows.csv", "w", newline="") as f:
        csv.writer(f).writerows([header, first[:12], *rest])
    return data, first, rest


def test_bad_rows_reach_the_failures_output_and_the_rest_is_inferred(java_classpath, digits_dir, services, tmp_path):
    data, first, rest = data_with_a_short_first_row(digits_dir, tmp_path)
    failures = tmp_path / "failures.jsonl"
    result = run_java(java_classpath, services, f"--modelDir={data}", f"--failuresFile={failures}")
    assert result.returncode == 1  # the example exits 1 when rows are missing from its accuracy
    lines = [json.loads(line) for line in failures.read_text().splitlines()]
    assert len(lines) == 1
    assert (lines[0]["stage"], lines[0]["error_type"], lines[0]["key"]) == ("inference", "ValueError", first[0])
    assert "failures=1" in result.stdout.splitlines()
    assert f"rows={len(rest)}" in result.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize(
    "blocks",
    # Rows packed in Java (withBlockSize), and the block-level API (overBlocks on FeatureBlocks).
    ["--blockSize=128", "--featureBlockSize=100"],
    ids=["packed-rows", "feature-blocks"],
)
def test_blocks_give_the_same_predictions(java_classpath, digits_dir, services, tmp_path, blocks):
    predictions = tmp_path / "predictions.csv"
    result = run_java(java_classpath, services, f"--modelDir={digits_dir}", blocks, f"--predictionsFile={predictions}")
    assert result.returncode == 0, result.stderr[-4000:]
    assert "failures=0" in result.stdout.splitlines()
    with open(digits_dir / "digits.pkl", "rb") as f:
        model = pickle.load(f)
    assert read_predictions(predictions) == sklearn_predictions(digits_dir, model)


def test_packed_blocks_isolate_a_bad_row(java_classpath, digits_dir, services, tmp_path):
    # The short row starts a block of its own (another feature count), where the model fails.
    data, first, rest = data_with_a_short_first_row(digits_dir, tmp_path)
    failures = tmp_path / "failures.jsonl"
    result = run_java(java_classpath, services, f"--modelDir={data}", "--blockSize=64", f"--failuresFile={failures}")
    assert result.returncode == 1
    lines = [json.loads(line) for line in failures.read_text().splitlines()]
    assert [(f["stage"], f["error_type"], f["key"]) for f in lines] == [("inference", "ValueError", first[0])]
    assert json.loads(lines[0]["element"])["pixels"] == [float(v) for v in first[2:12]]
    assert "failures=1" in result.stdout.splitlines()
    assert f"rows={len(rest)}" in result.stdout.strip().splitlines()[-1]


def test_feature_blocks_isolate_a_row_the_model_cannot_take(java_classpath, digits_dir, services, tmp_path):
    # A NaN pixel, which scikit-learn's LogisticRegression refuses: that row fails alone, in a
    # block of 100, and the block's other 99 rows are served.
    data = tmp_path / "data"
    shutil.copytree(digits_dir, data)
    with open(digits_dir / "test_rows.csv") as f:
        rows = list(csv.reader(f))
    rows[1][rows[0].index("pixel_3")] = "NaN"
    with open(data / "test_rows.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    failures = tmp_path / "failures.jsonl"
    result = run_java(java_classpath, services, f"--modelDir={data}", "--featureBlockSize=100", f"--failuresFile={failures}")
    assert result.returncode == 1  # the example exits 1 when rows are missing from its accuracy
    lines = [json.loads(line) for line in failures.read_text().splitlines()]
    assert [(f["stage"], f["error_type"], f["key"]) for f in lines] == [("inference", "ValueError", rows[1][0])]
    assert "NaN" in lines[0]["message"]
    assert json.loads(lines[0]["element"])["features"][3] == "NaN"
    assert "failures=1" in result.stdout.splitlines()
    assert f"rows={len(rows) - 2}" in result.stdout.strip().splitlines()[-1]


DIGITS_PROBA = '''
import numpy as np
from apache_beam.ml.inference.sklearn_inference import SklearnModelHandlerNumpy


def _probabilities(model, batch, inference_args=None):
    return model.predict_proba(np.stack(batch))


def digits_proba(uri):
    return SklearnModelHandlerNumpy(uri, inference_fn=_probabilities)
'''


def test_a_handler_registered_by_the_services_packages_is_named_from_java(java_classpath, digits_dir, tmp_path):
    from inferbridge.local_services import local_services

    package = tmp_path / "handlers"
    info = package / "ib_digits_handlers-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ib-digits-handlers\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[inferbridge.model_handlers]\ndigits_proba = ib_digits_handlers:digits_proba\n")
    (package / "ib_digits_handlers.py").write_text(DIGITS_PROBA)
    predictions = tmp_path / "predictions.csv"
    # No trusted model root: the registered handler loads the pickle itself.
    with local_services(service_args=[f"--python-path={package}", "--allow-registered-handler=digits_proba"]) as env:
        result = run_java(
            java_classpath, env, f"--modelDir={digits_dir}", "--registeredHandler=digits_proba",
            f"--predictionsFile={predictions}",
        )
        unknown = run_java(java_classpath, env, f"--modelDir={digits_dir}", "--registeredHandler=sentiment")
    assert result.returncode == 0, result.stderr[-4000:]
    with open(digits_dir / "digits.pkl", "rb") as f:
        model = pickle.load(f)
    assert read_predictions(predictions) == sklearn_predictions(digits_dir, model)
    assert unknown.returncode != 0
    assert (
        "models[0].format='sentiment' is not a registered model handler; registered: digits_proba" in unknown.stderr
    ), unknown.stderr[-4000:]


def test_a_model_behind_an_http_endpoint_is_called_from_java(java_classpath, digits_dir, tmp_path):
    import json as json_
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import numpy as np

    from inferbridge.local_services import local_services

    with open(digits_dir / "digits.pkl", "rb") as f:
        model = pickle.load(f)
    calls = []

    class Endpoint(BaseHTTPRequestHandler):
        def do_POST(self):
            instances = json_.loads(self.rfile.read(int(self.headers["Content-Length"])))["instances"]
            calls.append(len(instances))
            body = json_.dumps({"predictions": model.predict_proba(np.asarray(instances)).tolist()}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Endpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    prefix = f"http://127.0.0.1:{server.server_address[1]}/v1/"
    predictions = tmp_path / "predictions.csv"
    try:
        with local_services(service_args=[f"--allow-endpoint={prefix}"]) as env:
            result = run_java(
                java_classpath, env, f"--modelDir={digits_dir}", f"--endpoint={prefix}models/digits:predict",
                f"--predictionsFile={predictions}",
            )
            refused = run_java(java_classpath, env, f"--modelDir={digits_dir}", "--endpoint=http://127.0.0.1:9/admin")
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 0, result.stderr[-4000:]
    assert read_predictions(predictions) == sklearn_predictions(digits_dir, model)
    assert calls and sum(calls) >= len(read_predictions(predictions))
    assert refused.returncode != 0
    assert "models[0].uri='http://127.0.0.1:9/admin' is not under an allowed endpoint" in refused.stderr, refused.stderr[-4000:]
