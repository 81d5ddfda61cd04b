"""What the digits pipelines must produce, from scikit-learn, and how to read what they wrote."""

import csv
import pickle

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
