"""What the digits pipelines must produce, from scikit-learn, how to read what they wrote, and how
to run a Python pipeline script on a portable runner."""

import csv
import pickle
import subprocess
import sys

import numpy as np


def sklearn_predictions(digits_dir, model=None):
    """{id: predicted digit} for the held-out rows of examples/digits/train_model.py, by ``model``
    (default: the trained digits.pkl) on pixels / 16, as the examples preprocess them."""
    if model is None:
        with open(digits_dir / "digits.pkl", "rb") as f:
            model = pickle.load(f)
    with open(digits_dir / "test_rows.csv") as f:
        rows = list(csv.reader(f))[1:]
    pixels = np.array([[float(v) for v in row[2:]] for row in rows])
    return dict(zip((int(row[0]) for row in rows), model.predict(pixels / 16).tolist()))


def read_predictions(path):
    """The ``id,prediction`` lines a Java example writes with --predictionsFile."""
    with open(path) as f:
        return {int(k): int(v) for k, v in (line.strip().split(",") for line in f if line.strip())}


def run_python_pipeline(script, args, job_endpoint, environment_type, environment_config, timeout=300):
    """Runs a Python pipeline script on the portable job service at ``job_endpoint`` with its
    workers in the given environment; fails the test unless it succeeds."""
    result = subprocess.run(
        [
            sys.executable, str(script), *map(str, args),
            "--runner=PortableRunner",
            f"--job_endpoint={job_endpoint}",
            f"--environment_type={environment_type}",
            f"--environment_config={environment_config}",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result
