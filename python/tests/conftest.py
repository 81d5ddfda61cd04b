import os
import pickle

import apache_beam as beam
import joblib
import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression


@pytest.fixture(scope="session")
def digits():
    """Scikit-learn's bundled digits: (pixels, labels)."""
    return load_digits(return_X_y=True)


@pytest.fixture(scope="session")
def digits_model(digits):
    """A small LogisticRegression trained on pixels / 16 of the first 600 digits."""
    pixels, labels = digits
    return LogisticRegression(max_iter=3000).fit(pixels[:600] / 16, labels[:600])


@pytest.fixture(scope="session")
def model_files(digits_model, tmp_path_factory):
    """The model saved as pickle and as joblib: {"pickle": path, "joblib": path}."""
    root = tmp_path_factory.mktemp("models")
    with open(root / "digits.pkl", "wb") as f:
        pickle.dump(digits_model, f)
    joblib.dump(digits_model, root / "digits.joblib")
    return {"pickle": str(root / "digits.pkl"), "joblib": str(root / "digits.joblib")}


@pytest.fixture(scope="session")
def trusting(model_files):
    """A load policy that trusts the folder of the test models (pickle and joblib need it)."""
    from inferbridge.policy import LoadPolicy

    return LoadPolicy(trusted_roots=(os.path.dirname(model_files["pickle"]),))


@pytest.fixture(scope="session")
def held_out(digits):
    """100 digits the model was not trained on: (pixels, labels)."""
    pixels, labels = digits
    return pixels[1000:1100], labels[1000:1100]


def _as_rows(pixels):
    return [beam.Row(id=i, pixels=[float(v) for v in row]) for i, row in enumerate(np.asarray(pixels))]


@pytest.fixture(scope="session")
def as_rows():
    """Turns an array of digits into Rows of (id, pixels)."""
    return _as_rows
