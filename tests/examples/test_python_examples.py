"""The Python examples run as users run them, and agree with scikit-learn."""

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "python"


def test_digits_ab_reports_each_models_accuracy_and_the_failed_row(digits_dir, tmp_path, digits_ab_expected_output):
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "digits_ab.py"), str(digits_dir), str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    lines = result.stdout.strip().splitlines()
    expected = digits_ab_expected_output(digits_dir)
    assert [line for line in lines if line.startswith("model=")] == expected[:-1]
    assert lines[-1] == expected[-1]
