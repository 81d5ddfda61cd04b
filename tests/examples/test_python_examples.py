"""The Python examples run as users run them, and agree with scikit-learn."""

import csv
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "python"


def test_digits_ab_reports_each_models_accuracy_and_the_failed_row(digits_dir, tmp_path):
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "digits_ab.py"), str(digits_dir), str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    with open(digits_dir / "test_rows.csv") as f:
        rows = list(csv.DictReader(f))
    with open(digits_dir / "digits.pkl", "rb") as f:
        model = pickle.load(f)
    lines = result.stdout.strip().splitlines()
    for variant, parity in (("a", 0), ("b", 1)):
        chosen = [r for r in rows if int(r["id"]) % 2 == parity]
        pixels = np.array([[float(r[f"pixel_{i}"]) for i in range(64)] for r in chosen])
        labels = np.array([int(r["label"]) for r in chosen])
        accuracy = float((model.predict(pixels / 16) == labels).mean())
        assert f"model={variant} accuracy={accuracy!r} rows={len(chosen)}" in lines
    assert lines[-1] == "failures=1"
