"""Trains the digits classifier the Java example uses, and records scikit-learn's own score.

Writes to OUTPUT_DIR:
  digits.pkl / digits.joblib  a LogisticRegression on scikit-learn's bundled digits, pixels / 16
  test_rows.csv               the held-out rows: id,label,pixel_0..pixel_63 (raw 0..16 values)
  expected.json               {"score": scikit-learn's accuracy on those rows, "rows": count}
"""

from __future__ import annotations

import argparse
import csv
import json
import pickle
from pathlib import Path

import joblib
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

# The example pipeline applies Step.scale(1/16) before the model, as training does here.
PIXEL_SCALE = 1 / 16


def split():
    """The digits split both training scripts use: (train_x, test_x, train_y, test_y)."""
    pixels, labels = load_digits(return_X_y=True)
    return train_test_split(pixels, labels, test_size=0.5, random_state=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output_dir", type=Path)
    args = parser.parse_args()
    args.output_dir.mkdir(parents=True, exist_ok=True)

    train_x, test_x, train_y, test_y = split()
    model = LogisticRegression(max_iter=5000).fit(train_x * PIXEL_SCALE, train_y)

    with open(args.output_dir / "digits.pkl", "wb") as f:
        pickle.dump(model, f)
    joblib.dump(model, args.output_dir / "digits.joblib")
    with open(args.output_dir / "test_rows.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "label"] + [f"pixel_{i}" for i in range(test_x.shape[1])])
        for i, (row, label) in enumerate(zip(test_x, test_y)):
            writer.writerow([i, int(label)] + [repr(float(v)) for v in row])
    score = float(model.score(test_x * PIXEL_SCALE, test_y))
    (args.output_dir / "expected.json").write_text(json.dumps({"score": score, "rows": len(test_y)}) + "\n")
    print(f"trained on {len(train_y)} rows; scikit-learn score on {len(test_y)} held-out rows: {score}")


if __name__ == "__main__":
    main()
