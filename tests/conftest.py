"""Shared set-up of the cross-language tests: the Java examples' classpath, and a trained model."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def java_classpath():
    """The runtime classpath of the Java examples, written by `gradle writeRuntimeClasspath`."""
    path = ROOT / "examples/build/runtime-classpath.txt"
    if not path.exists():
        pytest.fail(f"{path} is missing: build the Java examples first (scripts/test does)")
    return path.read_text().strip()


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory):
    """A digits model trained here by the example's own script, with its held-out rows."""
    out = tmp_path_factory.mktemp("digits")
    subprocess.run([sys.executable, str(ROOT / "examples/digits/train_model.py"), str(out)], check=True)
    return out


@pytest.fixture(scope="session")
def digits_examples_dir(digits_dir):
    """digits_dir plus the models of the Java examples, trained by examples/digits/train_examples.py."""
    subprocess.run([sys.executable, str(ROOT / "examples/digits/train_examples.py"), str(digits_dir)], check=True)
    return digits_dir


@pytest.fixture(scope="session")
def services(tmp_path_factory, digits_dir):
    """The expansion and job services for the Java pipelines, as environment variables.

    Pickled and TorchScript models run code when loaded: the service loads them only from
    trusted roots, here the trained models and the tests' temporary folders.
    """
    from inferbridge.local_services import local_services

    trusted = [digits_dir, tmp_path_factory.getbasetemp()]
    with local_services(service_args=[f"--trusted-model-root={root}" for root in trusted]) as env:
        yield env


@pytest.fixture(scope="session")
def digits_ab_expected_output():
    """The lines examples/python/digits_ab.py must print for a model folder, from scikit-learn:
    one ``model=<id> accuracy=<a> rows=<n>`` per model (a: even ids, b: odd), then ``failures=1``."""
    import csv
    import pickle

    import numpy as np

    def expected(digits_dir):
        with open(digits_dir / "test_rows.csv") as f:
            rows = list(csv.DictReader(f))
        with open(digits_dir / "digits.pkl", "rb") as f:
            model = pickle.load(f)
        lines = []
        for variant, parity in (("a", 0), ("b", 1)):
            chosen = [r for r in rows if int(r["id"]) % 2 == parity]
            pixels = np.array([[float(r[f"pixel_{i}"]) for i in range(64)] for r in chosen])
            labels = np.array([int(r["label"]) for r in chosen])
            accuracy = float((model.predict(pixels / 16) == labels).mean())
            lines.append(f"model={variant} accuracy={accuracy!r} rows={len(chosen)}")
        return lines + ["failures=1"]

    return expected
