"""InferBridge pipelines on Apache Flink: Beam's portable Flink runner with an embedded cluster
at parallelism 2, the Java stages in the pipeline's JVM and the Python stages in the expansion
service's worker pool (EXTERNAL environments)."""

import csv
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from digits_support import read_predictions, run_python_pipeline, sklearn_predictions
from inferbridge.local_services import expansion_service

MAIN_CLASS = "dev.inferbridge.examples.DigitsClassification"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def expansion(digits_examples_dir):
    with expansion_service(service_args=[f"--trusted-model-root={digits_examples_dir}"]) as address:
        yield address


def test_a_million_packed_rows_in_one_batch_bundle_complete_exactly(digits_dir, expansion, flink, tmp_path):
    """Beam's Flink runner reads a bundle's output only once the bundle ends; in batch mode a
    bundle is a whole partition. One million packed rows (~260 MB per partition) hung with 1 MB
    data messages; LocalRun's 4 MB messages let them through."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_models

    job_endpoint, _ = flink
    rows = 1_000_000
    digits_csv = tmp_path / "digits.csv"
    bench_models.write_digits_csv(str(digits_csv))
    classpath = (ROOT / "benchmarks/build/runtime-classpath.txt").read_text().strip()
    result = subprocess.run(
        [
            "java", "-cp", classpath, "dev.inferbridge.benchmarks.JavaThroughput", "--system=inferbridge-java-blocks",
            f"--rows={rows}", f"--digits={digits_csv}", f"--model={digits_dir / 'digits.pkl'}", "--block-size=1000",
        ],
        env={**os.environ, "INFERBRIDGE_EXPANSION_SERVICE": expansion, "INFERBRIDGE_JOB_ENDPOINT": job_endpoint},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    # Row n is digit n mod 1797: the sum of the predictions is known from scikit-learn.
    with open(digits_dir / "digits.pkl", "rb") as f:
        predictions = pickle.load(f).predict(bench_models.digits_features()).astype(int)
    cycles, rest = divmod(rows, len(predictions))
    assert (measured["count"], measured["failures"]) == (rows, 0)
    assert measured["inference_sum"] == cycles * predictions.sum() + predictions[:rest].sum()


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


def run_streaming_example(java_classpath, data_dir, expansion, job_endpoint, output_dir, *args):
    """StreamingModelUpdate as a running process (20 rows per tick, windows of 8 ticks)."""
    return subprocess.Popen(
        [
            "java", "-cp", java_classpath, "dev.inferbridge.examples.StreamingModelUpdate",
            f"--dataDir={data_dir}", f"--outputDir={output_dir}", *args,
        ],
        env={**os.environ, "INFERBRIDGE_EXPANSION_SERVICE": expansion, "INFERBRIDGE_JOB_ENDPOINT": job_endpoint},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(job):
    stdout, stderr = job.communicate(timeout=600)
    assert job.returncode == 0, stderr[-4000:]
    return stdout.strip().splitlines()[-1]


def served_by_window(output_dir, data_dir):
    """For each window file, in order: which model answered its rows ("first", "second" or
    "both"), after checking that it holds exactly its 160 ids, once each, and that every
    prediction is one of the two models'."""
    with open(data_dir / "test_rows.csv") as f:
        pixels = np.array([[float(v) for v in r[2:]] for r in list(csv.reader(f))[1:]]) / 16
    first, second = (
        pickle.loads((data_dir / name).read_bytes()).predict_proba(pixels).argmax(1)
        for name in ("digits.pkl", "digits_b.pkl")
    )
    served_by = []
    windows = sorted((output_dir / "windows").glob("*.csv"), key=lambda f: int(f.stem))
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
    return served_by


def test_a_model_published_mid_stream_takes_over_without_losing_or_repeating_a_row(
    java_classpath, digits_examples_dir, expansion, flink, tmp_path
):
    """StreamingModelUpdate on Flink: 64 ticks of 20 rows from an unbounded source, windows of 8
    ticks; after rows of tick 24 are classified the pipeline publishes digits_b.pkl into the
    watched folder. Every window holds exactly its 160 rows, once each; every row is answered by
    one of the two models; the first windows by the first, the last windows by the second."""
    job_endpoint, _ = flink
    job = run_streaming_example(java_classpath, digits_examples_dir, expansion, job_endpoint, tmp_path)
    assert finish(job) == "windows=8 rows=1280 failures=0"
    served_by = served_by_window(tmp_path, digits_examples_dir)
    # The update lands in window 3 (ticks 24-31), or later when a backlog of rows went through
    # the model in one bundle before the publishing step saw them; each worker switches at its
    # next check, and once the new model serves, the old one never does again.
    assert served_by[0] == "first" and served_by[-1] == "second", served_by
    assert "first" not in served_by[served_by.index("second"):], served_by


TICKS = 96


def _children(pid):
    """Process ids whose parent is ``pid``."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children


@pytest.mark.timeout(900)  # a first window, a restart and a whole stream on Flink, on 2 busy cores
def test_a_python_worker_killed_mid_stream_is_recovered(
    java_classpath, digits_examples_dir, flink_checkpointing, worker_pool, tmp_path
):
    """The Python stages run in a worker pool whose workers are processes; once the first window
    is written, the workers are killed. Flink fails the task and restarts the job, from its last
    checkpoint where one completed, with new workers; the windows written at the end are
    complete: each holds exactly its rows, once each (a window's file is rewritten whole, and
    the source is deterministic, so a window replayed from the start comes out the same)."""
    job_endpoint, flink_log = flink_checkpointing
    pool_port, pool, _ = worker_pool
    log_offset = flink_log.stat().st_size
    service_args = [
        f"--trusted-model-root={digits_examples_dir}",
        "--environment-type=EXTERNAL",
        f"--environment-config=localhost:{pool_port}",
    ]
    with expansion_service(service_args=service_args) as address:
        # The stream starts well after the job does, so that on a busy machine too the ticks come
        # in real time and the killed workers leave work to fail, not a stream already served.
        job = run_streaming_example(
            java_classpath, digits_examples_dir, address, job_endpoint, tmp_path, f"--ticks={TICKS}", "--startDelayMillis=30000"
        )
        deadline = time.monotonic() + 450  # 300 s was passed once on a loaded 2-core machine
        while not any((tmp_path / "windows").glob("*.csv")):
            assert job.poll() is None and time.monotonic() < deadline, "no window was written"
            time.sleep(0.2)
        workers = _children(pool.pid)
        assert workers, "the worker pool runs no worker process"
        for worker in workers:
            os.kill(worker, signal.SIGKILL)
        last_line = finish(job)
    assert last_line == f"windows={TICKS // 8} rows={TICKS * 20} failures=0"
    served_by_window(tmp_path, digits_examples_dir)
    log = _read_from(flink_log, log_offset)
    # The task lost its Python workers mid-bundle.
    assert re.search(r"switched from RUNNING to FAILED", log) and re.search(r"Failed to (start|finish) remote bundle", log), log[-4000:]
    restores = re.findall(r"Restoring job \S+ from Checkpoint \d+|No checkpoint found during restore", log)
    assert len(restores) >= 2, log[-4000:]  # the start, then at least one restart
    print("Flink restores:", restores, "completed checkpoints:", log.count("Completed checkpoint"))


def _read_from(path, offset):
    with open(path, errors="replace") as f:
        f.seek(offset)
        return f.read()


def test_a_python_pipeline_runs_the_composite_on_flink(digits_dir, flink, worker_pool, tmp_path, digits_ab_expected_output):
    """examples/python/digits_ab.py (two keyed models, Evaluate, a malformed row to the failures)
    on Flink, its workers from a Python worker pool (EXTERNAL), as a worker-pool sidecar serves them."""
    job_endpoint, flink_log = flink
    pool_port, _, _ = worker_pool
    log_offset = flink_log.stat().st_size
    result = run_python_pipeline(
        ROOT / "examples/python/digits_ab.py", [digits_dir, tmp_path], job_endpoint, "EXTERNAL", f"localhost:{pool_port}"
    )
    lines = result.stdout.strip().splitlines()
    expected = digits_ab_expected_output(digits_dir)
    assert sorted(line for line in lines if line.startswith("model=")) == expected[:-1]  # any order
    assert lines[-1] == expected[-1]
    # Flink ran it: the job's tasks are in the job server's log, as parallel subtasks.
    assert set(re.findall(r"\((\d+)/2\)", _read_from(flink_log, log_offset))) == {"1", "2"}
